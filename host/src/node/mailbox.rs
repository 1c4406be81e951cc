//! The node's mailbox: what the consensus loop can be asked ([`Request`]), the handle async code
//! asks it through ([`NodeHandle`], a bounded channel), and the answers and errors it gives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use raft::prelude::Message;
use tokio::sync::oneshot;

use crate::metrics::QueueDepth;
use crate::replicated::{DecodeError, LearnerPlan, UpgradeRecord};
use crate::state_machine::{ModuleInfo, Rejection, StateMachineError};
use crate::storage::StorageError;

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
    /// This replica's answers differ from the cluster's: it serves nothing until rebuilt.
    #[error("{0}")]
    Diverged(String),
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

/// The answer to a deploy: where its entry landed, and what it did there (the same on every
/// replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub index: u64,
    pub outcome: DeployOutcome,
}

/// What applying a deploy entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployOutcome {
    /// Every replica switched to this module at the entry.
    Switched(ModuleInfo),
    /// The module was already active: nothing changed.
    Unchanged(ModuleInfo),
    /// Every replica refused it (it does not load, or cannot restore the state); the old code
    /// goes on.
    Refused(String),
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
    /// Which of them are learners, and what becomes of each.
    pub learners: BTreeMap<u64, LearnerPlan>,
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
    /// Every member (voters and learners) with its address.
    pub members: BTreeMap<u64, String>,
    /// The members that are learners, and what becomes of each.
    pub learners: BTreeMap<u64, LearnerPlan>,
    /// The last log index each member is known to hold: only a leader knows (empty elsewhere).
    pub match_index: BTreeMap<u64, u64>,
    pub module: ModuleInfo,
    pub upgrades: Vec<UpgradeRecord>,
    /// Why this replica serves no reads or writes: its answers differ from the cluster's.
    pub diverged: Option<String>,
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

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
    /// Replicate new code for the store (leader only): a module whose bytes hash to `sha256`,
    /// stored in this node's module store already (see `crate::module_store`).
    Deploy {
        sha256: [u8; 32],
        module: Arc<Vec<u8>>,
        reply: Reply<Deployed>,
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
    /// Add the node at `address` as a learner, with what becomes of it (leader only).
    AddNode {
        address: String,
        plan: LearnerPlan,
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
    /// The members (other than this node) known to run hosts that read packed log entries
    /// (see `grpc_services::member_formats`).
    PackedReaders(std::collections::BTreeSet<u64>),
}

impl Request {
    /// Answers a client's request with `error` without doing it; `Some(request)` back for a
    /// request that is not a client's (a peer's message, the transport's news), or `Status`.
    pub(super) fn refuse(self, error: NodeError) -> Option<Request> {
        match self {
            Request::Propose { reply, .. } => drop(reply.send(Err(error))),
            Request::Deploy { reply, .. } => drop(reply.send(Err(error))),
            Request::Snapshot { reply } => drop(reply.send(Err(error))),
            Request::Query { reply, .. } => drop(reply.send(Err(error))),
            Request::AddNode { reply, .. } => drop(reply.send(Err(error))),
            Request::RemoveNode { reply, .. } => drop(reply.send(Err(error))),
            Request::TransferLeader { reply, .. } => drop(reply.send(Err(error))),
            other => return Some(other),
        }
        None
    }
}

/// Where the node's messages to its peers go: the gRPC transport in a running node (see
/// `transport.rs`), a simulated network in tests. Only the consensus thread uses it, and no call
/// may block it: delivery happens elsewhere, and failures come back as requests
/// ([`Request::Unreachable`], [`Request::SnapshotSent`]).
pub trait Outbox {
    /// Queues `message` for its peer; `false` if it cannot be (unknown peer, full queue): raft
    /// then hears that the peer is unreachable.
    fn send(&mut self, message: Message) -> bool;
    /// The membership changed: from now on these are the peers (this node's own id among them).
    fn set_members(&mut self, members: &BTreeMap<u64, String>);
    /// Tells node `id`, at `address`, that it was removed at log index `index` (it may never
    /// see its removal commit, since the leader stops replicating to it). Best effort.
    fn notify_removed(&mut self, id: u64, address: String, index: u64);
    /// A way to queue messages from another thread, for the moments the consensus thread is
    /// busy with one long call (a large store's snapshot; see `snapshots`): it queues exactly
    /// as [`Outbox::send`] does. `None` (the default) if this outbox has none, as a simulated
    /// network, which runs every node on one thread.
    fn side_sender(&self) -> Option<SideSender> {
        None
    }
}

/// See [`Outbox::side_sender`]: `false` if the message could not be queued.
pub type SideSender = Box<dyn Fn(Message) -> bool + Send + Sync>;

/// A cloneable way to reach the consensus loop from async code.
#[derive(Clone)]
pub struct NodeHandle {
    sender: SyncSender<Request>,
    /// Counts what goes into the queue (see [`QueueDepth`]).
    depth: QueueDepth,
}

impl NodeHandle {
    /// Sends a request without waiting: for raft messages and transport reports. A full queue
    /// drops it (raft retransmits; reports are hints).
    pub fn send(&self, request: Request) -> bool {
        self.push(request).is_ok()
    }

    /// Like [`NodeHandle::send`], but gives the request back when the queue is full.
    pub fn try_send(&self, request: Request) -> Result<(), Request> {
        match self.push(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(request) | TrySendError::Disconnected(request)) => Err(request),
        }
    }

    /// Sends a request and waits for its reply.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        match self.push(make(reply)) {
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

    fn push(&self, request: Request) -> Result<(), TrySendError<Request>> {
        self.depth.enqueue();
        let sent = self.sender.try_send(request);
        if sent.is_err() {
            self.depth.undo();
        }
        sent
    }
}

/// The bounded queue into the consensus loop: 64k requests is a few seconds of peak load;
/// beyond it clients get "overloaded" instead of unbounded memory growth.
pub fn channel() -> (NodeHandle, Receiver<Request>) {
    counted_channel(QueueDepth::default())
}

/// [`channel`], its depth counted in `depth` (the loop counts what it takes out, see
/// `NodeMetrics::dequeued`).
pub fn counted_channel(depth: QueueDepth) -> (NodeHandle, Receiver<Request>) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(65_536);
    (NodeHandle { sender, depth }, receiver)
}
