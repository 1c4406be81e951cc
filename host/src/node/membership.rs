//! Membership: joins, leaves and leadership transfers, one conf change at a time, and what
//! applying a conf change does to the cluster's state and the transport.

use raft::prelude::{ConfChange, ConfChangeType};

use super::mailbox::{Joined, NodeError, NodeFatal, Reply};
use super::{Node, Outbox};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

pub(super) enum PendingConf {
    Add { id: u64, reply: Reply<Joined> },
    Remove { reply: Reply<()> },
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
        }
    }
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    pub(super) fn add_node(&mut self, address: String, reply: Reply<Joined>) {
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

    pub(super) fn propose_conf_change(&mut self, change: ConfChange, pending: PendingConf) {
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

    pub(super) fn apply_conf_change(
        &mut self,
        index: u64,
        change: ConfChange,
    ) -> Result<(), NodeFatal> {
        self.drop_lease();
        let node = change.node_id;
        if node == self.id && change.get_change_type() == ConfChangeType::RemoveNode {
            // This node is done: it stops at the end of the round. raft-rs is not told: a
            // leader that drops itself from its progress tracker panics when the same Ready's
            // persisted entries advance its own progress (the simulator's seed 1161 found it).
            // A restart replays this entry and stops again.
            tracing::info!(node, index, "this node was removed from the cluster");
            self.cluster.members.remove(&node);
            self.removed = true;
            return Ok(());
        }
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
                    self.outbox.notify_removed(node, address, index);
                }
            }
        }
        self.outbox.set_members(&self.cluster.members);
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
}
