//! The node's data directory: who the node is (`node.json`) and its log store (`raft-log/`,
//! `snapshots/`, see [`crate::storage::DiskLogStore`]), and compiled plugins (`compiled/`, see
//! [`crate::plugin::CompiledCache`]).
//!
//! A node never bootstraps over a directory that holds anything, and refuses a directory that
//! belongs to another node or is damaged, saying which.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::module_store::MODULES_DIR;
use crate::plugin::COMPILED_DIR;

const IDENTITY_FILE: &str = "node.json";
/// The current [`Identity::format`].
const IDENTITY_FORMAT: u32 = 1;

/// Who this node is, written once when it first becomes a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Format of this file.
    pub format: u32,
    /// The node's id in the cluster.
    pub node_id: u64,
    /// The address the node serves on; members know it by this address.
    pub address: String,
}

/// What a data directory holds.
#[derive(Debug)]
pub enum DataDir {
    /// Nothing yet: the node may bootstrap or join.
    Empty(PathBuf),
    /// A member's state: the node resumes as that member.
    Member(PathBuf, Identity),
}

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be read or written.
    #[error("data dir {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The directory holds files but no node identity: not ours, or damaged.
    #[error(
        "data dir {0} is not empty but has no {IDENTITY_FILE}: it is not a RiteRaft data dir \
         (or it was damaged); refusing to use it"
    )]
    Foreign(String),
    /// The identity file cannot be read.
    #[error("data dir {path}: {IDENTITY_FILE} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    /// The directory belongs to a node at another address.
    #[error(
        "data dir {path} belongs to node {node_id} at {address}; start it with --listen \
         {address}, or use another --data-dir"
    )]
    OtherAddress {
        path: String,
        node_id: u64,
        address: String,
    },
}

impl DataDir {
    /// Looks at `path` (which need not exist yet).
    pub fn inspect(path: &Path) -> Result<DataDir, DataDirError> {
        let io = |source| DataDirError::Io {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            return Ok(DataDir::Empty(path.to_path_buf()));
        }
        let identity_path = path.join(IDENTITY_FILE);
        if !identity_path.exists() {
            // Modules may be kept, and compiled plugins cached, before the node has an
            // identity: still empty.
            let mut entries = fs::read_dir(path).map_err(io)?.filter(|e| {
                !e.as_ref()
                    .is_ok_and(|e| e.file_name() == COMPILED_DIR || e.file_name() == MODULES_DIR)
            });
            return match entries.next() {
                None => Ok(DataDir::Empty(path.to_path_buf())),
                Some(_) => Err(DataDirError::Foreign(path.display().to_string())),
            };
        }
        let damaged = |reason: String| DataDirError::Damaged {
            path: path.display().to_string(),
            reason,
        };
        let text = fs::read_to_string(&identity_path).map_err(io)?;
        let identity: Identity = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        if identity.format != IDENTITY_FORMAT {
            return Err(damaged(format!("unknown format {}", identity.format)));
        }
        // A joiner writes its identity before its log store: only then may the log be absent.
        if !path.join("raft-log").is_dir() && path.join("snapshots").exists() {
            return Err(damaged("the raft-log directory is missing".into()));
        }
        Ok(DataDir::Member(path.to_path_buf(), identity))
    }

    /// Checks that this directory may serve at `address`.
    pub fn check_address(&self, address: &str) -> Result<(), DataDirError> {
        match self {
            DataDir::Member(path, identity) if identity.address != address => {
                Err(DataDirError::OtherAddress {
                    path: path.display().to_string(),
                    node_id: identity.node_id,
                    address: identity.address.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Records the node's identity, atomically (temp file, fsync, rename, fsync the directory).
pub fn write_identity(path: &Path, node_id: u64, address: &str) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io {
        path: path.display().to_string(),
        source,
    };
    let identity = Identity {
        format: IDENTITY_FORMAT,
        node_id,
        address: address.to_string(),
    };
    fs::create_dir_all(path).map_err(io)?;
    let temp = path.join(format!("{IDENTITY_FILE}.tmp"));
    {
        let mut file = fs::File::create(&temp).map_err(io)?;
        let text = serde_json::to_string_pretty(&identity).expect("plain data always encodes");
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    fs::rename(&temp, path.join(IDENTITY_FILE)).map_err(io)?;
    fs::File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_member_foreign_and_other_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        assert!(matches!(DataDir::inspect(&path), Ok(DataDir::Empty(_))));
        // Compiled plugins are cached before a node has an identity.
        fs::create_dir_all(path.join(COMPILED_DIR)).unwrap();
        assert!(matches!(DataDir::inspect(&path), Ok(DataDir::Empty(_))));
        fs::create_dir_all(path.join("raft-log")).unwrap();
        assert!(matches!(
            DataDir::inspect(&path),
            Err(DataDirError::Foreign(_))
        ));
        write_identity(&path, 3, "127.0.0.1:7003").unwrap();
        let data_dir = DataDir::inspect(&path).unwrap();
        assert!(matches!(&data_dir, DataDir::Member(_, id) if id.node_id == 3));
        assert!(data_dir.check_address("127.0.0.1:7003").is_ok());
        let error = data_dir.check_address("127.0.0.1:9999").unwrap_err();
        assert!(error.to_string().contains("belongs to node 3"), "{error}");
        fs::write(path.join(IDENTITY_FILE), "{ nonsense").unwrap();
        assert!(matches!(
            DataDir::inspect(&path),
            Err(DataDirError::Damaged { .. })
        ));
    }
}
