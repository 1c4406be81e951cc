//! Committed entries on their way to the store. A deploy's module is compiled on a thread of
//! its own from the moment its entry reaches this node's log (seconds for a large module);
//! when the entry is committed before that is done, it waits here, and every entry after it,
//! while the loop goes on stepping raft, persisting and answering heartbeats. Without this a
//! follower compiled on the consensus loop, and a deploy cost the cluster its leader.
//!
//! Determinism is untouched: entries are applied in log order, each exactly as before; only
//! *when* differs, as it does on every replica anyway.

use std::collections::{BTreeMap, VecDeque};

use raft::prelude::{Entry, EntryType};

use super::{Node, NodeFatal, Outbox};
use crate::replicated::{EntryPayload, decode};
use crate::state_machine::{Preparation, StateMachine};
use crate::storage::LogStore;

/// Deploys compiled at once: each holds a module's bytes and a compiler's memory. Deploys are
/// rare; one beyond this is compiled when it applies, as before.
const PREPARING_MAX: usize = 4;

/// Committed entries not applied yet, and the deploys being prepared.
#[derive(Debug, Default)]
pub(super) struct ApplyQueue {
    committed: VecDeque<Entry>,
    /// By the (index, term) of their entry: an entry a new leader overwrote is another one.
    preparing: BTreeMap<(u64, u64), Preparation>,
}

impl ApplyQueue {
    /// Whether committed entries are waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }
}

/// Whether `entry` is a deploy, told from its first byte alone (bincode writes the variant's
/// index first): a command's entry is never decoded twice.
fn is_deploy(entry: &Entry) -> bool {
    entry.get_entry_type() == EntryType::EntryNormal && EntryPayload::is_deploy(&entry.data)
}

/// The module of `entry` if it is a deploy.
fn deployed_module(entry: &Entry) -> Option<Vec<u8>> {
    if !is_deploy(entry) {
        return None;
    }
    match decode::<EntryPayload>("log entry", &entry.data) {
        Ok(EntryPayload::Deploy { module, .. }) => Some(module),
        _ => None,
    }
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// Entries just appended to this node's log: starts compiling the modules of deploys.
    pub(super) fn prepare_deploys(&mut self, entries: &[Entry]) {
        for entry in entries {
            self.prepare_deploy(entry);
        }
    }

    fn prepare_deploy(&mut self, entry: &Entry) {
        let key = (entry.index, entry.term);
        let queue = &mut self.apply_queue;
        if queue.preparing.contains_key(&key) || queue.preparing.len() >= PREPARING_MAX {
            return;
        }
        if let Some(module) = deployed_module(entry) {
            tracing::info!(
                index = entry.index,
                bytes = module.len(),
                "compiling a deployed module"
            );
            let preparation = self.state_machine.prepare_upgrade(&module);
            self.apply_queue.preparing.insert(key, preparation);
        }
    }

    /// Committed entries: applies them in order, except from a deploy whose module is not
    /// compiled yet (see [`Node::apply_ready`]).
    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeFatal> {
        self.apply_queue.committed.extend(entries);
        self.apply_ready()
    }

    /// Applies the waiting entries up to the first deploy still being compiled.
    pub(super) fn apply_ready(&mut self) -> Result<(), NodeFatal> {
        while let Some(entry) = self.apply_queue.committed.front() {
            let key = (entry.index, entry.term);
            if is_deploy(entry) {
                // Committed before it reached the log here? (a replay at start-up)
                if !self.apply_queue.preparing.contains_key(&key) {
                    let entry = entry.clone();
                    self.prepare_deploy(&entry);
                }
                if self
                    .apply_queue
                    .preparing
                    .get(&key)
                    .is_some_and(|p| !p.is_ready())
                {
                    return Ok(());
                }
                self.apply_queue.preparing.remove(&key);
            }
            let entry = self
                .apply_queue
                .committed
                .pop_front()
                .expect("front exists");
            self.apply_entry(entry)?;
        }
        let applied = self.applied;
        // Deploys at or below what is applied were overwritten, or applied already.
        (self.apply_queue.preparing).retain(|(index, _), _| *index > applied);
        Ok(())
    }

    /// A snapshot replaced the state up to `index`: the entries it covers are not applied.
    pub(super) fn skip_applying_to(&mut self, index: u64) {
        let queue = &mut self.apply_queue;
        queue.committed.retain(|entry| entry.index > index);
        queue.preparing.retain(|(at, _), _| *at > index);
    }
}
