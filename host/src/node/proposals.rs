//! Proposals: a client's command or a new module appended to the log, the client waiting for
//! it remembered by log index, and answered (or told it lost to a leader change) when it
//! applies.

use std::sync::Arc;
use std::time::Instant;

use super::mailbox::{Applied, DeployOutcome, Deployed, NodeError, NodeFatal, Reply};
use super::{Node, Outbox};
use crate::metrics::NodeMetrics;
use crate::module_store::HashedModule;
use crate::replicated::{EntryPayload, MAX_UPGRADES_KEPT, UpgradeRecord, encode};
use crate::state_machine::{ApplyContext, Rejection, StateMachine};
use crate::storage::{LogStore, StorageError};

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
    Deploy(Reply<Deployed>),
}

impl Waiter {
    pub(super) fn fail(self, error: NodeError, metrics: &NodeMetrics) {
        metrics.failed(&error);
        match self {
            Waiter::Command(reply) => {
                let _ = reply.send(Err(error));
            }
            Waiter::Deploy(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// What applying a proposal's entry gave, by kind of entry.
pub(super) enum Outcome {
    Command(Result<Vec<u8>, Rejection>),
    Deploy(DeployOutcome),
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    pub(super) fn propose(&mut self, command: Vec<u8>, reply: Waiter) {
        if command.len() > self.options.max_command_bytes {
            reply.fail(
                NodeError::Invalid(format!(
                    "the command is {} bytes; the limit is {} bytes",
                    command.len(),
                    self.options.max_command_bytes
                )),
                &self.options.metrics,
            );
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
    /// log, and remembers who waits for its answer.
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
        self.next_request_id += 1;
        self.last_stamp_ms = self.now_ms.max(self.last_stamp_ms);
        let payload = payload(self.id, request_id, self.last_stamp_ms);
        if let Err(e) = self.raw.propose(vec![], encode(&payload)) {
            reply.fail(
                NodeError::Busy(format!(
                    "the leader cannot take proposals right now ({e}); retry shortly"
                )),
                &self.options.metrics,
            );
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        self.options.metrics.proposed();
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
                    term,
                    timestamp_ms: self.stamp(timestamp_ms),
                };
                let started = Instant::now();
                let outcome = self.state_machine.apply(ctx, &command)?;
                self.fold_answer(index, &outcome);
                let fuel = self.state_machine.fuel_used();
                self.apply_queue.note_fuel(fuel);
                self.options.metrics.applied_entry(started, fuel, &outcome);
                (proposer, request_id, Outcome::Command(outcome))
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
