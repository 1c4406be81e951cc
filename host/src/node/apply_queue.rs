//! Committed entries on their way to the store. A deploy's module is got ready on a thread of
//! its own from the moment its entry reaches this node's log: read from the module store, or
//! fetched by hash from another member if this node lacks it, then compiled (seconds for a
//! large module). When the entry is committed before that is done, it waits here, and every
//! entry after it, while the loop goes on stepping raft, persisting and answering heartbeats.
//! Without this a follower compiled on the consensus loop, and a deploy cost the cluster its
//! leader.
//!
//! Determinism is untouched: entries are applied in log order, each exactly as before; only
//! *when* differs, as it does on every replica anyway. A fetched module is the one the entry
//! names (its sha256 is checked), and a module that cannot be had is waited for, never
//! skipped: no replica applies a deploy without the exact bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::prelude::{Entry, EntryType};

use super::{Node, NodeFatal, Outbox};
use crate::module_store::HashedModule;
use crate::replicated::{EntryPayload, decode};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

/// Deploys prepared at once ahead of their turn: each holds a module's bytes and a compiler's
/// memory. Deploys are rare; one beyond this is prepared when its turn comes.
const PREPARING_MAX: usize = 4;

/// How long after a failed fetch of a module it is tried again: the members that have it may
/// be down or busy, and the entry cannot apply without it.
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// Most entries applied in one slice, a packed entry counting once per command. A node far
/// behind (its entries held while a deploy's module compiled, a follower catching up) applies
/// its backlog in slices, and between two the
/// loop steps raft: it answers heartbeats and persists appends. Applying 150,000 held entries
/// in one go kept a follower's loop busy for seconds, two followers at once cost the leader its
/// quorum ("quorum is not active"), and the cluster its leader.
const APPLY_SLICE_ENTRIES: usize = 4096;

/// Most plugin fuel used by one slice: about 20 ms of wasm (a fuel unit is roughly a
/// nanosecond), so a slow store's slice is short too. Fuel, not the clock, so that where a
/// slice ends is the same in every run of the simulator.
const APPLY_SLICE_FUEL: u64 = 20_000_000;

/// A deploy's module being got ready: fetched if this node lacks it, then compiled.
#[derive(Debug)]
enum Preparing {
    Working(JoinHandle<Result<HashedModule, String>>),
    Ready(HashedModule),
    /// The module could not be had (no member that has it answered): tried again then.
    Failed {
        retry_at: Instant,
    },
}

/// Committed entries not applied yet, and the deploys being prepared.
#[derive(Debug, Default)]
pub(super) struct ApplyQueue {
    committed: VecDeque<Entry>,
    /// By the (index, term) of their entry: an entry a new leader overwrote is another one.
    preparing: BTreeMap<(u64, u64), Preparing>,
    /// Entries applied in the current slice (one per round of the loop), each packed command
    /// counting as one, and the fuel their commands used.
    slice_entries: usize,
    slice_fuel: u64,
}

impl ApplyQueue {
    /// Whether committed entries are waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    /// Whether the round's slice is used up.
    fn slice_spent(&self) -> bool {
        self.slice_entries >= APPLY_SLICE_ENTRIES || self.slice_fuel >= APPLY_SLICE_FUEL
    }

    /// Whether the last slice ended at its bounds with entries still waiting: the loop should
    /// come back at once rather than wait for its next tick.
    pub(super) fn cut_short(&self) -> bool {
        self.slice_spent() && !self.committed.is_empty()
    }

    /// A round of the loop begins: a new slice.
    pub(super) fn new_slice(&mut self) {
        self.slice_entries = 0;
        self.slice_fuel = 0;
    }

    /// Counts a command just applied against the slice's bounds: its fuel, and, past the first
    /// command of a packed entry (which its entry counts for), the command itself. A slice
    /// of packed entries is as long as one of single commands.
    pub(super) fn note_command(&mut self, position: u32, fuel: Option<u64>) {
        if position > 0 {
            self.slice_entries += 1;
        }
        self.slice_fuel = self.slice_fuel.saturating_add(fuel.unwrap_or(0));
    }
}

/// Where a deploy's module is.
enum ModuleSource {
    /// In the entry (written before modules were kept by hash).
    Inline(Vec<u8>),
    /// Named by hash: in the module store, or at another member.
    ByHash { sha256: [u8; 32], bytes: u64 },
}

/// Whether `entry` is a deploy, told from its first byte alone: a command's entry is never
/// decoded twice.
fn is_deploy(entry: &Entry) -> bool {
    entry.get_entry_type() == EntryType::EntryNormal && EntryPayload::is_deploy(&entry.data)
}

/// The module of `entry` if it is a deploy.
fn deployed_module(entry: &Entry) -> Option<ModuleSource> {
    if !is_deploy(entry) {
        return None;
    }
    match decode::<EntryPayload>("log entry", &entry.data) {
        Ok(EntryPayload::Deploy { module, .. }) => Some(ModuleSource::Inline(module)),
        Ok(EntryPayload::DeployModule { sha256, bytes, .. }) => {
            Some(ModuleSource::ByHash { sha256, bytes })
        }
        _ => None,
    }
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// Entries just appended to this node's log: starts getting the modules of deploys ready.
    pub(super) fn prepare_deploys(&mut self, entries: &[Entry]) {
        for entry in entries {
            if is_deploy(entry) {
                self.newest_deploy_at = self.newest_deploy_at.max(entry.index);
            }
            if self.apply_queue.preparing.len() < PREPARING_MAX {
                self.prepare_deploy(entry);
            }
        }
    }

    /// Starts fetching (if need be) and compiling the module of `entry`, if it is a deploy
    /// not being prepared already.
    fn prepare_deploy(&mut self, entry: &Entry) {
        let key = (entry.index, entry.term);
        let retry = match self.apply_queue.preparing.get(&key) {
            None => false,
            Some(Preparing::Failed { retry_at }) if *retry_at <= self.now => true,
            Some(_) => return,
        };
        let Some(source) = deployed_module(entry) else {
            return;
        };
        let modules = self.options.modules.clone();
        let fetcher = self.options.module_fetcher.clone();
        let addresses = self.member_addresses();
        let compiler = self.state_machine.compiler();
        if !retry {
            tracing::info!(index = entry.index, "getting a deployed module ready");
        }
        let prepare_on_thread = self.options.prepare_on_thread;
        let work = move || {
            if prepare_on_thread {
                // Compiling must not slow the consensus loop (see `plugin::compile_priority`).
                crate::plugin::lower_this_thread();
            }
            let module = match source {
                ModuleSource::Inline(bytes) => {
                    let module = HashedModule::new(Arc::new(bytes));
                    if let Err(e) = modules.put_hashed(module.sha256, module.bytes.clone()) {
                        tracing::warn!("{e}");
                    }
                    module
                }
                ModuleSource::ByHash { sha256, bytes } => HashedModule {
                    sha256,
                    bytes: (modules.get_or_fetch(
                        &sha256,
                        Some(bytes),
                        fetcher.as_deref(),
                        &addresses,
                    ))?,
                },
            };
            if let Some(compile) = compiler {
                compile(&module);
            }
            Ok(module)
        };
        if !self.options.prepare_on_thread {
            let preparing = match work() {
                Ok(module) => Preparing::Ready(module),
                Err(why) => {
                    tracing::warn!(index = key.0, "the deployed module is not here yet ({why})");
                    Preparing::Failed {
                        retry_at: self.now + FETCH_RETRY,
                    }
                }
            };
            self.apply_queue.preparing.insert(key, preparing);
            return;
        }
        let preparing = match std::thread::Builder::new()
            .name("riteraft-prepare".into())
            .spawn(work)
        {
            Ok(thread) => Preparing::Working(thread),
            Err(e) => {
                tracing::warn!("cannot start a thread to prepare a deployed module: {e}");
                Preparing::Failed {
                    retry_at: self.now + FETCH_RETRY,
                }
            }
        };
        self.apply_queue.preparing.insert(key, preparing);
    }

    /// The other members' addresses, the leader's first: where a module this node lacks is
    /// fetched from (the leader stored a deploy's module before it proposed the entry).
    pub(super) fn member_addresses(&self) -> Vec<String> {
        let leader = self.raw.raft.leader_id;
        let mut members: Vec<(u64, String)> = (self.cluster.members.iter())
            .filter(|(id, _)| **id != self.id)
            .map(|(id, address)| (*id, address.clone()))
            .collect();
        members.sort_by_key(|(id, _)| *id != leader);
        members.into_iter().map(|(_, address)| address).collect()
    }

    /// The module of the deploy `key` once it is ready (it stays until applied or dropped).
    fn prepared(&mut self, key: (u64, u64)) -> Option<HashedModule> {
        let preparing = self.apply_queue.preparing.get_mut(&key)?;
        if let Preparing::Working(thread) = preparing {
            if !thread.is_finished() {
                return None;
            }
            let Preparing::Working(thread) = std::mem::replace(
                preparing,
                Preparing::Failed {
                    retry_at: self.now + FETCH_RETRY,
                },
            ) else {
                unreachable!("matched just above");
            };
            match thread.join() {
                Ok(Ok(module)) => *preparing = Preparing::Ready(module),
                Ok(Err(why)) => tracing::warn!(
                    index = key.0,
                    retry_in_ms = FETCH_RETRY.as_millis() as u64,
                    "the deployed module is not here yet ({why}); the entry and those after \
                     it wait for it"
                ),
                Err(_) => tracing::error!(index = key.0, "preparing a deployed module panicked"),
            }
        }
        match preparing {
            Preparing::Ready(module) => Some(module.clone()),
            _ => None,
        }
    }

    /// Committed entries: applies them in order, except from a deploy whose module is not
    /// ready yet (see [`Node::apply_ready`]).
    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeFatal> {
        self.apply_queue.committed.extend(entries);
        self.apply_ready()
    }

    /// Applies the waiting entries up to the first deploy whose module is not ready yet, within
    /// the round's slice (see [`APPLY_SLICE_ENTRIES`]).
    pub(super) fn apply_ready(&mut self) -> Result<(), NodeFatal> {
        while !self.apply_queue.slice_spent() {
            let Some(entry) = self.apply_queue.committed.front() else {
                break;
            };
            let key = (entry.index, entry.term);
            let mut module = None;
            if is_deploy(entry) {
                // Committed before it reached the log here (a replay at start-up), beyond
                // the deploys prepared ahead, or its module could not be had last time.
                let entry = entry.clone();
                self.prepare_deploy(&entry);
                let Some(ready) = self.prepared(key) else {
                    return Ok(());
                };
                module = Some(ready);
                self.apply_queue.preparing.remove(&key);
            }
            let entry = self
                .apply_queue
                .committed
                .pop_front()
                .expect("front exists");
            self.apply_queue.slice_entries += 1;
            self.apply_entry(entry, module)?;
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
