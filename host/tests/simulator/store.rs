//! The simulated nodes' store: the kv example compiled in, which a deploy can switch to a newer
//! "version" in the middle of a run, and which reports the digest of its state after every
//! command it applies, so that the simulator can check that replicas agree at every command
//! (an index, and a position within a packed entry).
//!
//! A module here is the text `sim-kv N` (version N, N >= 1); anything else is refused, as a
//! real node refuses bytes that are not a store. Versions behave alike on purpose (the history
//! checker knows one kv store) but are part of the digest: a replica that switched at another
//! index than the rest differs from them at once. Even versions stand for stores built for the
//! first contract: the leader must pack no commands for them.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use riteraft_host::module_store::{HashedModule, ModuleFetcher, ModuleHash, ModuleStore};
use riteraft_host::state_machine::{
    ApplyContext, ModuleInfo, Outcome, StateMachine, StateMachineError,
};
use sha2::{Digest as _, Sha256};

use super::Kv;

/// ((index, position), digest of the state after applying the command), in the order applied.
pub type Digests = Arc<Mutex<Vec<((u64, u32), u64)>>>;

pub struct SimStore {
    kv: Kv,
    /// The module running; `None` for the store the node started with (built in, version 1).
    module: Option<Arc<Vec<u8>>>,
    digests: Digests,
}

/// The module of version `version`.
pub fn module(version: u32) -> Vec<u8> {
    format!("sim-kv {version}").into_bytes()
}

fn version_of(module: &[u8]) -> Option<u32> {
    std::str::from_utf8(module)
        .ok()?
        .strip_prefix("sim-kv ")?
        .parse()
        .ok()
        .filter(|version| *version >= 1)
}

impl SimStore {
    pub fn new(digests: Digests) -> SimStore {
        SimStore {
            kv: Kv::new(),
            module: None,
            digests,
        }
    }

    fn version(&self) -> u32 {
        self.module
            .as_deref()
            .and_then(|module| version_of(module))
            .unwrap_or(1)
    }
}

impl StateMachine for SimStore {
    fn apply(&mut self, ctx: ApplyContext, entry: &[u8]) -> Result<Outcome, StateMachineError> {
        assert!(
            self.packs_commands() || ctx.position == 0,
            "version {} stands for a store built for contract 0.1.0, and was given command {} \
             of the entry at {}: the leader packed commands for code that cannot tell them apart",
            self.version(),
            ctx.position,
            ctx.index
        );
        let outcome = self.kv.apply(ctx, entry)?;
        let mut hasher = DefaultHasher::new();
        self.version().hash(&mut hasher);
        self.kv.snapshot()?.hash(&mut hasher);
        self.digests
            .lock()
            .unwrap()
            .push(((ctx.index, ctx.position), hasher.finish()));
        Ok(outcome)
    }

    fn query(&mut self, request: &[u8]) -> Result<Outcome, StateMachineError> {
        self.kv.query(request)
    }

    fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        self.kv.snapshot()
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), StateMachineError> {
        self.kv.restore(snapshot)
    }

    /// Even versions stand for stores built for the first contract (0.1.0), which cannot tell
    /// the commands of a packed entry apart: one given a packed command fails the run.
    fn packs_commands(&self) -> bool {
        self.version() % 2 == 1
    }

    fn module_info(&self) -> ModuleInfo {
        match &self.module {
            None => self.kv.module_info(),
            Some(module) => ModuleInfo {
                sha256: Sha256::digest(module.as_slice()).into(),
                version: self.version().to_string(),
            },
        }
    }

    fn upgrade(
        &mut self,
        module: &HashedModule,
    ) -> Result<Result<ModuleInfo, String>, StateMachineError> {
        let module = &module.bytes[..];
        if version_of(module).is_none() {
            return Ok(Err(format!(
                "not a simulated store: {:?}",
                String::from_utf8_lossy(module)
            )));
        }
        // Versions share the state's format: the new code reads the current state as is.
        self.module = Some(Arc::new(module.to_vec()));
        Ok(Ok(self.module_info()))
    }

    fn restore_with_module(
        &mut self,
        module: &HashedModule,
        snapshot: &Bytes,
    ) -> Result<(), StateMachineError> {
        let module = &module.bytes[..];
        if version_of(module).is_none() {
            return Err(StateMachineError::Restore(format!(
                "the snapshot's module is not a simulated store: {:?}",
                String::from_utf8_lossy(module)
            )));
        }
        self.kv.restore(snapshot)?;
        self.module = Some(Arc::new(module.to_vec()));
        Ok(())
    }
}

/// Modules move between simulated nodes over a side channel that always works: a node that
/// lacks one takes it from any node's module store, up or down (a real node fetches it over
/// gRPC from a member; see `grpc_services::module_transfer`). What is simulated is the wait
/// for it, and that the bytes are checked against the hash the log names.
#[derive(Debug, Default)]
pub struct SimFetcher {
    stores: Mutex<Vec<Arc<ModuleStore>>>,
}

impl SimFetcher {
    pub fn add(&self, store: Arc<ModuleStore>) {
        self.stores.lock().unwrap().push(store);
    }
}

impl ModuleFetcher for SimFetcher {
    fn fetch(
        &self,
        sha256: &ModuleHash,
        _len: Option<u64>,
        _addresses: &[String],
    ) -> Result<Vec<u8>, String> {
        let stores = self.stores.lock().unwrap();
        (stores.iter())
            .find_map(|store| store.get(sha256))
            .map(|module| module.to_vec())
            .ok_or_else(|| "no simulated node has it".into())
    }
}
