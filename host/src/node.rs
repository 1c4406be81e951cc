//! The consensus loop: one thread owns the raft-rs `RawNode`, the log store and the state
//! machine. Everything else talks to it through [`NodeHandle`] (a bounded channel), so nothing
//! here is shared or locked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use crate::log_format::{
    ClusterState, DecodeError, EntryPayload, MAX_UPGRADES_KEPT, SNAPSHOT_FORMAT, SnapshotData,
    UpgradeRecord, encode,
};
use crate::log_limit::LogLimiter;
use crate::peer_messages::{self, Local, Refused};
use crate::state_machine::{ApplyContext, ModuleInfo, Rejection, StateMachine, StateMachineError};
use crate::storage::{LogStore, SavedSnapshot, StorageError};
use crate::transport::Transport;

/// Most requests handled between two Ready rounds: bounds the latency one round adds, while
/// letting a burst of proposals share one fsync.
const MAX_REQUESTS_PER_ROUND: usize = 4096;

/// Largest module a deploy accepts by default: it travels as one log entry, so it must fit in
/// one gRPC message with room to spare (a Rust store is typically 0.2–3 MiB).
pub const MAX_MODULE_BYTES: usize = 12 << 20;

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
    /// Largest module `riteraft deploy` accepts: it travels as one log entry, so it must fit
    /// in one gRPC message with room to spare (12 MiB; a Rust store is typically 0.2–3 MiB).
    pub max_module_bytes: usize,
    /// The directory the log lives in, watched for free space.
    pub data_dir: Option<std::path::PathBuf>,
    /// Below this much free space on `data_dir`, proposals are refused ("disk full") so the
    /// log and snapshots still have room to finish what was already accepted.
    pub min_free_disk_bytes: u64,
    /// Serve linearizable reads on the leader from a lease (see [`Lease`]) instead of a
    /// heartbeat round per batch of reads. Off by default: it trusts timing (see `Lease`).
    pub read_lease: bool,
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
            data_dir: None,
            min_free_disk_bytes: 256 << 20,
            read_lease: false,
        }
    }
}

/// Why a request to the node was not served. Each maps to one gRPC status for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Another node leads; the request should go there.
    #[error("node {leader_id} is the leader")]
    NotLeader { leader_id: u64, address: String },
    /// No leader is known (an election is running, or this node is cut off).
    #[error(
        "no leader is known (an election is running, or this node is cut off from the cluster)"
    )]
    NoLeader,
    /// The request was not completed in time; a proposal may still be applied later.
    #[error("{0}")]
    Timeout(String),
    /// The proposal was replaced by another leader's entry and will never be applied.
    #[error("{0}")]
    Aborted(String),
    /// The request is malformed or too large.
    #[error("{0}")]
    Invalid(String),
    /// The request does not fit the cluster's current state.
    #[error("{0}")]
    Precondition(String),
    /// The node cannot take the request now; retry shortly.
    #[error("{0}")]
    Busy(String),
    /// The disk is (nearly) full: writes are refused until space is freed.
    #[error("{0}")]
    DiskFull(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
}

/// Why the node stopped.
#[derive(Debug)]
pub enum NodeExit {
    /// Every handle was dropped (shutdown).
    Shutdown,
    /// This node was removed from the cluster.
    Removed,
}

/// A failure that stops the node: continuing could make this replica diverge or lose data.
#[derive(Debug, thiserror::Error)]
pub enum NodeFatal {
    /// The state machine is broken.
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    /// The log store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A replicated record could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// raft-rs refused something it must accept.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// The answer to a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Where the command landed in the log.
    pub index: u64,
    /// The store's answer.
    pub outcome: Result<Vec<u8>, Rejection>,
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The applied index of the state that answered.
    pub applied_index: u64,
    /// The store's answer.
    pub outcome: Result<Vec<u8>, Rejection>,
}

/// The answer to a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The new member's id.
    pub id: u64,
    /// All members after the join.
    pub members: BTreeMap<u64, String>,
}

/// A node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: &'static str,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub members: BTreeMap<u64, String>,
    pub module: ModuleInfo,
    pub upgrades: Vec<UpgradeRecord>,
}

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// What the consensus loop can be asked to do.
pub enum Request {
    /// A raft message from a peer, and the member address the peer's certificate names
    /// (`None` without TLS).
    Raft(Box<Message>, Option<Arc<str>>),
    /// Replicate a command.
    Propose {
        command: Vec<u8>,
        reply: Reply<Applied>,
    },
    /// Replicate new code for the store (leader only).
    Deploy {
        module: Vec<u8>,
        reply: Reply<Applied>,
    },
    /// The store's current snapshot, and the code that wrote it (for a deploy's dry run).
    Snapshot {
        reply: Reply<(bytes::Bytes, ModuleInfo)>,
    },
    /// Answer a query, linearizably unless `stale`.
    Query {
        request: Vec<u8>,
        stale: bool,
        reply: Reply<Answered>,
    },
    /// Report this node's view.
    Status { reply: Reply<NodeStatus> },
    /// Add the node at `address` (leader only).
    AddNode {
        address: String,
        reply: Reply<Joined>,
    },
    /// Remove node `id` (leader only).
    RemoveNode { id: u64, reply: Reply<()> },
    /// Hand leadership to node `to` (leader only).
    TransferLeader { to: u64, reply: Reply<()> },
    /// The transport could not deliver to this peer.
    Unreachable(u64),
    /// A snapshot to this peer was delivered (`true`) or not.
    SnapshotSent(u64, bool),
    /// The leader says this node was removed from the cluster at this index.
    Removed(u64),
}

/// A cloneable way to reach the consensus loop from async code.
#[derive(Clone)]
pub struct NodeHandle {
    sender: SyncSender<Request>,
}

impl NodeHandle {
    /// Sends a request without waiting: for raft messages and transport reports. A full queue
    /// drops it (raft retransmits; reports are hints).
    pub fn send(&self, request: Request) -> bool {
        self.sender.try_send(request).is_ok()
    }

    /// Like [`NodeHandle::send`], but gives the request back when the queue is full.
    pub fn try_send(&self, request: Request) -> Result<(), Request> {
        match self.sender.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(request) | TrySendError::Disconnected(request)) => Err(request),
        }
    }

    /// Sends a request and waits for its reply.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        match self.sender.try_send(make(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(NodeError::Busy(
                    "the node is overloaded (request queue full); retry shortly".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => return Err(NodeError::Stopped),
        }
        answer.await.unwrap_or(Err(NodeError::Stopped))
    }
}

/// The bounded queue into the consensus loop: 64k requests is a few seconds of peak load;
/// beyond it clients get "overloaded" instead of unbounded memory growth.
pub fn channel() -> (NodeHandle, Receiver<Request>) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(65_536);
    (NodeHandle { sender }, receiver)
}

struct PendingProposal {
    request_id: u64,
    deadline: Instant,
    reply: Reply<Applied>,
}

enum PendingConf {
    Add { id: u64, reply: Reply<Joined> },
    Remove { reply: Reply<()> },
}

impl PendingConf {
    fn fail(self, error: NodeError) {
        match self {
            PendingConf::Add { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingConf::Remove { reply } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

struct PendingQuery {
    request: Vec<u8>,
    reply: Reply<Answered>,
}

struct ReadBatch {
    queries: Vec<PendingQuery>,
    deadline: Instant,
    /// When the read index was first requested: the heartbeats that confirm it left no
    /// earlier, so a lease counted from here is never longer than the followers' promise.
    first_asked: Instant,
    /// When the read index was last requested: raft-rs drops requests it cannot serve yet
    /// (no leader, or a new leader without a commit in its term), so we ask again.
    asked: Instant,
}

/// A leader's read lease (`--read-lease`): until `until`, no other node can have become leader,
/// so a linearizable read may be answered from the leader's state at its commit index without
/// asking the followers first.
///
/// Why it holds: with check_quorum, a follower ignores vote requests until `election_ticks`
/// of its ticks have passed since it last heard from the leader (at least `election_ticks - 1`
/// tick lengths, as its first tick may come at once), and a node restarted within that time
/// does not vote either (see [`Node::ignores_votes`]). A read-index round that a quorum
/// confirmed started at `first_asked`, so each follower of that quorum heard from the leader
/// after it: no other leader before `first_asked + (election_ticks - 1) ticks`. The lease ends
/// one tick earlier ([`Node::lease_length`]), leaving 100 ms (with the default ticks) for the
/// clocks of the nodes to run at different rates and for the leader to be paused between its
/// check of the lease and its answer. That margin is the assumption ReadIndex does not make.
/// A lease is dropped when leadership is handed over or the membership changes.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// The term it was earned in: it never outlives its term.
    term: u64,
    until: Instant,
}

/// The consensus loop's state.
pub struct Node<S: StateMachine, L: LogStore> {
    id: u64,
    raw: RawNode<L>,
    state_machine: S,
    cluster: ClusterState,
    applied: u64,
    options: NodeOptions,
    transport: Arc<Transport>,
    next_request_id: u64,
    /// The last timestamp this node stamped on a proposal, to keep them increasing.
    last_stamp_ms: u64,
    /// Proposals by the log index they were appended at.
    proposals: BTreeMap<u64, PendingProposal>,
    /// The conf change in flight, by log index (raft allows one at a time).
    conf_change: Option<(u64, Instant, PendingConf)>,
    transfer: Option<(u64, Instant, Reply<()>)>,
    /// Linearizable queries not yet in a batch: they share the next read index.
    new_reads: Vec<PendingQuery>,
    /// When the oldest of `new_reads` times out: a query waiting for the batch ahead of it
    /// gets no more time than one sent into a batch at once.
    new_reads_deadline: Option<Instant>,
    /// Read batches waiting for raft to confirm a read index, by batch id.
    reads_waiting: HashMap<u64, ReadBatch>,
    /// Read batches with a confirmed read index, waiting for the state machine to apply it.
    reads_ready: VecDeque<(u64, ReadBatch)>,
    next_read_id: u64,
    /// The leader's read lease, when `options.read_lease` is on and one was earned.
    lease: Option<Lease>,
    /// Read-index rounds first asked before this earn no lease: leadership was handed over or
    /// the membership changed after they started.
    lease_barrier: Instant,
    /// A read was answered from the lease since it was last renewed, so it is worth renewing.
    lease_used: bool,
    /// When this node started: it ignores vote requests for one election timeout after (see
    /// [`Node::ignores_votes`]).
    started: Instant,
    removed: bool,
    /// Why writes are refused for lack of disk space, checked every tick.
    disk_full: Option<String>,
    /// The snapshot being encoded and written on a thread of its own (one at a time): a large
    /// store's file takes seconds to write, during which this node keeps replicating.
    saving: Option<SnapshotSave>,
    /// After a snapshot could not be written (e.g. the disk is full), none is started before
    /// this.
    snapshot_retry_at: Option<Instant>,
    /// Peers' messages refused at the door, logged at most once a second.
    refusals: LogLimiter,
}

/// How long after a failed snapshot write the node tries again: a full or failing disk is not
/// asked to take the whole store again every round, and ten seconds add little to the log.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(10);

/// A snapshot of this node's state on its way to disk (see [`Node::maybe_snapshot`]).
struct SnapshotSave {
    /// Encodes and writes it; the log store records the result.
    thread: std::thread::JoinHandle<Result<SavedSnapshot, StorageError>>,
    /// The log index it stands at.
    index: u64,
    /// Where the log is compacted to once it is durable.
    compact_index: u64,
    /// When the snapshot was started, and how long the state took to gather (for the log).
    started: Instant,
    taken: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// raft-rs logs through slog; send it to our tracing log.
fn raft_logger() -> slog::Logger {
    slog::Logger::root(crate::raft_log::TracingDrain, slog::o!())
}

impl<S: StateMachine, L: LogStore> Node<S, L> {
    /// A node with id `id` over `store`. `cluster` is the replicated state matching the store's
    /// snapshot (empty for a node that has just joined and waits for the leader's snapshot).
    pub fn new(
        id: u64,
        store: L,
        state_machine: S,
        cluster: ClusterState,
        transport: Arc<Transport>,
        options: NodeOptions,
    ) -> Result<Self, NodeFatal> {
        let applied = store.snapshot_metadata().index;
        let config = raft::Config {
            id,
            election_tick: options.election_ticks,
            heartbeat_tick: options.heartbeat_ticks,
            applied,
            max_size_per_msg: options.max_append_bytes,
            max_inflight_msgs: options.max_inflight_appends,
            check_quorum: true,
            pre_vote: true,
            // Bounds memory held by entries proposed but not yet committed: 64 MiB; beyond
            // it proposals are refused ("overloaded") instead of piling up.
            max_uncommitted_size: 64 << 20,
            ..Default::default()
        };
        config.validate()?;
        let raw = RawNode::new(&config, store, &raft_logger())?;
        transport.set_members(&cluster.members);
        let mut node = Self {
            id,
            raw,
            state_machine,
            cluster,
            applied,
            options,
            transport,
            next_request_id: 1,
            last_stamp_ms: 0,
            proposals: BTreeMap::new(),
            conf_change: None,
            transfer: None,
            new_reads: Vec::new(),
            new_reads_deadline: None,
            reads_waiting: HashMap::new(),
            reads_ready: VecDeque::new(),
            next_read_id: 1,
            lease: None,
            lease_barrier: Instant::now(),
            lease_used: false,
            started: Instant::now(),
            removed: false,
            disk_full: None,
            saving: None,
            snapshot_retry_at: None,
            refusals: LogLimiter::new(),
        };
        // The state machine was just restored from the store's snapshot (if any).
        node.checkpoint_saved();
        Ok(node)
    }

    /// Starts an election at once (a freshly bootstrapped single node becomes leader now).
    pub fn campaign(&mut self) -> Result<(), NodeFatal> {
        self.raw.campaign()?;
        Ok(())
    }

    /// Runs the loop until shutdown, removal or a fatal error.
    ///
    /// Each round: wait for requests until the next tick is due, handle every queued request
    /// (a burst shares one round), tick if due, process the Ready (see `on_ready`), record a
    /// snapshot whose file is now durable (`finish_snapshot`), and start one if due
    /// (`maybe_snapshot`: checked every round, not only after a Ready, so that a snapshot put
    /// off by a failed write is retried on an idle node too).
    pub fn run(mut self, requests: Receiver<Request>) -> Result<NodeExit, NodeFatal> {
        let mut next_tick = Instant::now() + self.options.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match requests.recv_timeout(wait) {
                Ok(request) => {
                    self.handle(request)?;
                    for request in requests.try_iter().take(MAX_REQUESTS_PER_ROUND) {
                        self.handle(request)?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish_snapshot(true)?;
                    return Ok(NodeExit::Shutdown);
                }
            }
            self.ask_read_index();
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = (next_tick + self.options.tick).max(now);
                self.expire(now);
                self.check_disk();
            }
            self.on_ready()?;
            self.finish_snapshot(false)?;
            self.maybe_snapshot()?;
            if self.removed {
                self.finish_snapshot(true)?;
                self.fail_all(NodeError::Aborted(
                    "this node was removed from the cluster".into(),
                ));
                return Ok(NodeExit::Removed);
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The error for a request that needs the leader, sent to a non-leader.
    fn not_leader(&self) -> NodeError {
        let leader_id = self.raw.raft.leader_id;
        match self.cluster.members.get(&leader_id) {
            Some(address) if leader_id != self.id => NodeError::NotLeader {
                leader_id,
                address: address.clone(),
            },
            _ => NodeError::NoLeader,
        }
    }

    fn handle(&mut self, request: Request) -> Result<(), NodeFatal> {
        match request {
            Request::Raft(mut message, sender) => {
                if let Err(refused) = self.admit(&message, sender.as_deref()) {
                    if let Some(held_back) = self.refusals.admit() {
                        tracing::warn!(
                            from = message.from,
                            more_since_last = held_back,
                            "refused a raft message: {refused}"
                        );
                    }
                    return Ok(());
                }
                if self.ignores_votes(&message) {
                    tracing::debug!(from = message.from, "ignored a vote request: just started");
                    return Ok(());
                }
                self.tolerate_lost_entries(&mut message);
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!("dropped a raft message: {e}");
                }
            }
            Request::Propose { command, reply } => self.propose(command, reply),
            Request::Deploy { module, reply } => self.deploy(module, reply),
            Request::Snapshot { reply } => {
                let snapshot = self.state_machine.snapshot()?;
                let _ = reply.send(Ok((snapshot, self.state_machine.module_info())));
            }
            Request::Query {
                request,
                stale,
                reply,
            } => self.query(request, stale, reply)?,
            Request::Status { reply } => {
                let _ = reply.send(Ok(self.status()));
            }
            Request::AddNode { address, reply } => self.add_node(address, reply),
            Request::RemoveNode { id, reply } => self.remove_node(id, reply),
            Request::TransferLeader { to, reply } => self.transfer_leader(to, reply),
            Request::Unreachable(peer) => self.raw.report_unreachable(peer),
            Request::SnapshotSent(peer, delivered) => {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(peer, status);
            }
            Request::Removed(index) => {
                tracing::warn!(index, "the leader removed this node from the cluster");
                self.removed = true;
            }
        }
        Ok(())
    }

    /// Checks a peer's message at the door (see [`crate::peer_messages`]).
    fn admit(&self, message: &Message, sender: Option<&str>) -> Result<(), Refused> {
        peer_messages::check(
            message,
            &Local {
                id: self.id,
                members: &self.cluster.members,
                last_index: self.raw.raft.raft_log.last_index(),
                applied: self.applied,
                sender,
                term: self.raw.raft.term,
                leader_id: self.raw.raft.leader_id,
            },
        )
    }

    /// Whether `message` is a vote request to ignore because this node started less than an
    /// election timeout ago. A follower ignores vote requests for that long after hearing from
    /// the leader (raft's check_quorum rule, which read leases rely on), but a restarted node
    /// has forgotten when it last heard from it; so it keeps quiet for that long after starting.
    /// Leadership transfers, which the leader itself asks for, are exempt.
    fn ignores_votes(&self, message: &Message) -> bool {
        matches!(
            message.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && message.context != raft::CAMPAIGN_TRANSFER
            && self.started.elapsed() < self.options.tick * self.options.election_ticks as u32
    }

    /// Copes with a follower that lost log entries it had already synced (its disk lost the
    /// tail of a file). raft assumes this never happens: the leader keeps believing the
    /// follower holds them, and raft-rs panics on a heartbeat that commits past the follower's
    /// log. So a follower commits no further than its log reaches, and a leader that hears a
    /// follower's log is shorter than it recorded starts over from what the follower has.
    fn tolerate_lost_entries(&mut self, message: &mut Message) {
        let last = self.raw.raft.raft_log.last_index();
        match message.get_msg_type() {
            MessageType::MsgHeartbeat if message.commit > last => {
                tracing::warn!(
                    commit = message.commit,
                    last,
                    "the leader commits past this node's log: entries were lost from disk"
                );
                message.commit = last;
            }
            MessageType::MsgAppendResponse if message.reject && self.is_leader() => {
                let from = message.from;
                if let Some(progress) = self.raw.raft.mut_prs().get_mut(from)
                    && message.reject_hint < progress.matched
                {
                    tracing::warn!(
                        peer = from,
                        recorded = progress.matched,
                        has = message.reject_hint,
                        "a follower lost log entries it had acknowledged; resending them"
                    );
                    progress.matched = message.reject_hint;
                    progress.next_idx = message.reject_hint + 1;
                    progress.become_probe();
                }
            }
            _ => {}
        }
    }

    fn propose(&mut self, command: Vec<u8>, reply: Reply<Applied>) {
        if command.len() > self.options.max_command_bytes {
            let _ = reply.send(Err(NodeError::Invalid(format!(
                "the command is {} bytes; the limit is {} bytes",
                command.len(),
                self.options.max_command_bytes
            ))));
            return;
        }
        self.propose_payload(reply, |proposer, request_id, timestamp_ms| {
            EntryPayload::Command {
                proposer,
                request_id,
                timestamp_ms,
                command,
            }
        });
    }

    fn deploy(&mut self, module: Vec<u8>, reply: Reply<Applied>) {
        if module.len() > self.options.max_module_bytes {
            let _ = reply.send(Err(NodeError::Invalid(format!(
                "the module is {} bytes; the limit is {} bytes",
                module.len(),
                self.options.max_module_bytes
            ))));
            return;
        }
        self.propose_payload(reply, |proposer, request_id, timestamp_ms| {
            EntryPayload::Deploy {
                proposer,
                request_id,
                timestamp_ms,
                module,
            }
        });
    }

    /// Appends an entry made by `payload` (given proposer, request id and timestamp) to the
    /// log, and remembers who waits for its answer.
    fn propose_payload(
        &mut self,
        reply: Reply<Applied>,
        payload: impl FnOnce(u64, u64, u64) -> EntryPayload,
    ) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if let Some(why) = &self.disk_full {
            let _ = reply.send(Err(NodeError::DiskFull(why.clone())));
            return;
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.last_stamp_ms = now_ms().max(self.last_stamp_ms);
        let payload = payload(self.id, request_id, self.last_stamp_ms);
        if let Err(e) = self.raw.propose(vec![], encode(&payload)) {
            let _ = reply.send(Err(NodeError::Busy(format!(
                "the leader cannot take proposals right now ({e}); retry shortly"
            ))));
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        self.proposals.insert(
            index,
            PendingProposal {
                request_id,
                deadline: Instant::now() + self.options.request_timeout,
                reply,
            },
        );
    }

    fn query(
        &mut self,
        request: Vec<u8>,
        stale: bool,
        reply: Reply<Answered>,
    ) -> Result<(), NodeFatal> {
        if stale {
            self.answer(PendingQuery { request, reply })?;
        } else if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(NodeError::NoLeader));
        } else if let Some(index) = self.lease_read_index() {
            self.lease_used = true;
            let query = PendingQuery { request, reply };
            if index <= self.applied {
                self.answer(query)?;
            } else {
                let now = Instant::now();
                let batch = ReadBatch {
                    queries: vec![query],
                    deadline: now + self.options.request_timeout,
                    first_asked: now,
                    asked: now,
                };
                self.reads_ready.push_back((index, batch));
            }
        } else {
            self.new_reads_deadline
                .get_or_insert_with(|| Instant::now() + self.options.request_timeout);
            self.new_reads.push(PendingQuery { request, reply });
        }
        Ok(())
    }

    /// How long a read lease lasts from the start of the round that earned it: one tick less
    /// than the followers' promise not to vote (see [`Lease`]).
    fn lease_length(&self) -> Duration {
        self.options.tick * (self.options.election_ticks.saturating_sub(2) as u32)
    }

    /// The index a linearizable read may be answered at right now from the lease, if this
    /// node holds a valid one.
    fn lease_read_index(&self) -> Option<u64> {
        let lease = self.lease?;
        let raft = &self.raw.raft;
        let valid = self.is_leader()
            && raft.term == lease.term
            && raft.lead_transferee.is_none()
            && Instant::now() < lease.until;
        let committed = raft.raft_log.committed;
        // A new leader knows what is committed only once an entry of its own term is.
        (valid && raft.raft_log.term(committed).ok() == Some(raft.term)).then_some(committed)
    }

    /// Whether the lease, having been used, is past half its length: then a read-index round
    /// renews it before it runs out, so a steady stream of reads never waits for one.
    fn lease_wants_renewal(&self) -> bool {
        self.lease_used
            && self.lease.is_some_and(|lease| {
                lease.until.saturating_duration_since(Instant::now()) < self.lease_length() / 2
            })
    }

    /// Forgets the lease and refuses one from rounds already under way: leadership is being
    /// handed over, or the membership changed.
    fn drop_lease(&mut self) {
        self.lease = None;
        self.lease_barrier = Instant::now();
    }

    /// Asks raft for one read index covering every linearizable query received since the last
    /// one was asked, and again for batches raft has not answered within a few ticks.
    ///
    /// Only one batch waits for raft at a time (as etcd does): each read index costs a
    /// heartbeat round to every follower, so under load the queries that arrive during one
    /// round all share the next, instead of every loop iteration starting a round of its own.
    fn ask_read_index(&mut self) {
        let now = Instant::now();
        let renew = self.lease_wants_renewal();
        if (!self.new_reads.is_empty() || renew) && self.reads_waiting.is_empty() {
            self.lease_used = false;
            let id = self.next_read_id;
            self.next_read_id += 1;
            self.raw.read_index(id.to_le_bytes().to_vec());
            let batch = ReadBatch {
                queries: std::mem::take(&mut self.new_reads),
                deadline: self
                    .new_reads_deadline
                    .take()
                    .unwrap_or(now + self.options.request_timeout),
                first_asked: now,
                asked: now,
            };
            self.reads_waiting.insert(id, batch);
        }
        let retry_after = self.options.tick * 3;
        for (id, batch) in self.reads_waiting.iter_mut() {
            if now.duration_since(batch.asked) >= retry_after {
                batch.asked = now;
                self.raw.read_index(id.to_le_bytes().to_vec());
            }
        }
    }

    fn add_node(&mut self, address: String, reply: Reply<Joined>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if let Some(id) = self.cluster.id_of(&address) {
            // Already a member (a retried join): same answer again.
            let _ = reply.send(Ok(Joined {
                id,
                members: self.cluster.members.clone(),
            }));
            return;
        }
        let id = self.cluster.next_node_id;
        let change = ConfChange {
            change_type: ConfChangeType::AddNode,
            node_id: id,
            context: address.into_bytes().into(),
            ..Default::default()
        };
        self.propose_conf_change(change, PendingConf::Add { id, reply });
    }

    fn remove_node(&mut self, id: u64, reply: Reply<()>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if !self.cluster.members.contains_key(&id) {
            let _ = reply.send(Err(NodeError::Precondition(format!(
                "node {id} is not a member of the cluster"
            ))));
            return;
        }
        if self.cluster.members.len() == 1 {
            let _ = reply.send(Err(NodeError::Precondition(
                "cannot remove the last member of the cluster".into(),
            )));
            return;
        }
        if id == self.id {
            // A leaving leader hands over first: the most up-to-date follower takes over,
            // then the new leader removes us. The caller retries.
            let successor = self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(peer, _)| **peer != self.id)
                .max_by_key(|(_, progress)| progress.matched)
                .map(|(peer, _)| *peer);
            if let Some(successor) = successor {
                self.drop_lease();
                self.raw.transfer_leader(successor);
            }
            let _ = reply.send(Err(NodeError::Busy(format!(
                "handing leadership to node {} before leaving",
                successor.unwrap_or(0)
            ))));
            return;
        }
        let change = ConfChange {
            change_type: ConfChangeType::RemoveNode,
            node_id: id,
            ..Default::default()
        };
        self.propose_conf_change(change, PendingConf::Remove { reply });
    }

    fn propose_conf_change(&mut self, change: ConfChange, pending: PendingConf) {
        if self.conf_change.is_some() {
            pending.fail(NodeError::Busy(
                "another membership change is in progress; retry shortly".into(),
            ));
            return;
        }
        if let Err(e) = self.raw.propose_conf_change(vec![], change) {
            pending.fail(NodeError::Busy(format!(
                "cannot change membership now ({e}); retry shortly"
            )));
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        let deadline = Instant::now() + self.options.request_timeout;
        self.conf_change = Some((index, deadline, pending));
    }

    fn transfer_leader(&mut self, to: u64, reply: Reply<()>) {
        if self.raw.raft.leader_id == to {
            let _ = reply.send(Ok(()));
            return;
        }
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if !self.cluster.members.contains_key(&to) {
            let _ = reply.send(Err(NodeError::Precondition(format!(
                "node {to} is not a member of the cluster"
            ))));
            return;
        }
        self.drop_lease();
        self.raw.transfer_leader(to);
        let deadline = Instant::now() + self.options.request_timeout;
        if let Some((_, _, previous)) = self.transfer.replace((to, deadline, reply)) {
            let _ = previous.send(Err(NodeError::Aborted(
                "superseded by another leadership transfer".into(),
            )));
        }
    }

    fn status(&self) -> NodeStatus {
        let role = match self.raw.raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        NodeStatus {
            id: self.id,
            role,
            leader_id: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: self.applied,
            snapshot_index: self.raw.store().snapshot_metadata().index,
            members: self.cluster.members.clone(),
            module: self.state_machine.module_info(),
            upgrades: self.cluster.upgrades.clone(),
        }
    }

    /// Refuses writes while the data dir's free space is under the reserve, and says so once.
    fn check_disk(&mut self) {
        let Some(dir) = &self.options.data_dir else {
            return;
        };
        let free = match rustix::fs::statvfs(dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot check free disk space: {e}");
                return;
            }
        };
        let full = free < self.options.min_free_disk_bytes;
        match (&self.disk_full, full) {
            (None, true) => {
                let why = format!(
                    "disk full: {} MiB free in {}, writes need at least {} MiB; free some \
                     space (writes resume by themselves)",
                    free >> 20,
                    dir.display(),
                    self.options.min_free_disk_bytes >> 20
                );
                tracing::error!("{why}");
                self.disk_full = Some(why);
            }
            (Some(_), false) => {
                tracing::info!(
                    free_mib = free >> 20,
                    "disk space available again; accepting writes"
                );
                self.disk_full = None;
            }
            _ => {}
        }
    }

    /// Fails requests whose time is up.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(index, _)| *index)
            .collect();
        for index in expired {
            if let Some(p) = self.proposals.remove(&index) {
                let _ = p.reply.send(Err(NodeError::Timeout(format!(
                    "the proposal was not committed within {:?} (is this node cut off from \
                     the leader?); it may still be applied later",
                    self.options.request_timeout
                ))));
            }
        }
        let expired: Vec<u64> = self
            .reads_waiting
            .iter()
            .filter(|(_, b)| b.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut late: Vec<ReadBatch> = expired
            .into_iter()
            .filter_map(|id| self.reads_waiting.remove(&id))
            .collect();
        // Confirmed reads whose index this node has not applied in time (it fell behind).
        while self
            .reads_ready
            .front()
            .is_some_and(|(_, batch)| batch.deadline <= now)
        {
            late.extend(self.reads_ready.pop_front().map(|(_, batch)| batch));
        }
        for batch in late {
            for query in batch.queries {
                let _ = query.reply.send(Err(NodeError::Timeout(
                    "the read could not be confirmed with the leader in time; retry, or read \
                     with --stale"
                        .into(),
                )));
            }
        }
        if let Some((_, _, pending)) = self
            .conf_change
            .take_if(|(_, deadline, _)| *deadline <= now)
        {
            pending.fail(NodeError::Timeout(
                "the membership change was not committed in time".into(),
            ));
        }
        if let Some((to, _, reply)) = self.transfer.take_if(|(_, deadline, _)| *deadline <= now) {
            let _ = reply.send(Err(NodeError::Timeout(format!(
                "node {to} did not take over leadership in time"
            ))));
        }
    }

    fn fail_all(&mut self, error: NodeError) {
        for (_, p) in std::mem::take(&mut self.proposals) {
            let _ = p.reply.send(Err(error.clone()));
        }
        self.new_reads_deadline = None;
        for query in std::mem::take(&mut self.new_reads) {
            let _ = query.reply.send(Err(error.clone()));
        }
        let waiting = std::mem::take(&mut self.reads_waiting).into_values();
        let ready = std::mem::take(&mut self.reads_ready)
            .into_iter()
            .map(|(_, b)| b);
        for batch in waiting.chain(ready) {
            for query in batch.queries {
                let _ = query.reply.send(Err(error.clone()));
            }
        }
    }

    /// Processes one Ready, in the order raft-rs documents ("Processing the Ready State"):
    /// 1. send the messages (a leader may send before it persists: it counts itself later);
    /// 2. install a snapshot received from the leader;
    /// 3. note confirmed read indexes, apply the committed entries;
    /// 4. persist new entries and the hard state, with one sync (group commit);
    /// 5. send the messages that had to wait for that persistence (votes, append responses);
    /// 6. advance, then send and apply what the light ready holds;
    /// 7. serve reads whose index is now applied, and take a snapshot if the log is long.
    fn on_ready(&mut self) -> Result<(), NodeFatal> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();

        self.send(ready.take_messages());

        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }

        self.note_read_states(ready.take_read_states());
        self.apply(ready.take_committed_entries())?;

        self.raw.mut_store().persist(ready.entries(), ready.hs())?;

        self.send(ready.take_persisted_messages());

        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();

        self.serve_reads()?;
        self.check_transfer();
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            if !self.transport.send(message) {
                if is_snapshot {
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
                self.raw.report_unreachable(to);
            }
        }
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), NodeFatal> {
        let index = snapshot.get_metadata().index;
        let data = SnapshotData::decode(&snapshot.data)?;
        tracing::info!(
            index,
            bytes = snapshot.data.len(),
            "installing a snapshot from the leader"
        );
        restore_snapshot_data(&mut self.state_machine, &data)?;
        self.cluster = data.cluster;
        self.transport.set_members(&self.cluster.members);
        self.raw.mut_store().install_snapshot(snapshot)?;
        self.checkpoint_saved();
        self.applied = index;
        Ok(())
    }

    fn note_read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            let Ok(id) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(batch) = self.reads_waiting.remove(&u64::from_le_bytes(id)) {
                self.earn_lease(batch.first_asked);
                self.reads_ready.push_back((state.index, batch));
            }
        }
    }

    /// A quorum confirmed a read-index round first asked at `first_asked`: with
    /// `--read-lease`, that earns (or extends) the leader's lease.
    fn earn_lease(&mut self, first_asked: Instant) {
        if !self.options.read_lease || !self.is_leader() || first_asked <= self.lease_barrier {
            return;
        }
        let until = first_asked + self.lease_length();
        let term = self.raw.raft.term;
        if self
            .lease
            .is_none_or(|lease| lease.term != term || lease.until < until)
        {
            self.lease = Some(Lease { term, until });
        }
    }

    fn serve_reads(&mut self) -> Result<(), NodeFatal> {
        while self
            .reads_ready
            .front()
            .is_some_and(|(index, _)| *index <= self.applied)
        {
            let (_, batch) = self.reads_ready.pop_front().expect("checked above");
            for query in batch.queries {
                self.answer(query)?;
            }
        }
        Ok(())
    }

    /// Answers a query from the state machine as it is now.
    fn answer(&mut self, query: PendingQuery) -> Result<(), NodeFatal> {
        let outcome = self.state_machine.query(&query.request)?;
        let _ = query.reply.send(Ok(Answered {
            applied_index: self.applied,
            outcome,
        }));
        Ok(())
    }

    fn check_transfer(&mut self) {
        let leader = self.raw.raft.leader_id;
        if let Some((_, _, reply)) = self.transfer.take_if(|(to, _, _)| *to == leader) {
            let _ = reply.send(Ok(()));
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeFatal> {
        for entry in entries {
            let index = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // A new leader's empty entry.
                    self.resolve_proposal(index, None);
                }
                EntryType::EntryNormal => {
                    let payload: EntryPayload =
                        match crate::log_format::decode("log entry", &entry.data) {
                            Ok(payload) => payload,
                            Err(e) => {
                                // Every replica holds the same bytes, so every replica skips
                                // this entry alike: a rejection, not a reason to stop.
                                tracing::error!(
                                    index,
                                    "skipping a log entry on every replica: {e}"
                                );
                                self.resolve_proposal(index, None);
                                self.applied = index;
                                continue;
                            }
                        };
                    match payload {
                        EntryPayload::Command {
                            proposer,
                            request_id,
                            timestamp_ms,
                            command,
                        } => {
                            let timestamp_ms = timestamp_ms.max(self.cluster.last_timestamp_ms);
                            self.cluster.last_timestamp_ms = timestamp_ms;
                            let ctx = ApplyContext {
                                index,
                                term: entry.term,
                                timestamp_ms,
                            };
                            let outcome = self.state_machine.apply(ctx, &command)?;
                            let mine = (proposer == self.id).then_some((request_id, outcome));
                            self.resolve_proposal(index, mine);
                        }
                        EntryPayload::Deploy {
                            proposer,
                            request_id,
                            timestamp_ms,
                            module,
                        } => {
                            let timestamp_ms = timestamp_ms.max(self.cluster.last_timestamp_ms);
                            self.cluster.last_timestamp_ms = timestamp_ms;
                            let outcome = self.upgrade(index, timestamp_ms, &module)?;
                            let mine = (proposer == self.id).then_some((request_id, outcome));
                            self.resolve_proposal(index, mine);
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    match ConfChange::parse_from_bytes(&entry.data) {
                        Ok(change) => self.apply_conf_change(index, change)?,
                        Err(e) => tracing::error!(
                            index,
                            "skipping a membership change that cannot be decoded, on every \
                             replica: {e}"
                        ),
                    }
                    self.resolve_proposal(index, None);
                }
                EntryType::EntryConfChangeV2 => {
                    tracing::error!(index, "ignoring a joint-consensus conf change: unsupported");
                    self.resolve_proposal(index, None);
                }
            }
            self.applied = index;
            // raft-rs turns a conf change it cannot take now into an empty entry: the change
            // pending at this index was not applied, and never will be.
            if let Some((_, _, pending)) = self
                .conf_change
                .take_if(|(pending, _, _)| *pending <= index)
            {
                pending.fail(NodeError::Busy(
                    "the membership change was refused (another one is in progress); retry".into(),
                ));
            }
        }
        Ok(())
    }

    /// Applies a deploy entry: the same switch, or the same refusal, on every replica.
    fn upgrade(
        &mut self,
        index: u64,
        timestamp_ms: u64,
        module: &[u8],
    ) -> Result<Result<Vec<u8>, Rejection>, NodeFatal> {
        let before = self.state_machine.module_info();
        let info = match self.state_machine.upgrade(module)? {
            Ok(info) => info,
            Err(reason) => {
                tracing::warn!(index, "deploy refused: {reason}");
                return Ok(Err(Rejection::Store(format!("deploy refused: {reason}"))));
            }
        };
        let sha256 = hex::encode(info.sha256);
        if info.sha256 == before.sha256 {
            return Ok(Ok(
                format!("unchanged: {sha256} is already active").into_bytes()
            ));
        }
        tracing::info!(index, %sha256, version = %info.version, "store code upgraded");
        if self.cluster.upgrades.len() >= MAX_UPGRADES_KEPT {
            self.cluster.upgrades.remove(0);
        }
        self.cluster.upgrades.push(UpgradeRecord {
            index,
            sha256: info.sha256,
            timestamp_ms,
            version: info.version.clone(),
        });
        Ok(Ok(format!("deployed {sha256} {}", info.version)
            .trim_end()
            .to_string()
            .into_bytes()))
    }

    /// Answers the client waiting for the entry at `index`, if any: with the outcome when the
    /// entry is its proposal, with "aborted" when another leader's entry took the slot.
    fn resolve_proposal(&mut self, index: u64, mine: Option<(u64, Result<Vec<u8>, Rejection>)>) {
        let Some(pending) = self.proposals.remove(&index) else {
            return;
        };
        let answer = match mine {
            Some((request_id, outcome)) if request_id == pending.request_id => {
                Ok(Applied { index, outcome })
            }
            _ => Err(NodeError::Aborted(
                "the proposal was lost to a leader change and will not be applied; retry".into(),
            )),
        };
        let _ = pending.reply.send(answer);
    }

    fn apply_conf_change(&mut self, index: u64, change: ConfChange) -> Result<(), NodeFatal> {
        self.drop_lease();
        let node = change.node_id;
        // Every replica applies the same change to the same membership, so a change raft-rs
        // refuses (e.g. one that would leave no voter) is refused alike everywhere.
        let conf_state = match node {
            raft::INVALID_ID => Err(raft::Error::ConfChangeError("node id 0".into())),
            _ => self.raw.apply_conf_change(&change),
        };
        let conf_state = match conf_state {
            Ok(conf_state) => conf_state,
            Err(e) => {
                tracing::error!(
                    index,
                    node,
                    "skipping a membership change on every replica: {e}"
                );
                return Ok(());
            }
        };
        self.raw.mut_store().set_conf_state(conf_state)?;
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let address = String::from_utf8_lossy(&change.context).into_owned();
                tracing::info!(node, %address, index, "node added to the cluster");
                self.cluster.members.insert(node, address);
                self.cluster.next_node_id = self.cluster.next_node_id.max(node + 1);
            }
            ConfChangeType::RemoveNode => {
                tracing::info!(node, index, "node removed from the cluster");
                let address = self.cluster.members.remove(&node);
                if node == self.id {
                    self.removed = true;
                } else if let (true, Some(address)) = (self.is_leader(), address) {
                    self.transport.notify_removed(node, address, index);
                }
            }
        }
        self.transport.set_members(&self.cluster.members);
        if matches!(&self.conf_change, Some((pending_index, _, _)) if *pending_index == index) {
            let (_, _, pending) = self.conf_change.take().expect("checked above");
            match pending {
                PendingConf::Add { id, reply } => {
                    let answer = if id == node {
                        Ok(Joined {
                            id,
                            members: self.cluster.members.clone(),
                        })
                    } else {
                        Err(NodeError::Aborted(
                            "the join was lost to a leader change".into(),
                        ))
                    };
                    let _ = reply.send(answer);
                }
                PendingConf::Remove { reply } => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        Ok(())
    }

    /// Takes a snapshot when one is due: gathers the state here (the state machine lives on
    /// this thread), then encodes and writes it on a thread of its own, so that the Ready loop
    /// goes on meanwhile; [`Node::finish_snapshot`] records it once it is durable.
    fn maybe_snapshot(&mut self) -> Result<(), NodeFatal> {
        let retry_later = self.snapshot_retry_at.is_some_and(|at| Instant::now() < at);
        if self.saving.is_some() || retry_later {
            return Ok(());
        }
        let store = self.raw.store();
        let last_snapshot = store.snapshot_metadata().index;
        let since = self.applied.saturating_sub(last_snapshot);
        // A snapshot rewrites the whole store, so a large one waits until the log since the
        // last snapshot is a quarter of the store's size: snapshots then cost at most about
        // four times what is written, instead of a 300 MiB rewrite every 10,000 writes.
        let log_bytes = store.log_bytes();
        // The snapshot also carries the module's bytes, which are not the store's size.
        let module_bytes = self
            .state_machine
            .module_bytes()
            .map_or(0, |bytes| bytes.len());
        let state_bytes = store.snapshot_bytes().saturating_sub(module_bytes as u64);
        let due = (since >= self.options.snapshot_entries && log_bytes >= state_bytes / 4)
            || log_bytes >= self.options.snapshot_log_bytes
            || store.snapshot_requested()
            || self.state_machine.wants_snapshot();
        if since == 0 || !due {
            return Ok(());
        }
        let started = Instant::now();
        let mut metadata = SnapshotMetadata {
            index: self.applied,
            term: raft::Storage::term(store, self.applied)?,
            ..Default::default()
        };
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let data = SnapshotData {
            format: SNAPSHOT_FORMAT,
            cluster: self.cluster.clone(),
            plugin_sha256: self.state_machine.module_info().sha256,
            module: self
                .state_machine
                .module_bytes()
                .map(|bytes| bytes.to_vec())
                .unwrap_or_default(),
            store: self.state_machine.snapshot()?,
        };
        let save = store.snapshot_saver();
        let thread = std::thread::Builder::new()
            .name("snapshot-save".into())
            .spawn(move || {
                let mut snapshot = Snapshot {
                    data: encode(&data).into(),
                    ..Default::default()
                };
                // The store's bytes are in the encoding now: free them before the file is
                // written.
                drop(data);
                snapshot.set_metadata(metadata);
                save(snapshot)
            })
            .map_err(StorageError::Io)?;
        self.saving = Some(SnapshotSave {
            thread,
            index: self.applied,
            compact_index: self.applied.saturating_sub(self.options.log_entries_kept),
            started,
            taken: started.elapsed(),
        });
        Ok(())
    }

    /// Records the snapshot being written once its file is durable (with `wait`, waits for it:
    /// a node that stops leaves no half-written snapshot behind), and compacts the log.
    fn finish_snapshot(&mut self, wait: bool) -> Result<(), NodeFatal> {
        let Some(save) = self
            .saving
            .take_if(|save| wait || save.thread.is_finished())
        else {
            return Ok(());
        };
        let saved = match save.thread.join() {
            Ok(Ok(saved)) => saved,
            Ok(Err(e)) => {
                // Nothing was recorded: the log is whole and the previous snapshot stands, so
                // the node goes on (writes stop by themselves when the disk is nearly full).
                tracing::error!(
                    index = save.index,
                    retry_in_s = SNAPSHOT_RETRY.as_secs(),
                    "cannot write a snapshot: {e}; the log is kept whole until one is written"
                );
                self.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
                return Ok(());
            }
            Err(_) => {
                return Err(StorageError::Inconsistent(
                    "the thread writing a snapshot panicked".into(),
                )
                .into());
            }
        };
        let (index, bytes) = (saved.metadata().index, saved.bytes());
        self.raw
            .mut_store()
            .compact_to_saved(saved, save.compact_index)?;
        self.checkpoint_saved();
        tracing::info!(
            index,
            bytes,
            taken_ms = save.taken.as_millis() as u64,
            saved_ms = (save.started.elapsed() - save.taken).as_millis() as u64,
            "took a snapshot"
        );
        Ok(())
    }

    /// Tells the state machine its state as of the latest snapshot is durable, and how to read
    /// it back, so that it need not keep a copy in memory.
    fn checkpoint_saved(&mut self) {
        let Some(read) = self.raw.store().snapshot_reader() else {
            return;
        };
        self.state_machine.checkpoint_saved(Box::new(move || {
            let snapshot = read().map_err(|e| e.to_string())?;
            let data = SnapshotData::decode(&snapshot.data).map_err(|e| e.to_string())?;
            Ok(data.store.into())
        }));
    }
}

/// The snapshot that starts a new cluster: node 1 alone, with the store's initial state.
pub fn bootstrap_snapshot(
    address: String,
    state_machine: &mut impl StateMachine,
) -> Result<(Snapshot, ClusterState), StateMachineError> {
    let cluster = ClusterState {
        members: BTreeMap::from([(1, address)]),
        next_node_id: 2,
        ..ClusterState::default()
    };
    let data = SnapshotData {
        format: SNAPSHOT_FORMAT,
        cluster: cluster.clone(),
        plugin_sha256: state_machine.module_info().sha256,
        module: state_machine
            .module_bytes()
            .map(|bytes| bytes.to_vec())
            .unwrap_or_default(),
        store: state_machine.snapshot()?,
    };
    let mut snapshot = Snapshot {
        data: encode(&data).into(),
        ..Default::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.mut_conf_state().voters = vec![1];
    Ok((snapshot, cluster))
}

/// Restores a snapshot's store state, switching to the snapshot's code first when it differs
/// from the code running now (a node that joins or restarts after a deploy).
pub fn restore_snapshot_data(
    state_machine: &mut impl StateMachine,
    data: &SnapshotData,
) -> Result<(), StateMachineError> {
    let running = state_machine.module_info().sha256;
    if !data.module.is_empty() && data.plugin_sha256 != running {
        tracing::warn!(
            cluster = %hex::encode(data.plugin_sha256),
            started_with = %hex::encode(running),
            "the cluster runs different store code than --plugin: switching to the cluster's"
        );
        state_machine.restore_with_module(&data.module, &data.store)
    } else {
        state_machine.restore(&data.store)
    }
}
