//! The sandboxed WebAssembly runtime: the only module that uses wasmtime.
//!
//! [`PluginRuntime`] owns the engine and the linker (one per process). It loads and validates a
//! component into a [`PluginModule`], and instantiates modules into [`PluginInstance`]s inside the
//! deterministic sandbox of `DESIGN.md`:
//! - WASI is linked, but the context grants nothing: no preopened directories, no environment,
//!   no arguments, no sockets, an empty stdin. Clocks read the leader's timestamp of the entry
//!   being applied; random numbers are derived from the entry's index and term.
//! - Guest stdout/stderr go into a bounded buffer that is drained into the host's log after
//!   each call (and quoted in the error when a call traps, so a panic's message is not lost).
//! - NaN canonicalization, deterministic relaxed SIMD, no threads.
//! - Every call runs on a fuel budget (deterministic, unlike wall-clock epochs), and linear
//!   memory is capped by a [`wasmtime::ResourceLimiter`].
//! - Snapshots may cross the boundary in pieces (the `snapshot-write` and `snapshot-read`
//!   imports of `proto/store.wit`), so a large store never holds its serialized form in its own
//!   memory, which never shrinks.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable, types::ComponentItem};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::state_machine::{ApplyContext, Rejection};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../proto/store.wit",
        world: "store",
    });
}

mod sandbox;

use sandbox::{CallEnvironment, GuestOutput};

/// The exports every store plugin must have (see `proto/store.wit`).
pub const REQUIRED_EXPORTS: [&str; 4] = ["apply", "query", "snapshot", "restore"];

/// Limits for plugins. Every one exists so that a buggy or hostile plugin costs a bounded amount
/// of CPU and memory, deterministically, instead of hanging or killing the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Fuel for one `apply` or `query` (roughly one unit per wasm instruction). 10^9 is about a
    /// second of work: far above any sane command, low enough that an endless loop ends fast.
    pub fuel_per_call: u64,
    /// Fuel for one `snapshot` or `restore`, which touch the whole state: 10^11 units.
    pub fuel_per_snapshot: u64,
    /// Cap on a plugin instance's linear memory. 1 GiB: room for a large in-memory store and
    /// its snapshot copy, well inside wasm32's 4 GiB.
    pub memory_bytes: usize,
    /// Largest plugin file accepted: 64 MiB (a Rust store is typically a few MiB).
    pub module_bytes: usize,
    /// Guest output kept per call before the rest is dropped (still counted): 64 KiB.
    pub output_bytes_per_call: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            fuel_per_call: 1_000_000_000,
            fuel_per_snapshot: 100_000_000_000,
            memory_bytes: 1 << 30,
            module_bytes: 64 << 20,
            output_bytes_per_call: 64 << 10,
        }
    }
}

/// Why a plugin could not be loaded. Each variant names what is wrong with the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is larger than [`PluginLimits::module_bytes`].
    #[error("the plugin is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly file (it does not start with \"\\0asm\")")]
    NotWasm,
    /// A core module: built for the wrong target, or not turned into a component.
    #[error(
        "a core WebAssembly module, not a component: build the plugin for `--target wasm32-wasip2` \
         (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component is malformed or uses features the sandbox turns off.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// A required export is absent.
    #[error(
        "the plugin does not export `{0}`: a store must export apply, query, snapshot and \
         restore of the world riteraft:store/store@0.1.0 (proto/store.wit)"
    )]
    MissingExport(&'static str),
    /// An export has a type other than the one in `proto/store.wit`.
    #[error("the plugin's export `{name}` has the wrong signature: {detail} (see proto/store.wit)")]
    WrongSignature { name: &'static str, detail: String },
    /// The plugin needs an import that the sandbox does not provide.
    #[error("the plugin imports something the sandbox does not provide: {0}")]
    UnsupportedImport(String),
}

/// Why the runtime itself could not be set up (a host problem, not a plugin one).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    /// WASI could not be added to the linker.
    #[error("cannot link WASI: {0}")]
    Linker(String),
}

/// Why one call into a plugin instance did not return `ok`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The plugin answered `err`: a deterministic answer. The instance is fine.
    #[error("{0}")]
    Rejected(String),
    /// The call did not finish (trap, fuel, memory): the instance must not be used again.
    #[error("{0}")]
    Failed(Rejection),
}

impl CallError {
    /// The rejection to report for this failure.
    pub fn into_rejection(self) -> Rejection {
        match self {
            CallError::Rejected(message) => Rejection::Store(message),
            CallError::Failed(rejection) => rejection,
        }
    }
}

/// The engine and linker: one per process, shared by every module and instance.
pub struct PluginRuntime {
    engine: Engine,
    /// WASI (locked down per instance by its context) is the only import plugins may use.
    linker: Linker<Sandbox>,
    limits: PluginLimits,
    /// Modules compiled so far, by sha256: compiling takes about a second, and a deploy
    /// validates, dry-runs and applies the same bytes. At most [`MODULE_CACHE`] are kept.
    cache: std::sync::Mutex<Vec<PluginModule>>,
}

/// Compiled modules kept by [`PluginRuntime::load_cached`]: the active one, the one being
/// deployed, and a few recent ones.
const MODULE_CACHE: usize = 4;

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("limits", &self.limits)
            .finish()
    }
}

/// A validated, compiled plugin, ready to instantiate cheaply (`InstancePre`).
#[derive(Clone)]
pub struct PluginModule {
    pre: bindings::StorePre<Sandbox>,
    /// sha256 of the module's bytes: its identity across the cluster.
    sha256: [u8; 32],
    /// The module's bytes, kept so snapshots can carry the code that wrote them.
    bytes: Arc<Vec<u8>>,
    /// Whether it imports `snapshot-read`: then `restore` gets its snapshot through it.
    reads_snapshots: bool,
}

impl std::fmt::Debug for PluginModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginModule")
            .field("sha256", &self.sha256_hex())
            .finish()
    }
}

impl PluginModule {
    /// sha256 of the module's bytes.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// sha256 of the module's bytes, in hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The module's bytes.
    pub fn bytes(&self) -> &Arc<Vec<u8>> {
        &self.bytes
    }
}

/// What a plugin instance's wasmtime store holds.
struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    /// The time and random seed the current call sees; shared with the WASI stand-ins.
    environment: Arc<CallEnvironment>,
    /// What the guest wrote to stdout and stderr during the current call.
    stdout: GuestOutput,
    stderr: GuestOutput,
    /// During `snapshot`: the pieces written so far through `snapshot-write`.
    snapshot_out: Option<Vec<u8>>,
    /// During a streamed `restore`: the snapshot, and how much of it `snapshot-read` gave.
    snapshot_in: Option<(Vec<u8>, usize)>,
}

/// Largest piece `snapshot-read` hands over at once (the WIT contract says 1 MiB).
const SNAPSHOT_READ_MAX: usize = 1 << 20;

/// The host side of the `snapshot-write` and `snapshot-read` imports. Called outside the call
/// they belong to, they trap: a deterministic outcome of the plugin's own code.
fn add_snapshot_streams(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    let mut root = linker.root();
    root.func_wrap(
        "snapshot-write",
        |mut store: wasmtime::StoreContextMut<'_, Sandbox>, (chunk,): (Vec<u8>,)| match &mut store
            .data_mut()
            .snapshot_out
        {
            Some(out) => {
                out.extend_from_slice(&chunk);
                Ok(())
            }
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

impl PluginRuntime {
    /// An engine configured for deterministic execution, and a linker with WASI.
    pub fn new(limits: PluginLimits) -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .wasm_component_model(true);
        // No threads: wasmtime is built without its `threads` feature, so shared memories and
        // atomics-based parallelism cannot even be enabled.
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        add_snapshot_streams(&mut linker).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        Ok(Self {
            engine,
            linker,
            limits,
            cache: Default::default(),
        })
    }

    /// Like [`PluginRuntime::load`], but reuses a module compiled earlier from the same bytes.
    pub fn load_cached(&self, bytes: &[u8]) -> Result<PluginModule, LoadError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let cached = |cache: &Vec<PluginModule>| cache.iter().find(|m| m.sha256 == sha256).cloned();
        if let Some(module) = cached(&self.cache.lock().expect("cache lock")) {
            return Ok(module);
        }
        let module = self.load(bytes)?;
        let mut cache = self.cache.lock().expect("cache lock");
        if cached(&cache).is_none() {
            if cache.len() >= MODULE_CACHE {
                cache.remove(0);
            }
            cache.push(module.clone());
        }
        Ok(module)
    }

    /// The limits instances run under.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// Reads, validates and compiles a plugin file.
    pub fn load_file(&self, path: &Path) -> Result<PluginModule, LoadError> {
        let size = std::fs::metadata(path)
            .map_err(|source| LoadError::Read {
                path: path.display().to_string(),
                source,
            })?
            .len();
        if size > self.limits.module_bytes as u64 {
            return Err(LoadError::TooLarge {
                size: size as usize,
                limit: self.limits.module_bytes,
            });
        }
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Validates and compiles a plugin from its bytes.
    pub fn load(&self, bytes: &[u8]) -> Result<PluginModule, LoadError> {
        if bytes.len() > self.limits.module_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                limit: self.limits.module_bytes,
            });
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        if wasmparser::Parser::is_core_wasm(bytes) {
            return Err(LoadError::CoreModule);
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        check_exports(&self.engine, &component)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let pre = bindings::StorePre::new(instance_pre).map_err(|e| {
            let detail = format!("{e:#}");
            let name = REQUIRED_EXPORTS
                .into_iter()
                .find(|name| detail.contains(&format!("`{name}`")))
                .unwrap_or("?");
            LoadError::WrongSignature { name, detail }
        })?;
        let reads_snapshots = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name == "snapshot-read");
        Ok(PluginModule {
            pre,
            sha256: Sha256::digest(bytes).into(),
            bytes: Arc::new(bytes.to_vec()),
            reads_snapshots,
        })
    }

    /// A fresh instance of `module`, in its own sandbox.
    pub fn instantiate(&self, module: &PluginModule) -> Result<PluginInstance, CallError> {
        let environment = Arc::new(CallEnvironment::default());
        let stdout = GuestOutput::new(self.limits.output_bytes_per_call);
        let stderr = GuestOutput::new(self.limits.output_bytes_per_call);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(sandbox::LeaderWallClock(environment.clone()))
            .monotonic_clock(sandbox::LeaderMonotonicClock(environment.clone()))
            .secure_random(sandbox::EntryRandom::new(environment.clone(), b"secure"))
            .insecure_random(sandbox::EntryRandom::new(environment.clone(), b"insecure"))
            .insecure_random_seed(sandbox::INSECURE_RANDOM_SEED)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let sandbox = Sandbox {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                max_bytes: self.limits.memory_bytes,
                hit: false,
            },
            environment,
            stdout,
            stderr,
            snapshot_out: None,
            snapshot_in: None,
        };
        let mut store = Store::new(&self.engine, sandbox);
        store.limiter(|sandbox| &mut sandbox.limiter);
        // What one call may hand back to the host (a snapshot is the biggest): as much as the
        // plugin's memory can hold. wasmtime's default of 128 MiB would make every snapshot of a
        // larger store trap, on every replica at once.
        store.set_hostcall_fuel(self.limits.memory_bytes);
        let mut instance = PluginInstance {
            store,
            exports: None,
            limits: self.limits.clone(),
            last: ApplyContext::default(),
            version: None,
            reads_snapshots: module.reads_snapshots,
            last_snapshot_len: 0,
        };
        // Instantiation runs the component's start code, so it gets a budget like any call.
        let fuel = self.limits.fuel_per_call;
        let pre = module.pre.clone();
        let (exports, version) = instance.call(fuel, ApplyContext::default(), |store| {
            let raw = pre.instance_pre().instantiate(&mut *store)?;
            let exports = bindings::Store::new(&mut *store, &raw)?;
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
}

/// Checks that the four store exports are there and are functions, naming the first missing one.
/// Their exact types are checked by the generated bindings afterwards.
fn check_exports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    for name in REQUIRED_EXPORTS {
        match ty.get_export(engine, name) {
            Some(export) if matches!(export.ty, ComponentItem::ComponentFunc(_)) => {}
            Some(_) => {
                return Err(LoadError::WrongSignature {
                    name,
                    detail: "it is not a function".into(),
                });
            }
            None => return Err(LoadError::MissingExport(name)),
        }
    }
    Ok(())
}

/// Longest version string kept: it is for display.
const MAX_VERSION_LEN: usize = 200;

/// One live plugin instance. After any [`CallError::Failed`] it must be dropped.
pub struct PluginInstance {
    store: Store<Sandbox>,
    /// Set once instantiation succeeded.
    exports: Option<Arc<bindings::Store>>,
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
}

impl PluginInstance {
    /// The plugin's own version string, if it exports one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Applies one entry.
    pub fn apply(&mut self, ctx: ApplyContext, entry: &[u8]) -> Result<Vec<u8>, CallError> {
        let exports = self.exports();
        let wit_ctx = bindings::ApplyContext {
            index: ctx.index,
            term: ctx.term,
            timestamp_ms: ctx.timestamp_ms,
        };
        let result = self.call(self.limits.fuel_per_call, ctx, |store| {
            exports.call_apply(store, wit_ctx, entry)
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
        let exports = self.exports();
        let ctx = self.last;
        let expected = self.last_snapshot_len + self.last_snapshot_len / 8;
        self.store.data_mut().snapshot_out = Some(Vec::with_capacity(expected));
        let returned = self.call(self.limits.fuel_per_snapshot, ctx, |store| {
            exports.call_snapshot(store)
        });
        let mut written = self
            .store
            .data_mut()
            .snapshot_out
            .take()
            .unwrap_or_default();
        let returned = returned?;
        if written.is_empty() {
            written = returned;
        } else {
            written.extend_from_slice(&returned);
        }
        self.last_snapshot_len = written.len();
        Ok(written)
    }

    /// Replaces the plugin's state with a snapshot's: through `snapshot-read` for a plugin that
    /// imports it (its `restore` then gets an empty list), else as `restore`'s argument.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), CallError> {
        let exports = self.exports();
        let ctx = self.last;
        let argument = if self.reads_snapshots {
            self.store.data_mut().snapshot_in = Some((snapshot.to_vec(), 0));
            &[][..]
        } else {
            snapshot
        };
        let result = self.call(self.limits.fuel_per_snapshot, ctx, |store| {
            exports.call_restore(store, argument)
        });
        self.store.data_mut().snapshot_in = None;
        result?.map_err(CallError::Rejected)
    }

    fn exports(&self) -> Arc<bindings::Store> {
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
