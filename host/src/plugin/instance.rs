//! One live plugin instance and its sandbox: the data its wasmtime store holds (the empty WASI
//! context, the memory cap, the snapshot streams), and the calls (`apply`, `query`,
//! `snapshot`, `restore`) with their fuel, their deterministic environment and the turning of
//! a trap into the same rejection on every replica.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::contract::Exports;
use super::sandbox::{
    CallEnvironment, EntryRandom, GuestOutput, INSECURE_RANDOM_SEED, LeaderMonotonicClock,
    LeaderWallClock,
};
use super::{CallError, PluginLimits, PluginModule};
use crate::state_machine::{ApplyContext, Rejection};

/// What a plugin instance's wasmtime store holds.
pub(super) struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    /// The time and random seed the current call sees; shared with the WASI stand-ins.
    environment: Arc<CallEnvironment>,
    /// What the guest wrote to stdout and stderr during the current call.
    stdout: GuestOutput,
    stderr: GuestOutput,
    /// During `snapshot`: where the pieces written through `snapshot-write` go.
    snapshot_out: Option<SnapshotOut>,
    /// During a streamed `restore`: the snapshot, and how much of it `snapshot-read` gave.
    snapshot_in: Option<(Bytes, usize)>,
}

/// Where a snapshot's pieces go.
enum SnapshotOut {
    /// Gathered in memory.
    Buffer(Vec<u8>),
    /// Handed on as they come.
    Writer(Box<dyn Write + Send>),
}

/// Largest piece `snapshot-read` hands over at once (the WIT contract says 1 MiB).
const SNAPSHOT_READ_MAX: usize = 1 << 20;

/// The host side of the `snapshot-write` and `snapshot-read` imports. Called outside the call
/// they belong to, they trap: a deterministic outcome of the plugin's own code.
pub(super) fn add_snapshot_streams(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    let mut root = linker.root();
    root.func_wrap(
        "snapshot-write",
        |mut store: wasmtime::StoreContextMut<'_, Sandbox>, (chunk,): (Vec<u8>,)| match &mut store
            .data_mut()
            .snapshot_out
        {
            Some(SnapshotOut::Buffer(out)) => {
                out.extend_from_slice(&chunk);
                Ok(())
            }
            Some(SnapshotOut::Writer(out)) => out
                .write_all(&chunk)
                .map_err(|e| wasmtime::Error::msg(format!("cannot hand on the snapshot: {e}"))),
            None => Err(wasmtime::Error::msg(
                "snapshot-write called outside `snapshot`",
            )),
        },
    )?;
    root.func_wrap(
        "snapshot-read",
        |mut store: wasmtime::StoreContextMut<'_, Sandbox>, (max,): (u32,)| {
            let Some((bytes, read)) = &mut store.data_mut().snapshot_in else {
                return Err(wasmtime::Error::msg(
                    "snapshot-read called outside `restore`",
                ));
            };
            let max = usize::try_from(max)
                .unwrap_or(usize::MAX)
                .min(SNAPSHOT_READ_MAX);
            let end = bytes.len().min(*read + max);
            let chunk = bytes[*read..end].to_vec();
            *read = end;
            Ok((chunk,))
        },
    )?;
    Ok(())
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that the cap was hit, so the trap that follows (Rust aborts
/// when an allocation fails) can be reported as what it is.
struct MemoryCap {
    max_bytes: usize,
    hit: bool,
}

/// Most table elements an instance may have: Rust plugins use a few hundred.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Longest version string kept: it is for display.
const MAX_VERSION_LEN: usize = 200;

/// One live plugin instance. After any [`CallError::Failed`] it must be dropped.
pub struct PluginInstance {
    store: Store<Sandbox>,
    /// Set once instantiation succeeded.
    exports: Option<Arc<Exports>>,
    limits: PluginLimits,
    /// The last applied entry's context: queries see its time.
    last: ApplyContext,
    /// What the plugin's `version` export said, if it has one.
    version: Option<String>,
    /// Whether its module imports `snapshot-read` (see [`PluginInstance::restore`]).
    reads_snapshots: bool,
    /// Size of the last snapshot: the next one's buffer starts that big (plus an eighth),
    /// instead of being copied over and over as it doubles.
    last_snapshot_len: usize,
    /// Fuel the last call used (its budget minus what was left).
    fuel_used: u64,
}

impl PluginInstance {
    /// A fresh instance of `module`, in its own sandbox, on `engine`.
    pub(super) fn new(
        engine: &Engine,
        limits: &PluginLimits,
        module: &PluginModule,
    ) -> Result<PluginInstance, CallError> {
        let environment = Arc::new(CallEnvironment::default());
        let stdout = GuestOutput::new(limits.output_bytes_per_call);
        let stderr = GuestOutput::new(limits.output_bytes_per_call);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(LeaderWallClock(environment.clone()))
            .monotonic_clock(LeaderMonotonicClock(environment.clone()))
            .secure_random(EntryRandom::new(environment.clone(), b"secure"))
            .insecure_random(EntryRandom::new(environment.clone(), b"insecure"))
            .insecure_random_seed(INSECURE_RANDOM_SEED)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let sandbox = Sandbox {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                max_bytes: limits.memory_bytes,
                hit: false,
            },
            environment,
            stdout,
            stderr,
            snapshot_out: None,
            snapshot_in: None,
        };
        let mut store = Store::new(engine, sandbox);
        store.limiter(|sandbox| &mut sandbox.limiter);
        // What one call may hand back to the host (a snapshot is the biggest): as much as the
        // plugin's memory can hold. wasmtime's default of 128 MiB would make every snapshot of a
        // larger store trap, on every replica at once.
        store.set_hostcall_fuel(limits.memory_bytes);
        let mut instance = PluginInstance {
            store,
            exports: None,
            limits: limits.clone(),
            last: ApplyContext::default(),
            version: None,
            reads_snapshots: module.reads_snapshots,
            fuel_used: 0,
            last_snapshot_len: 0,
        };
        // Instantiation runs the component's start code, so it gets a budget like any call.
        let fuel = limits.fuel_per_call;
        let pre = module.pre.clone();
        let (exports, version) = instance.call(fuel, ApplyContext::default(), |store| {
            let raw = pre.instance_pre().instantiate(&mut *store)?;
            let exports = Exports::new(&pre, &mut *store, &raw)?;
            // `version` is optional (world `versioned-store`): absent or mistyped means none.
            let version = match raw.get_typed_func::<(), (String,)>(&mut *store, "version") {
                Ok(func) => {
                    let (mut version,) = func.call(&mut *store, ())?;
                    if version.len() > MAX_VERSION_LEN {
                        let cut = (0..=MAX_VERSION_LEN)
                            .rev()
                            .find(|i| version.is_char_boundary(*i))
                            .unwrap_or(0);
                        version.truncate(cut);
                    }
                    Some(version)
                }
                Err(_) => None,
            };
            Ok((exports, version))
        })?;
        instance.exports = Some(Arc::new(exports));
        instance.version = version;
        Ok(instance)
    }

    /// The fuel the last call used.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used
    }

    /// The plugin's own version string, if it exports one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Applies one entry.
    pub fn apply(&mut self, ctx: ApplyContext, entry: &[u8]) -> Result<Vec<u8>, CallError> {
        let exports = self.exports();
        let result = self.call(self.limits.fuel_per_call, ctx, |store| {
            exports.call_apply(store, ctx, entry)
        })?;
        self.last = ctx;
        result.map_err(CallError::Rejected)
    }

    /// Runs a read-only query.
    pub fn query(&mut self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        let exports = self.exports();
        let ctx = self.last;
        self.call(self.limits.fuel_per_call, ctx, |store| {
            exports.call_query(store, request)
        })?
        .map_err(CallError::Rejected)
    }

    /// The plugin's snapshot of its whole state: what it wrote through `snapshot-write`, then
    /// what it returned.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, CallError> {
        let expected = self.last_snapshot_len + self.last_snapshot_len / 8;
        let written = self.call_snapshot(SnapshotOut::Buffer(Vec::with_capacity(expected)))?;
        let SnapshotOut::Buffer(written) = written else {
            unreachable!("call_snapshot gives back the output it was given");
        };
        self.last_snapshot_len = written.len();
        Ok(written)
    }

    /// The plugin's snapshot of its whole state, written into `out` as the plugin hands it
    /// over (then `out` is flushed and dropped): the host holds no copy of it.
    pub fn snapshot_into(&mut self, out: Box<dyn Write + Send>) -> Result<(), CallError> {
        self.call_snapshot(SnapshotOut::Writer(out)).map(drop)
    }

    /// Calls `snapshot` with its pieces going to `out`, then adds what it returned (and
    /// flushes a writer).
    fn call_snapshot(&mut self, out: SnapshotOut) -> Result<SnapshotOut, CallError> {
        let exports = self.exports();
        let ctx = self.last;
        self.store.data_mut().snapshot_out = Some(out);
        let returned = self.call(self.limits.fuel_per_snapshot, ctx, |store| {
            exports.call_snapshot(store)
        });
        let out = self.store.data_mut().snapshot_out.take();
        let returned = returned?;
        match out.expect("put there before the call") {
            SnapshotOut::Buffer(written) if written.is_empty() => Ok(SnapshotOut::Buffer(returned)),
            SnapshotOut::Buffer(mut written) => {
                written.extend_from_slice(&returned);
                Ok(SnapshotOut::Buffer(written))
            }
            SnapshotOut::Writer(mut out) => {
                (out.write_all(&returned).and_then(|()| out.flush())).map_err(|e| {
                    CallError::Failed(Rejection::Trapped(format!(
                        "cannot hand on the snapshot: {e}"
                    )))
                })?;
                Ok(SnapshotOut::Writer(out))
            }
        }
    }

    /// Replaces the plugin's state with a snapshot's: through `snapshot-read` for a plugin that
    /// imports it (its `restore` then gets an empty list), else as `restore`'s argument.
    pub fn restore(&mut self, snapshot: &Bytes) -> Result<(), CallError> {
        let exports = self.exports();
        let ctx = self.last;
        let argument = if self.reads_snapshots {
            // Shared, not copied: the plugin takes it piece by piece.
            self.store.data_mut().snapshot_in = Some((snapshot.clone(), 0));
            &[][..]
        } else {
            &snapshot[..]
        };
        let result = self.call(self.limits.fuel_per_snapshot, ctx, |store| {
            exports.call_restore(store, argument)
        });
        self.store.data_mut().snapshot_in = None;
        result?.map_err(CallError::Rejected)
    }

    fn exports(&self) -> Arc<Exports> {
        self.exports
            .clone()
            .expect("a PluginInstance exists only once instantiated")
    }

    /// Runs one call with a fresh fuel budget and the environment of `ctx`, then drains the
    /// guest's output into the log and turns a trap into the same rejection on every replica.
    fn call<R>(
        &mut self,
        fuel: u64,
        ctx: ApplyContext,
        f: impl FnOnce(&mut Store<Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.store
            .set_fuel(fuel)
            .expect("fuel is enabled on every engine we build");
        self.store.data().environment.enter(ctx);
        self.store.data_mut().limiter.hit = false;
        let result = f(&mut self.store);
        self.fuel_used = fuel.saturating_sub(self.store.get_fuel().unwrap_or(0));
        let data = self.store.data();
        data.stdout.drain_to_log("stdout");
        let stderr = data.stderr.drain_to_log("stderr");
        result.map_err(|error| CallError::Failed(self.classify(error, fuel, &stderr)))
    }

    fn classify(&self, error: wasmtime::Error, fuel: u64, stderr: &str) -> Rejection {
        let trap = error.downcast_ref::<Trap>().copied();
        if trap == Some(Trap::OutOfFuel) {
            return Rejection::OutOfFuel(fuel);
        }
        if self.store.data().limiter.hit {
            return Rejection::OutOfMemory(self.limits.memory_bytes);
        }
        // Only the trap code and the guest's own words: both deterministic. (The full error
        // carries a backtrace with code offsets, noisy and irrelevant to the client.)
        let reason = match (trap, error.downcast_ref::<wasmtime_wasi::I32Exit>()) {
            (Some(trap), _) => trap.to_string(),
            (None, Some(exit)) => format!("the plugin called exit({})", exit.0),
            // A host function's error (e.g. a snapshot import called out of place): its own
            // message, without the backtrace wasmtime wraps around it.
            (None, None) => format!("{}", error.root_cause()),
        };
        let stderr = stderr.trim();
        if stderr.is_empty() {
            Rejection::Trapped(reason)
        } else {
            Rejection::Trapped(format!("{reason}; plugin stderr: {stderr}"))
        }
    }
}
