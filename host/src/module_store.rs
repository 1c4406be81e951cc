//! The store modules this node has, each kept once by the sha256 of its bytes: the log and
//! snapshots name a module by that hash instead of carrying its bytes, so a module may be far
//! larger than a log entry or gRPC message, and a snapshot costs only the store's own state.
//!
//! Determinism: the bytes a replica runs are the bytes whose sha256 the log names, however they
//! reached it (uploaded, pushed by the leader, fetched from any member): every read checks the
//! hash, so a damaged or forged file is a miss, never other code.
//!
//! Without a data dir (tests, the simulator) the modules are kept in memory.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// The subdirectory of the data dir that holds modules.
pub const MODULES_DIR: &str = "modules";

/// Modules kept besides the ones a caller says are in use: a few to roll back to. A module is
/// up to [`crate::node::MAX_MODULE_BYTES`], so this bounds the disk they take.
const KEPT: usize = 4;

/// A module's sha256.
pub type ModuleHash = [u8; 32];

/// A module's bytes with their sha256, hashed once where the bytes arrived: a module may be
/// tens of MiB, and what is done with it later (compiling, switching to it) needs the hash.
#[derive(Debug, Clone)]
pub struct HashedModule {
    pub sha256: ModuleHash,
    pub bytes: Arc<Vec<u8>>,
}

impl HashedModule {
    /// `bytes`, hashed.
    pub fn new(bytes: Arc<Vec<u8>>) -> Self {
        let sha256 = Sha256::digest(&bytes[..]).into();
        Self { sha256, bytes }
    }
}

/// Gets a module this node lacks from other members. Blocking: called on threads of its own.
pub trait ModuleFetcher: Send + Sync + std::fmt::Debug {
    /// The bytes of the module `sha256` (`len` bytes long, if known) from one of the members
    /// at `addresses` (tried in order). The caller checks them against the hash.
    fn fetch(
        &self,
        sha256: &ModuleHash,
        len: Option<u64>,
        addresses: &[String],
    ) -> Result<Vec<u8>, String>;
}

/// Modules kept in memory, with when each was last used.
type InMemory = BTreeMap<ModuleHash, (SystemTime, Arc<Vec<u8>>)>;

/// Why a module could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("cannot store module {sha256} in {dir}: {source}")]
pub struct ModuleStoreError {
    sha256: String,
    dir: String,
    source: std::io::Error,
}

/// Modules by sha256, on disk under the data dir or in memory.
#[derive(Debug)]
pub struct ModuleStore {
    dir: Option<PathBuf>,
    /// The modules of a store without a directory, with when each was last used.
    memory: Mutex<InMemory>,
}

impl ModuleStore {
    /// Modules kept as files in `dir`, which is created when the first one is stored.
    pub fn on_disk(dir: PathBuf) -> Self {
        Self {
            dir: Some(dir),
            memory: Mutex::default(),
        }
    }

    /// Modules kept in memory.
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            memory: Mutex::default(),
        }
    }

    fn path(&self, sha256: &ModuleHash) -> Option<PathBuf> {
        (self.dir.as_ref()).map(|dir| dir.join(format!("{}.wasm", hex::encode(sha256))))
    }

    /// Whether the module is here (without reading or checking it).
    pub fn contains(&self, sha256: &ModuleHash) -> bool {
        match self.path(sha256) {
            Some(path) => path.is_file(),
            None => self.memory().contains_key(sha256),
        }
    }

    /// The module's bytes, if they are here and intact (a damaged file is removed: it will be
    /// fetched again).
    pub fn get(&self, sha256: &ModuleHash) -> Option<Arc<Vec<u8>>> {
        let Some(path) = self.path(sha256) else {
            let mut memory = self.memory();
            let (used, bytes) = memory.get_mut(sha256)?;
            *used = SystemTime::now();
            return Some(bytes.clone());
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read a module: {e}");
                return None;
            }
        };
        if Sha256::digest(&bytes)[..] != sha256[..] {
            tracing::error!(
                path = %path.display(),
                "a stored module is damaged (its sha256 does not match its name): removed"
            );
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // The least recently used are the ones pruned.
        let touched = std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = touched {
            tracing::debug!(path = %path.display(), "cannot touch a module: {e}");
        }
        Some(Arc::new(bytes))
    }

    /// Stores `bytes` (durably: a node acknowledges a module only once a crash cannot lose
    /// it) and returns their sha256. Storing a module that is here already costs a hash.
    pub fn put(&self, bytes: Arc<Vec<u8>>) -> Result<ModuleHash, ModuleStoreError> {
        let sha256: ModuleHash = Sha256::digest(&bytes[..]).into();
        self.put_hashed(sha256, bytes)?;
        Ok(sha256)
    }

    /// [`ModuleStore::put`] for bytes known to hash to `sha256`.
    pub fn put_hashed(
        &self,
        sha256: ModuleHash,
        bytes: Arc<Vec<u8>>,
    ) -> Result<(), ModuleStoreError> {
        let (Some(dir), Some(path)) = (&self.dir, self.path(&sha256)) else {
            self.memory().insert(sha256, (SystemTime::now(), bytes));
            return Ok(());
        };
        if path.is_file() {
            return Ok(());
        }
        // Written aside, synced and renamed into place, so that no reader sees half a file.
        let partial = path.with_extension("partial");
        let written = (|| {
            std::fs::create_dir_all(dir)?;
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&partial, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        written.map_err(|source| {
            let _ = std::fs::remove_file(&partial);
            ModuleStoreError {
                sha256: hex::encode(sha256),
                dir: dir.display().to_string(),
                source,
            }
        })
    }

    /// The module's bytes: from here, or else fetched with `fetcher` from `addresses`, checked
    /// against `len` (if known) and the hash, and stored (a failure to store them is logged: the bytes
    /// are in hand).
    pub fn get_or_fetch(
        &self,
        sha256: &ModuleHash,
        len: Option<u64>,
        fetcher: Option<&dyn ModuleFetcher>,
        addresses: &[String],
    ) -> Result<Arc<Vec<u8>>, String> {
        if let Some(bytes) = self.get(sha256) {
            return Ok(bytes);
        }
        let name = hex::encode(sha256);
        let fetcher = fetcher.ok_or_else(|| format!("module {name} is not here"))?;
        let bytes = fetcher.fetch(sha256, len, addresses)?;
        if let Some(len) = len.filter(|len| *len != bytes.len() as u64) {
            return Err(format!(
                "the fetched module {name} is {} bytes, not {len}",
                bytes.len()
            ));
        }
        if Sha256::digest(&bytes)[..] != sha256[..] {
            return Err(format!("the fetched module's sha256 is not {name}"));
        }
        let bytes = Arc::new(bytes);
        if let Err(e) = self.put_hashed(*sha256, bytes.clone()) {
            tracing::warn!("{e}");
        }
        Ok(bytes)
    }

    /// Removes modules other than `in_use` beyond the [`KEPT`] most recently used.
    pub fn prune(&self, in_use: &[ModuleHash]) {
        let Some(dir) = &self.dir else {
            let mut memory = self.memory();
            let mut others: Vec<(SystemTime, ModuleHash)> = (memory.iter())
                .filter(|(sha256, _)| !in_use.contains(sha256))
                .map(|(sha256, (used, _))| (*used, *sha256))
                .collect();
            others.sort_by(|a, b| b.cmp(a));
            for (_, sha256) in others.into_iter().skip(KEPT) {
                memory.remove(&sha256);
            }
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let in_use: Vec<String> = in_use
            .iter()
            .map(|sha| format!("{}.wasm", hex::encode(sha)))
            .collect();
        let mut others: Vec<(SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| !in_use.iter().any(|name| e.file_name() == name.as_str()))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        others.sort_by(|a, b| b.cmp(a));
        for (_, path) in others.into_iter().skip(KEPT) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot remove an old module: {e}");
            }
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, InMemory> {
        self.memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(n: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![n; 1000 + n as usize])
    }

    #[test]
    fn a_module_is_kept_by_hash_and_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        for store in [
            ModuleStore::on_disk(dir.path().join(MODULES_DIR)),
            ModuleStore::in_memory(),
        ] {
            let sha = store.put(module(1)).unwrap();
            assert!(store.contains(&sha));
            assert_eq!(store.get(&sha).unwrap(), module(1));
            assert_eq!(
                store.put(module(1)).unwrap(),
                sha,
                "storing twice is the same"
            );
            assert!(store.get(&[7; 32]).is_none());
        }
        // A damaged file is a miss, and goes.
        let store = ModuleStore::on_disk(dir.path().join(MODULES_DIR));
        let sha = store.put(module(2)).unwrap();
        let path = store.path(&sha).unwrap();
        std::fs::write(&path, b"other code").unwrap();
        assert!(store.get(&sha).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn pruning_keeps_what_is_in_use_and_the_most_recent() {
        let dir = tempfile::tempdir().unwrap();
        for store in [
            ModuleStore::on_disk(dir.path().join(MODULES_DIR)),
            ModuleStore::in_memory(),
        ] {
            let hashes: Vec<ModuleHash> = (0..10).map(|n| store.put(module(n)).unwrap()).collect();
            // File times may be coarse: make the order plain.
            for (n, sha) in hashes.iter().enumerate() {
                std::thread::sleep(std::time::Duration::from_millis(if n == 0 {
                    0
                } else {
                    15
                }));
                store.get(sha).unwrap();
            }
            store.prune(&[hashes[0]]);
            let kept: Vec<bool> = hashes.iter().map(|sha| store.contains(sha)).collect();
            let mut expected = vec![false; 10];
            expected[0] = true;
            for slot in &mut expected[10 - KEPT..] {
                *slot = true;
            }
            assert_eq!(kept, expected);
        }
    }
}
