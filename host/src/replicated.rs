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
    /// New code for the store, carried in the entry: from this entry on, every replica runs
    /// `module`. Written before modules were kept by hash; still applied from old logs.
    Deploy {
        /// As for a command: who waits for the answer.
        proposer: u64,
        request_id: u64,
        timestamp_ms: u64,
        /// The WebAssembly component's bytes.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
    },
    /// A replica's digest of the answers up to `index` (see `node::divergence`): the store
    /// never sees it.
    DigestReport {
        /// The replica that computed it.
        node: u64,
        /// The checkpoint: the digest covers every entry up to this index.
        index: u64,
        digest: [u8; 32],
    },
    /// New code for the store, named by its sha256: from this entry on, every replica runs the
    /// module with these bytes. The bytes are not in the log: each replica has them in its
    /// [`crate::module_store::ModuleStore`] or fetches them from a member before the entry
    /// applies (the leader proposes it only once a majority of voters stores the module).
    DeployModule {
        /// As for a command: who waits for the answer.
        proposer: u64,
        request_id: u64,
        timestamp_ms: u64,
        /// sha256 of the module's bytes.
        sha256: [u8; 32],
        /// Their length, to refuse a fetched module that is not it before hashing it.
        bytes: u64,
    },
    /// Several clients' commands, packed into one entry by their leader (see
    /// `node::proposals`): applied one after the other, each with its position in the entry
    /// and an answer of its own, as if each had an entry to itself.
    Commands {
        /// As for a command: the node whose clients wait for the answers.
        proposer: u64,
        /// The proposer's request id of the first command; the others follow on by one.
        first_request_id: u64,
        /// The leader's clock when it proposed the entry: the same for every command in it.
        timestamp_ms: u64,
        /// The commands, in the order they apply.
        commands: Vec<serde_bytes::ByteBuf>,
    },
}

impl EntryPayload {
    /// Whether `bytes` encode a deploy ([`EntryPayload::Deploy`] or
    /// [`EntryPayload::DeployModule`]), read from its first byte alone: bincode writes the
    /// variant's index first (a varint: one byte below 251).
    pub fn is_deploy(bytes: &[u8]) -> bool {
        matches!(bytes.first(), Some(&1 | &3))
    }
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

/// What becomes of a learner: a member that receives the log but does not vote, so that a
/// node still catching up (or one that never comes up) cannot take the quorum away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LearnerPlan {
    /// A joining node: the leader makes it a voter once it has caught up.
    Promote,
    /// A read replica (`--learner`): it stays a learner.
    Stay,
    /// A replacement: once it has caught up, one joint-consensus change makes it a voter and
    /// removes `replaces`.
    Replace {
        /// The member it replaces.
        replaces: u64,
    },
}

impl LearnerPlan {
    /// What a join asks for (`JoinRequest`'s `learner` and `replaces`, 0 for nobody); `None`
    /// when it asks for both, which contradict each other.
    pub fn for_join(learner: bool, replaces: u64) -> Option<Self> {
        match (learner, replaces) {
            (false, 0) => Some(LearnerPlan::Promote),
            (true, 0) => Some(LearnerPlan::Stay),
            (false, replaces) => Some(LearnerPlan::Replace { replaces }),
            (true, _) => None,
        }
    }
}

/// The context of an add-learner conf change: where the new member serves, and its plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnerContext {
    pub address: String,
    pub plan: LearnerPlan,
}

/// The replicated part of the node's own state: who is in the cluster, and where.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    /// Members (voters and learners) by id, with the address they serve peers and clients on.
    pub members: BTreeMap<u64, String>,
    /// The id the next joining node gets. Ids are never reused, so a removed node's stale
    /// messages can never be mistaken for a new member's.
    pub next_node_id: u64,
    /// The latest timestamp handed to the store. Timestamps given to the store never go
    /// backwards, even when a new leader's clock is behind the old one's.
    pub last_timestamp_ms: u64,
    /// Every switch of the store's code, oldest first (at most [`MAX_UPGRADES_KEPT`]).
    pub upgrades: Vec<UpgradeRecord>,
    /// The members that are learners, with what becomes of each; the others vote.
    pub learners: BTreeMap<u64, LearnerPlan>,
    /// The running digest of every answer the store gave (see `node::divergence`), as of this
    /// state's index: a replica restored from a snapshot carries the chain on from here.
    pub answers_digest: [u8; 32],
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
    /// was started with. Empty since format 4: the module is in the nodes' module stores, and
    /// a node that lacks it fetches it by `plugin_sha256` before it installs the snapshot.
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
    /// The store's own snapshot bytes (`Bytes`, encoded exactly as a byte vector: shared with
    /// the state machine's checkpoint instead of copied).
    pub store: Bytes,
}

/// The current [`SnapshotData::format`]: 3 added learners and the answers' digest to
/// [`ClusterState`]; 4 names the module by hash only (same layout, `module` empty), so that a
/// node too old to fetch modules refuses it instead of taking the store for a built-in one.
pub const SNAPSHOT_FORMAT: u32 = 4;

/// The newest format of log entries this host reads: 2 added [`EntryPayload::Commands`] (several
/// commands in one entry). A host that predates the number (it says 0) reads one command per
/// entry and stops at a packed one, so a leader packs only while every member reads 2 (it asks
/// them, see `grpc_services::member_formats`), and a joiner that reads less is refused.
pub const LOG_FORMAT: u32 = 2;

/// Snapshots of format 2, written before learners existed: still read, so that a node
/// upgraded in place resumes from its data dir.
mod format2 {
    use super::*;

    #[derive(Deserialize)]
    pub(super) struct ClusterState {
        members: BTreeMap<u64, String>,
        next_node_id: u64,
        last_timestamp_ms: u64,
        upgrades: Vec<UpgradeRecord>,
    }

    #[derive(Deserialize)]
    pub(super) struct SnapshotData {
        #[allow(dead_code)] // Read to skip it: it is 2.
        format: u32,
        cluster: ClusterState,
        plugin_sha256: [u8; 32],
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
        store: Bytes,
    }

    impl From<SnapshotData> for super::SnapshotData {
        fn from(old: SnapshotData) -> Self {
            let cluster = old.cluster;
            Self {
                format: super::SNAPSHOT_FORMAT,
                cluster: super::ClusterState {
                    members: cluster.members,
                    next_node_id: cluster.next_node_id,
                    last_timestamp_ms: cluster.last_timestamp_ms,
                    upgrades: cluster.upgrades,
                    learners: BTreeMap::new(),
                    answers_digest: [0; 32],
                },
                plugin_sha256: old.plugin_sha256,
                module: old.module,
                store: old.store,
            }
        }
    }
}

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

/// What [`SnapshotData`] encodes before its store's bytes: every other field, then the
/// store's length (how bincode starts a byte string).
#[derive(Deserialize)]
struct SnapshotHead {
    format: u32,
    cluster: ClusterState,
    plugin_sha256: [u8; 32],
    #[serde(with = "serde_bytes")]
    module: Vec<u8>,
    store_len: u64,
}

impl SnapshotData {
    /// Decodes snapshot data, checking its format. The store's bytes are not copied: they are
    /// a slice of `bytes` (a large store's state is the most memory a node ever holds).
    pub fn decode(bytes: &Bytes) -> Result<Self, DecodeError> {
        let error = |reason: String| DecodeError {
            what: "snapshot",
            reason,
        };
        // The format is the first field: read it alone to choose the layout.
        let (format, _): (u32, usize) =
            bincode::serde::decode_from_slice(bytes, config()).map_err(|e| error(e.to_string()))?;
        let mut data: SnapshotData = match format {
            2 => decode::<format2::SnapshotData>("snapshot", bytes)?.into(),
            _ => {
                let (head, read): (SnapshotHead, usize) =
                    bincode::serde::decode_from_slice(bytes, config())
                        .map_err(|e| error(e.to_string()))?;
                let left = (bytes.len() - read) as u64;
                if left != head.store_len {
                    return Err(error(format!(
                        "the store's state is {} bytes, but {left} are left for it",
                        head.store_len
                    )));
                }
                SnapshotData {
                    format: head.format,
                    cluster: head.cluster,
                    plugin_sha256: head.plugin_sha256,
                    module: head.module,
                    store: bytes.slice(read..),
                }
            }
        };
        if data.format == 3 {
            // The same layout, with the module's bytes in it.
            data.format = SNAPSHOT_FORMAT;
        }
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

    /// The encoding of this value up to its store's bytes, given their length: followed by
    /// them, it is the whole encoding (bincode ends it with the store's length, then its
    /// bytes). For a store that streams its bytes apart; `self.store` is not used.
    pub fn into_head(mut self, store_len: u64) -> Vec<u8> {
        self.store = Bytes::new();
        let mut head = encode(&self);
        // The empty store is encoded as its length alone, a single 0.
        head.pop();
        head.extend_from_slice(&encode(&store_len));
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_then_the_store_is_the_whole_encoding() {
        // Lengths around each of bincode's steps of its variable-length integers.
        for store_len in [0, 1, 250, 251, 65_535, 65_536, 1 << 20] {
            let data = SnapshotData {
                format: SNAPSHOT_FORMAT,
                cluster: ClusterState {
                    members: BTreeMap::from([(1, "127.0.0.1:7001".into())]),
                    next_node_id: 2,
                    ..ClusterState::default()
                },
                plugin_sha256: [3; 32],
                module: Vec::new(),
                store: vec![7; store_len].into(),
            };
            let mut assembled = data.clone().into_head(store_len as u64);
            assembled.extend_from_slice(&data.store);
            assert!(assembled == encode(&data), "store of {store_len} bytes");
            let assembled = Bytes::from(assembled);
            assert!(SnapshotData::decode(&assembled).unwrap() == data);
            if store_len > 0 {
                let short = assembled.slice(..assembled.len() - 1);
                assert!(SnapshotData::decode(&short).is_err(), "a truncated store");
            }
        }
    }

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
    fn a_deploy_is_told_by_its_first_byte() {
        let deploy = EntryPayload::Deploy {
            proposer: 1,
            request_id: 2,
            timestamp_ms: 3,
            module: vec![1; 10],
        };
        assert!(EntryPayload::is_deploy(&encode(&deploy)));
        let by_hash = EntryPayload::DeployModule {
            proposer: 1,
            request_id: 2,
            timestamp_ms: 3,
            sha256: [1; 32],
            bytes: 10,
        };
        assert!(EntryPayload::is_deploy(&encode(&by_hash)));
        let command = EntryPayload::Command {
            proposer: 1,
            request_id: 1,
            timestamp_ms: 1,
            command: vec![1; 10],
        };
        let report = EntryPayload::DigestReport {
            node: 1,
            index: 1,
            digest: [1; 32],
        };
        let packed = EntryPayload::Commands {
            proposer: 1,
            first_request_id: 1,
            timestamp_ms: 1,
            commands: vec![vec![1; 10].into(), vec![2; 3].into()],
        };
        for other in [command, report, packed] {
            assert!(!EntryPayload::is_deploy(&encode(&other)), "{other:?}");
        }
        assert!(!EntryPayload::is_deploy(&[]));
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

    /// A format-2 snapshot as it was written, field for field.
    #[derive(Serialize)]
    struct Format2 {
        format: u32,
        members: BTreeMap<u64, String>,
        next_node_id: u64,
        last_timestamp_ms: u64,
        upgrades: Vec<UpgradeRecord>,
        plugin_sha256: [u8; 32],
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
        #[serde(with = "serde_bytes")]
        store: Vec<u8>,
    }

    #[test]
    fn snapshots_written_before_learners_still_decode() {
        let old = encode(&Format2 {
            format: 2,
            members: BTreeMap::from([(1, "127.0.0.1:7001".into()), (2, "127.0.0.1:7002".into())]),
            next_node_id: 3,
            last_timestamp_ms: 1_700_000_000_000,
            upgrades: Vec::new(),
            plugin_sha256: [7; 32],
            module: vec![1, 2, 3],
            store: vec![9; 40],
        });
        let data = SnapshotData::decode(&old.into()).unwrap();
        assert_eq!(data.cluster.members.len(), 2);
        assert_eq!(data.cluster.next_node_id, 3);
        assert!(data.cluster.learners.is_empty());
        assert_eq!(data.store.as_ref(), &[9; 40][..]);

        let new = SnapshotData {
            format: SNAPSHOT_FORMAT,
            cluster: ClusterState {
                learners: BTreeMap::from([(2, LearnerPlan::Replace { replaces: 1 })]),
                ..data.cluster.clone()
            },
            ..data
        };
        assert_eq!(SnapshotData::decode(&encode(&new).into()).unwrap(), new);
    }
}
