//! Prometheus metrics of a node (`--metrics-listen`): one [`Metrics`] registry per process, made
//! at start-up; the consensus loop updates its part, [`NodeMetrics`], at each event and once per
//! tick, and [`http`] serves the lot as Prometheus text at `GET /metrics`.
//!
//! On the hot path (an entry, a proposal, a read) an update is an atomic add: counters and
//! gauges are prometheus-client's atomics, histograms are [`AtomicHistogram`]s, and labelled
//! series are looked up once, when the metrics are made, never per event. Only the per-tick
//! sample of the peers' lag touches a locked map.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use raft::{SoftState, StateRole};

use crate::node::NodeError;
use crate::replicated::ClusterState;
use crate::state_machine::{Outcome, Rejection};
use crate::storage::LogStore;

mod histogram;
pub mod http;

pub use histogram::AtomicHistogram;

/// Every metric of the process, registered under the `riteraft_` prefix.
pub struct Metrics {
    registry: Registry,
    node: NodeMetrics,
    resident_memory: Gauge,
}

impl Metrics {
    /// The registry with the node's metrics and the process's (build, start time, memory).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("riteraft");
        let node = NodeMetrics::default();
        node.register(&mut registry);
        registry.register(
            "build",
            "The version and source revision of this riteraft-host (always 1)",
            Info::new(vec![("version", env!("RITERAFT_BUILD_VERSION"))]),
        );
        let start_time: Gauge<f64, AtomicU64> = Gauge::default();
        start_time.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        registry.register(
            "process_start_time_seconds",
            "When this process started, in seconds since the Unix epoch",
            start_time,
        );
        let resident_memory = Gauge::default();
        if cfg!(target_os = "linux") {
            registry.register(
                "process_resident_memory_bytes",
                "Resident memory of this process (from /proc/self/statm, read at each scrape)",
                resident_memory.clone(),
            );
        }
        Self {
            registry,
            node,
            resident_memory,
        }
    }

    /// The consensus loop's part, to hand to the node (`NodeOptions::metrics`).
    pub fn node(&self) -> &NodeMetrics {
        &self.node
    }

    /// Every metric as Prometheus text (format 0.0.4), brought up to date first where a value
    /// is read on demand.
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory.set(bytes);
        }
        let mut text = String::with_capacity(16 << 10);
        // Writing to a String does not fail; the registry holds only metrics that encode.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident memory from `/proc/self/statm` (its second field, in pages); `None` elsewhere.
fn resident_memory_bytes() -> Option<i64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(rustix::param::page_size() as i64))
}

/// The roles a node can be in, in `riteraft_role`'s label order.
const ROLES: [&str; 4] = ["leader", "follower", "candidate", "pre-candidate"];

fn role_index(role: StateRole) -> usize {
    match role {
        StateRole::Leader => 0,
        StateRole::Follower => 1,
        StateRole::Candidate => 2,
        StateRole::PreCandidate => 3,
    }
}

/// Why a proposal failed, as `riteraft_proposals_failed_total`'s `reason` label.
const FAILURES: [&str; 9] = [
    "no_leader",
    "timeout",
    "aborted",
    "invalid",
    "precondition",
    "busy",
    "disk_full",
    "stopped",
    "diverged",
];

/// The failure label of `error`; `None` for "not the leader": the gRPC service forwards those
/// to the leader, which counts them itself.
fn failure_index(error: &NodeError) -> Option<usize> {
    Some(match error {
        NodeError::NotLeader { .. } => return None,
        NodeError::NoLeader => 0,
        NodeError::Timeout(_) => 1,
        NodeError::Aborted(_) => 2,
        NodeError::Invalid(_) => 3,
        NodeError::Precondition(_) => 4,
        NodeError::Busy(_) => 5,
        NodeError::DiskFull(_) => 6,
        NodeError::Stopped => 7,
        NodeError::Diverged(_) => 8,
    })
}

/// How a plugin call failed, as `riteraft_plugin_traps_total`'s `kind` label.
const TRAPS: [&str; 3] = ["trap", "out_of_fuel", "out_of_memory"];

fn trap_index(outcome: &Outcome) -> Option<usize> {
    match outcome {
        Ok(_) | Err(Rejection::Store(_)) => None,
        Err(Rejection::Trapped(_)) => Some(0),
        Err(Rejection::OutOfFuel(_)) => Some(1),
        Err(Rejection::OutOfMemory(_)) => Some(2),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: u64,
}

/// The request queue's depth: std's `sync_channel` has no `len()`, so the handle counts what
/// it puts in (one before each send, taken back if the send fails, so the gauge never dips
/// below zero) and the loop what it takes out (per batch).
#[derive(Debug, Clone, Default)]
pub struct QueueDepth(Gauge);

impl QueueDepth {
    /// A request is about to be sent.
    pub fn enqueue(&self) {
        self.0.inc();
    }

    /// The send just counted failed.
    pub fn undo(&self) {
        self.0.dec();
    }

    /// The loop took `n` requests out.
    pub fn dequeued(&self, n: usize) {
        self.0.dec_by(n as i64);
    }
}

/// The consensus loop's metrics. A default one is registered nowhere (the simulator's nodes,
/// tests): updating it costs the same and shows nowhere.
#[derive(Clone, Default)]
pub struct NodeMetrics(Arc<NodeInner>);

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeMetrics")
    }
}

struct NodeInner {
    role_family: Family<RoleLabel, Gauge>,
    role: [Gauge; 4],
    term: Gauge,
    leader_id: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    leader_changes: Counter,
    /// The leader last seen, to count changes.
    last_leader: AtomicU64,
    members: Gauge,
    voters: Gauge,
    learners: Gauge,
    diverged: Gauge,
    peer_lag: Family<PeerLabel, Gauge>,
    /// The peers `peer_lag` shows, to drop the series of peers gone (or all, off the leader).
    lag_shown: Mutex<BTreeSet<u64>>,
    proposals: Counter,
    proposals_rejected: Counter,
    failed_family: Family<ReasonLabel, Counter>,
    failed: [Counter; FAILURES.len()],
    reads_family: Family<KindLabel, Counter>,
    reads_linearizable: Counter,
    reads_stale: Counter,
    propose_seconds: AtomicHistogram,
    apply_seconds: AtomicHistogram,
    persist_seconds: AtomicHistogram,
    read_seconds: AtomicHistogram,
    snapshots: Counter,
    snapshots_installed: Counter,
    snapshot_bytes: Gauge,
    snapshot_seconds: AtomicHistogram,
    traps_family: Family<KindLabel, Counter>,
    traps: [Counter; 3],
    fuel: AtomicHistogram,
    queue: QueueDepth,
}

impl Default for NodeInner {
    fn default() -> Self {
        let role_family = Family::<RoleLabel, Gauge>::default();
        let role = ROLES.map(|role| role_family.get_or_create_owned(&RoleLabel { role }));
        let failed_family = Family::<ReasonLabel, Counter>::default();
        let failed =
            FAILURES.map(|reason| failed_family.get_or_create_owned(&ReasonLabel { reason }));
        let reads_family = Family::<KindLabel, Counter>::default();
        let reads_linearizable = reads_family.get_or_create_owned(&KindLabel {
            kind: "linearizable",
        });
        let reads_stale = reads_family.get_or_create_owned(&KindLabel { kind: "stale" });
        let traps_family = Family::<KindLabel, Counter>::default();
        let traps = TRAPS.map(|kind| traps_family.get_or_create_owned(&KindLabel { kind }));
        const MS: u64 = 1_000_000;
        Self {
            role_family,
            role,
            term: Gauge::default(),
            leader_id: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            leader_changes: Counter::default(),
            last_leader: AtomicU64::new(0),
            members: Gauge::default(),
            voters: Gauge::default(),
            learners: Gauge::default(),
            diverged: Gauge::default(),
            peer_lag: Family::default(),
            lag_shown: Mutex::new(BTreeSet::new()),
            proposals: Counter::default(),
            proposals_rejected: Counter::default(),
            failed_family,
            failed,
            reads_family,
            reads_linearizable,
            reads_stale,
            // 10 µs (an apply of a small entry) to 10 s (a proposal timeout is 5 s).
            propose_seconds: AtomicHistogram::seconds(10_000, 10_000 * MS),
            apply_seconds: AtomicHistogram::seconds(1_000, 1_000 * MS),
            persist_seconds: AtomicHistogram::seconds(10_000, 10_000 * MS),
            read_seconds: AtomicHistogram::seconds(10_000, 10_000 * MS),
            snapshots: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshot_bytes: Gauge::default(),
            snapshot_seconds: AtomicHistogram::seconds(MS, 100_000 * MS),
            traps_family,
            traps,
            // A small put takes a few thousand units; the default budget is 10^9.
            fuel: AtomicHistogram::new((2..=9).flat_map(|e| [10u64.pow(e), 10u64.pow(e) * 3]), 1.0),
            queue: QueueDepth::default(),
        }
    }
}

/// Whole numbers for gauges (an index past i64::MAX shows as i64::MAX).
fn int(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

impl NodeMetrics {
    fn register(&self, registry: &mut Registry) {
        let m = &*self.0;
        let r = registry;
        r.register(
            "role",
            "1 for the role this node is in, 0 for the others",
            m.role_family.clone(),
        );
        r.register("term", "The raft term this node is in", m.term.clone());
        r.register(
            "leader_id",
            "The leader this node knows (0: none)",
            m.leader_id.clone(),
        );
        r.register(
            "commit_index",
            "The highest log index this node knows is committed",
            m.commit_index.clone(),
        );
        r.register(
            "applied_index",
            "The highest log index applied to this node's store",
            m.applied_index.clone(),
        );
        r.register(
            "snapshot_index",
            "The log index of this node's latest snapshot",
            m.snapshot_index.clone(),
        );
        r.register(
            "leader_changes",
            "Times this node saw a new leader",
            m.leader_changes.clone(),
        );
        r.register(
            "members",
            "Members of the cluster (voters and learners)",
            m.members.clone(),
        );
        r.register("voters", "Voting members of the cluster", m.voters.clone());
        r.register(
            "learners",
            "Learners of the cluster (joiners catching up, read replicas)",
            m.learners.clone(),
        );
        r.register(
            "diverged",
            "1 once this replica's answers differed from the cluster's (it serves nothing until \
             it is rebuilt), else 0",
            m.diverged.clone(),
        );
        r.register(
            "peer_lag_entries",
            "On the leader: its commit index minus the last index each peer is known to hold",
            m.peer_lag.clone(),
        );
        r.register(
            "proposals",
            "Writes (commands and deploys) this node appended to the log as leader",
            m.proposals.clone(),
        );
        r.register(
            "proposals_rejected",
            "Writes proposed here that the store answered with its own error",
            m.proposals_rejected.clone(),
        );
        r.register(
            "proposals_failed",
            "Writes this node answered with an error, by reason (not counted: those a follower forwards to the leader)",
            m.failed_family.clone(),
        );
        r.register(
            "reads",
            "Queries this node took, by kind (linearizable or stale)",
            m.reads_family.clone(),
        );
        r.register(
            "propose_seconds",
            "From a write's proposal to its answer on the node that proposed it (commit and apply)",
            m.propose_seconds.clone(),
        );
        r.register(
            "apply_seconds",
            "One log entry applied by the store (the plugin call)",
            m.apply_seconds.clone(),
        );
        r.register(
            "log_persist_seconds",
            "Writing one batch of entries and the hard state to the log, synced when it must be (the group commit)",
            m.persist_seconds.clone(),
        );
        r.register(
            "read_seconds",
            "From a linearizable read's arrival to its answer (read index or lease, then apply)",
            m.read_seconds.clone(),
        );
        r.register(
            "snapshots",
            "Snapshots this node took and made durable",
            m.snapshots.clone(),
        );
        r.register(
            "snapshots_installed",
            "Snapshots this node installed from the leader",
            m.snapshots_installed.clone(),
        );
        r.register(
            "snapshot_last_bytes",
            "Size of the latest snapshot taken or installed",
            m.snapshot_bytes.clone(),
        );
        r.register(
            "snapshot_seconds",
            "Taking one snapshot: gathering the store's state and writing the file durably",
            m.snapshot_seconds.clone(),
        );
        r.register(
            "plugin_traps",
            "Plugin calls (applies and queries) that trapped, ran out of fuel or of memory",
            m.traps_family.clone(),
        );
        r.register(
            "plugin_fuel_per_entry",
            "Fuel one applied entry used in the plugin",
            m.fuel.clone(),
        );
        r.register(
            "request_queue_depth",
            "Requests waiting in the node's queue (gRPC calls and peers' messages; capacity 65536)",
            m.queue.0.clone(),
        );
    }

    /// The depth counter of the node's request queue (see [`crate::node::counted_channel`]).
    pub fn queue_depth(&self) -> QueueDepth {
        self.0.queue.clone()
    }

    /// The loop took `n` requests out of its queue.
    pub fn dequeued(&self, n: usize) {
        if n > 0 {
            self.0.queue.dequeued(n);
        }
    }

    /// raft's soft state changed (a Ready's `ss()`): role and leader, counted at once.
    pub fn soft_state(&self, state: &SoftState) {
        self.set_role(state.raft_state);
        self.0.leader_id.set(int(state.leader_id));
        let last = self.0.last_leader.swap(state.leader_id, Ordering::Relaxed);
        if state.leader_id != raft::INVALID_ID && state.leader_id != last {
            self.0.leader_changes.inc();
        }
    }

    fn set_role(&self, role: StateRole) {
        let current = role_index(role);
        for (i, gauge) in self.0.role.iter().enumerate() {
            gauge.set(i64::from(i == current));
        }
    }

    /// The per-tick sample of what changes all the time or is cheap to read: indexes, term,
    /// membership, and on the leader each peer's lag.
    pub fn sample<L: LogStore>(
        &self,
        raft: &raft::Raft<L>,
        applied: u64,
        cluster: &ClusterState,
        diverged: bool,
    ) {
        let snapshot_index = raft.raft_log.store.snapshot_metadata().index;
        let m = &*self.0;
        self.set_role(raft.state);
        m.term.set(int(raft.term));
        m.leader_id.set(int(raft.leader_id));
        let committed = raft.raft_log.committed;
        m.commit_index.set(int(committed));
        m.applied_index.set(int(applied));
        m.snapshot_index.set(int(snapshot_index));
        m.members.set(int(cluster.members.len()));
        m.learners.set(int(cluster.learners.len()));
        m.diverged.set(i64::from(diverged));
        m.voters.set(int(cluster
            .members
            .len()
            .saturating_sub(cluster.learners.len())));
        let mut shown = m.lag_shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut now_shown = BTreeSet::new();
        if raft.state == StateRole::Leader {
            for (peer, progress) in raft.prs().iter() {
                if *peer == raft.id {
                    continue;
                }
                let lag = committed.saturating_sub(progress.matched);
                m.peer_lag
                    .get_or_create(&PeerLabel { peer: *peer })
                    .set(int(lag));
                now_shown.insert(*peer);
            }
        }
        for gone in shown.difference(&now_shown) {
            m.peer_lag.remove(&PeerLabel { peer: *gone });
        }
        *shown = now_shown;
    }

    /// This node appended a write to the log.
    pub fn proposed(&self) {
        self.0.proposals.inc();
    }

    /// A write proposed here at `proposed` was applied and is answered with `outcome`.
    pub fn answered(&self, proposed: Instant, outcome: Option<&Outcome>) {
        self.0.propose_seconds.observe_duration(proposed.elapsed());
        if let Some(Err(Rejection::Store(_))) = outcome {
            self.0.proposals_rejected.inc();
        }
    }

    /// A write is answered with `error`.
    pub fn failed(&self, error: &NodeError) {
        if let Some(i) = failure_index(error) {
            self.0.failed[i].inc();
        }
    }

    /// A query arrived.
    pub fn read(&self, stale: bool) {
        match stale {
            true => self.0.reads_stale.inc(),
            false => self.0.reads_linearizable.inc(),
        };
    }

    /// A query was answered with `outcome`; `received` when it was linearizable.
    pub fn read_answered(&self, received: Option<Instant>, outcome: &Outcome) {
        if let Some(received) = received {
            self.0.read_seconds.observe_duration(received.elapsed());
        }
        self.trapped(outcome);
    }

    /// An entry was applied from `started`, using `fuel` (wasm stores), with `outcome`.
    pub fn applied_entry(&self, started: Instant, fuel: Option<u64>, outcome: &Outcome) {
        self.0.apply_seconds.observe_duration(started.elapsed());
        if !self.trapped(outcome)
            && let Some(fuel) = fuel
        {
            self.0.fuel.observe(fuel);
        }
    }

    /// Counts a trap; whether `outcome` is one.
    fn trapped(&self, outcome: &Outcome) -> bool {
        let trap = trap_index(outcome);
        if let Some(i) = trap {
            self.0.traps[i].inc();
        }
        trap.is_some()
    }

    /// `ready`'s entries and hard state were written from `started` (a Ready with neither
    /// writes nothing, and is not counted: it would only dilute the times).
    pub fn persisted(&self, ready: &raft::Ready, started: Instant) {
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.0.persist_seconds.observe_duration(started.elapsed());
        }
    }

    /// A snapshot of `bytes` was taken and is durable, `took` after it was started.
    pub fn snapshot_taken(&self, bytes: u64, took: Duration) {
        self.0.snapshots.inc();
        self.0.snapshot_bytes.set(int(bytes));
        self.0.snapshot_seconds.observe_duration(took);
    }

    /// A snapshot of `bytes` from the leader was installed.
    pub fn snapshot_installed(&self, bytes: usize) {
        self.0.snapshots_installed.inc();
        self.0.snapshot_bytes.set(int(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_in_the_text_with_its_prefix() {
        let metrics = Metrics::new();
        metrics.node().proposed();
        metrics.node().read(true);
        metrics.node().failed(&NodeError::NoLeader);
        metrics
            .node()
            .applied_entry(Instant::now(), Some(5_000), &Ok(vec![]));
        let text = metrics.encode();
        for line in [
            "riteraft_proposals_total 1",
            "riteraft_reads_total{kind=\"stale\"} 1",
            "riteraft_proposals_failed_total{reason=\"no_leader\"} 1",
            "riteraft_plugin_fuel_per_entry_bucket{le=\"10000\"} 1",
            "riteraft_apply_seconds_count 1",
            "riteraft_role{role=\"leader\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(text.contains("riteraft_build_info{version=\""), "{text}");
        if cfg!(target_os = "linux") {
            assert!(!text.contains("riteraft_process_resident_memory_bytes 0\n"));
        }
    }

    #[test]
    fn not_leader_is_not_a_failure() {
        let metrics = NodeMetrics::default();
        metrics.failed(&NodeError::NotLeader {
            leader_id: 2,
            address: "x".into(),
        });
        assert!(metrics.0.failed.iter().all(|c| c.get() == 0));
    }
}
