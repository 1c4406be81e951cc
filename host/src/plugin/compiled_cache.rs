//! Compiled plugins kept on disk by the sha256 of their module, so that a restart (or a deploy
//! of a module this node ran before) skips compiling it: seconds for a large module, against
//! milliseconds to load its compiled form.
//!
//! Hand-written rather than wasmtime's own `cache` feature: that one brings a C build (zstd),
//! a background worker and a TOML configuration of its own, and keeps its files outside the
//! data dir; what a node needs is one file per module, next to the data it wrote.
//!
//! Trust: loading compiled code runs it without validation, so a file is used only if it is
//! intact (a sha256 of its contents heads it: a torn write or a flipped bit is a miss, never
//! undefined behaviour) and wasmtime accepts it (its own check that the file was made by this
//! wasmtime version with this engine configuration). Whoever can write into the data dir
//! controls the node anyway; a directory given with `--compiled-dir` (several nodes on one
//! machine may share one) must be kept as private. Determinism is untouched: the compiled code
//! is the compilation of the same bytes, and a miss just compiles them again. Every failure
//! here is logged and treated as a miss; none stops a node.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The subdirectory of the data dir that holds compiled modules.
pub const COMPILED_DIR: &str = "compiled";

/// Compiled modules kept: the running one, one being deployed and a few to roll back to. Each
/// file is a few times its module's size, so this bounds the disk the cache takes.
const KEPT: usize = 8;

/// What heads each file, before the sha256 of the rest.
const MAGIC: &[u8; 8] = b"RRCWASM1";

/// A directory of compiled modules.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    /// The cache in `dir`, which is created when the first module is stored.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, module_sha256: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}.cwasm", hex::encode(module_sha256)))
    }

    /// The compiled form of the module whose bytes hash to `module_sha256`, if an intact one
    /// that `engine` accepts is on disk.
    // The one unsafe call of the library: loading compiled code (see the module's comment).
    #[allow(unsafe_code)]
    pub fn get(&self, engine: &Engine, module_sha256: &[u8; 32]) -> Option<Component> {
        let path = self.path(module_sha256);
        let file = match std::fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read a compiled module: {e}");
                return None;
            }
        };
        let Some(body) = intact_body(&file) else {
            self.discard(&path, "it is damaged (its checksum does not match)");
            return None;
        };
        // SAFETY: the bytes are intact (checked just above) copies of what `Component::serialize`
        // wrote into this node's own data dir, and wasmtime itself refuses a file made by
        // another version or engine configuration.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => {
                // The least recently used files are the ones pruned.
                let touched = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                if let Err(e) = touched {
                    tracing::debug!(path = %path.display(), "cannot touch a compiled module: {e}");
                }
                Some(component)
            }
            Err(e) => {
                self.discard(&path, &format!("this build cannot load it: {e:#}"));
                None
            }
        }
    }

    /// Stores the compiled form of the module whose bytes hash to `module_sha256`, and prunes
    /// the cache to [`KEPT`] files. A failure (a full disk) only costs a compile later.
    pub fn put(&self, module_sha256: &[u8; 32], component: &Component) {
        let path = self.path(module_sha256);
        if let Err(e) = self.write(&path, component) {
            tracing::warn!(path = %path.display(), "cannot keep the compiled module: {e:#}");
        }
        self.prune();
    }

    /// Like [`CompiledCache::put`], unless the cache has a file for the module already.
    pub fn keep(&self, module_sha256: &[u8; 32], component: &Component) {
        if !self.path(module_sha256).exists() {
            self.put(module_sha256, component);
        }
    }

    fn write(&self, path: &Path, component: &Component) -> Result<(), Box<dyn std::error::Error>> {
        let body = component.serialize()?;
        std::fs::create_dir_all(&self.dir)?;
        // Written aside and renamed into place, so that no reader sees half a file; named for
        // the writer, so that nodes sharing the directory never write into one another's.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let writer = WRITES.fetch_add(1, Ordering::Relaxed);
        let partial = path.with_extension(format!("{}-{writer}.partial", std::process::id()));
        let written = (|| {
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(MAGIC)?;
            file.write_all(&Sha256::digest(&body))?;
            file.write_all(&body)?;
            std::fs::rename(&partial, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        Ok(written?)
    }

    fn discard(&self, path: &Path, why: &str) {
        tracing::warn!(path = %path.display(), "not using a compiled module: {why}; compiling again");
        let _ = std::fs::remove_file(path);
    }

    /// Removes all but the [`KEPT`] most recently used files.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let used = entry.metadata().ok()?.modified().ok()?;
                Some((used, entry.path()))
            })
            .filter(|(_, path)| path.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        files.sort();
        let excess = files.len().saturating_sub(KEPT);
        for (_, path) in files.into_iter().take(excess) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "cannot prune a compiled module: {e}");
            }
        }
    }
}

/// The compiled bytes of `file`, if its header and checksum are right.
fn intact_body(file: &[u8]) -> Option<&[u8]> {
    let rest = file.strip_prefix(MAGIC)?;
    let (checksum, body) = rest.split_at_checked(32)?;
    (Sha256::digest(body).as_slice() == checksum).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_or_foreign_file_is_not_intact() {
        let body = b"compiled code".to_vec();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&Sha256::digest(&body));
        file.extend_from_slice(&body);
        assert_eq!(intact_body(&file), Some(&body[..]));
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(intact_body(&flipped), None);
        assert_eq!(intact_body(&file[..file.len() - 1]), None, "torn");
        assert_eq!(intact_body(&file[..20]), None, "shorter than its header");
        assert_eq!(intact_body(&body), None, "no header");
    }
}
