//! What a node is configured by (`riteraft-host --help`): [`NodeConfig`], one field per
//! setting. Each setting can also come from a `RITERAFT_HOST_*` environment variable or a TOML file
//! (`--config`), with no code per setting: [`sources`] derives both from these clap arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use riteraft_proto::tls::TlsFiles;

use crate::plugin::{COMPILED_DIR, PluginLimits};

mod file;
pub mod sources;

pub use sources::{ConfigError, Invocation, Setting, Source};

/// A RiteRaft node: replicates a WebAssembly store plugin with raft.
///
/// Start the first node without --join; start every other node with --join pointing at any
/// member. A node restarted on its --data-dir resumes as the same member.
#[derive(Debug, Clone, Parser)]
///
/// Every flag can also be set from the environment (`RITERAFT_HOST_` and the flag's name, e.g.
/// RITERAFT_HOST_DATA_DIR) or from a TOML file (--config; keys are the flags' names, e.g.
/// `data-dir = "/var/lib/riteraft"`). A flag beats the environment, which beats the file.
#[command(name = "riteraft-host", version = env!("RITERAFT_BUILD_VERSION"))]
pub struct NodeConfig {
    /// The store plugin: a WebAssembly component built for wasm32-wasip2 with the RiteRaft SDK
    /// (or any component exporting proto/store.wit).
    #[arg(long, value_name = "PATH")]
    pub plugin: PathBuf,

    /// Address to serve peers and clients on (gRPC), e.g. 127.0.0.1:7001.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,

    /// Address of any member of an existing cluster to join. Without it, an empty data dir
    /// starts a new one-node cluster.
    #[arg(long, value_name = "ADDR")]
    pub join: Option<SocketAddr>,

    /// Join as a read replica: a learner that receives the log and serves reads (stale ones
    /// locally, linearizable ones confirmed with the leader) but never votes. Without it a
    /// joining node becomes a voter once it has caught up. Not with --replaces.
    #[arg(long, requires = "join")]
    pub learner: bool,

    /// Join to replace member ID: once this node has caught up, one joint-consensus change makes
    /// it a voter and removes ID, so the cluster keeps its size and quorum throughout.
    #[arg(long, value_name = "ID", requires = "join")]
    pub replaces: Option<u64>,

    /// On the leader: a joining node not heard from for this long (seconds) is dropped from the
    /// cluster, so a joiner that never came up cannot linger as a member.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub joiner_timeout_secs: u64,

    /// Every this many entries, each replica reports a digest of the store's answers and
    /// checks it against the cluster's: a replica whose answers differ raises an alarm and
    /// stops serving until rebuilt (README: divergence detection). 0 turns the check off.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub divergence_check_entries: u64,

    /// Where this node keeps its raft log, state and snapshots [default: riteraft-data-PORT,
    /// PORT being --listen's, so several local nodes never share one by accident].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where compiled plugins are kept, by the sha256 of their module [default: DATA_DIR/compiled].
    /// Nodes on one machine may share a directory: each module is then compiled once for all
    /// of them. The node runs the code in it unchecked: keep it as private as the data dir.
    #[arg(long, value_name = "DIR")]
    pub compiled_dir: Option<PathBuf>,

    /// Take a snapshot of the store and compact the raft log after this many entries.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub snapshot_entries: u64,

    /// How long a client waits for its write to commit (or a linearizable read to be
    /// confirmed) before it gets an error, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    pub proposal_timeout_ms: u64,

    /// Refuse writes while less than this much disk space (MiB) is free in --data-dir, so that
    /// what was accepted can still be logged and snapshotted.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub min_free_disk_mib: u64,

    /// Answer linearizable reads on the leader from a lease instead of a heartbeat round to
    /// the followers (raft ReadIndex): faster, but correct only while the nodes' clocks run at
    /// about the same rate and the leader is never paused for more than a tick (100 ms) between
    /// checking its lease and answering. Off by default.
    #[arg(long)]
    pub read_lease: bool,

    /// This node's TLS certificate (PEM). It must name this node's --listen address (see the
    /// README's Security section; `riteraft certs` makes one). With --tls-key and --tls-ca,
    /// every connection in and out is mutual TLS and callers are checked against their role.
    #[arg(long, value_name = "PATH", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PATH", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,

    /// The cluster's CA certificate (PEM): peers and clients must present a certificate it
    /// signed.
    #[arg(long, value_name = "PATH", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,

    /// Serve without TLS on an address other than loopback. Without TLS anyone who can reach
    /// the port can read, write, deploy code and change the membership; so without this flag
    /// a node without TLS listens on loopback only.
    #[arg(long)]
    pub insecure: bool,

    /// For benchmarks: run the `kv` example store compiled into the host instead of the
    /// plugin, to measure what the wasm sandbox costs. --plugin is still loaded and checked.
    #[arg(long)]
    pub builtin_kv: bool,

    /// Fuel (about one unit per wasm instruction) for one apply or query of the plugin.
    #[arg(long, value_name = "N", default_value_t = PluginLimits::default().fuel_per_call)]
    pub fuel_per_call: u64,

    /// Cap on the plugin's linear memory, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = PluginLimits::default().memory_bytes >> 20)]
    pub plugin_memory_mib: usize,

    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP), e.g. 127.0.0.1:9464; off
    /// without it. The metrics show no stored data, only counts, timings and the cluster's
    /// shape (member ids, roles, terms, indexes), but they are served without TLS or
    /// authentication: on an address other than loopback, anyone who can reach it can read
    /// them. That is this flag's choice, not refused (--tls-* cover the gRPC port only).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// How log lines look on stderr: `text` for people, `json` (one object per line) for log
    /// collectors. RUST_LOG chooses which lines (default `info`).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The format of the node's log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

impl NodeConfig {
    /// The data directory: --data-dir, or `riteraft-data-PORT`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("riteraft-data-{}", self.listen.port())))
    }

    /// Where compiled plugins are kept: --compiled-dir, or `compiled` in the data dir.
    pub fn compiled_dir(&self) -> PathBuf {
        (self.compiled_dir.clone()).unwrap_or_else(|| self.data_dir().join(COMPILED_DIR))
    }

    /// The TLS files, if configured.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
        })
    }

    /// The plugin limits these flags describe.
    pub fn plugin_limits(&self) -> PluginLimits {
        PluginLimits {
            fuel_per_call: self.fuel_per_call,
            memory_bytes: self.plugin_memory_mib << 20,
            ..PluginLimits::default()
        }
    }
}
