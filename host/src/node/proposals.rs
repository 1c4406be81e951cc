//! Proposals: a client's command or a new module appended to the log, the client waiting for
//! it remembered by log index, and answered (or told it lost to a leader change) when it
//! applies.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::mailbox::{Applied, NodeError, NodeFatal, Reply};
use super::{Node, Outbox};
use crate::log_format::{EntryPayload, MAX_UPGRADES_KEPT, UpgradeRecord, encode};
use crate::state_machine::{Rejection, StateMachine};
use crate::storage::LogStore;

pub(super) struct PendingProposal {
    pub(super) request_id: u64,
    pub(super) deadline: Instant,
    pub(super) reply: Reply<Applied>,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    pub(super) fn propose(&mut self, command: Vec<u8>, reply: Reply<Applied>) {
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

    pub(super) fn deploy(&mut self, module: Vec<u8>, reply: Reply<Applied>) {
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
    pub(super) fn propose_payload(
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

    /// Answers the client waiting for the entry at `index`, if any: with the outcome when the
    /// entry is its proposal, with "aborted" when another leader's entry took the slot.
    pub(super) fn resolve_proposal(
        &mut self,
        index: u64,
        mine: Option<(u64, Result<Vec<u8>, Rejection>)>,
    ) {
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

    /// Applies a deploy entry: the same switch, or the same refusal, on every replica.
    pub(super) fn upgrade(
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
}
