//! The fault suite: real `riteraft-host` processes, each in a network namespace of its own
//! (riteraft-test-support's `netns`), clients writing unique values and reading linearizably
//! through `riteraft-client` (`workload.rs`), while a nemesis kills, pauses, partitions, cuts
//! links one way, changes the membership or deploys new store code (`nemesis.rs`). Then the
//! history of every key is checked for linearizability (the WGL checker the simulator uses),
//! a final read of every key joins the history so that a lost acknowledged write shows as a
//! violation, the replicas must hold the same values, and the time from each heal to the first
//! successful write is measured.
//!
//! Each test prints one line: runs, faults, operations, violations, unknown outcomes, and the
//! recovery times. `FAULT_SECONDS=N` makes each test inject faults for N seconds instead of
//! the CI's short slice (a soak); `FAULT_SEED=S` replays a run. Without root, `ip` or
//! `iptables`, the tests print why and pass without running.

mod nemesis;
mod regressions;
mod workload;

use std::collections::BTreeMap;
use std::time::Duration;

use nemesis::Nemesis;
use riteraft_client::Client;
use riteraft_client::tls::ClientTls;
use riteraft_proto::certs::client_files;
use riteraft_test_support::linearizability::{Call, Op, Outcome, linearizable};
use riteraft_test_support::netns::Lab;
use riteraft_test_support::tmpfs::Tmpfs;
use riteraft_test_support::{Cluster, ClusterOptions, within};
use workload::{KEYS, Workload, key, tally};

/// Seconds of faults per test in CI.
const DEFAULT_SECONDS: u64 = 12;
/// Concurrent clients.
const CLIENTS: usize = 6;
/// Limit for one test, faults, healing and checking included.
const TEST_LIMIT: Duration = Duration::from_secs(240);
/// How long a healed cluster may take to serve a write and to bring every node up to date.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

fn seconds() -> u64 {
    std::env::var("FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS)
}

fn seed(test: &str) -> u64 {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: FAULT_SEED={seed}");
    seed
}

fn options() -> ClusterOptions {
    ClusterOptions::new(env!("CARGO_BIN_EXE_riteraft-host")).proposal_timeout_ms(3000)
}

/// The harness's admin certificate, for clients of `cluster`.
fn client_tls(cluster: &Cluster) -> std::sync::Arc<ClientTls> {
    ClientTls::load(client_files(&cluster.certs_dir(), "admin"))
        .expect("the harness's admin certificate loads")
}

/// A client of every node of `cluster` with the harness's admin certificate.
fn client(cluster: &Cluster) -> Client {
    Client::builder()
        .tls(client_tls(cluster))
        .connect(cluster.addrs().iter().map(ToString::to_string))
        .expect("the nodes' addresses are valid")
}

/// What one fault run measured.
struct Report {
    faults: u32,
    /// From each repair to the first successful write.
    recoveries: Vec<Duration>,
    /// From each heal to the cut-off node knowing a leader and having applied what was
    /// committed at the heal.
    catch_ups: Vec<Duration>,
    /// Time spent in faults (from the start of each to its repair), and the writes
    /// acknowledged meanwhile: how available the cluster stays while it is hurt.
    fault_time: Duration,
    fault_writes: u64,
}

/// Runs `nemesis` against a 3-node cluster (with `spare` more hosts for nodes it adds, and
/// `flags` for every node) for [`seconds`], then checks everything; prints the report line.
async fn run(test: &str, nemesis: Nemesis, spare: usize, flags: &[&str]) {
    let lab = match Lab::new(3 + spare) {
        Ok(lab) => lab,
        Err(why) => {
            eprintln!("{test}: skipped, no network namespaces here: {why}");
            return;
        }
    };
    let seed = seed(test);
    let mut options = options().on_hosts(lab.hosts());
    // Declared before the cluster, so the nodes stop before their disks go.
    let disks = match nemesis {
        Nemesis::FullDisk => match small_disks(3 + spare) {
            Ok(disks) => Some(disks),
            Err(why) => {
                eprintln!("{test}: skipped, cannot mount a tmpfs: {why}");
                return;
            }
        },
        _ => None,
    };
    if let Some((root, _)) = &disks {
        // Nodes refuse writes below 4 MiB free; the nemesis leaves 1 MiB.
        options = options
            .data_root(root.path())
            .arg("--min-free-disk-mib")
            .arg("4");
    }
    for flag in flags {
        options = options.arg(flag);
    }
    let mut cluster = Cluster::start(3, options).await;
    let client = client(&cluster);
    let workload = Workload::start(&client, CLIENTS, seed);
    let started = std::time::Instant::now();
    let report = nemesis::inject(nemesis, &lab, &mut cluster, &client, &workload, seed).await;
    let history_end = workload.now();
    let elapsed = started.elapsed();
    let all_writes = workload
        .acknowledged
        .load(std::sync::atomic::Ordering::Relaxed);
    let (mut history, read_at) = workload.stop().await;

    // Healed and quiet: every node catches up and holds the same values.
    cluster.wait_caught_up(RECOVERY_LIMIT).await;
    let mut values: BTreeMap<u64, Vec<Option<String>>> = BTreeMap::new();
    for id in cluster.live_ids() {
        let mut row = Vec::new();
        for k in 0..KEYS {
            let answer = cluster.query(id, &format!("get {}", key(k)), true).await;
            row.push(answer.expect("a stale read of a caught-up node").ok());
        }
        values.insert(id, row);
    }
    let first = values.values().next().unwrap().clone();
    for (id, row) in &values {
        assert_eq!(row, &first, "node {id} holds other values: {values:?}");
    }
    // The final values join the history, as reads after everything else: an acknowledged write
    // that was lost makes the history fail.
    for (k, value) in first.into_iter().enumerate() {
        history.record(
            &key(k),
            Op {
                call: Call::Get,
                invoked: history_end + 1,
                completed: history_end + 2,
                outcome: Outcome::Ok(value),
            },
        );
    }
    let counts = tally(&history);
    let violation = history
        .violation()
        .map(|(key, ops)| (key.clone(), ops.len()));
    eprintln!(
        "{test}: 1 run, {} faults, {} operations ({} acknowledged writes, {} unknown, {} failed), \
         {} violations; writes/s: {:.0} overall, {:.0} during faults; first write after repair: \
         {}; cut-off node back in step: {}",
        report.faults,
        counts.ops,
        counts.acknowledged_writes,
        counts.unknown,
        counts.failed,
        u32::from(violation.is_some()),
        all_writes as f64 / elapsed.as_secs_f64(),
        report.fault_writes as f64 / report.fault_time.as_secs_f64().max(1e-3),
        spread(&report.recoveries),
        spread(&report.catch_ups),
    );
    if let Some((key, ops)) = violation {
        let window = failing_window(&history.by_key[&key], 30);
        let shown: Vec<String> = window
            .iter()
            .map(|op| {
                let at = read_at.get(&(key.clone(), op.invoked));
                let at = at
                    .map(|i| format!(" answered at applied index {i}"))
                    .unwrap_or_default();
                format!(
                    "  {:?} {}..{} us -> {:?}{at}",
                    op.call, op.invoked, op.completed, op.outcome
                )
            })
            .collect();
        panic!(
            "{test}: the history of key {key} ({ops} operations) is not linearizable; replay with \
             FAULT_SEED={seed}. The last operations of its shortest failing prefix (by invocation):\n{}",
            shown.join("\n")
        );
    }
    assert!(counts.acknowledged_writes > 0, "{test}: no write succeeded");
    drop(cluster);
    drop(disks);
    drop(lab);
}

/// A disk of its own for each of `n` nodes: a 64 MiB tmpfs each, reached as `ROOT/nodeK` (a
/// link to a directory on it, so that the nemesis's filler file sits beside the data dir).
fn small_disks(n: usize) -> Result<(tempfile::TempDir, Vec<Tmpfs>), String> {
    let root = tempfile::Builder::new()
        .prefix("riteraft-disks-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut disks = Vec::new();
    for k in 1..=n {
        let disk = Tmpfs::mount(64)?;
        let data = disk.path().join("data");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&data, root.path().join(format!("node{k}")))
            .map_err(|e| e.to_string())?;
        disks.push(disk);
    }
    Ok((root, disks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_restarts() {
    within(TEST_LIMIT, run("kills", Nemesis::Kill, 0, &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses() {
    within(TEST_LIMIT, run("pauses", Nemesis::Pause, 0, &[])).await;
}

/// With leases, a leader answers reads without asking a quorum: a paused leader that wakes up
/// after losing its lease must not answer from its old state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_with_read_leases() {
    let test = run("pauses-leases", Nemesis::Pause, 0, &["--read-lease"]);
    within(TEST_LIMIT, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions() {
    within(TEST_LIMIT, run("partitions", Nemesis::Partition, 0, &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_churn() {
    within(TEST_LIMIT, run("churn", Nemesis::Churn, 8, &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disks() {
    within(TEST_LIMIT, run("disks", Nemesis::FullDisk, 0, &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_mixed() {
    within(TEST_LIMIT, run("mixed", Nemesis::Mixed, 8, &[])).await;
}

impl Report {
    fn new() -> Report {
        Report {
            faults: 0,
            recoveries: Vec::new(),
            catch_ups: Vec::new(),
            fault_time: Duration::ZERO,
            fault_writes: 0,
        }
    }
}

/// The last `n` operations of the shortest prefix of `ops` (ordered by invocation) that is not
/// linearizable: where to look first.
fn failing_window(ops: &[Op], n: usize) -> Vec<Op> {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|op| op.invoked);
    let (mut lo, mut hi) = (1, ops.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if linearizable(&ops[..mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    ops[lo.saturating_sub(n)..lo].to_vec()
}

/// "median M, max X" of `times` ("none" if empty).
fn spread(times: &[Duration]) -> String {
    let mut times = times.to_vec();
    times.sort();
    match (times.get(times.len() / 2), times.last()) {
        (Some(median), Some(max)) => format!("median {median:.2?}, max {max:.2?}"),
        _ => "none".into(),
    }
}
