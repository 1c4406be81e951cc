//! `riteraft bench`: a load generator for a RiteRaft cluster running the `kv` store.
//!
//! Without `--cluster` (flag or `RITERAFT_CLUSTER`), it starts a local 3-node cluster of its
//! own (see [`local`]), loads it, reports, and stops it; with one, it loads that cluster.
//! `--compare` runs the same load on a cluster running the same store compiled into the host
//! (`riteraft-host --builtin-kv`), then on a fresh one running the wasm plugin, for `--rounds`
//! rounds, and prints the median of the rounds' throughput ratios (see [`alternating`]).
//!
//! The load (see [`load`]): `--clients` tasks, each in a closed loop (send, wait for the answer,
//! send the next), for `--warmup` then `--duration` seconds; only requests completing in the
//! measured window count. Requests go over `--connections` client handles shared round-robin by
//! the tasks; writes (and linearizable reads) go straight to the leader, found with `Status`
//! before the load starts, since a follower would forward them: one more hop each (measured:
//! spreading linearizable reads over all three nodes instead gave 25-35 % fewer reads a second,
//! as each then costs a follower-to-leader round trip). Stale reads are spread over every node,
//! since any node may answer them from its own state.
//!
//! "Explicit" cluster: `--cluster` given on the command line (before or after `bench`, even
//! with the default value `127.0.0.1:7001`) or `RITERAFT_CLUSTER` set in the environment; see
//! [`cluster_was_given`]. The flags that only make sense for a local cluster (`--plugin`,
//! `--host`, `--native`, `--compare`, `--data-root`, `--node-arg`) are refused with an explicit cluster.
//!
//! A run in which no request was answered in the measured window fails (exit 1) with the
//! errors seen, and for a local cluster the exit status and log tail of any node that died:
//! figures of nothing would mislead, and a CI smoke run must notice. Otherwise errors are
//! counted and reported, never fatal.
//!
//! The local nodes are stopped on every way out (end, error, Ctrl-C) and die with the bench
//! even when it is SIGKILLed (see [`local`]); only their temporary directory is then left
//! behind (`riteraft-bench-*` in the data root).
//!
//! The run happens on a runtime of its own on a dedicated thread (see [`LOAD_THREADS`]): the
//! CLI's runtime is single-threaded, which suits one call but not a load generator.

mod alternating;
mod deploy_during;
mod load;
mod local;
mod report;

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::parser::ValueSource;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use riteraft_client::tls::ClientTls;
use riteraft_client::{Client, Consistency, NodeStatus};
use tokio::time::Instant;

use deploy_during::{DeployModule, DeployRun};
use load::{Mix, Progress, Window, Worker};
use local::{LocalCluster, LocalOptions};
pub use report::{BenchOutcome, Config, NodeFigures, RunReport, Setup};

/// Most clients one bench runs: far past the point where more closed-loop clients only add
/// queueing (a 3-node cluster on one machine saturates with a few hundred), and small enough
/// that a typo (`--clients 64000`) cannot exhaust file descriptors or memory.
pub const MAX_CLIENTS: u32 = 4096;

/// Largest `--value-size`: 1 MiB. Far beyond what a latency bench is about, and 64 clients'
/// values in flight stay a modest 64 MiB; the gRPC limit of both sides is 16 MiB.
pub const MAX_VALUE_SIZE: u32 = 1 << 20;

/// Default `--connections`: client handles (each with one HTTP/2 connection per node) shared
/// by the clients. Measured on the 2-core reference machine, 64 clients writing: 1, 4 and 8
/// handles do the same within noise (about 150-165 µs of CPU per request, nodes and bench
/// together), one handle per client costs about 25 % more CPU per request and 20 % less
/// throughput (a connection task per client on every side); at 256 clients 1 and 4 also do
/// the same. 4 rather than 1 so that a few hundred clients do not depend on one HTTP/2
/// connection accepting that many concurrent streams (hyper's own default cap is 200; tonic
/// lifts it, other servers may not), and so the leader's two worker threads can each drive
/// some of the connections.
pub const DEFAULT_CONNECTIONS: u32 = 4;

/// Worker threads of the load generator's runtime. The machine it is tuned for has 2 cores,
/// shared with the 3 nodes; measured there (64 clients writing), 1 and 2 threads give the same
/// throughput within noise, with the bench using about 0.25 cores. 2 lets it follow the load
/// on a bigger machine or with more clients, without taking more than its share of this one.
pub const LOAD_THREADS: u16 = 2;

/// Most `--threads`: more threads than that only add switching on any machine this runs on.
pub const MAX_THREADS: u16 = 64;

/// How often the progress bar is redrawn: smooth enough to watch, rare enough to cost nothing.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Load a RiteRaft cluster running the `kv` store and report throughput and latency.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients, each in a closed loop: one request in flight at a time.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=MAX_CLIENTS as i64)
    )]
    pub clients: u32,

    /// Bytes in each written value.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=MAX_VALUE_SIZE as i64)
    )]
    pub value_size: u32,

    /// Seconds of measured load (fractions allowed), after the warmup.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub duration: Duration,

    /// Seconds of load before measuring starts (fractions allowed, 0 for none): connections
    /// are opened and the nodes' caches filled during it.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_warmup)]
    pub warmup: Duration,

    /// Percentage of requests that are reads (`get KEY`); the rest are writes (`put KEY VALUE`).
    /// 0: writes only; 100: reads only. With reads, every key is written once before the run
    /// so that reads find their key.
    #[arg(
        long,
        value_name = "PCT",
        default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=100)
    )]
    pub reads: u8,

    /// Reads answer from the contacted node's state (no leader check), spread over all nodes;
    /// without it reads are linearizable (raft ReadIndex) and go to the leader.
    #[arg(long)]
    pub stale: bool,

    /// Number of distinct keys (`k0` ...), chosen uniformly at random.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub keys: u64,

    /// Client handles shared round-robin by the clients, each with its own connection to every
    /// node (at most one per client).
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..=MAX_CLIENTS as i64)
    )]
    pub connections: u32,

    /// Send each request as a unary gRPC call of its own instead of on each connection's
    /// pipelined stream (`Client.Pipeline`, the default): for comparing the two.
    #[arg(long)]
    pub unary: bool,

    /// Worker threads of the load generator's own runtime.
    #[arg(
        long,
        value_name = "N",
        default_value_t = LOAD_THREADS,
        value_parser = clap::value_parser!(u16).range(1..=MAX_THREADS as i64)
    )]
    pub threads: u16,

    /// Local cluster only: the store plugin the nodes run (default: the kv plugin,
    /// target/wasm32-wasip2/release/kv.wasm of the workspace).
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,

    /// Local cluster only: the riteraft-host binary (default: the one next to this riteraft).
    #[arg(long, value_name = "PATH")]
    pub host: Option<PathBuf>,

    /// Local cluster only: run the kv store compiled into the nodes (riteraft-host
    /// --builtin-kv) instead of the wasm plugin.
    #[arg(long, conflicts_with = "compare")]
    pub native: bool,

    /// Local clusters only: run the load on a cluster running the store compiled into the
    /// host, then on a fresh one running the wasm plugin, for `--rounds` rounds, and print the
    /// median of the rounds' throughput ratios wasm / native.
    #[arg(long)]
    pub compare: bool,

    /// Local clusters only: also run the load on a cluster of this riteraft-host binary (B),
    /// alternating with the default one or `--host`'s (A) for `--rounds` rounds, each on a
    /// fresh cluster, and print the medians and the ratios B / A.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["compare", "deploy"])]
    pub against: Option<PathBuf>,

    /// With `--against` or `--compare`: rounds of A then B.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..=alternating::MAX_ROUNDS as i64)
    )]
    pub rounds: u32,

    /// Local clusters only: one more flag for every node, e.g. `--node-arg=--read-lease` or
    /// `--node-arg=--snapshot-entries=100000` (repeat for several).
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub node_arg: Vec<String>,

    /// Local clusters only: make a test CA and certificates in the cluster's directory and run
    /// the nodes and the bench's clients with mutual TLS, as the README sets a cluster up.
    #[arg(long)]
    pub tls: bool,

    /// Deploy this module (a store plugin that reads the running store's snapshots, e.g. the
    /// kv store in another language) when the measured window starts, and report how long it
    /// took, whether it cost an election, and the latencies the clients saw meanwhile.
    #[arg(long, value_name = "MODULE")]
    pub deploy: Option<PathBuf>,

    /// Local cluster only: where to put its temporary data dirs (default: the system's
    /// temporary directory, or the current one if that is in memory). Must be on disk:
    /// fsync is part of what is measured.
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
}

/// Which cluster to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The cluster at these addresses, as it runs.
    Cluster(Vec<String>),
    /// A local 3-node cluster the bench starts and stops.
    Local,
}

/// Whether the user chose the cluster (`--cluster` on the command line, or `RITERAFT_CLUSTER`)
/// rather than leaving the default `127.0.0.1:7001`: `riteraft bench` starts a cluster of its
/// own only in the latter case. `command` and `args` are the CLI's, parsed again for the
/// source of the value (the parsed `Cli` only has the value).
pub fn cluster_was_given(
    command: clap::Command,
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> bool {
    let Ok(matches) = command.try_get_matches_from(args) else {
        // Unreachable: the same arguments were parsed already.
        return false;
    };
    let given = |matches: &clap::ArgMatches| {
        matches!(
            matches.value_source("cluster"),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    given(&matches)
        || matches
            .subcommand()
            .is_some_and(|(_, sub_matches)| given(sub_matches))
}

/// Runs the bench described by `args` against `target`, each call bounded by `timeout`.
pub async fn run(
    args: BenchArgs,
    target: Target,
    timeout: Duration,
) -> anyhow::Result<BenchOutcome> {
    let threads = usize::from(args.threads);
    let plan = Plan::new(args, target, timeout)?;
    // A thread of its own, with a multi-threaded runtime; also the thread that spawns the local
    // nodes, which on Linux die when it ends (it lives until the nodes are stopped).
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("riteraft-bench".into())
        .spawn(move || {
            let outcome = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .context("cannot start the load generator's runtime")
                .and_then(|runtime| {
                    runtime.block_on(async {
                        tokio::select! {
                            outcome = plan.execute() => outcome,
                            _ = tokio::signal::ctrl_c() => {
                                Err(anyhow::anyhow!("interrupted; every node the bench started was stopped"))
                            }
                        }
                    })
                });
            let _ = sender.send(outcome);
        })
        .context("cannot start the load generator's thread")?;
    receiver
        .await
        .context("the load generator's thread crashed")?
}

/// A validated bench: what to run, where.
#[derive(Debug)]
struct Plan {
    config: Config,
    target: Target,
    timeout: Duration,
    /// For local clusters: the binary, plugin and data root (`native` is set per run).
    local: Option<LocalOptions>,
    compare: bool,
    native: bool,
    /// `--against`'s binary, and the rounds to alternate.
    against: Option<PathBuf>,
    rounds: u32,
    /// `--deploy`'s module.
    deploy: Option<DeployModule>,
}

impl Plan {
    fn new(args: BenchArgs, target: Target, timeout: Duration) -> anyhow::Result<Plan> {
        if args.stale && args.reads == 0 {
            bail!("--stale is about reads, and --reads is 0 (writes only); add e.g. --reads 100");
        }
        let local = match &target {
            Target::Cluster(addresses) => {
                let local_only = [
                    ("--plugin", args.plugin.is_some()),
                    ("--host", args.host.is_some()),
                    ("--native", args.native),
                    ("--compare", args.compare),
                    ("--against", args.against.is_some()),
                    ("--data-root", args.data_root.is_some()),
                    ("--node-arg", !args.node_arg.is_empty()),
                    ("--tls", args.tls),
                ];
                if let Some((flag, _)) = local_only.iter().find(|(_, set)| *set) {
                    bail!(
                        "{flag} is for the local cluster the bench starts itself, and a cluster was \
                         given ({}, from --cluster or RITERAFT_CLUSTER); drop one of them",
                        addresses.join(",")
                    );
                }
                None
            }
            Target::Local => Some(LocalOptions {
                host: match args.host.clone() {
                    Some(host) => host,
                    None => default_host()?,
                },
                plugin: match args.plugin.clone() {
                    Some(plugin) => plugin,
                    None => default_plugin()?,
                },
                native: args.native,
                node_args: args.node_arg.clone(),
                tls: args.tls,
                data_root: args
                    .data_root
                    .clone()
                    .unwrap_or_else(local::default_data_root),
            }),
        };
        if let Some(against) = &args.against
            && !against.is_file()
        {
            bail!(
                "--against {}: no such file; give the path of a riteraft-host binary",
                against.display()
            );
        }
        Ok(Plan {
            config: Config {
                clients: args.clients,
                connections: args.connections.min(args.clients),
                threads: args.threads,
                value_size: args.value_size,
                duration: args.duration,
                warmup: args.warmup,
                reads_pct: args.reads,
                stale: args.stale,
                keys: args.keys,
                plugin: local.as_ref().map(|local| local.plugin.clone()),
                node_args: args.node_arg.clone(),
                tls: args.tls,
                deploy: args.deploy.clone(),
                unary: args.unary,
            },
            deploy: args.deploy.as_deref().map(DeployModule::read).transpose()?,
            target,
            timeout,
            local,
            compare: args.compare,
            native: args.native,
            against: args.against.clone(),
            rounds: args.rounds,
        })
    }

    async fn execute(&self) -> anyhow::Result<BenchOutcome> {
        match (&self.target, &self.local) {
            (Target::Cluster(addresses), _) => {
                let setup = Setup::External {
                    addresses: addresses.clone(),
                };
                let run = self.load(setup, addresses, None).await?;
                Ok(BenchOutcome::Single(self.config.clone(), Box::new(run)))
            }
            (Target::Local, Some(options)) if self.against.is_some() => {
                let b_host = self.against.clone().expect("checked above");
                let b_options = LocalOptions {
                    host: b_host.clone(),
                    ..options.clone()
                };
                let a = (options, self.native);
                let rounds = self.alternate(a, (&b_options, self.native)).await?;
                Ok(BenchOutcome::Alternating(
                    self.config.clone(),
                    Box::new(alternating::Alternating {
                        a: options.host.display().to_string(),
                        b: b_host.display().to_string(),
                        compare: false,
                        rounds,
                    }),
                ))
            }
            (Target::Local, Some(options)) if self.compare => {
                // Native as A, so that B / A reads wasm / native.
                let rounds = self.alternate((options, true), (options, false)).await?;
                Ok(BenchOutcome::Alternating(
                    self.config.clone(),
                    Box::new(alternating::Alternating {
                        a: "native: the kv store compiled into the host (--builtin-kv)".into(),
                        b: format!("wasm plugin: {}", options.plugin.display()),
                        compare: true,
                        rounds,
                    }),
                ))
            }
            (Target::Local, Some(options)) => {
                let run = self.load_local(options, self.native, None).await?;
                Ok(BenchOutcome::Single(self.config.clone(), Box::new(run)))
            }
            (Target::Local, None) => unreachable!("a local plan has local options"),
        }
    }

    /// `--rounds` rounds of a run of setup `a` then one of `b`, each on a fresh local cluster.
    async fn alternate(
        &self,
        (a, a_native): (&LocalOptions, bool),
        (b, b_native): (&LocalOptions, bool),
    ) -> anyhow::Result<Vec<(RunReport, RunReport)>> {
        let mut rounds = Vec::new();
        for round in 1..=self.rounds {
            let a = (self.load_local(a, a_native, Some(&format!("round {round}, A")))).await?;
            let b = (self.load_local(b, b_native, Some(&format!("round {round}, B")))).await?;
            rounds.push((a, b));
        }
        Ok(rounds)
    }

    /// Starts a local cluster, loads it, measures its nodes, and stops it.
    async fn load_local(
        &self,
        options: &LocalOptions,
        native: bool,
        label: Option<&str>,
    ) -> anyhow::Result<RunReport> {
        let options = LocalOptions {
            native,
            ..options.clone()
        };
        let spinner = spinner(match label {
            Some(label) => format!("starting a local 3-node cluster ({label})"),
            None => "starting a local 3-node cluster".to_string(),
        });
        let cluster = LocalCluster::start(&options).await;
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
        }
        let mut cluster = cluster?;
        let setup = Setup::Local {
            addresses: cluster.addresses(),
            dir: cluster.dir().to_path_buf(),
            native,
        };
        let run = self.load(setup, &cluster.addresses(), Some(&cluster)).await;
        let mut run = match (run, cluster.casualties()) {
            (Ok(run), _) => run,
            (Err(error), None) => return Err(error),
            (Err(error), Some(casualties)) => {
                return Err(anyhow::anyhow!("{error:#}\n{casualties}"));
            }
        };
        run.label = label.map(str::to_string);
        drop(cluster);
        Ok(run)
    }

    /// Routes, prefills if needed, runs the load and gathers the figures.
    async fn load(
        &self,
        setup: Setup,
        addresses: &[String],
        local: Option<&LocalCluster>,
    ) -> anyhow::Result<RunReport> {
        let config = &self.config;
        let clients = Clients {
            timeout: self.timeout,
            tls: local.and_then(LocalCluster::client_tls),
            pipelined: !config.unary,
        };
        let routing = route(addresses, &clients).await?;
        let workers = workers(config, &routing, &clients)?;
        let mix = Arc::new(Mix {
            reads_pct: config.reads_pct,
            consistency: if config.stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            },
            value_size: config.value_size as usize,
            keys: config.keys,
        });
        let progress: Progress = Arc::new(AtomicU64::new(0));

        let prefill = if config.reads_pct > 0 {
            let bar = prefill_bar(config.keys);
            let ticker = bar.clone().map(|bar| {
                let progress = progress.clone();
                tokio::spawn(async move {
                    loop {
                        bar.set_position(progress.load(Ordering::Relaxed));
                        tokio::time::sleep(PROGRESS_TICK).await;
                    }
                })
            });
            let started = Instant::now();
            let tally = load::prefill(&workers, &mix, progress.clone()).await;
            if let Some(ticker) = ticker {
                ticker.abort();
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            progress.store(0, Ordering::Relaxed);
            Some((started.elapsed(), tally))
        } else {
            None
        };

        let window = Window::starting_now(config.warmup, config.duration);
        let pids: Vec<u32> = local
            .map(|cluster| cluster.nodes.iter().map(|node| node.pid()).collect())
            .unwrap_or_default();
        // When measuring starts: the CPU used so far, and the leader's commit index (with the
        // one at the end, how many log entries the window's writes took: the leader packs
        // writes that arrive together into one).
        let leader_address = routing.leader.as_ref().map(|(_, address)| address.clone());
        let at_start = {
            let pids = pids.clone();
            let (client, address) = (routing.client.clone(), leader_address.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(window.measure_from).await;
                let cpu = (Instant::now(), cpu_sample(&pids));
                (cpu, commit_index(&client, address.as_deref()).await)
            })
        };
        let deploy = match &self.deploy {
            Some(module) => Some(DeployRun::start(
                module.clone(),
                clients.builder(),
                &routing.order,
                routing.term,
                window.measure_from,
            )?),
            None => None,
        };
        let bar = load_bar(window, progress.clone());
        let tally = load::run(workers, mix, window, progress).await;
        let cpu_at_end = (Instant::now(), cpu_sample(&pids));
        let commit_at_end = commit_index(&routing.client, leader_address.as_deref()).await;
        if let Some(bar) = bar {
            bar.abort();
        }
        let deploy = match deploy {
            Some(run) => Some(run.finish().await),
            None => None,
        };
        let (cpu_at_start, commit_at_start) = at_start.await.context("the CPU sampler failed")?;
        let log_entries = match (commit_at_start, commit_at_end) {
            (Some(start), Some(end)) => end.checked_sub(start),
            _ => None,
        };
        if tally.ops == 0 {
            // Figures of nothing would only mislead (and a smoke run must fail here).
            bail!(
                "no request was answered during the measured {:.1} s: {} errors{}",
                config.duration.as_secs_f64(),
                tally.errors,
                match tally.error_samples.first() {
                    Some(sample) => format!(", e.g. {sample}"),
                    None => String::new(),
                }
            );
        }

        let cpu_window = cpu_at_end.0.saturating_duration_since(cpu_at_start.0);
        let cpu_used = |index: usize| -> Option<Duration> {
            Some(
                cpu_at_end
                    .1
                    .get(index)?
                    .as_ref()?
                    .saturating_sub(*cpu_at_start.1.get(index)?.as_ref()?),
            )
        };
        let mut nodes = Vec::new();
        let mut term_after = None;
        if let Some(cluster) = local {
            for (index, node) in cluster.nodes.iter().enumerate() {
                let role = match routing.client.status_of(&node.address).await {
                    Ok(status) => {
                        term_after = term_after.max(Some(status.term));
                        status.role
                    }
                    Err(_) => "unknown (no answer)".into(),
                };
                let memory = local::resident_kib(node.pid());
                nodes.push(NodeFigures {
                    id: node.id,
                    address: node.address.clone(),
                    pid: node.pid(),
                    role,
                    rss_kib: memory.map(|(rss, _)| rss),
                    rss_peak_kib: memory.map(|(_, peak)| peak),
                    cpu: cpu_used(index + 1),
                });
            }
        }
        if local.is_none() {
            term_after = routing.client.status().await.ok().map(|status| status.term);
        }
        Ok(RunReport {
            label: None,
            terms: (routing.term, term_after),
            setup,
            leader: routing.leader.clone(),
            plugin_sha256: routing.plugin_sha256.clone(),
            measured: config.duration,
            tally,
            prefill,
            nodes,
            bench_cpu: cpu_used(0),
            cpu_window,
            deploy,
            log_entries,
        })
    }
}

/// The commit index of the node at `address` (the leader), if it answers.
async fn commit_index(client: &Client, address: Option<&str>) -> Option<u64> {
    let status = client.status_of(address?).await.ok()?;
    Some(status.commit_index)
}

/// Where requests go: the addresses with the leader first, when it is known.
struct Routing {
    /// The addresses, the leader's first.
    order: Vec<String>,
    /// The leader's raft id and the address the bench reaches it at.
    leader: Option<(u64, String)>,
    plugin_sha256: String,
    /// The highest term any node knew when the load started.
    term: u64,
    /// A client for `Status` calls.
    client: Client,
}

/// Asks each address for its view of the cluster, and puts the leader's address first. The
/// leader is matched by raft id among the given addresses (the addresses in `members` are the
/// ones the nodes gave each other, which need not be reachable from here); if it is not among
/// them, its member address is tried.
/// How the bench's clients are made: their timeout, and TLS for a local cluster running it.
struct Clients {
    timeout: Duration,
    tls: Option<Arc<ClientTls>>,
    /// Requests on each connection's pipelined stream (else unary calls; `--unary`).
    pipelined: bool,
}

impl Clients {
    fn connect(&self, addresses: &[String]) -> Result<Client, riteraft_client::ClientError> {
        self.builder().connect(addresses)
    }

    fn builder(&self) -> riteraft_client::ClientBuilder {
        let builder = Client::builder()
            .timeout(self.timeout)
            .pipelined(self.pipelined);
        match &self.tls {
            Some(tls) => builder.tls(tls.clone()),
            None => builder,
        }
    }
}

async fn route(addresses: &[String], clients: &Clients) -> anyhow::Result<Routing> {
    let client = clients.connect(addresses)?;
    let mut statuses: Vec<(String, NodeStatus)> = Vec::new();
    let mut last_error = None;
    for address in addresses {
        match client.status_of(address).await {
            Ok(status) => statuses.push((address.clone(), status)),
            Err(error) => last_error = Some(error),
        }
    }
    let Some((_, first)) = statuses.first() else {
        let error = last_error.map(|e| e.to_string()).unwrap_or_default();
        bail!(
            "no node of the cluster answers ({}): {error}",
            addresses.join(", ")
        );
    };
    let plugin_sha256 = first.plugin_sha256.clone();
    let term = (statuses.iter().map(|(_, status)| status.term).max()).unwrap_or(0);
    let leader_id = statuses.iter().find_map(|(_, status)| status.leader_id);
    let mut leader = leader_id.and_then(|id| {
        statuses
            .iter()
            .find(|(_, status)| status.id == id)
            .map(|(address, _)| (id, address.clone()))
    });
    if let (None, Some(id)) = (&leader, leader_id) {
        let member = statuses
            .iter()
            .flat_map(|(_, status)| &status.members)
            .find(|member| member.id == id);
        if let Some(member) = member
            && let Ok(status) = client.status_of(&member.address).await
            && status.id == id
        {
            leader = Some((id, member.address.clone()));
        }
    }
    let mut order: Vec<String> = addresses.to_vec();
    if let Some((_, address)) = &leader {
        order.retain(|known| known != address);
        order.insert(0, address.clone());
    }
    Ok(Routing {
        order,
        leader,
        plugin_sha256,
        term,
        client,
    })
}

/// One [`Worker`] per client, over `config.connections` client handles. A handle's writer
/// starts at the leader; with stale reads, each handle's reader starts at another node.
fn workers(config: &Config, routing: &Routing, clients: &Clients) -> anyhow::Result<Vec<Worker>> {
    let handles = (0..config.connections as usize)
        .map(|index| {
            let writer = clients.connect(&routing.order)?;
            let reader = if config.stale {
                let mut order = routing.order.clone();
                let len = order.len();
                order.rotate_left(index % len);
                clients.connect(&order)?
            } else {
                writer.clone()
            };
            Ok(Worker { writer, reader })
        })
        .collect::<anyhow::Result<Vec<Worker>>>()?;
    Ok((0..config.clients as usize)
        .map(|index| handles[index % handles.len()].clone())
        .collect())
}

/// CPU time used so far: this process first, then each of `pids`.
fn cpu_sample(pids: &[u32]) -> Vec<Option<Duration>> {
    std::iter::once(local::cpu_time(None))
        .chain(pids.iter().map(|&pid| local::cpu_time(Some(pid))))
        .collect()
}

/// Progress is drawn on stderr, and only when it is a terminal (never into a log or a pipe).
fn show_progress() -> bool {
    std::io::stderr().is_terminal()
}

fn spinner(message: String) -> Option<ProgressBar> {
    if !show_progress() {
        return None;
    }
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").ok()?);
    spinner.set_message(message);
    spinner.enable_steady_tick(PROGRESS_TICK);
    Some(spinner)
}

fn prefill_bar(keys: u64) -> Option<ProgressBar> {
    if !show_progress() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(keys), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("writing every key once  [{bar:30}] {pos}/{len} {elapsed}")
            .ok()?
            .progress_chars("=> "),
    );
    Some(bar)
}

/// A task drawing the bar of the load phase: seconds elapsed, and the current rate.
fn load_bar(window: Window, progress: Progress) -> Option<tokio::task::JoinHandle<()>> {
    if !show_progress() {
        return None;
    }
    let start = Instant::now();
    let total = window.end.saturating_duration_since(start);
    let bar =
        ProgressBar::with_draw_target(Some(total.as_millis() as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg:>26} [{bar:30}] {elapsed}/{duration}")
        .ok()?
        .progress_chars("=> ");
    bar.set_style(style);
    Some(tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64);
        while Instant::now() < window.end {
            tokio::time::sleep(PROGRESS_TICK).await;
            let now = Instant::now();
            let count = progress.load(Ordering::Relaxed);
            let rate = (count - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, count);
            let phase = if now < window.measure_from {
                "warmup"
            } else {
                "measuring"
            };
            bar.set_message(format!("{phase} {rate:>7.0} ops/s"));
            bar.set_position(now.duration_since(start).as_millis() as u64);
        }
        bar.finish_and_clear();
    }))
}

/// Parses `--duration`: positive seconds, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let duration = parse_warmup(text)?;
    if duration.is_zero() {
        return Err("must be more than 0 seconds".into());
    }
    Ok(duration)
}

/// Parses `--warmup`: seconds, fractions allowed, 0 allowed.
fn parse_warmup(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds.is_nan() || seconds < 0.0 {
        return Err("seconds cannot be negative".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} seconds is too long"))
}

/// The `riteraft-host` next to the running `riteraft` (cargo builds both into one directory).
fn default_host() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the riteraft executable's path")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let host = dir.join(format!("riteraft-host{}", std::env::consts::EXE_SUFFIX));
    if !host.is_file() {
        bail!(
            "no riteraft-host next to this riteraft (looked for {}); build it with \
             `cargo build --release -p riteraft-host` (the same profile as riteraft), or pass \
             --host PATH",
            host.display()
        );
    }
    Ok(host)
}

/// Where the `kv` plugin is looked for, relative to a workspace (or a target dir).
const KV_PLUGIN: &str = "wasm32-wasip2/release/kv.wasm";

/// The `kv` plugin: `target/wasm32-wasip2/release/kv.wasm` under the current directory, or in
/// the target dir the running `riteraft` was built into.
fn default_plugin() -> anyhow::Result<PathBuf> {
    let mut candidates = vec![Path::new("target").join(KV_PLUGIN)];
    if let Ok(exe) = std::env::current_exe()
        && let Some(target_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(target_dir.join(KV_PLUGIN));
    }
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "no kv plugin found (looked for {}); build it with `cargo build --release --target \
         wasm32-wasip2 -p kv` in the workspace (after `rustup target add wasm32-wasip2`), or pass \
         --plugin PATH",
        candidates
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, String> {
        Wrapper::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map(|wrapper| wrapper.args)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.clients, 64);
        assert_eq!(args.value_size, 256);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.warmup, Duration::from_secs(1));
        assert_eq!(args.reads, 0);
        assert!(!args.stale);
        assert_eq!(args.keys, 10_000);
        assert_eq!(args.connections, DEFAULT_CONNECTIONS);
        assert_eq!(args.threads, LOAD_THREADS);
        assert_eq!((args.plugin, args.host, args.data_root), (None, None, None));
        assert!(!args.native && !args.compare);
    }

    #[test]
    fn every_flag_parses() {
        let args = parse(&[
            "--clients",
            "8",
            "--value-size",
            "1024",
            "--duration",
            "2.5",
            "--warmup",
            "0",
            "--reads",
            "90",
            "--stale",
            "--keys",
            "5",
            "--connections",
            "2",
            "--threads",
            "1",
            "--plugin",
            "p.wasm",
            "--host",
            "h",
            "--native",
            "--data-root",
            "/d",
            "--node-arg=--read-lease",
            "--node-arg",
            "--snapshot-entries=5",
        ])
        .unwrap();
        assert_eq!(args.clients, 8);
        assert_eq!(args.value_size, 1024);
        assert_eq!(args.duration, Duration::from_millis(2500));
        assert_eq!(args.warmup, Duration::ZERO);
        assert_eq!(args.reads, 90);
        assert!(args.stale && args.native);
        assert_eq!(args.keys, 5);
        assert_eq!(args.connections, 2);
        assert_eq!(args.threads, 1);
        assert_eq!(args.plugin, Some(PathBuf::from("p.wasm")));
        assert_eq!(args.host, Some(PathBuf::from("h")));
        assert_eq!(args.data_root, Some(PathBuf::from("/d")));
        assert_eq!(args.node_arg, ["--read-lease", "--snapshot-entries=5"]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["--clients", "0"][..],
            &["--clients", "5000"],
            &["--value-size", "0"],
            &["--value-size", "2000000"],
            &["--duration", "0"],
            &["--duration", "-1"],
            &["--duration", "soon"],
            &["--warmup", "-0.5"],
            &["--reads", "101"],
            &["--keys", "0"],
            &["--connections", "0"],
            &["--threads", "0"],
            &["--native", "--compare"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn plans_refuse_contradictions() {
        let cluster = Target::Cluster(vec!["127.0.0.1:7001".into()]);
        let timeout = Duration::from_secs(1);
        let error = Plan::new(parse(&["--stale"]).unwrap(), cluster.clone(), timeout)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--reads"), "{error}");
        for flag in [
            &["--native"][..],
            &["--compare"],
            &["--plugin", "x"],
            &["--host", "y"],
            &["--node-arg", "--read-lease"],
        ] {
            let error = Plan::new(parse(flag).unwrap(), cluster.clone(), timeout)
                .unwrap_err()
                .to_string();
            assert!(error.contains(flag[0]), "{error}");
            assert!(error.contains("127.0.0.1:7001"), "{error}");
        }
        let plan = Plan::new(parse(&["--clients", "4"]).unwrap(), cluster, timeout).unwrap();
        assert_eq!(
            plan.config.connections, 4,
            "never more connections than clients"
        );
        assert_eq!(plan.config.plugin, None);

        let local = Plan::new(
            parse(&[
                "--host",
                "/bin/h",
                "--plugin",
                "/p.wasm",
                "--native",
                "--node-arg=--read-lease",
            ])
            .unwrap(),
            Target::Local,
            timeout,
        )
        .unwrap();
        let options = local.local.unwrap();
        assert_eq!(options.host, PathBuf::from("/bin/h"));
        assert_eq!(options.plugin, PathBuf::from("/p.wasm"));
        assert!(local.native);
        assert_eq!(options.node_args, ["--read-lease"]);
    }

    #[test]
    fn the_cluster_counts_as_given_only_when_named() {
        use clap::CommandFactory as _;
        let given = |args: &[&str]| {
            cluster_was_given(
                crate::commands::Cli::command(),
                std::iter::once("riteraft").chain(args.iter().copied()),
            )
        };
        assert!(given(&["--cluster", "a:1", "bench"]));
        assert!(given(&["bench", "--cluster", "a:1,b:2", "--clients", "2"]));
        assert!(
            given(&["--cluster=127.0.0.1:7001", "bench"]),
            "even when it is the default"
        );
        if std::env::var_os("RITERAFT_CLUSTER").is_none() {
            assert!(!given(&["bench"]));
            assert!(!given(&["--json", "bench", "--duration", "1"]));
        }
    }
}
