//! What `riteraft bench` prints: the configuration and the figures of each run, as text for
//! people or as one JSON object (`--json`). Pure formatting, unit tested.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::alternating::Alternating;
use super::deploy_during::DeployFigures;
use super::load::Tally;

/// The load, as asked for (the same for every run of a `--compare`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub clients: u32,
    /// Client handles the clients share (never more than `clients`).
    pub connections: u32,
    /// Worker threads of the load generator.
    pub threads: u16,
    pub value_size: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub reads_pct: u8,
    pub stale: bool,
    pub keys: u64,
    /// The plugin the local nodes run; `None` for a given cluster.
    pub plugin: Option<PathBuf>,
    /// More flags the local nodes were started with (`--node-arg`).
    pub node_args: Vec<String>,
    /// Whether the local cluster and the clients ran mutual TLS (`--tls`).
    pub tls: bool,
    /// The module deployed when the measured window started (`--deploy`).
    pub deploy: Option<PathBuf>,
    /// Each request a unary call of its own, not on a pipelined stream (`--unary`).
    pub unary: bool,
}

/// Which cluster a run loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum Setup {
    /// A cluster given with `--cluster`.
    External { addresses: Vec<String> },
    /// A local cluster the bench started; its directory is removed after the run.
    Local {
        addresses: Vec<String>,
        dir: PathBuf,
        /// Whether the nodes ran the store compiled in (`--builtin-kv`).
        native: bool,
    },
}

/// One node of a local cluster, measured at the end of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFigures {
    pub id: u64,
    pub address: String,
    pub pid: u32,
    pub role: String,
    /// Resident memory (VmRSS) in KiB, where the system tells.
    pub rss_kib: Option<u64>,
    /// Peak resident memory (VmHWM) in KiB.
    pub rss_peak_kib: Option<u64>,
    /// CPU time used during the measured window.
    pub cpu: Option<Duration>,
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// `wasm` or `native` in a `--compare`.
    pub label: Option<String>,
    pub setup: Setup,
    /// The leader's raft id and address, if known when the load started.
    pub leader: Option<(u64, String)>,
    /// The highest raft term known when the load started and after it ended (`None`: no node
    /// answered): a difference is a change of leader during the run.
    pub terms: (u64, Option<u64>),
    pub plugin_sha256: String,
    /// The measured window's length: throughput is `tally.ops / measured`.
    pub measured: Duration,
    pub tally: Tally,
    /// Writing every key once before a run with reads: how long it took, and its tally.
    pub prefill: Option<(Duration, Tally)>,
    /// Local clusters only.
    pub nodes: Vec<NodeFigures>,
    /// CPU time the bench process used during the measured window.
    pub bench_cpu: Option<Duration>,
    /// The wall-clock time the CPU figures cover (about `measured`).
    pub cpu_window: Duration,
    /// What `--deploy` did.
    pub deploy: Option<DeployFigures>,
    /// Log entries the leader committed during the measured window (`None`: it did not say,
    /// or leadership moved).
    pub log_entries: Option<u64>,
}

/// What a bench produced.
#[derive(Debug, Clone)]
pub enum BenchOutcome {
    Single(Config, Box<RunReport>),
    /// `--against` (runs of two host binaries) or `--compare` (native, then the wasm plugin),
    /// alternating.
    Alternating(Config, Box<Alternating>),
}

impl RunReport {
    /// Answered requests per second of the measured window.
    pub fn ops_per_sec(&self) -> f64 {
        let seconds = self.measured.as_secs_f64();
        if seconds > 0.0 {
            self.tally.ops as f64 / seconds
        } else {
            0.0
        }
    }

    /// CPU used by the nodes and the bench together during the window, per answered request,
    /// in microseconds; `None` if any of it is unknown or nothing was answered.
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        let mut total = self.bench_cpu?;
        for node in &self.nodes {
            total += node.cpu?;
        }
        (self.tally.ops > 0).then(|| total.as_secs_f64() * 1e6 / self.tally.ops as f64)
    }

    /// `cpu` per answered request, as the text shows it (empty if nothing was answered).
    fn per_request(&self, cpu: Duration) -> String {
        if self.tally.ops == 0 {
            return String::new();
        }
        let us = cpu.as_secs_f64() * 1e6 / self.tally.ops as f64;
        format!(" ({us:.1} µs per request)")
    }

    /// Share of a core used over the window.
    fn cores(&self, cpu: Duration) -> f64 {
        let window = self.cpu_window.as_secs_f64();
        if window > 0.0 {
            cpu.as_secs_f64() / window
        } else {
            0.0
        }
    }

    pub(super) fn json(&self) -> Value {
        let tally = &self.tally;
        let mut object = Map::new();
        let (kind, addresses, data_dir, state_machine) = match &self.setup {
            Setup::External { addresses } => ("given", addresses, None, None),
            Setup::Local {
                addresses,
                dir,
                native,
            } => (
                "local",
                addresses,
                Some(dir.display().to_string()),
                Some(if *native { "native" } else { "wasm" }),
            ),
        };
        object.insert("cluster".into(), json!(kind));
        object.insert("addresses".into(), json!(addresses));
        object.insert("data_dir".into(), json!(data_dir));
        object.insert("state_machine".into(), json!(state_machine));
        object.insert(
            "leader".into(),
            match &self.leader {
                Some((id, address)) => json!({ "id": id, "address": address }),
                None => Value::Null,
            },
        );
        object.insert("plugin_sha256".into(), json!(self.plugin_sha256));
        object.insert("ops".into(), json!(tally.ops));
        object.insert("ops_per_sec".into(), json!(round(self.ops_per_sec(), 1)));
        object.insert("p50_ms".into(), json!(round(tally.percentile_ms(0.5), 3)));
        object.insert("p99_ms".into(), json!(round(tally.percentile_ms(0.99), 3)));
        object.insert(
            "p999_ms".into(),
            json!(round(tally.percentile_ms(0.999), 3)),
        );
        object.insert("max_ms".into(), json!(round(tally.max_ms(), 3)));
        object.insert("mean_ms".into(), json!(round(tally.mean_ms(), 3)));
        object.insert("errors".into(), json!(tally.errors));
        object.insert("rejections".into(), json!(tally.rejections));
        object.insert("error_samples".into(), json!(tally.error_samples));
        object.insert(
            "prefill".into(),
            match &self.prefill {
                Some((took, prefill)) => json!({
                    "writes": prefill.ops,
                    "seconds": round(took.as_secs_f64(), 3),
                    "errors": prefill.errors,
                }),
                None => Value::Null,
            },
        );
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|node| {
                json!({
                    "id": node.id,
                    "address": node.address,
                    "pid": node.pid,
                    "role": node.role,
                    "rss_kib": node.rss_kib,
                    "rss_peak_kib": node.rss_peak_kib,
                    "cpu_s": node.cpu.map(|cpu| round(cpu.as_secs_f64(), 3)),
                    "cpu_cores": node.cpu.map(|cpu| round(self.cores(cpu), 3)),
                })
            })
            .collect();
        object.insert("nodes".into(), json!(nodes));
        object.insert(
            "deploy".into(),
            (self.deploy.as_ref()).map_or(Value::Null, DeployFigures::json),
        );
        object.insert("term_before".into(), json!(self.terms.0));
        object.insert("term_after".into(), json!(self.terms.1));
        object.insert("log_entries".into(), json!(self.log_entries));
        object.insert(
            "bench_cpu_s".into(),
            json!(self.bench_cpu.map(|cpu| round(cpu.as_secs_f64(), 3))),
        );
        object.insert(
            "cpu_us_per_op".into(),
            json!(self.cpu_us_per_op().map(|us| round(us, 2))),
        );
        Value::Object(object)
    }

    fn text(&self, out: &mut String) {
        let tally = &self.tally;
        match &self.setup {
            Setup::External { addresses } => {
                let _ = writeln!(out, "cluster:     {} (given)", addresses.join(", "));
            }
            Setup::Local {
                addresses,
                dir,
                native,
            } => {
                let machine = if *native {
                    "the kv store compiled into the nodes (--builtin-kv)"
                } else {
                    "the wasm plugin"
                };
                let _ = writeln!(
                    out,
                    "cluster:     local 3-node cluster running {machine}, data in {} (removed \
                     after the run)",
                    dir.display()
                );
                let _ = writeln!(out, "nodes:       {}", addresses.join(", "));
            }
        }
        let leader = match &self.leader {
            Some((id, address)) => format!("node {id} at {address}; writes go straight to it"),
            None => "not among the addresses: writes go through a follower".into(),
        };
        let _ = writeln!(out, "leader:      {leader}");
        let _ = match self.terms {
            (before, Some(after)) if after == before => {
                writeln!(out, "term:        {before} throughout: no change of leader")
            }
            (before, Some(after)) => writeln!(
                out,
                "term:        {before} at the start, {after} at the end: the leader changed \
                 (by election or transfer) {} time(s) at most",
                after - before
            ),
            (before, None) => writeln!(out, "term:        {before} at the start; unknown after"),
        };
        let _ = writeln!(out, "plugin:      sha256 {}", self.plugin_sha256);
        if let Some((took, prefill)) = &self.prefill {
            let _ = writeln!(
                out,
                "prefill:     {} keys written once in {:.1} s ({} errors)",
                prefill.ops,
                took.as_secs_f64(),
                prefill.errors
            );
        }
        let _ = writeln!(
            out,
            "throughput:  {:.0} ops/s ({} requests in {:.1} s)",
            self.ops_per_sec(),
            tally.ops,
            self.measured.as_secs_f64()
        );
        if let Some(entries) = self.log_entries.filter(|entries| *entries > 0) {
            let _ = writeln!(
                out,
                "log:         {entries} entries committed in the window, {:.1} requests per entry \
                 (reads take none; writes that reach the leader together share one)",
                tally.ops as f64 / entries as f64
            );
        }
        let _ = writeln!(
            out,
            "latency:     p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms (mean {:.3}, max {:.3})",
            tally.percentile_ms(0.5),
            tally.percentile_ms(0.99),
            tally.percentile_ms(0.999),
            tally.mean_ms(),
            tally.max_ms()
        );
        let _ = writeln!(
            out,
            "errors:      {} (and {} rejections by the store)",
            tally.errors, tally.rejections
        );
        for sample in &tally.error_samples {
            let _ = writeln!(out, "  e.g. {sample}");
        }
        if let Some(deploy) = &self.deploy {
            let _ = writeln!(out, "{}", deploy.text());
        }
        for node in &self.nodes {
            let memory = match (node.rss_kib, node.rss_peak_kib) {
                (Some(rss), Some(peak)) => {
                    format!("resident {} (peak {})", mib(rss), mib(peak))
                }
                _ => "resident size unknown".into(),
            };
            let cpu = node
                .cpu
                .map(|cpu| {
                    format!(
                        ", CPU {:.2} cores{}",
                        self.cores(cpu),
                        self.per_request(cpu)
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "node {}:      {} pid {}: {memory}{cpu}",
                node.id, node.role, node.pid
            );
        }
        if let Some(cpu) = self.bench_cpu {
            let _ = write!(
                out,
                "bench:       CPU {:.2} cores{}",
                self.cores(cpu),
                self.per_request(cpu)
            );
            match self.cpu_us_per_op() {
                Some(us) => {
                    let _ = writeln!(out, "; all together {us:.1} µs of CPU per request");
                }
                None => out.push('\n'),
            }
        }
    }
}

impl Config {
    fn json_into(&self, object: &mut Map<String, Value>) {
        object.insert("clients".into(), json!(self.clients));
        object.insert("connections".into(), json!(self.connections));
        object.insert("unary".into(), json!(self.unary));
        object.insert("threads".into(), json!(self.threads));
        object.insert("value_size".into(), json!(self.value_size));
        object.insert(
            "duration_s".into(),
            json!(round(self.duration.as_secs_f64(), 3)),
        );
        object.insert(
            "warmup_s".into(),
            json!(round(self.warmup.as_secs_f64(), 3)),
        );
        object.insert("reads_pct".into(), json!(self.reads_pct));
        object.insert("stale".into(), json!(self.stale));
        object.insert("keys".into(), json!(self.keys));
        object.insert(
            "plugin".into(),
            json!(self.plugin.as_ref().map(|path| path.display().to_string())),
        );
        object.insert("node_args".into(), json!(self.node_args));
        object.insert("tls".into(), json!(self.tls));
        object.insert(
            "deploy".into(),
            json!(self.deploy.as_ref().map(|path| path.display().to_string())),
        );
    }

    /// `writes only`, `reads only (linearizable)`, `90% reads (stale), 10% writes`.
    fn mix(&self) -> String {
        let reads = if self.stale { "stale" } else { "linearizable" };
        match self.reads_pct {
            0 => "writes only".into(),
            100 => format!("reads only ({reads})"),
            pct => format!("{pct}% reads ({reads}), {}% writes", 100 - pct),
        }
    }

    fn text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "load:        {} clients over {} connections ({}), {}, {}-byte values, {} keys",
            self.clients,
            self.connections,
            if self.unary {
                "unary calls"
            } else {
                "pipelined"
            },
            self.mix(),
            self.value_size,
            self.keys
        );
        let _ = writeln!(
            out,
            "time:        {} s warmup, {} s measured; load generator on {} threads",
            self.warmup.as_secs_f64(),
            self.duration.as_secs_f64(),
            self.threads
        );
        if let Some(plugin) = &self.plugin {
            let _ = writeln!(out, "plugin file: {}", plugin.display());
        }
        if self.tls {
            let _ = writeln!(out, "tls:         mutual TLS between nodes and clients");
        }
        if !self.node_args.is_empty() {
            let _ = writeln!(out, "node flags:  {}", self.node_args.join(" "));
        }
    }
}

impl BenchOutcome {
    /// The whole outcome as one JSON object: the configuration, then the figures. Alternating
    /// runs are under `alternating` (for a `--compare` with `ratio`, wasm / native).
    pub fn json(&self) -> Value {
        let mut object = Map::new();
        match self {
            BenchOutcome::Single(config, run) => {
                config.json_into(&mut object);
                if let Value::Object(figures) = run.json() {
                    object.extend(figures);
                }
            }
            BenchOutcome::Alternating(config, runs) => {
                config.json_into(&mut object);
                runs.json_into(&mut object);
            }
        }
        Value::Object(object)
    }

    /// The whole outcome for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        match self {
            BenchOutcome::Single(config, run) => {
                config.text(&mut out);
                run.text(&mut out);
            }
            BenchOutcome::Alternating(config, runs) => {
                config.text(&mut out);
                runs.text(&mut out);
            }
        }
        // The caller adds the final newline.
        out.trim_end().to_string()
    }
}

/// `value` rounded to `digits` decimals, so the JSON does not show float noise.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            clients: 64,
            connections: 8,
            threads: 2,
            value_size: 256,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            reads_pct: 0,
            stale: false,
            keys: 10_000,
            plugin: Some(PathBuf::from("kv.wasm")),
            node_args: vec!["--read-lease".into()],
            tls: false,
            deploy: None,
            unary: false,
        }
    }

    fn run(ops_per_ms: u64, native: bool) -> RunReport {
        let mut tally = Tally::default();
        let mut other = Tally::default();
        for n in 0..ops_per_ms * 10_000 {
            let micros = 500 + n % 1000;
            let target = if n % 2 == 0 { &mut tally } else { &mut other };
            target
                .histogram
                .record(micros)
                .expect("in the histogram's range");
            target.ops += 1;
        }
        tally.merge(&other);
        RunReport {
            terms: (2, Some(2)),
            label: None,
            setup: Setup::Local {
                addresses: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
                dir: PathBuf::from("/tmp/riteraft-bench-x"),
                native,
            },
            leader: Some((1, "127.0.0.1:1".into())),
            plugin_sha256: "5ca1ab1e".into(),
            measured: Duration::from_secs(10),
            tally,
            prefill: None,
            log_entries: Some(ops_per_ms * 1000),
            nodes: vec![NodeFigures {
                id: 1,
                address: "127.0.0.1:1".into(),
                pid: 42,
                role: "leader".into(),
                rss_kib: Some(2048),
                rss_peak_kib: Some(4096),
                cpu: Some(Duration::from_secs(5)),
            }],
            bench_cpu: Some(Duration::from_secs(3)),
            cpu_window: Duration::from_secs(10),
            deploy: None,
        }
    }

    #[test]
    fn json_has_the_figures_and_the_configuration() {
        let outcome = BenchOutcome::Single(config(), Box::new(run(2, false)));
        let json = outcome.json();
        assert_eq!(json["ops"], 20_000);
        assert_eq!(json["ops_per_sec"], 2000.0);
        let p50 = json["p50_ms"].as_f64().unwrap();
        assert!((p50 - 1.0).abs() < 0.01, "{p50}");
        assert!(json["p99_ms"].as_f64().unwrap() > p50);
        assert!(json["p999_ms"].as_f64().unwrap() >= json["p99_ms"].as_f64().unwrap());
        assert_eq!(json["errors"], 0);
        assert_eq!(json["clients"], 64);
        assert_eq!(json["connections"], 8);
        assert_eq!(json["threads"], 2);
        assert_eq!(json["value_size"], 256);
        assert_eq!(json["duration_s"], 10.0);
        assert_eq!(json["reads_pct"], 0);
        assert_eq!(json["plugin"], "kv.wasm");
        assert_eq!(json["node_args"], json!(["--read-lease"]));
        assert_eq!(json["plugin_sha256"], "5ca1ab1e");
        assert_eq!(json["cluster"], "local");
        assert_eq!(json["state_machine"], "wasm");
        assert_eq!(json["nodes"][0]["rss_kib"], 2048);
        assert_eq!(json["nodes"][0]["cpu_cores"], 0.5);
        // (5 s + 3 s) of CPU over 20,000 requests.
        assert_eq!(json["cpu_us_per_op"], 400.0);
        assert_eq!(json["leader"]["id"], 1);
    }

    #[test]
    fn compare_gives_the_median_of_the_rounds_ratios() {
        // Rounds of (native, wasm): ratios 0.75, 0.4 and 1.0.
        let rounds = [(4, 3), (5, 2), (2, 2)]
            .map(|(native, wasm)| (run(native, true), run(wasm, false)))
            .to_vec();
        let outcome = BenchOutcome::Alternating(
            config(),
            Box::new(Alternating {
                a: "native".into(),
                b: "wasm plugin".into(),
                compare: true,
                rounds,
            }),
        );
        let json = outcome.json();
        assert_eq!(json["compare"], true);
        assert_eq!(json["ratio"], 0.75);
        let runs = &json["alternating"];
        assert_eq!(runs["a"][1]["state_machine"], "native");
        assert_eq!(runs["b"][1]["state_machine"], "wasm");
        assert_eq!(runs["medians"]["throughput"]["b_over_a"], 0.75);
        let text = outcome.text();
        assert!(
            text.contains("wasm / native throughput: 0.750 (rounds: 0.750 / 0.400 / 1.000)"),
            "{text}"
        );
    }

    #[test]
    fn text_names_the_setup_and_the_figures() {
        let text = BenchOutcome::Single(config(), Box::new(run(1, true))).text();
        for expected in [
            "64 clients over 8 connections (pipelined), writes only, 256-byte values, 10000 keys",
            "1 s warmup, 10 s measured",
            "node flags:  --read-lease",
            "compiled into the nodes",
            "/tmp/riteraft-bench-x",
            "leader:      node 1 at 127.0.0.1:1",
            "throughput:  1000 ops/s",
            "latency:     p50 0.999 ms, p99 1.489 ms",
            "log:         1000 entries committed in the window, 10.0 requests per entry",
            "errors:      0",
            "node 1:      leader pid 42: resident 2.0 MiB (peak 4.0 MiB), CPU 0.50 cores",
            "all together 800.0 µs of CPU per request",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert!(!text.ends_with('\n'));
    }

    #[test]
    fn mixes_are_named() {
        let mut config = config();
        config.reads_pct = 100;
        assert_eq!(config.mix(), "reads only (linearizable)");
        config.reads_pct = 90;
        config.stale = true;
        assert_eq!(config.mix(), "90% reads (stale), 10% writes");
    }

    #[test]
    fn an_empty_run_has_zero_figures() {
        let mut report = run(1, false);
        report.tally = Tally::default();
        assert_eq!(report.ops_per_sec(), 0.0);
        assert_eq!(report.cpu_us_per_op(), None);
        assert_eq!(report.json()["p99_ms"], 0.0);
    }
}
