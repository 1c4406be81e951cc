//! The leader's care of learners: a joining node is promoted to voter once it has caught up,
//! a replacement is swapped in for the member it replaces in one joint-consensus step, and a
//! joiner the leader does not hear from is dropped, so it never holds a vote it cannot cast.
//!
//! The rule (see [`NodeOptions`](super::NodeOptions)): a learner is *caught up* while raft
//! replicates to it entry by entry (not by snapshot) and its log is at most `promote_max_lag`
//! entries behind the leader's commit index; it is promoted once it has stayed caught up for
//! `promote_after`. Only the leader watches, from its own clock; a new leader starts watching
//! afresh, which at worst delays a promotion.

use std::collections::BTreeMap;
use std::time::Instant;

use raft::ProgressState;
use raft::prelude::{ConfChangeTransition, ConfChangeType, ConfChangeV2};

use super::membership::{PendingConf, change_single, single};
use super::{Node, Outbox};
use crate::replicated::LearnerPlan;
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

/// What the leader has seen of its learners (leader-local, never replicated).
#[derive(Debug, Default)]
pub(super) struct LearnerWatch {
    /// The term these observations belong to: a new term starts over.
    term: u64,
    /// Since when each learner has been caught up without a break.
    caught_up_since: BTreeMap<u64, Instant>,
    /// When each learner was last heard from (or when this leader started watching it).
    last_heard: BTreeMap<u64, Instant>,
}

impl LearnerWatch {
    /// A message from `peer` arrived at `now`.
    pub(super) fn heard(&mut self, peer: u64, now: Instant) {
        if let Some(heard) = self.last_heard.get_mut(&peer) {
            *heard = now;
        }
    }
}

/// What the leader does next about one learner.
enum Step {
    Promote(u64),
    Replace { learner: u64, replaces: u64 },
    Drop(u64),
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// Runs every tick: on the leader, promotes a caught-up learner, swaps in a replacement, or
    /// drops a joiner gone silent (one change at a time); and leaves a joint configuration that
    /// raft-rs did not leave by itself.
    pub(super) fn check_learners(&mut self) {
        if !self.is_leader() {
            self.learner_watch = LearnerWatch::default();
            return;
        }
        let term = self.raw.raft.term;
        if self.learner_watch.term != term {
            self.learner_watch = LearnerWatch {
                term,
                ..LearnerWatch::default()
            };
        }
        let now = self.now;
        let committed = self.raw.raft.raft_log.committed;
        let watch = &mut self.learner_watch;
        watch
            .last_heard
            .retain(|id, _| self.cluster.learners.contains_key(id));
        watch
            .caught_up_since
            .retain(|id, _| self.cluster.learners.contains_key(id));
        let mut next = None;
        for (&id, &plan) in &self.cluster.learners {
            let heard = *watch.last_heard.entry(id).or_insert(now);
            // A read replica is never promoted, and never dropped: it holds no vote, and only
            // an operator knows whether it is meant to come back.
            if plan == LearnerPlan::Stay {
                continue;
            }
            if now.saturating_duration_since(heard) >= self.options.joiner_timeout {
                next.get_or_insert(Step::Drop(id));
                continue;
            }
            // Probe too, once the learner confirmed it holds everything: one that caught up by
            // a snapshot reaching the leader's last index stays in Probe until a new entry is
            // appended (raft-rs sends it nothing, the heartbeats find it up to date), so on an
            // idle cluster it was never promoted (a join hung in 1 of 6 test runs).
            let caught_up = self.raw.raft.prs().get(id).is_some_and(|progress| {
                let matched = progress.matched;
                match progress.state {
                    ProgressState::Replicate => matched + self.options.promote_max_lag >= committed,
                    ProgressState::Probe => matched >= committed,
                    ProgressState::Snapshot => false,
                }
            });
            if !caught_up {
                watch.caught_up_since.remove(&id);
                continue;
            }
            let since = *watch.caught_up_since.entry(id).or_insert(now);
            if now.saturating_duration_since(since) >= self.options.promote_after {
                next.get_or_insert(match plan {
                    LearnerPlan::Replace { replaces } => Step::Replace {
                        learner: id,
                        replaces,
                    },
                    _ => Step::Promote(id),
                });
            }
        }
        if self.conf_change.is_some() || self.raw.raft.has_pending_conf() {
            return;
        }
        if self.in_joint_configuration() {
            // raft-rs leaves a joint configuration on its own once it is applied, except when
            // the leader changed at the wrong moment (its own "TODO: it may never auto_leave").
            let what = "leaving the joint configuration".to_string();
            self.propose_conf_change(ConfChangeV2::default(), PendingConf::Internal { what });
            return;
        }
        match next {
            None => {}
            Some(Step::Promote(id)) => self.promote(id),
            Some(Step::Replace { learner, replaces }) => self.replace(learner, replaces),
            Some(Step::Drop(id)) => {
                let what = format!(
                    "dropping node {id}: a joiner not heard from for {:?}",
                    self.options.joiner_timeout
                );
                tracing::warn!("{what}");
                self.propose_conf_change(
                    single(ConfChangeType::RemoveNode, id, Vec::new()),
                    PendingConf::Internal { what },
                );
            }
        }
    }

    fn in_joint_configuration(&self) -> bool {
        !self
            .raw
            .raft
            .prs()
            .conf()
            .to_conf_state()
            .voters_outgoing
            .is_empty()
    }

    fn promote(&mut self, id: u64) {
        let address = self.cluster.members.get(&id).cloned().unwrap_or_default();
        let what = format!("promoting node {id} to voter: it has caught up");
        tracing::info!("{what}");
        self.propose_conf_change(
            single(ConfChangeType::AddNode, id, address.into_bytes()),
            PendingConf::Internal { what },
        );
    }

    /// Makes `learner` a voter and removes `replaces` in one joint-consensus change: the
    /// cluster never has fewer voters than before, nor an even count in between.
    fn replace(&mut self, learner: u64, replaces: u64) {
        if replaces == self.id {
            // A leader does not remove itself (see `apply_conf_change`): it hands over, and
            // the next leader makes the change.
            if self.raw.raft.lead_transferee.is_none()
                && let Some(successor) = self.successor(learner)
            {
                tracing::info!(
                    successor,
                    "handing leadership over before this node is replaced by node {learner}"
                );
                self.drop_lease();
                self.raw.transfer_leader(successor);
            }
            return;
        }
        let mut change = ConfChangeV2::default();
        change.set_transition(ConfChangeTransition::Auto);
        change
            .mut_changes()
            .push(change_single(ConfChangeType::AddNode, learner));
        change
            .mut_changes()
            .push(change_single(ConfChangeType::RemoveNode, replaces));
        let what = format!("replacing node {replaces} by node {learner}: it has caught up");
        tracing::info!("{what}");
        self.propose_conf_change(change, PendingConf::Internal { what });
    }
}
