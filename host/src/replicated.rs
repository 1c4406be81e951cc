//! What the node writes into raft log entries and snapshots, besides the store's own bytes.
//!
//! Everything here is replicated, so it is encoded with a fixed format (bincode, standard
//! configuration) and carries a version number where it may evolve. Byte fields are
//! `serde_bytes`: the same encoding as a sequence of `u8` in bincode, written in one piece.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The payload of a normal (non-conf-change) log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// A client's command for the store.
    Command {
        /// The node that proposed it: only that node has a client waiting for the answer.
        proposer: u64,
        /// The proposer's id for the request, to match the answer to the right client.
        request_id: u64,
        /// The leader's clock when it proposed the entry (ms since the Unix epoch).
        timestamp_ms: u64,
        /// The command, in the store's own encoding.
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// New code for the store: from this entry on, every replica runs `module`.
    Deploy {
        /// As for a command: who waits for the answer.
        proposer: u64,
        request_id: u64,
        timestamp_ms: u64,
        /// The WebAssembly component's bytes.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
    },
}

/// One switch of the store's code, as recorded in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// The log index of the deploy entry.
    pub index: u64,
    /// sha256 of the new module.
    pub sha256: [u8; 32],
    /// The leader's timestamp of the entry.
    pub timestamp_ms: u64,
    /// The new module's version string.
    pub version: String,
}

/// The replicated part of the node's own state: who is in the cluster, and where.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    /// Voters by id, with the address they serve peers and clients on.
    pub members: BTreeMap<u64, String>,
    /// The id the next joining node gets. Ids are never reused, so a removed node's stale
    /// messages can never be mistaken for a new member's.
    pub next_node_id: u64,
    /// The latest timestamp handed to the store. Timestamps given to the store never go
    /// backwards, even when a new leader's clock is behind the old one's.
    pub last_timestamp_ms: u64,
    /// Every switch of the store's code, oldest first (at most [`MAX_UPGRADES_KEPT`]).
    pub upgrades: Vec<UpgradeRecord>,
}

/// Upgrade records kept in the replicated state: enough history for people, bounded size.
pub const MAX_UPGRADES_KEPT: usize = 100;

impl ClusterState {
    /// The id of the member at `address`, if any.
    pub fn id_of(&self, address: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, a)| a.as_str() == address)
            .map(|(id, _)| *id)
    }
}

/// The data of a raft snapshot: the store's snapshot plus the node's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotData {
    /// Format of this structure; bumped on incompatible changes.
    pub format: u32,
    /// Membership and clock at the snapshot's index.
    pub cluster: ClusterState,
    /// sha256 of the store module that produced `store`.
    pub plugin_sha256: [u8; 32],
    /// That module's bytes, so any node can run the cluster's current code whatever plugin it
    /// was started with (empty for a store built into the host).
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
    /// The store's own snapshot bytes (`Bytes`, encoded exactly as a byte vector: shared with
    /// the state machine's checkpoint instead of copied).
    pub store: Bytes,
}

/// The current [`SnapshotData::format`].
pub const SNAPSHOT_FORMAT: u32 = 2;

/// A log entry or snapshot that this node cannot decode: written by an incompatible version,
/// or damaged.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    what: &'static str,
    reason: String,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a replicated value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("plain data always encodes")
}

/// Decodes a replicated value; `what` names it in the error.
pub fn decode<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| DecodeError {
            what,
            reason: e.to_string(),
        })?;
    if read != bytes.len() {
        return Err(DecodeError {
            what,
            reason: format!("{} trailing bytes", bytes.len() - read),
        });
    }
    Ok(value)
}

impl SnapshotData {
    /// Decodes snapshot data, checking its format.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let data: SnapshotData = decode("snapshot", bytes)?;
        if data.format != SNAPSHOT_FORMAT {
            return Err(DecodeError {
                what: "snapshot",
                reason: format!(
                    "format {} is not the supported format {SNAPSHOT_FORMAT}",
                    data.format
                ),
            });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an entry looked like before its bytes were `serde_bytes`: a plain `Vec<u8>`.
    #[derive(Serialize)]
    enum PlainPayload {
        Command {
            proposer: u64,
            request_id: u64,
            timestamp_ms: u64,
            command: Vec<u8>,
        },
    }

    #[test]
    fn byte_fields_encode_as_they_did_as_plain_vectors() {
        let command: Vec<u8> = (0..=255).chain(0..40).collect();
        let new = encode(&EntryPayload::Command {
            proposer: 3,
            request_id: 1 << 40,
            timestamp_ms: 1_700_000_000_000,
            command: command.clone(),
        });
        let old = encode(&PlainPayload::Command {
            proposer: 3,
            request_id: 1 << 40,
            timestamp_ms: 1_700_000_000_000,
            command,
        });
        assert_eq!(new, old, "log entries written before stay readable");
        let back: EntryPayload = decode("entry", &old).unwrap();
        assert!(matches!(back, EntryPayload::Command { command, .. } if command.len() == 296));
    }
}
