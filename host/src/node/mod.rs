//! The consensus loop: one thread owns the raft-rs `RawNode`, the log store and the state
//! machine. Everything else talks to it through [`NodeHandle`] (a bounded channel), so nothing
//! here is shared or locked. This file holds the node, its loop and the Ready handling in
//! raft-rs' documented order; each concern around them has a file of its own:
//!
//! - [`mailbox`]: requests, the handle, answers and errors;
//! - [`options`]: tuning; [`reads`]: linearizable reads and leases;
//! - [`proposals`]: commands and deploys; [`membership`]: joins, leaves, transfers;
//! - [`snapshots`]: taking, saving and installing them; [`safety`]: the rules around raft-rs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use protobuf::Message as _;
use raft::eraftpb::ConfChangeV2;
use raft::prelude::{ConfChange, Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};

use crate::log_limit::LogLimiter;
use crate::module_store::HashedModule;
use crate::replicated::ClusterState;
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use apply_queue::ApplyQueue;

mod apply_queue;
mod divergence;
mod heartbeat_pump;
mod learners;
mod mailbox;
mod membership;
mod options;
mod proposals;
mod reads;
mod safety;
mod snapshots;

pub use divergence::{ALARM_FILE, Divergence, fold as fold_answer};
pub use mailbox::{
    Answered, Applied, DeployOutcome, Deployed, Joined, NodeError, NodeExit, NodeFatal, NodeHandle,
    NodeStatus, Outbox, Request, SideSender, channel, counted_channel,
};
pub use options::{MAX_MODULE_BYTES, NodeOptions};
pub use snapshots::{bootstrap_snapshot, restore_snapshot_data, snapshot_module};

use divergence::DivergenceCheck;
use learners::LearnerWatch;
use mailbox::Reply;
use membership::PendingConf;
use proposals::{PendingProposal, Waiter};
use reads::{PendingQuery, ReadRules, Reads};
use snapshots::SnapshotSave;

/// Most requests handled between two Ready rounds: bounds the latency one round adds, while
/// letting a burst of proposals share one fsync.
const MAX_REQUESTS_PER_ROUND: usize = 4096;

/// The consensus loop's state.
pub struct Node<S: StateMachine, L: LogStore, O: Outbox> {
    id: u64,
    raw: RawNode<L>,
    state_machine: S,
    cluster: ClusterState,
    applied: u64,
    options: NodeOptions,
    /// Where messages to peers go (see [`Outbox`]).
    outbox: O,
    next_request_id: u64,
    /// The last timestamp this node stamped on a proposal, to keep them increasing.
    last_stamp_ms: u64,
    /// Proposals by the log index they were appended at.
    proposals: BTreeMap<u64, PendingProposal>,
    /// Clients' commands of the current round, proposed (packed) at its end (see
    /// [`proposals`]).
    queued_commands: Vec<(Vec<u8>, Reply<Applied>)>,
    /// The index of the newest deploy seen in this node's log (or, at start, the last index:
    /// any entry of a former life may be one). Commands are packed only once it has applied:
    /// till then the code that will apply them may be a plugin that cannot tell them apart.
    newest_deploy_at: u64,
    /// The conf change in flight, by log index (raft allows one at a time).
    conf_change: Option<(u64, Instant, PendingConf)>,
    transfer: Option<(u64, Instant, Reply<()>)>,
    /// What the leader has seen of its learners (see [`learners`]).
    learner_watch: LearnerWatch,
    /// This replica's answers checked against the cluster's (see [`divergence`]).
    divergence: DivergenceCheck,
    /// Committed entries waiting behind a deploy being compiled (see [`apply_queue`]).
    apply_queue: ApplyQueue,
    /// Linearizable reads waiting for a read index, and the lease (see [`reads`]).
    reads: Reads<PendingQuery>,
    /// When this node started: it ignores vote requests for one election timeout after (see
    /// [`Node::ignores_votes`]).
    started: Instant,
    removed: bool,
    /// A node that applied its own removal at this index stays (serving no client, still
    /// voting) until this deadline, or, as leader, until every other member knows the change
    /// committed: a member that does not may be left in a joint configuration that needs this
    /// node's vote to elect anyone, for ever (the simulator's soak found two such nodes stuck
    /// as pre-candidates after the leader that removed itself had stopped at once).
    leaving: Option<(u64, Instant)>,
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
    /// The other members whose hosts read packed log entries, when the node is told (see
    /// [`NodeOptions::check_member_log_formats`]).
    packed_readers: BTreeSet<u64>,
    /// The time of the current round, and the wall clock then (ms since the Unix epoch, for
    /// the timestamps of entries): time is an input (see [`Node::round`]), so the node's rules
    /// run the same on a simulated clock.
    now: Instant,
    now_ms: u64,
    /// When raft ticks next.
    next_tick: Instant,
}

/// The wall clock, in milliseconds since the Unix epoch.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// raft-rs logs through slog; send it to our tracing log.
fn raft_logger() -> slog::Logger {
    slog::Logger::root(crate::raft_logger::TracingDrain, slog::o!())
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// A node with id `id` over `store`. `cluster` is the replicated state matching the store's
    /// snapshot (empty for a node that has just joined and waits for the leader's snapshot).
    pub fn new(
        id: u64,
        store: L,
        state_machine: S,
        cluster: ClusterState,
        mut outbox: O,
        options: NodeOptions,
        now: Instant,
    ) -> Result<Self, NodeFatal> {
        let applied = store.snapshot_metadata().index;
        let config = raft::Config {
            id,
            election_tick: options.election_ticks,
            min_election_tick: options.election_timeout_ticks.map_or(0, |(min, _)| min),
            max_election_tick: options.election_timeout_ticks.map_or(0, |(_, max)| max),
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
        let newest_deploy_at = raw.raft.raft_log.last_index();
        outbox.set_members(&cluster.members);
        let tick = options.tick;
        let read_rules = ReadRules {
            timeout: options.request_timeout,
            lease_length: options
                .read_lease
                .then(|| ReadRules::lease_length(options.tick, options.election_ticks)),
            retry_after: options.tick * 3,
        };
        let divergence = DivergenceCheck::open(options.data_dir.as_ref());
        let mut node = Self {
            id,
            raw,
            state_machine,
            cluster,
            applied,
            options,
            outbox,
            next_request_id: 1,
            last_stamp_ms: 0,
            proposals: BTreeMap::new(),
            queued_commands: Vec::new(),
            newest_deploy_at,
            conf_change: None,
            transfer: None,
            learner_watch: LearnerWatch::default(),
            divergence,
            apply_queue: ApplyQueue::default(),
            reads: Reads::new(read_rules, now),
            started: now,
            removed: false,
            leaving: None,
            disk_full: None,
            saving: None,
            snapshot_retry_at: None,
            refusals: LogLimiter::new(),
            packed_readers: BTreeSet::new(),
            now,
            now_ms: 0,
            next_tick: now + tick,
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

    /// Runs the loop on this thread until shutdown, removal or a fatal error: waits for
    /// requests until the next round is due, then runs a [`Node::round`] with every request that
    /// queued up meanwhile (a burst shares one round, and so one fsync), on the real clock.
    pub fn run(mut self, requests: Receiver<Request>) -> Result<NodeExit, NodeFatal> {
        loop {
            let wait = self.next_round().saturating_duration_since(Instant::now());
            let mut batch = Vec::new();
            match requests.recv_timeout(wait) {
                Ok(request) => {
                    batch.push(request);
                    batch.extend(requests.try_iter().take(MAX_REQUESTS_PER_ROUND));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.shut_down(),
            }
            self.options.metrics.dequeued(batch.len());
            if let Some(exit) = self.round(Instant::now(), wall_clock_ms(), batch)? {
                return Ok(exit);
            }
        }
    }

    /// One round of the loop at time `now` (`now_ms` on the wall clock, for the timestamps of
    /// entries): handle `requests`, tick if due (and expire what timed out), process the Ready
    /// (see `on_ready`), record a snapshot whose file is now durable, and start one if due
    /// (checked every round, not only after a Ready, so that a snapshot put off by a failed
    /// write is retried on an idle node too). `Some` when the node is done (removed).
    ///
    /// A driver other than [`Node::run`] (a simulator) calls this with its own clock, and
    /// should call again no later than [`Node::next_round`].
    pub fn round(
        &mut self,
        now: Instant,
        now_ms: u64,
        requests: impl IntoIterator<Item = Request>,
    ) -> Result<Option<NodeExit>, NodeFatal> {
        self.now = now.max(self.now);
        self.now_ms = now_ms;
        self.apply_queue.new_slice();
        for request in requests {
            self.handle(request)?;
        }
        self.propose_queued();
        self.ask_read_index();
        if self.now >= self.next_tick {
            self.raw.tick();
            self.next_tick = (self.next_tick + self.options.tick).max(self.now);
            self.expire(self.now);
            self.check_disk();
            if !self.removed {
                // A leader that is leaving proposes nothing more (see `leaving`).
                self.check_learners();
            }
            self.step_down_if_diverged();
            let diverged = self.divergence.diverged.is_some();
            (self.options.metrics).sample(&self.raw.raft, self.applied, &self.cluster, diverged);
        }
        self.on_ready()?;
        if !self.apply_queue.is_empty() {
            // A deploy's module may have finished compiling.
            self.apply_ready()?;
            self.raw.advance_apply_to(self.applied);
        }
        if !self.removed {
            self.send_digest_reports();
        }
        self.finish_snapshot(false)?;
        self.maybe_snapshot()?;
        if self.removed && !self.telling_members_of_removal() {
            self.finish_snapshot(true)?;
            // Not "aborted": a node removed while it led may hold proposals that the rest of the
            // cluster still commits (the simulator's seed 462 found one that did).
            self.fail_all(NodeError::Timeout(
                "this node was removed from the cluster while the request was in flight; a \
                 write may or may not have been applied"
                    .into(),
            ));
            return Ok(Some(NodeExit::Removed));
        }
        Ok(None)
    }

    /// The node's log store (for checks of what it holds).
    pub fn log_store(&self) -> &L {
        self.raw.store()
    }

    /// The index of the last entry applied to the store.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// When the next round is due at the latest (raft's next tick).
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// When the next round is due: at once if the last one left committed entries it could
    /// have applied (see `apply_queue`), else at the next tick.
    pub fn next_round(&self) -> Instant {
        match self.apply_queue.cut_short() {
            true => self.now,
            false => self.next_tick,
        }
    }

    /// Stops the node: waits for a snapshot being written, so none is left half-written.
    pub fn shut_down(mut self) -> Result<NodeExit, NodeFatal> {
        self.finish_snapshot(true)?;
        Ok(NodeExit::Shutdown)
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
        // Removed, it stays only for the others (see `leaving`): it serves no client.
        let request = match self.removed {
            true => request.refuse(NodeError::NoLeader),
            false => Some(request),
        };
        let Some(request) = request else {
            return Ok(());
        };
        if !matches!(request, Request::Propose { .. } | Request::Raft(..)) {
            // Whatever else a request does (a deploy, a membership change) comes after the
            // commands that arrived before it.
            self.propose_queued();
        }
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
                self.learner_watch.heard(message.from, self.now);
                self.tolerate_lost_entries(&mut message);
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!("dropped a raft message: {e}");
                }
            }
            Request::Propose { command, reply } => self.queue_command(command, reply),
            Request::Deploy {
                sha256,
                module,
                reply,
            } => self.deploy(sha256, module, Waiter::Deploy(reply)),
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
            Request::AddNode {
                address,
                plan,
                reply,
            } => self.add_node(address, plan, reply),
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
            Request::PackedReaders(readers) => self.note_packed_readers(readers),
            Request::Removed(index) => {
                tracing::warn!(index, "the leader removed this node from the cluster");
                self.removed = true;
            }
        }
        Ok(())
    }

    /// Whether this node, having applied its own removal, still stays for the others (see
    /// `leaving`). A leader knows when they all have the change committed (raft-rs tracks what
    /// each peer said it committed, and its heartbeats carry the commit index on to them); a
    /// follower cannot tell, and stays till the deadline.
    fn telling_members_of_removal(&self) -> bool {
        let Some((index, deadline)) = self.leaving else {
            return false;
        };
        let all_know = self.is_leader()
            && (self.raw.raft.prs().iter())
                .all(|(id, progress)| *id == self.id || progress.committed_index >= index);
        self.now < deadline && !all_know
    }

    /// This node's view of the cluster, as `Request::Status` answers it.
    pub fn status(&self) -> NodeStatus {
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
            learners: self.cluster.learners.clone(),
            match_index: match self.is_leader() {
                true => self
                    .raw
                    .raft
                    .prs()
                    .iter()
                    .map(|(id, p)| (*id, p.matched))
                    .collect(),
                false => BTreeMap::new(),
            },
            module: self.state_machine.module_info(),
            upgrades: self.cluster.upgrades.clone(),
            diverged: self.divergence.diverged.clone(),
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
                let error = NodeError::Timeout(format!(
                    "the proposal was not committed within {:?} (is this node cut off from \
                     the leader?); it may still be applied later",
                    self.options.request_timeout
                ));
                p.reply.fail(error, &self.options.metrics);
            }
        }
        for query in self.reads.expired(now) {
            let _ = query.reply.send(Err(NodeError::Timeout(
                "the read could not be confirmed with the leader in time; retry, or read with \
                 --stale"
                    .into(),
            )));
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
            p.reply.fail(error.clone(), &self.options.metrics);
        }
        for query in self.reads.take_all() {
            let _ = query.reply.send(Err(error.clone()));
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
        if let Some(state) = ready.ss() {
            self.options.metrics.soft_state(state);
        }

        self.send(ready.take_messages());

        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }

        self.note_read_states(ready.take_read_states());
        self.apply(ready.take_committed_entries())?;

        self.prepare_deploys(ready.entries());
        let persisting = Instant::now();
        self.raw.mut_store().persist(ready.entries(), ready.hs())?;
        self.options.metrics.persisted(&ready, persisting);

        self.send(ready.take_persisted_messages());

        // Not `advance`, which marks everything delivered as applied: entries may wait in the
        // apply queue, and raft must learn what is applied from `self.applied` alone.
        let mut light = self.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply_to(self.applied);

        self.serve_reads()?;
        self.check_transfer();
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            if !self.outbox.send(message) {
                if is_snapshot {
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
                self.raw.report_unreachable(to);
            }
        }
    }

    /// Applies one committed entry (in log order; see [`Node::apply`]); `module` is a deploy's
    /// module, made ready by the apply queue.
    fn apply_entry(&mut self, entry: Entry, module: Option<HashedModule>) -> Result<(), NodeFatal> {
        {
            let index = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // A new leader's empty entry.
                    self.resolve_proposal(index, None);
                }
                EntryType::EntryNormal => {
                    self.apply_payload(index, entry.term, &entry.data, module)?
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let change = match entry.get_entry_type() {
                        EntryType::EntryConfChange => {
                            ConfChange::parse_from_bytes(&entry.data).map(membership::into_v2)
                        }
                        _ => ConfChangeV2::parse_from_bytes(&entry.data),
                    };
                    match change {
                        Ok(change) => self.apply_conf_change(index, change)?,
                        Err(e) => tracing::error!(
                            index,
                            "skipping a membership change that cannot be decoded, on every \
                             replica: {e}"
                        ),
                    }
                    self.resolve_proposal(index, None);
                }
            }
            self.applied = index;
            self.checkpoint_digest(index);
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
}
