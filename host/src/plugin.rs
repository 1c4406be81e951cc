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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine};

use crate::state_machine::Rejection;

mod compile_priority;
mod compiled_cache;
mod contract;
mod instance;
mod sandbox;
mod stand_ins;

pub use compile_priority::lower_this_thread;
pub use compiled_cache::{COMPILED_DIR, CompiledCache};
pub use contract::Contract;
use contract::ContractPre;

pub use instance::PluginInstance;
use instance::{Sandbox, add_snapshot_streams};

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
    /// Largest plugin file accepted: [`crate::node::MAX_MODULE_BYTES`], the deploy limit too,
    /// so that a module a deploy accepts also loads.
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
            module_bytes: crate::node::MAX_MODULE_BYTES,
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
    /// Compiled modules on disk, once the runtime has a place for them (see [`CompiledCache`]).
    compiled: std::sync::OnceLock<CompiledCache>,
}

/// Added to the refusal of a component that uses the component model's async ABI, which the
/// sandbox does not run: its calls are synchronous, one at a time, so that every replica runs
/// them the same way.
const ASYNC_HINT: &str = "; the sandbox runs synchronous components only: build the store \
                          without the async ABI (componentize-qjs: --sync)";

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
    pre: ContractPre,
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

    /// The version of the store contract it was built for.
    pub fn contract(&self) -> Contract {
        self.pre.contract()
    }
}

impl PluginRuntime {
    /// An engine configured for deterministic execution, and a linker with WASI.
    pub fn new(limits: PluginLimits) -> Result<Self, RuntimeError> {
        // Before any compile: the pool is made on first use.
        compile_priority::lower_compile_threads();
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
            compiled: Default::default(),
        })
    }

    /// Keeps compiled modules in `dir` and loads them from there (see [`CompiledCache`]).
    pub fn with_compiled_cache(self, dir: PathBuf) -> Self {
        self.use_compiled_cache(dir);
        self
    }

    /// From now on keeps compiled modules in `dir` and loads them from there; once set, the
    /// place does not change (a later call is ignored).
    pub fn use_compiled_cache(&self, dir: PathBuf) {
        let _ = self.compiled.set(CompiledCache::new(dir));
    }

    /// Stores `module`'s compiled form in the cache, if there is one and it lacks it (a module
    /// loaded before the cache had its place).
    pub fn keep_compiled(&self, module: &PluginModule) {
        if let Some(compiled) = self.compiled.get() {
            compiled.keep(&module.sha256, module.pre.instance_pre().component());
        }
    }

    /// Like [`PluginRuntime::load`], but reuses a module compiled earlier from the same bytes.
    pub fn load_cached(&self, bytes: &[u8]) -> Result<PluginModule, LoadError> {
        self.load_cached_hashed(bytes, Sha256::digest(bytes).into())
    }

    /// [`PluginRuntime::load_cached`] of `bytes` whose sha256 the caller knows (hashing a large
    /// module takes a while: it is done once, where the bytes arrive).
    pub fn load_cached_hashed(
        &self,
        bytes: &[u8],
        sha256: [u8; 32],
    ) -> Result<PluginModule, LoadError> {
        let cached = |cache: &Vec<PluginModule>| cache.iter().find(|m| m.sha256 == sha256).cloned();
        if let Some(module) = cached(&self.cache.lock().expect("cache lock")) {
            return Ok(module);
        }
        let module = self.load_hashed(bytes, sha256)?;
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
        // Checked before hashing, which reads every byte.
        self.check_bytes(bytes)?;
        self.load_hashed(bytes, Sha256::digest(bytes).into())
    }

    /// What is checked before compiling: the size, and that the bytes are a component.
    fn check_bytes(&self, bytes: &[u8]) -> Result<(), LoadError> {
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
        Ok(())
    }

    /// [`PluginRuntime::load`] of `bytes` whose sha256 is `sha256` (hashed once by the caller:
    /// a module may be tens of MiB).
    fn load_hashed(&self, bytes: &[u8], sha256: [u8; 32]) -> Result<PluginModule, LoadError> {
        self.check_bytes(bytes)?;
        let component = self.compile(bytes, &sha256)?;
        check_exports(&self.engine, &component)?;
        // Imports the sandbox does not provide get stand-ins that trap when called.
        let mut linker = self.linker.clone();
        stand_ins::link_stand_ins(&mut linker, &self.engine, &component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let pre = ContractPre::new(instance_pre).map_err(|e| {
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
            sha256,
            bytes: Arc::new(bytes.to_vec()),
            reads_snapshots,
        })
    }

    /// The compiled component of `bytes` (whose sha256 is `sha256`): from the disk cache if it
    /// is there (the bytes were validated when it was stored), else compiled, and stored.
    fn compile(&self, bytes: &[u8], sha256: &[u8; 32]) -> Result<Component, LoadError> {
        if let Some(component) = (self.compiled.get()).and_then(|c| c.get(&self.engine, sha256)) {
            return Ok(component);
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            let mut why = format!("{e:#}");
            if why.contains("component model async") {
                why.push_str(ASYNC_HINT);
            }
            LoadError::Invalid(why)
        })?;
        if let Some(compiled) = self.compiled.get() {
            compiled.put(sha256, &component);
        }
        Ok(component)
    }

    /// A fresh instance of `module`, in its own sandbox.
    pub fn instantiate(&self, module: &PluginModule) -> Result<PluginInstance, CallError> {
        PluginInstance::new(&self.engine, &self.limits, module)
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
