//! A node's tuning, with the defaults for a LAN or loopback cluster and the reason for each.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::NodeMetrics;
use crate::module_store::{ModuleFetcher, ModuleStore};

/// Largest module a deploy accepts by default: 128 MiB. Modules travel in chunks, never as one
/// log entry or message, so this bounds only what an upload holds in memory (a node holds one
/// upload per slot and a compiler's memory besides) and what the module store keeps on disk. A
/// Rust store is typically 0.2–3 MiB, a Python one 18 MiB, a JavaScript one 12 MiB.
pub const MAX_MODULE_BYTES: usize = 128 << 20;

/// Tuning of a node. The defaults suit a LAN or loopback cluster.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// One raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election (raft randomises up to twice this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Take a snapshot (and compact the log) after this many entries since the last one.
    pub snapshot_entries: u64,
    /// ... or once the log holds this many bytes of entries.
    pub snapshot_log_bytes: u64,
    /// Entries kept in the log behind a snapshot, for followers that are only a little behind.
    pub log_entries_kept: u64,
    /// How long a client waits for its proposal (or linearizable read) before an error.
    pub request_timeout: Duration,
    /// Largest command accepted; bigger ones are refused before they reach the log.
    pub max_command_bytes: usize,
    /// Most bytes in one append message to a follower (raft `max_size_per_msg`).
    pub max_append_bytes: u64,
    /// Most append messages in flight to one follower (raft `max_inflight_msgs`).
    pub max_inflight_appends: usize,
    /// Largest module `riteraft deploy` accepts (see [`MAX_MODULE_BYTES`]).
    pub max_module_bytes: usize,
    /// The modules this node has, by sha256 (see `crate::module_store`): under the data dir,
    /// or in memory.
    pub modules: Arc<ModuleStore>,
    /// How a deploy's module that this node lacks is fetched from other members (`None`: it is
    /// not, and the deploy waits until the module is put in `modules`).
    pub module_fetcher: Option<Arc<dyn ModuleFetcher>>,
    /// The directory the log lives in, watched for free space.
    pub data_dir: Option<std::path::PathBuf>,
    /// Below this much free space on `data_dir`, proposals are refused ("disk full") so the
    /// log and snapshots still have room to finish what was already accepted.
    pub min_free_disk_bytes: u64,
    /// Serve linearizable reads on the leader from a lease (see [`Lease`]) instead of a
    /// heartbeat round per batch of reads. Off by default: it trusts timing (see `Lease`).
    pub read_lease: bool,
    /// Pack commands only for members whose hosts are known to read packed entries (a running
    /// node asks them, see `grpc_services::member_formats`, and tells the node with
    /// `Request::PackedReaders`). Off, every member is taken to run this host: nodes in one
    /// process or one simulation are one build.
    pub check_member_log_formats: bool,
    /// The range election timeouts are drawn from, in ticks (`[min, max)`); `None`: raft's
    /// `[election_ticks, 2 * election_ticks)`. raft-rs draws from an RNG of its own, so a
    /// simulator that must replay a run gives each node a range of one value instead.
    pub election_timeout_ticks: Option<(usize, usize)>,
    /// Write snapshots on a thread of their own while the loop goes on (the default); `false`
    /// writes each before the round ends, so that a simulated run does not depend on how
    /// threads are scheduled.
    pub snapshot_on_thread: bool,
    /// Get a deploy's module ready (fetch, compile) on a thread of its own (the default);
    /// `false` does it on the loop when the entry reaches the log, for the same reason.
    pub prepare_on_thread: bool,
    /// A learner is caught up while its log is at most this many entries behind the leader's
    /// commit index (and raft sends it entries, not a snapshot): 256 entries is a few
    /// milliseconds of replication at full load, so the quorum waits for it no longer than that.
    pub promote_max_lag: u64,
    /// ... and it is promoted to voter once it has stayed caught up this long: long enough to
    /// show it keeps up under load rather than between two bursts.
    pub promote_after: Duration,
    /// A joining learner the leader has not heard from for this long is dropped from the
    /// cluster: it never came up, or died before it caught up. Read replicas are not dropped.
    pub joiner_timeout: Duration,
    /// Every replica reports the digest of its answers every this many entries, and checks it
    /// against the cluster's (see `node::divergence`); 0: no reports, no checks. 1,000 entries
    /// is one small entry per replica per 1,000 (0.1% of the log per replica) and a few
    /// hundredths of a second of writes at full load before a divergence is seen.
    pub digest_interval: u64,
    /// Where the loop records its metrics (a default one shows nowhere; see `crate::metrics`).
    pub metrics: NodeMetrics,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 10_000,
            snapshot_log_bytes: 256 << 20,
            log_entries_kept: 1_000,
            request_timeout: Duration::from_secs(5),
            max_command_bytes: 4 << 20,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 256,
            max_module_bytes: MAX_MODULE_BYTES,
            modules: Arc::new(ModuleStore::in_memory()),
            module_fetcher: None,
            data_dir: None,
            min_free_disk_bytes: 256 << 20,
            read_lease: false,
            check_member_log_formats: false,
            election_timeout_ticks: None,
            snapshot_on_thread: true,
            prepare_on_thread: true,
            promote_max_lag: 256,
            promote_after: Duration::from_millis(500),
            joiner_timeout: Duration::from_secs(60),
            digest_interval: 1_000,
            metrics: NodeMetrics::default(),
        }
    }
}
