//! The product's state machine: a user's plugin, run by the [`PluginRuntime`], made robust
//! against traps.
//!
//! A trap can leave an instance half-way through changing its state, so after one the instance
//! is thrown away and a new one is rebuilt deterministically: restore the last checkpoint (a
//! snapshot) and replay every entry applied since. The trapping entry itself is not replayed, so
//! it has no effect, on every replica alike. Checkpoints come for free when the node takes a
//! snapshot, which the node takes when the replay list reaches [`ReplayLimits`] (see
//! [`StateMachine::wants_snapshot`]); only if the list grows to twice that does the state
//! machine take a checkpoint on its own. Once the node's snapshot is durable, the in-memory
//! copy is dropped and a rebuild reads the state back from the snapshot file
//! ([`StateMachine::checkpoint_saved`]). A snapshot the node streams to its file
//! ([`StateMachine::write_snapshot`]) leaves no copy at all: the entries it holds stay in the
//! replay list until the file is durable.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::module_store::HashedModule;
use crate::plugin::{CallError, PluginInstance, PluginModule, PluginRuntime};
use crate::replay_log::{ReplayError, ReplayLog, ReplayMark};
use crate::state_machine::{
    ApplyContext, CheckpointReader, ModuleCompiler, ModuleInfo, Outcome, StateMachine,
    StateMachineError,
};

/// How much may be applied between checkpoints: this bounds both the memory the replay list
/// holds and the time a rebuild after a trap takes. Reaching a limit asks the node for a
/// snapshot; twice a limit makes the state machine take a checkpoint in memory itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Entries applied since the checkpoint: 1,000,000 replays in about two seconds (about
    /// 2 µs per small entry), the rare price of a trap.
    pub max_entries: usize,
    /// Bytes held for replay, each entry counted with its header
    /// ([`crate::replay_log::RECORD_HEADER`]): 64 MiB.
    pub max_bytes: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_bytes: 64 << 20,
        }
    }
}

/// The state a rebuild starts from.
enum Checkpoint {
    /// The plugin's initial state (nothing applied before `replay`).
    Initial,
    /// A copy in memory that the state machine took itself (at an upgrade, or at twice the
    /// replay limits): no snapshot of the node holds this state.
    InMemory(Bytes),
    /// A copy in memory of the state last taken by or given by the node (`snapshot`,
    /// `restore`), until the node says its snapshot of it is durable (`checkpoint_saved`).
    /// The node writes its snapshots on another thread, so the state machine may have moved
    /// to a newer checkpoint of its own by then: that one is kept.
    AwaitingSave(Bytes),
    /// The node's snapshot file: read back only for a rebuild, so a large store is not held
    /// in memory twice.
    Saved(CheckpointReader),
}

/// A [`StateMachine`] backed by a wasm plugin.
pub struct WasmStateMachine {
    runtime: Arc<PluginRuntime>,
    module: PluginModule,
    instance: PluginInstance,
    /// The state before `replay`.
    checkpoint: Checkpoint,
    /// Entries applied since `checkpoint`, to replay after a trap.
    replay: ReplayLog,
    /// Where `replay` ends at the state last written by `write_snapshot`: no copy of that
    /// state is kept, so the entries before stay in `replay` until the node's file of it is
    /// durable (`checkpoint_saved`). `None` when no such state is awaited.
    streamed: Option<ReplayMark>,
    /// Set when `replay` could not be kept whole (its file failed): a checkpoint is taken
    /// before the next entry, so that a rebuild never needs it.
    replay_lost: bool,
    limits: ReplayLimits,
    /// How many times a trap made us rebuild the instance (for status and tests).
    rebuilds: u64,
}

impl std::fmt::Debug for WasmStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmStateMachine")
            .field("module", &self.module)
            .field("replay", &self.replay.len())
            .field("rebuilds", &self.rebuilds)
            .finish()
    }
}

impl WasmStateMachine {
    /// A state machine running a fresh instance of `module`.
    pub fn new(
        runtime: Arc<PluginRuntime>,
        module: PluginModule,
        limits: ReplayLimits,
    ) -> Result<Self, StateMachineError> {
        let instance = runtime.instantiate(&module).map_err(|e| {
            StateMachineError::Rebuild(format!("cannot instantiate the plugin: {e}"))
        })?;
        Ok(Self {
            runtime,
            module,
            instance,
            checkpoint: Checkpoint::Initial,
            replay: ReplayLog::in_memory(),
            streamed: None,
            replay_lost: false,
            limits,
            rebuilds: 0,
        })
    }

    /// The module this state machine runs.
    pub fn module(&self) -> &PluginModule {
        &self.module
    }

    /// A fresh instance of `module` holding `snapshot`'s state, or why not.
    fn instance_from(
        &self,
        module: &PluginModule,
        snapshot: &Bytes,
    ) -> Result<PluginInstance, String> {
        let mut instance = self
            .runtime
            .instantiate(module)
            .map_err(|e| format!("the new module does not start: {e}"))?;
        instance
            .restore(snapshot)
            .map_err(|e| format!("the new module cannot restore the current state: {e}"))?;
        Ok(instance)
    }

    /// Makes `module`, restored from `checkpoint`, the running code.
    fn switch_to(
        &mut self,
        module: PluginModule,
        instance: PluginInstance,
        checkpoint: Checkpoint,
    ) {
        self.module = module;
        self.instance = instance;
        // Rebuilds after a trap now restore this (old-format) checkpoint with the new code,
        // which just proved it can.
        self.checkpoint = checkpoint;
        self.clear_replay();
    }

    /// Takes the plugin's state now as the checkpoint (one of the state machine's own), from
    /// which replay starts over; checkpoint and replay list always change together. A failure
    /// leaves a rebuilt instance behind and is fatal.
    fn checkpoint_now(&mut self) -> Result<Bytes, StateMachineError> {
        let snapshot = match self.instance.snapshot() {
            Ok(snapshot) => snapshot,
            Err(e) => {
                // Leave a usable instance behind, then report: without snapshots the node can
                // neither compact its log nor serve new members.
                self.rebuild()?;
                return Err(StateMachineError::Snapshot(e.to_string()));
            }
        };
        let snapshot = Bytes::from(snapshot);
        self.checkpoint = Checkpoint::InMemory(snapshot.clone());
        self.clear_replay();
        Ok(snapshot)
    }

    /// Empties the replay list, for a checkpoint newer than anything awaited.
    fn clear_replay(&mut self) {
        self.streamed = None;
        self.replay_lost = false;
        if let Err(e) = self.replay.clear() {
            tracing::error!("cannot empty the replay file: {e}; keeping replays in memory");
            self.replay = ReplayLog::in_memory();
        }
    }

    /// Takes a checkpoint if the replay list was lost, before anything needs it.
    fn ensure_replayable(&mut self) -> Result<(), StateMachineError> {
        if self.replay_lost {
            self.checkpoint_now()?;
        }
        Ok(())
    }

    /// How many times a trap forced a rebuild of the instance.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Remembers an applied entry for replay, taking a checkpoint when the list has grown to
    /// twice its limits (the node did not snapshot when asked).
    fn remember(&mut self, ctx: ApplyContext, entry: &[u8]) -> Result<(), StateMachineError> {
        if let Err(e) = self.replay.push(ctx, entry) {
            // The disk is (nearly) full: the state as of this entry becomes the checkpoint
            // instead, and later entries are kept in memory, which gives the disk its space
            // back.
            tracing::warn!(
                "cannot keep entries to replay after a trap in a file ({e}); keeping them in \
                 memory from now on"
            );
            self.replay = ReplayLog::in_memory();
            return self.checkpoint_now().map(drop);
        }
        // The node snapshots when asked (`wants_snapshot`); this is only the safety net.
        if self.replay.len() >= self.limits.max_entries.saturating_mul(2)
            || self.replay.bytes() >= (self.limits.max_bytes as u64).saturating_mul(2)
        {
            self.checkpoint_now()?;
        }
        Ok(())
    }

    /// Replaces a poisoned instance with a new one holding the state from before the failure.
    fn rebuild(&mut self) -> Result<(), StateMachineError> {
        self.rebuilds += 1;
        tracing::warn!(
            replay = self.replay.len(),
            "rebuilding the plugin instance after a trap"
        );
        let mut instance = self
            .runtime
            .instantiate(&self.module)
            .map_err(|e| StateMachineError::Rebuild(e.to_string()))?;
        let checkpoint = match &self.checkpoint {
            Checkpoint::Initial => None,
            Checkpoint::InMemory(bytes) | Checkpoint::AwaitingSave(bytes) => Some(bytes.clone()),
            Checkpoint::Saved(read) => Some(read().map_err(|e| {
                StateMachineError::Rebuild(format!("reading the checkpoint back: {e}"))
            })?),
        };
        if let Some(checkpoint) = checkpoint {
            instance.restore(&checkpoint).map_err(|e| {
                StateMachineError::Rebuild(format!("restoring the checkpoint: {e}"))
            })?;
        }
        let replayed = self
            .replay
            .replay(|ctx, entry| match instance.apply(ctx, entry) {
                Ok(_) | Err(CallError::Rejected(_)) => Ok(()),
                Err(CallError::Failed(e)) => Err(format!(
                    "entry {} trapped on replay although it did not the first time: {e}",
                    ctx.index
                )),
            });
        match replayed {
            Ok(()) => {}
            Err(ReplayError::Read(e)) => {
                return Err(StateMachineError::Rebuild(format!(
                    "reading the entries to replay: {e}"
                )));
            }
            Err(ReplayError::Apply(e)) => return Err(StateMachineError::Rebuild(e)),
        }
        self.instance = instance;
        Ok(())
    }
}

impl StateMachine for WasmStateMachine {
    fn apply(&mut self, ctx: ApplyContext, entry: &[u8]) -> Result<Outcome, StateMachineError> {
        self.ensure_replayable()?;
        match self.instance.apply(ctx, entry) {
            Ok(output) => {
                self.remember(ctx, entry)?;
                Ok(Ok(output))
            }
            Err(CallError::Rejected(message)) => {
                // The store said no, but may have changed state on the way: replay it too.
                self.remember(ctx, entry)?;
                Ok(Err(CallError::Rejected(message).into_rejection()))
            }
            Err(CallError::Failed(rejection)) => {
                self.rebuild()?;
                Ok(Err(rejection))
            }
        }
    }

    fn query(&mut self, request: &[u8]) -> Result<Outcome, StateMachineError> {
        match self.instance.query(request) {
            Ok(output) => Ok(Ok(output)),
            Err(CallError::Rejected(message)) => {
                Ok(Err(CallError::Rejected(message).into_rejection()))
            }
            Err(CallError::Failed(rejection)) => {
                self.rebuild()?;
                Ok(Err(rejection))
            }
        }
    }

    fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        let snapshot = self.checkpoint_now()?;
        // The node's own: shared, not copied, so a large store's state is not held twice.
        self.checkpoint = Checkpoint::AwaitingSave(snapshot.clone());
        Ok(snapshot)
    }

    fn write_snapshot(&mut self, out: Box<dyn Write + Send>) -> Result<(), StateMachineError> {
        if let Err(e) = self.instance.snapshot_into(out) {
            // Leave a usable instance behind, then report (as `checkpoint_now` does).
            self.rebuild()?;
            return Err(StateMachineError::Snapshot(e.to_string()));
        }
        // No copy is kept: until the node's file of this state is durable, a rebuild starts
        // from the checkpoint before it and replays everything since.
        self.streamed = Some(self.replay.mark());
        Ok(())
    }

    fn checkpoint_saved(&mut self, read: CheckpointReader) {
        if let Some(held) = self.streamed.take() {
            if let Err(e) = self.replay.drop_before(held) {
                tracing::error!("cannot trim the replay file: {e}; taking a checkpoint next");
                self.replay_lost = true;
            }
            self.checkpoint = Checkpoint::Saved(read);
        } else if let Checkpoint::AwaitingSave(_) = self.checkpoint {
            self.checkpoint = Checkpoint::Saved(read);
        }
    }

    /// Keeps the entries to replay after a trap in an anonymous file of `dir` (see
    /// [`ReplayLog`]). Once that disk is nearly full, they are kept in memory again.
    fn keep_recovery_data_in(&mut self, dir: &Path, keep_free: u64) -> std::io::Result<()> {
        let mut file = ReplayLog::in_file(dir, keep_free)?;
        self.replay
            .replay(|ctx, entry| file.push(ctx, entry))
            .map_err(|e| match e {
                ReplayError::Read(e) | ReplayError::Apply(e) => e,
            })?;
        self.replay = file;
        Ok(())
    }

    fn wants_snapshot(&self) -> bool {
        self.replay.len() >= self.limits.max_entries
            || self.replay.bytes() >= self.limits.max_bytes as u64
    }

    fn fuel_used(&self) -> Option<u64> {
        Some(self.instance.fuel_used())
    }

    fn module_info(&self) -> ModuleInfo {
        ModuleInfo {
            sha256: self.module.sha256(),
            version: self.instance.version().unwrap_or_default().to_string(),
        }
    }

    fn packs_commands(&self) -> bool {
        self.module.contract().packs_commands()
    }

    fn compiler(&self) -> Option<ModuleCompiler> {
        // Compiled into the runtime's cache, where `upgrade` finds it.
        let runtime = self.runtime.clone();
        Some(Arc::new(move |module: &HashedModule| {
            if let Err(e) = runtime.load_cached_hashed(&module.bytes, module.sha256) {
                tracing::debug!("the deployed module does not load: {e}");
            }
        }))
    }

    fn upgrade(
        &mut self,
        module: &HashedModule,
    ) -> Result<Result<ModuleInfo, String>, StateMachineError> {
        let new = match (self.runtime).load_cached_hashed(&module.bytes, module.sha256) {
            Ok(new) => new,
            Err(e) => return Ok(Err(format!("the new module is not a usable store: {e}"))),
        };
        if new.sha256() == self.module.sha256() {
            return Ok(Ok(self.module_info()));
        }
        let started = std::time::Instant::now();
        let snapshot = self.checkpoint_now()?;
        let snapshot_ms = started.elapsed().as_millis() as u64;
        match self.instance_from(&new, &snapshot) {
            Ok(instance) => {
                tracing::info!(
                    sha256 = %new.sha256_hex(),
                    state_bytes = snapshot.len(),
                    snapshot_ms,
                    took_ms = started.elapsed().as_millis() as u64,
                    "switched to new store code"
                );
                self.switch_to(new, instance, Checkpoint::InMemory(snapshot));
                Ok(Ok(self.module_info()))
            }
            Err(reason) => Ok(Err(reason)),
        }
    }

    fn restore_with_module(
        &mut self,
        module: &HashedModule,
        snapshot: &Bytes,
    ) -> Result<(), StateMachineError> {
        let module = self
            .runtime
            .load_cached_hashed(&module.bytes, module.sha256)
            .map_err(|e| StateMachineError::Restore(format!("the snapshot's module: {e}")))?;
        if module.sha256() == self.module.sha256() {
            return self.restore(snapshot);
        }
        let instance = self
            .instance_from(&module, snapshot)
            .map_err(StateMachineError::Restore)?;
        // The node's snapshot: the node says when it is durable, as after `restore`.
        self.switch_to(module, instance, Checkpoint::AwaitingSave(snapshot.clone()));
        Ok(())
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), StateMachineError> {
        let mut instance = self
            .runtime
            .instantiate(&self.module)
            .map_err(|e| StateMachineError::Restore(e.to_string()))?;
        instance
            .restore(snapshot)
            .map_err(|e| StateMachineError::Restore(e.to_string()))?;
        self.instance = instance;
        // Shared with the caller's copy, which the node drops once the snapshot is installed.
        self.checkpoint = Checkpoint::AwaitingSave(snapshot.clone());
        self.clear_replay();
        Ok(())
    }
}
