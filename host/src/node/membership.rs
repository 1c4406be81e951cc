//! Membership: joins (as learners: see [`super::learners`] for their promotion), leaves,
//! replacements and leadership transfers, one conf change at a time, and what applying a conf
//! change does to the cluster's state and the transport.

use raft::prelude::{ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

use super::mailbox::{Joined, NodeError, NodeFatal, Reply};
use super::{Node, Outbox};
use crate::replicated::{self, LearnerContext, LearnerPlan};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

pub(super) enum PendingConf {
    Add {
        id: u64,
        reply: Reply<Joined>,
    },
    Remove {
        reply: Reply<()>,
    },
    /// A change the leader made on its own (a promotion, a dead joiner dropped): nobody waits.
    Internal {
        what: String,
    },
}

impl PendingConf {
    pub(super) fn fail(self, error: NodeError) {
        match self {
            PendingConf::Add { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingConf::Remove { reply } => {
                let _ = reply.send(Err(error));
            }
            PendingConf::Internal { what } => {
                tracing::info!("{what} did not happen ({error}); trying again later");
            }
        }
    }
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// Adds the node at `address` as a learner: it votes only once it has caught up (see
    /// [`super::learners`]), so a joiner that is slow, or never comes up, cannot take the
    /// quorum away.
    pub(super) fn add_node(&mut self, address: String, plan: LearnerPlan, reply: Reply<Joined>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if let Some(id) = self.cluster.id_of(&address) {
            // Already a member (a retried join): same answer again.
            let _ = reply.send(Ok(Joined {
                id,
                members: self.cluster.members.clone(),
                learners: self.cluster.learners.clone(),
            }));
            return;
        }
        if let LearnerPlan::Replace { replaces } = plan
            && (!self.cluster.members.contains_key(&replaces)
                || self.cluster.learners.contains_key(&replaces))
        {
            let _ = reply.send(Err(NodeError::Precondition(format!(
                "node {replaces} is not a voter of the cluster: there is nothing to replace"
            ))));
            return;
        }
        let id = self.cluster.next_node_id;
        let context = replicated::encode(&LearnerContext { address, plan });
        let change = single(ConfChangeType::AddLearnerNode, id, context);
        self.propose_conf_change(change, PendingConf::Add { id, reply });
    }

    pub(super) fn remove_node(&mut self, id: u64, reply: Reply<()>) {
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
            // A leaving leader hands over first: the most up-to-date voter takes over, then
            // the new leader removes us. The caller retries.
            let successor = self.successor(self.id);
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
        self.propose_conf_change(
            single(ConfChangeType::RemoveNode, id, Vec::new()),
            PendingConf::Remove { reply },
        );
    }

    /// The most up-to-date voter other than this node and `except`: who takes over when the
    /// leader must leave.
    pub(super) fn successor(&self, except: u64) -> Option<u64> {
        let voters = self.raw.raft.prs().conf().voters().clone();
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(peer, _)| **peer != self.id && **peer != except && voters.contains(**peer))
            .max_by_key(|(_, progress)| progress.matched)
            .map(|(peer, _)| *peer)
    }

    pub(super) fn propose_conf_change(&mut self, change: ConfChangeV2, pending: PendingConf) {
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
        let deadline = self.now + self.options.request_timeout;
        self.conf_change = Some((index, deadline, pending));
    }

    pub(super) fn transfer_leader(&mut self, to: u64, reply: Reply<()>) {
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
        let deadline = self.now + self.options.request_timeout;
        if let Some((_, _, previous)) = self.transfer.replace((to, deadline, reply)) {
            let _ = previous.send(Err(NodeError::Aborted(
                "superseded by another leadership transfer".into(),
            )));
        }
    }

    pub(super) fn check_transfer(&mut self) {
        let leader = self.raw.raft.leader_id;
        if let Some((_, _, reply)) = self.transfer.take_if(|(to, _, _)| *to == leader) {
            let _ = reply.send(Ok(()));
        }
    }

    /// Applies a conf change committed at `index`, the same way on every replica.
    pub(super) fn apply_conf_change(
        &mut self,
        index: u64,
        change: ConfChangeV2,
    ) -> Result<(), NodeFatal> {
        self.drop_lease();
        if self.change_removes_self(&change) {
            // This node is done: it stops at the end of the round. raft-rs is not told: a
            // leader that drops itself from its progress tracker panics when the same Ready's
            // persisted entries advance its own progress (the simulator's seed 1161 found it).
            // A restart replays this entry and stops again.
            tracing::info!(
                node = self.id,
                index,
                "this node was removed from the cluster"
            );
            self.cluster.members.remove(&self.id);
            self.cluster.learners.remove(&self.id);
            self.removed = true;
            let timeout = self.options.tick * 2 * self.options.election_ticks as u32;
            self.leaving = Some((index, self.now + timeout));
            return Ok(());
        }
        // Every replica applies the same change to the same membership, so a change raft-rs
        // refuses (e.g. one that would leave no voter) is refused alike everywhere.
        let conf_state = match change.changes.iter().any(|c| c.node_id == raft::INVALID_ID) {
            true => Err(raft::Error::ConfChangeError("node id 0".into())),
            false => self.raw.apply_conf_change(&change),
        };
        let conf_state = match conf_state {
            Ok(conf_state) => conf_state,
            Err(e) => {
                tracing::error!(index, "skipping a membership change on every replica: {e}");
                return Ok(());
            }
        };
        for single in &change.changes {
            self.apply_single_change(index, single, &change.context);
        }
        self.forget_removed(index, &conf_state);
        self.raw.mut_store().set_conf_state(conf_state)?;
        if change.leave_joint() {
            tracing::info!(index, "left the joint configuration");
        }
        self.outbox.set_members(&self.cluster.members);
        if matches!(&self.conf_change, Some((pending_index, _, _)) if *pending_index == index) {
            let (_, _, pending) = self.conf_change.take().expect("checked above");
            match pending {
                PendingConf::Add { id, reply } => {
                    let added = change.changes.iter().any(|c| c.node_id == id);
                    let answer = if added {
                        Ok(Joined {
                            id,
                            members: self.cluster.members.clone(),
                            learners: self.cluster.learners.clone(),
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
                PendingConf::Internal { what } => tracing::info!(index, "{what}: done"),
            }
        }
        Ok(())
    }

    /// Whether applying `change` leaves this node out of the configuration: a simple removal
    /// of it, or leaving a joint configuration whose incoming half lacks it.
    fn change_removes_self(&self, change: &ConfChangeV2) -> bool {
        if change.leave_joint() {
            let conf = self.raw.raft.prs().conf().to_conf_state();
            let joint = !conf.voters_outgoing.is_empty();
            let stays = conf.voters.contains(&self.id)
                || conf.learners.contains(&self.id)
                || conf.learners_next.contains(&self.id);
            return joint && !stays;
        }
        change.enter_joint().is_none()
            && change
                .changes
                .iter()
                .any(|c| c.node_id == self.id && c.get_change_type() == ConfChangeType::RemoveNode)
    }

    /// What one change of a conf change (already applied to raft) does to the cluster's state.
    fn apply_single_change(&mut self, index: u64, single: &ConfChangeSingle, context: &[u8]) {
        let node = single.node_id;
        match single.get_change_type() {
            ConfChangeType::AddNode => {
                // A promotion (the learner's address is known) or, in logs written before
                // learners, a join with the address as context.
                if !context.is_empty() && !self.cluster.members.contains_key(&node) {
                    let address = String::from_utf8_lossy(context).into_owned();
                    self.cluster.members.insert(node, address);
                }
                self.cluster.learners.remove(&node);
                self.cluster.next_node_id = self.cluster.next_node_id.max(node + 1);
                tracing::info!(node, index, "node is a voter");
            }
            ConfChangeType::AddLearnerNode => {
                let (address, plan) = match replicated::decode::<LearnerContext>("learner", context)
                {
                    Ok(learner) => (learner.address, learner.plan),
                    // Not written by this host: a learner that stays one, with the context as
                    // its address (the same on every replica).
                    Err(_) => (
                        String::from_utf8_lossy(context).into_owned(),
                        LearnerPlan::Stay,
                    ),
                };
                tracing::info!(node, %address, index, ?plan, "node added to the cluster as a learner");
                self.cluster.members.insert(node, address);
                self.cluster.learners.insert(node, plan);
                self.cluster.next_node_id = self.cluster.next_node_id.max(node + 1);
            }
            // Removal takes effect once the node is in no half of the configuration (see
            // `forget_removed`): during a joint change the outgoing voters still vote.
            ConfChangeType::RemoveNode => {}
        }
    }

    /// Forgets the members that `conf_state` no longer holds: the transport stops reaching
    /// them, and the leader tells each it was removed.
    fn forget_removed(&mut self, index: u64, conf_state: &ConfState) {
        let in_conf = |id: &u64| {
            conf_state.voters.contains(id)
                || conf_state.voters_outgoing.contains(id)
                || conf_state.learners.contains(id)
                || conf_state.learners_next.contains(id)
        };
        let removed: Vec<u64> = self
            .cluster
            .members
            .keys()
            .copied()
            .filter(|id| !in_conf(id))
            .collect();
        for node in removed {
            tracing::info!(node, index, "node removed from the cluster");
            let address = self.cluster.members.remove(&node);
            self.cluster.learners.remove(&node);
            // A learner that was to replace this node now has nothing to replace.
            for plan in self.cluster.learners.values_mut() {
                if *plan == (LearnerPlan::Replace { replaces: node }) {
                    *plan = LearnerPlan::Promote;
                }
            }
            if node == self.id {
                self.removed = true;
            } else if let (true, Some(address)) = (self.is_leader(), address) {
                self.outbox.notify_removed(node, address, index);
            }
        }
    }
}

/// A conf change of one step.
pub(super) fn single(change_type: ConfChangeType, node_id: u64, context: Vec<u8>) -> ConfChangeV2 {
    let mut change = ConfChangeV2::default();
    change
        .mut_changes()
        .push(change_single(change_type, node_id));
    change.context = context.into();
    change
}

/// One step of a conf change.
pub(super) fn change_single(change_type: ConfChangeType, node_id: u64) -> ConfChangeSingle {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(change_type);
    single.node_id = node_id;
    single
}

/// A conf change of the older, one-step kind, as the same change of the newer kind (what
/// raft-rs' `ConfChangeI::into_v2` does; raft does not re-export that trait).
pub(super) fn into_v2(change: ConfChange) -> ConfChangeV2 {
    let mut v2 = single(change.get_change_type(), change.node_id, Vec::new());
    v2.context = change.context;
    v2
}
