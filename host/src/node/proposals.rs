//! Proposals: a client's command or a new module appended to the log, the client waiting for
//! it remembered by log index, and answered (or told it lost to a leader change) when it
//! applies.
//!
//! Commands that queue up during one round of the loop are packed into as few entries as their
//! bounds allow ([`MAX_PACKED_COMMANDS`], [`MAX_PACKED_BYTES`]): one entry, one bookkeeping in
//! raft, storage and replication, for many clients. Nothing waits to be packed: a command
//! alone in its round gets an entry to itself, as before, so one client's latency is
//! unchanged. Each packed command still applies on its own, with its position in the entry
//! ([`ApplyContext::position`]), and gets its own answer, rejection or trap.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::mailbox::{Applied, DeployOutcome, Deployed, NodeError, NodeFatal, Reply};
use super::{Node, Outbox};
use crate::metrics::NodeMetrics;
use crate::module_store::HashedModule;
use crate::replicated::{EntryPayload, MAX_UPGRADES_KEPT, UpgradeRecord, encode};
use crate::state_machine::{ApplyContext, Rejection, StateMachine};
use crate::storage::{LogStore, StorageError};

/// Most commands packed into one entry: bounds the answers that ride on one log index, and
/// how long one entry's apply holds the loop (the apply slice counts entries).
pub(super) const MAX_PACKED_COMMANDS: usize = 256;

/// Most bytes of commands packed into one entry: 1 MiB, a quarter of the largest single
/// command, so a packed entry is never what makes a raft message or an apply large. A command
/// larger than this gets an entry to itself.
pub(super) const MAX_PACKED_BYTES: usize = 1 << 20;

pub(super) struct PendingProposal {
    pub(super) request_id: u64,
    /// The term it was appended in. With its index, that names the entry: one leader per term
    /// appends each index once. The request id alone does not: a restarted node counts from 1
    /// again, so an old entry of its previous life that another leader commits at the same
    /// index could carry the same proposer and request id, and answer the new client with
    /// that entry's outcome.
    pub(super) term: u64,
    pub(super) deadline: Instant,
    /// When it was proposed (for `riteraft_propose_seconds`).
    pub(super) proposed: Instant,
    pub(super) reply: Waiter,
}

/// Who waits for a proposal's answer, by kind of proposal.
pub(super) enum Waiter {
    Command(Reply<Applied>),
    /// The clients of packed commands, in the order of the commands.
    Commands(Vec<Reply<Applied>>),
    Deploy(Reply<Deployed>),
}

impl Waiter {
    /// How many requests wait (each has a request id of its own).
    fn requests(&self) -> usize {
        match self {
            Waiter::Commands(replies) => replies.len(),
            Waiter::Command(_) | Waiter::Deploy(_) => 1,
        }
    }

    pub(super) fn fail(self, error: NodeError, metrics: &NodeMetrics) {
        match self {
            Waiter::Command(reply) => {
                metrics.failed(&error);
                let _ = reply.send(Err(error));
            }
            Waiter::Commands(replies) => {
                for reply in replies {
                    metrics.failed(&error);
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Waiter::Deploy(reply) => {
                metrics.failed(&error);
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// What applying a proposal's entry gave, by kind of entry.
pub(super) enum Outcome {
    Command(Result<Vec<u8>, Rejection>),
    /// Packed commands' outcomes, in order.
    Commands(Vec<Result<Vec<u8>, Rejection>>),
    Deploy(DeployOutcome),
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// A client's command: proposed with the others of this round by
    /// [`Node::propose_queued`].
    pub(super) fn queue_command(&mut self, command: Vec<u8>, reply: Reply<Applied>) {
        if command.len() > self.options.max_command_bytes {
            Waiter::Command(reply).fail(
                NodeError::Invalid(format!(
                    "the command is {} bytes; the limit is {} bytes",
                    command.len(),
                    self.options.max_command_bytes
                )),
                &self.options.metrics,
            );
            return;
        }
        self.queued_commands.push((command, reply));
    }

    /// Proposes the queued commands, packed into as few entries as the bounds allow when the
    /// store can tell packed commands apart (see [`Node::may_pack`]), else one entry each.
    pub(super) fn propose_queued(&mut self) {
        if self.queued_commands.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued_commands);
        let pack = self.may_pack();
        let mut queued = queued.into_iter().peekable();
        while let Some((command, reply)) = queued.next() {
            let mut bytes = command.len();
            let (mut commands, mut replies) = (vec![command], vec![reply]);
            while pack && commands.len() < MAX_PACKED_COMMANDS {
                let fits = |(next, _): &(Vec<u8>, _)| bytes + next.len() <= MAX_PACKED_BYTES;
                let Some((command, reply)) = queued.next_if(fits) else {
                    break;
                };
                bytes += command.len();
                commands.push(command);
                replies.push(reply);
            }
            if commands.len() == 1 {
                let (command, reply) = (commands.remove(0), replies.remove(0));
                self.propose_payload(Waiter::Command(reply), |proposer, request_id, stamp| {
                    EntryPayload::Command {
                        proposer,
                        request_id,
                        timestamp_ms: stamp,
                        command,
                    }
                });
                continue;
            }
            let commands = commands.into_iter().map(Into::into).collect();
            self.propose_payload(Waiter::Commands(replies), |proposer, first, stamp| {
                EntryPayload::Commands {
                    proposer,
                    first_request_id: first,
                    timestamp_ms: stamp,
                    commands,
                }
            });
        }
    }

    /// Whether the next entry may pack several commands: only when the code that will apply
    /// it tells them apart by position. That code is what runs now unless a deploy not applied
    /// yet is in the log ahead of the entry; then nothing is packed until it has applied.
    ///
    /// And only while every other member's host reads packed entries, when the node is to
    /// check (a member on an older host would stop at the first one).
    fn may_pack(&self) -> bool {
        self.applied >= self.newest_deploy_at
            && self.state_machine.packs_commands()
            && self.members_read_packed()
    }

    fn members_read_packed(&self) -> bool {
        !self.options.check_member_log_formats
            || (self.cluster.members.keys())
                .all(|id| *id == self.id || self.packed_readers.contains(id))
    }

    /// The node learned which members' hosts read packed entries: says so when that changes
    /// whether it would pack (an operator upgrading hosts one by one sees when packing starts).
    pub(super) fn note_packed_readers(&mut self, readers: BTreeSet<u64>) {
        let before = self.members_read_packed();
        self.packed_readers = readers;
        let after = self.members_read_packed();
        if before == after {
            return;
        }
        if after {
            // The count says which membership it was: nodes join one by one.
            let others = self.cluster.members.len().saturating_sub(1);
            tracing::info!(
                "the hosts of all {others} other members read packed entries: packing commands"
            );
            return;
        }
        let older: Vec<&String> = (self.cluster.members.iter())
            .filter(|(id, _)| **id != self.id && !self.packed_readers.contains(id))
            .map(|(_, address)| address)
            .collect();
        tracing::warn!(
            ?older,
            "not packing commands: these members run an older riteraft-host (or do not answer); \
             upgrade them to the same version"
        );
    }

    /// Proposes a deploy of the module `sha256`, which the caller stored in this node's module
    /// store (see [`crate::module_store`]): the entry names it by hash.
    pub(super) fn deploy(&mut self, sha256: [u8; 32], module: Arc<Vec<u8>>, reply: Waiter) {
        if module.len() > self.options.max_module_bytes {
            reply.fail(
                NodeError::Invalid(format!(
                    "the module is {} bytes; the limit is {} bytes",
                    module.len(),
                    self.options.max_module_bytes
                )),
                &self.options.metrics,
            );
            return;
        }
        // Stored by the gRPC layer already (off this thread); a store in memory takes it now.
        if !self.options.modules.contains(&sha256)
            && let Err(e) = self.options.modules.put_hashed(sha256, module.clone())
        {
            reply.fail(NodeError::DiskFull(e.to_string()), &self.options.metrics);
            return;
        }
        let bytes = module.len() as u64;
        self.propose_payload(reply, |proposer, request_id, timestamp_ms| {
            EntryPayload::DeployModule {
                proposer,
                request_id,
                timestamp_ms,
                sha256,
                bytes,
            }
        });
    }

    /// Appends an entry made by `payload` (given proposer, request id and timestamp) to the
    /// log, and remembers who waits for its answer. Packed commands take a request id each,
    /// from the one given on.
    pub(super) fn propose_payload(
        &mut self,
        reply: Waiter,
        payload: impl FnOnce(u64, u64, u64) -> EntryPayload,
    ) {
        if let Some(diverged) = self.refuse_if_diverged() {
            reply.fail(diverged, &self.options.metrics);
            return;
        }
        if !self.is_leader() {
            reply.fail(self.not_leader(), &self.options.metrics);
            return;
        }
        if let Some(why) = &self.disk_full {
            reply.fail(NodeError::DiskFull(why.clone()), &self.options.metrics);
            return;
        }
        let request_id = self.next_request_id;
        self.next_request_id += reply.requests() as u64;
        self.last_stamp_ms = self.now_ms.max(self.last_stamp_ms);
        let payload = payload(self.id, request_id, self.last_stamp_ms);
        let data = encode(&payload);
        let deploy = EntryPayload::is_deploy(&data);
        if let Err(e) = self.raw.propose(vec![], data) {
            reply.fail(
                NodeError::Busy(format!(
                    "the leader cannot take proposals right now ({e}); retry shortly"
                )),
                &self.options.metrics,
            );
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        if deploy {
            // Commands proposed after it, in this round too, must not be packed until it has
            // applied (see `may_pack`): it may switch to code built for contract 0.1.0.
            self.newest_deploy_at = index;
        }
        for _ in 0..reply.requests() {
            self.options.metrics.proposed();
        }
        self.proposals.insert(
            index,
            PendingProposal {
                request_id,
                term: self.raw.raft.term,
                deadline: self.now + self.options.request_timeout,
                proposed: Instant::now(),
                reply,
            },
        );
    }

    /// Answers the client waiting for the entry at `index`, if any: with the outcome when the
    /// entry is its proposal, with "aborted" when another leader's entry took the slot.
    /// `mine` is (request id, term, outcome) of an entry this node proposed.
    pub(super) fn resolve_proposal(&mut self, index: u64, mine: Option<(u64, u64, Outcome)>) {
        let Some(pending) = self.proposals.remove(&index) else {
            return;
        };
        let lost = || {
            NodeError::Aborted(
                "the proposal was lost to a leader change and will not be applied; retry".into(),
            )
        };
        match (pending.reply, mine) {
            (Waiter::Command(reply), Some((id, term, Outcome::Command(outcome))))
                if id == pending.request_id && term == pending.term =>
            {
                self.options
                    .metrics
                    .answered(pending.proposed, Some(&outcome));
                let _ = reply.send(Ok(Applied { index, outcome }));
            }
            (Waiter::Commands(replies), Some((id, term, Outcome::Commands(outcomes))))
                if id == pending.request_id
                    && term == pending.term
                    && replies.len() == outcomes.len() =>
            {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    self.options
                        .metrics
                        .answered(pending.proposed, Some(&outcome));
                    let _ = reply.send(Ok(Applied { index, outcome }));
                }
            }
            (Waiter::Deploy(reply), Some((id, term, Outcome::Deploy(outcome))))
                if id == pending.request_id && term == pending.term =>
            {
                self.options.metrics.answered(pending.proposed, None);
                let _ = reply.send(Ok(Deployed { index, outcome }));
            }
            (waiter, _) => waiter.fail(lost(), &self.options.metrics),
        }
    }

    /// Applies a client's entry (a command or a deploy) and answers whoever waits for it here;
    /// `module` is a deploy's module, made ready by the apply queue. An entry that cannot be
    /// decoded is skipped: every replica holds the same bytes, so every replica skips it alike;
    /// a rejection, not a reason to stop.
    pub(super) fn apply_payload(
        &mut self,
        index: u64,
        term: u64,
        data: &[u8],
        module: Option<HashedModule>,
    ) -> Result<(), NodeFatal> {
        let payload: EntryPayload = match crate::replicated::decode("log entry", data) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(index, "skipping a log entry on every replica: {e}");
                self.resolve_proposal(index, None);
                return Ok(());
            }
        };
        let (proposer, request_id, outcome) = match payload {
            EntryPayload::Command {
                proposer,
                request_id,
                timestamp_ms,
                command,
            } => {
                let ctx = ApplyContext {
                    index,
                    position: 0,
                    term,
                    timestamp_ms: self.stamp(timestamp_ms),
                };
                let outcome = self.apply_command(ctx, &command)?;
                (proposer, request_id, Outcome::Command(outcome))
            }
            EntryPayload::Commands {
                proposer,
                first_request_id,
                timestamp_ms,
                commands,
            } => {
                let timestamp_ms = self.stamp(timestamp_ms);
                let mut outcomes = Vec::with_capacity(commands.len());
                for (position, command) in commands.iter().enumerate() {
                    let ctx = ApplyContext {
                        index,
                        // At most MAX_PACKED_COMMANDS in an entry this node packed; a
                        // position past u32 would take a 16 GiB entry.
                        position: u32::try_from(position).unwrap_or(u32::MAX),
                        term,
                        timestamp_ms,
                    };
                    outcomes.push(self.apply_command(ctx, command)?);
                }
                (proposer, first_request_id, Outcome::Commands(outcomes))
            }
            EntryPayload::Deploy {
                proposer,
                request_id,
                timestamp_ms,
                ..
            }
            | EntryPayload::DeployModule {
                proposer,
                request_id,
                timestamp_ms,
                ..
            } => {
                let module = module.ok_or_else(|| {
                    StorageError::Inconsistent(format!(
                        "the deploy at index {index} was applied without its module"
                    ))
                })?;
                let timestamp_ms = self.stamp(timestamp_ms);
                let outcome = self.upgrade(index, timestamp_ms, &module)?;
                // The answer to a deploy is the code it leaves running.
                let running = self.state_machine.module_info().sha256.to_vec();
                self.fold_answer(index, &Ok(running));
                (proposer, request_id, Outcome::Deploy(outcome))
            }
            EntryPayload::DigestReport {
                node,
                index: checkpoint,
                digest,
            } => {
                self.apply_digest_report(node, checkpoint, digest);
                self.resolve_proposal(index, None);
                return Ok(());
            }
        };
        let mine = (proposer == self.id).then_some((request_id, term, outcome));
        self.resolve_proposal(index, mine);
        Ok(())
    }

    /// Applies one command and folds its answer into the digest (see `node::divergence`).
    fn apply_command(
        &mut self,
        ctx: ApplyContext,
        command: &[u8],
    ) -> Result<Result<Vec<u8>, Rejection>, NodeFatal> {
        let started = Instant::now();
        let outcome = self.state_machine.apply(ctx, command)?;
        self.fold_answer(ctx.index, &outcome);
        let fuel = self.state_machine.fuel_used();
        self.apply_queue.note_command(ctx.position, fuel);
        self.options.metrics.applied_entry(started, fuel, &outcome);
        Ok(outcome)
    }

    /// The timestamp the store sees for an entry stamped `timestamp_ms` by its leader: never
    /// earlier than the last one, even when a new leader's clock is behind the old one's.
    fn stamp(&mut self, timestamp_ms: u64) -> u64 {
        let timestamp_ms = timestamp_ms.max(self.cluster.last_timestamp_ms);
        self.cluster.last_timestamp_ms = timestamp_ms;
        timestamp_ms
    }

    /// Applies a deploy entry: the same switch, or the same refusal, on every replica.
    pub(super) fn upgrade(
        &mut self,
        index: u64,
        timestamp_ms: u64,
        module: &HashedModule,
    ) -> Result<DeployOutcome, NodeFatal> {
        let before = self.state_machine.module_info();
        let info = match self.state_machine.upgrade(module)? {
            Ok(info) => info,
            Err(reason) => {
                tracing::warn!(index, "deploy refused: {reason}");
                return Ok(DeployOutcome::Refused(reason.to_string()));
            }
        };
        if info.sha256 == before.sha256 {
            return Ok(DeployOutcome::Unchanged(info));
        }
        let sha256 = hex::encode(info.sha256);
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
        Ok(DeployOutcome::Switched(info))
    }
}
