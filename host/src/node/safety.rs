//! The raft-safety rules around raft-rs: the door every peer message passes (see
//! [`crate::peer_messages`]), votes a restarted node must ignore, and coping with a follower
//! that lost log entries it had synced.

use raft::prelude::{Message, MessageType};

use super::{Node, Outbox};
use crate::peer_messages::{self, Local, Refused};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// Checks a peer's message at the door (see [`crate::peer_messages`]).
    pub(super) fn admit(&self, message: &Message, sender: Option<&str>) -> Result<(), Refused> {
        peer_messages::check(
            message,
            &Local {
                id: self.id,
                members: &self.cluster.members,
                next_node_id: self.cluster.next_node_id,
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
    pub(super) fn ignores_votes(&self, message: &Message) -> bool {
        matches!(
            message.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && message.context != raft::CAMPAIGN_TRANSFER
            && self.now.saturating_duration_since(self.started)
                < self.options.tick * self.options.election_ticks as u32
    }

    /// Copes with a follower that lost log entries it had already synced (its disk lost the
    /// tail of a file). raft assumes this never happens: the leader keeps believing the
    /// follower holds them, and raft-rs panics on a heartbeat that commits past the follower's
    /// log. So a follower commits no further than its log reaches, and a leader that hears a
    /// follower's log is shorter than it recorded starts over from what the follower has.
    pub(super) fn tolerate_lost_entries(&mut self, message: &mut Message) {
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
}
