//! The replicated state machine as the node sees it: a trait, and the answers it gives.
//!
//! The node is generic over [`StateMachine`] and never names wasmtime. Two implementations
//! exist: [`crate::wasm_state_machine::WasmStateMachine`] (the product: a user's plugin) and
//! [`NativeStateMachine`] (a store compiled into the host, for tests and benchmarks).

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use riteraft_plugin_sdk::RawStore;

use crate::module_store::HashedModule;

/// Where an entry sits in the log, and when its leader proposed it: the plugin SDK's own type
/// (one definition for both sides, the same fields as `apply-context` in `proto/store.wit`).
pub use riteraft_plugin_sdk::ApplyContext;

/// A deterministic "no" for one entry or query: the same on every replica, so it is replicated
/// like any answer and returned to the client. The state machine stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The store returned an error of its own.
    #[error("{0}")]
    Store(String),
    /// The plugin trapped (a panic, `unreachable`, an out-of-bounds access, ...).
    #[error("plugin trapped: {0}")]
    Trapped(String),
    /// The call used up its fuel (an endless or too long computation).
    #[error("plugin ran out of fuel after {0} units (endless loop, or too much work for one call)")]
    OutOfFuel(u64),
    /// The plugin tried to grow its memory past the configured cap.
    #[error("plugin exceeded its memory limit of {0} bytes")]
    OutOfMemory(usize),
}

/// The answer to one entry or query: bytes from the store, or a deterministic rejection.
pub type Outcome = Result<Vec<u8>, Rejection>;

/// A failure that leaves this replica's state machine unusable: the node must stop rather than
/// risk diverging from the other replicas.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// Restoring a snapshot failed; the previous state is still in place.
    #[error("cannot restore snapshot: {0}")]
    Restore(String),
    /// Taking a snapshot failed (the plugin trapped or ran out of fuel in `snapshot`).
    #[error("cannot take snapshot: {0}")]
    Snapshot(String),
    /// After a trap, the plugin could not be rebuilt from its checkpoint and replay.
    #[error("cannot rebuild the plugin instance after a trap: {0}")]
    Rebuild(String),
}

/// Reads back the store's state as of the node's latest durable snapshot (see
/// [`StateMachine::checkpoint_saved`]); an error says why the file could not be read.
pub type CheckpointReader = Box<dyn Fn() -> Result<Bytes, String> + Send>;

/// Which code a state machine runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleInfo {
    /// sha256 of the module's bytes (all zero for a store built into the host).
    pub sha256: [u8; 32],
    /// The module's own version string, empty if it has none.
    pub version: String,
}

/// A deterministic state machine that the node replicates.
///
/// Contract (what every implementation must guarantee, and what `tests/state_machine_suite`
/// checks against each of them):
/// - `apply` is called once per committed entry in log order. Given the same snapshot and the
///   same entries, every replica returns the same outcomes and reaches the same snapshot bytes.
/// - `Ok(Err(rejection))` is a deterministic answer: the entry counts as applied, and a
///   rejection other than [`Rejection::Store`] leaves the state as it was before the entry.
/// - `Err(StateMachineError)` means this replica is broken; the caller must stop using it.
/// - `query` does not change the state, and a rejected query leaves the state as it was.
/// - `restore` either replaces the whole state or, on error, keeps the previous one.
pub trait StateMachine: Send {
    /// Applies one committed entry.
    fn apply(&mut self, ctx: ApplyContext, entry: &[u8]) -> Result<Outcome, StateMachineError>;
    /// Answers a read-only query.
    fn query(&mut self, request: &[u8]) -> Result<Outcome, StateMachineError>;
    /// The whole state as bytes (shared: an implementation may keep them as its checkpoint).
    fn snapshot(&mut self) -> Result<Bytes, StateMachineError>;
    /// Replaces the whole state with a snapshot's (shared, not copied: an implementation may
    /// keep the bytes as its checkpoint).
    fn restore(&mut self, snapshot: &Bytes) -> Result<(), StateMachineError>;

    /// Writes the bytes `snapshot` would return into `out` as they come, then flushes and
    /// drops it: the node streams them to its snapshot file, so that a large state is never
    /// held whole outside the store. The node then treats them as it treats `snapshot`'s
    /// (see `checkpoint_saved`). The default writes `snapshot`'s bytes.
    fn write_snapshot(&mut self, mut out: Box<dyn Write + Send>) -> Result<(), StateMachineError> {
        let bytes = self.snapshot()?;
        (out.write_all(&bytes).and_then(|()| out.flush()))
            .map_err(|e| StateMachineError::Snapshot(format!("cannot hand on the snapshot: {e}")))
    }

    /// The fuel the last `apply` or `query` used (for `riteraft_plugin_fuel_per_entry`); `None`
    /// for a store that is not metered.
    fn fuel_used(&self) -> Option<u64> {
        None
    }

    /// The code this state machine runs.
    fn module_info(&self) -> ModuleInfo {
        ModuleInfo::default()
    }

    /// Whether the code it runs tells apart the commands of one entry by their
    /// [`ApplyContext::position`]: while it does not, the leader packs no commands together.
    /// The default, for stores built into the host with the SDK: it does.
    fn packs_commands(&self) -> bool {
        true
    }

    /// What gets new code ready for [`StateMachine::upgrade`] (compiling a large module takes
    /// seconds), so that the upgrade itself is quick: the node calls it on a thread of its own
    /// with a deployed module's bytes when the deploy entry reaches its log, and applies the
    /// entry once it is done. `None` (the default): nothing to prepare.
    fn compiler(&self) -> Option<ModuleCompiler> {
        None
    }

    /// Switches to new code at this point of the log: the new code restores a snapshot of the
    /// current state and applies every later entry. `Ok(Err(reason))` is a deterministic
    /// refusal (the bytes are not a usable store, or cannot read the current state): the old
    /// code keeps running, on every replica alike.
    fn upgrade(
        &mut self,
        module: &HashedModule,
    ) -> Result<Result<ModuleInfo, String>, StateMachineError> {
        let _ = module;
        Ok(Err(
            "this node runs a store built into the host; it cannot be replaced".into(),
        ))
    }

    /// The state last returned by `snapshot` or written by `write_snapshot` (or given to
    /// `restore`) is now durable in the node's snapshot and can be read back with `read`: an
    /// implementation that keeps a copy of it (to recover from failures) may drop the copy and
    /// use `read` when it needs it, and one that kept none may stop keeping what it would
    /// replay on top of the checkpoint before. The node writes its snapshots on another
    /// thread while entries go on being applied, so this may come late: an implementation that
    /// has checkpointed its state by itself since (e.g. at an upgrade) must keep that newer
    /// checkpoint.
    fn checkpoint_saved(&mut self, read: CheckpointReader) {
        let _ = read;
    }

    /// Gives the state machine a directory of the node's for what it keeps to recover from a
    /// failure (e.g. entries to replay after a trap), instead of memory, leaving `keep_free`
    /// bytes of its disk free. The default keeps nothing there.
    fn keep_recovery_data_in(&mut self, dir: &Path, keep_free: u64) -> std::io::Result<()> {
        let _ = (dir, keep_free);
        Ok(())
    }

    /// Whether this state machine would like the node to take a snapshot soon, whatever the
    /// node's own schedule (e.g. what it keeps to recover from a trap has grown large).
    fn wants_snapshot(&self) -> bool {
        false
    }

    /// Replaces code and state at once: a snapshot written by other code (`module`).
    fn restore_with_module(
        &mut self,
        module: &HashedModule,
        snapshot: &Bytes,
    ) -> Result<(), StateMachineError> {
        let _ = module;
        self.restore(snapshot)
    }
}

/// A store compiled into the host, run through the plugin SDK's own glue: the same bytes in and
/// out as the wasm plugin, without the sandbox. For tests and for measuring what wasm costs.
pub struct NativeStateMachine<S: RawStore> {
    /// The store, in the slot type the SDK's exports use.
    slot: RefCell<Option<S>>,
}

impl<S: RawStore> Default for NativeStateMachine<S> {
    fn default() -> Self {
        Self {
            slot: RefCell::new(None),
        }
    }
}

// The slot is only touched through `&mut self`, from whichever thread owns the machine.
impl<S: RawStore + Send> NativeStateMachine<S> {
    /// A state machine around `S::default()`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S: RawStore + Send> StateMachine for NativeStateMachine<S> {
    fn apply(&mut self, ctx: ApplyContext, entry: &[u8]) -> Result<Outcome, StateMachineError> {
        Ok(riteraft_plugin_sdk::__glue::apply(&self.slot, &ctx, entry).map_err(Rejection::Store))
    }

    fn query(&mut self, request: &[u8]) -> Result<Outcome, StateMachineError> {
        Ok(riteraft_plugin_sdk::__glue::query(&self.slot, request).map_err(Rejection::Store))
    }

    fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        Ok(riteraft_plugin_sdk::__glue::snapshot(&self.slot).into())
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), StateMachineError> {
        riteraft_plugin_sdk::__glue::restore(&self.slot, snapshot)
            .map_err(StateMachineError::Restore)
    }
}

/// Compiles a module ahead of an upgrade (see [`StateMachine::compiler`]); failures are the
/// upgrade's to report.
pub type ModuleCompiler = std::sync::Arc<dyn Fn(&HashedModule) + Send + Sync>;
