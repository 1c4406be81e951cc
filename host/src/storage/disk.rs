//! [`DiskLogStore`]: the durable [`LogStore`], on raft-engine (TiKV's log store for raft-rs).
//!
//! Why raft-engine: it is built for exactly this (an append-mostly raft log with a little
//! key-value state beside it), keeps recent entries' positions in memory, recovers by scanning
//! its files and tolerates a torn tail, and writes a whole batch with one sync — the group
//! commit of a Ready.
//!
//! Layout under the directory given to [`DiskLogStore::open`]:
//! - `raft-log/`: raft-engine's files: the entries, the hard state, the conf state and the
//!   point the log was truncated at;
//! - `snapshots/snapshot-<index>.snap`: the latest snapshot (an older one may linger until the
//!   newer is durable), in the format of `snapshot_file`.
//!
//! Order of writes, so that a crash at any point leaves a consistent store: a snapshot file is
//! durable (temp file, fsync, rename, fsync of the directory) before the log is truncated
//! behind it, and older snapshot files are deleted only after that.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use raft_engine::{Command, Engine, LogBatch, MessageExt, ReadableSize};

use super::entry_cache::EntryCache;
use super::{LogStore, SnapshotStream, StorageError, snapshot_file};

/// raft-engine keeps logs for many raft groups; we have one.
const GROUP: u64 = 1;
const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
/// Index and term of the last entry dropped from the log, 16 bytes little-endian.
const TRUNCATED: &[u8] = b"truncated";

#[derive(Clone)]
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// A [`LogStore`] on disk.
pub struct DiskLogStore {
    engine: Engine,
    snapshot_dir: PathBuf,
    /// Cached copies of what is on disk.
    hard_state: HardState,
    conf_state: ConfState,
    truncated: (u64, u64),
    /// Where the latest snapshot stands; its data stays in its file (see `read_snapshot`).
    snapshot: SnapshotMetadata,
    /// Bytes of the latest snapshot's data.
    snapshot_bytes: u64,
    /// Bytes of entries appended since the log was last truncated (an estimate of its size).
    log_bytes: u64,
    snapshot_requested: AtomicBool,
    /// The newest entries, as written (see [`EntryCache`]).
    recent: EntryCache,
}

pub(super) fn io_error(e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(std::io::Error::other(e.to_string()))
}

pub(super) fn damaged(e: impl std::fmt::Display) -> StorageError {
    StorageError::Inconsistent(e.to_string())
}

impl DiskLogStore {
    /// Opens (or creates) the store in `dir`, recovering from a crash at any point.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let snapshot_dir = dir.join("snapshots");
        fs::create_dir_all(&snapshot_dir)?;
        let config = raft_engine::Config {
            dir: dir.join("raft-log").display().to_string(),
            // Two cores here: recovery threads beyond that only contend.
            recovery_threads: 2,
            // Rotate files at 64 MiB and purge once 256 MiB are on disk, so a long-running
            // node's log stays a few hundred MiB behind its snapshots.
            target_file_size: ReadableSize::mb(64),
            purge_threshold: ReadableSize::mb(256),
            ..Default::default()
        };
        let engine = Engine::open(config).map_err(io_error)?;
        let hard_state = engine
            .get_message::<HardState>(GROUP, HARD_STATE)
            .map_err(damaged)?
            .unwrap_or_default();
        let conf_state = engine
            .get_message::<ConfState>(GROUP, CONF_STATE)
            .map_err(damaged)?
            .unwrap_or_default();
        let truncated = match engine.get(GROUP, TRUNCATED) {
            Some(bytes) if bytes.len() == 16 => (
                u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
            ),
            Some(bytes) => {
                return Err(damaged(format!(
                    "truncation record of {} bytes",
                    bytes.len()
                )));
            }
            None => (0, 0),
        };
        let mut snapshot = read_latest_snapshot(&snapshot_dir)?.unwrap_or_default();
        let snapshot_bytes = snapshot.data.len() as u64;
        let snapshot = snapshot.take_metadata();
        let mut store = Self {
            engine,
            snapshot_dir,
            hard_state,
            conf_state,
            truncated,
            snapshot,
            snapshot_bytes,
            log_bytes: 0,
            snapshot_requested: AtomicBool::new(false),
            recent: EntryCache::default(),
        };
        store.recover()?;
        Ok(store)
    }

    /// Finishes an `install_snapshot` that a crash interrupted: the snapshot file is durable
    /// but the log still predates it.
    fn recover(&mut self) -> Result<(), StorageError> {
        let meta = &self.snapshot;
        if meta.index <= self.truncated.0 {
            return Ok(());
        }
        let matches_log = raft::Storage::term(self, meta.index).ok() == Some(meta.term);
        if !matches_log {
            tracing::warn!(
                index = meta.index,
                "completing an interrupted snapshot install"
            );
            let meta = self.snapshot.clone();
            self.reset_to(&meta)?;
        }
        Ok(())
    }

    /// Whether this store holds anything at all (a node that never started has nothing).
    pub fn is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.snapshot.index == 0
            && self.engine.last_index(GROUP).is_none()
    }

    fn last(&self) -> u64 {
        self.engine
            .last_index(GROUP)
            .unwrap_or(self.truncated.0)
            .max(self.truncated.0)
    }

    /// Replaces the whole log by the point of the snapshot `meta` describes.
    fn reset_to(&mut self, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(meta.index);
        hard_state.term = hard_state.term.max(meta.term);
        let mut batch = LogBatch::default();
        batch.add_command(GROUP, Command::Clean);
        batch
            .put_message(GROUP, HARD_STATE.to_vec(), &hard_state)
            .map_err(io_error)?;
        batch
            .put_message(GROUP, CONF_STATE.to_vec(), meta.get_conf_state())
            .map_err(io_error)?;
        batch
            .put(GROUP, TRUNCATED.to_vec(), truncation(meta.index, meta.term))
            .map_err(io_error)?;
        self.engine.write(&mut batch, true).map_err(io_error)?;
        self.hard_state = hard_state;
        self.conf_state = meta.get_conf_state().clone();
        self.truncated = (meta.index, meta.term);
        self.log_bytes = 0;
        self.recent.clear();
        Ok(())
    }

    /// Remembers what the node needs of a snapshot now durable in its file: where it stands
    /// and its size, not its data.
    fn record_snapshot(&mut self, metadata: &SnapshotMetadata, bytes: u64) {
        self.snapshot = metadata.clone();
        self.snapshot_bytes = bytes;
    }

    /// Deletes snapshot files older than `index` (only once the one at `index` is durable).
    fn remove_snapshots_before(&self, index: u64) -> Result<(), StorageError> {
        for (file_index, path) in snapshot_files(&self.snapshot_dir)? {
            if file_index < index {
                fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

fn truncation(index: u64, term: u64) -> Vec<u8> {
    let mut bytes = index.to_le_bytes().to_vec();
    bytes.extend_from_slice(&term.to_le_bytes());
    bytes
}

/// Snapshot files in `dir` with their index, newest first.
fn snapshot_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(index) = name
            .strip_prefix("snapshot-")
            .and_then(|rest| rest.strip_suffix(".snap"))
            .and_then(|index| index.parse::<u64>().ok())
        {
            files.push((index, path));
        } else if name.ends_with(".tmp") {
            // A snapshot whose write a crash interrupted: never renamed, never used.
            let _ = fs::remove_file(&path);
        }
    }
    files.sort_by_key(|(index, _)| std::cmp::Reverse(*index));
    Ok(files)
}

/// Times an append refused for want of space is tried again, and the pause between tries:
/// a snapshot being written beside the log takes space for a moment and gives it back when it
/// fails on a full disk (its temp file is removed), so the append fits a moment later. Two
/// seconds in all; after that the node stops with its data intact, as before.
const FULL_DISK_RETRIES: u32 = 20;
const FULL_DISK_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes the batch `batch` makes, trying again for a while when raft-engine finds no space
/// to allocate. Each try writes a new batch: a batch once written (or refused) is sealed.
fn write_retrying_when_full(
    engine: &Engine,
    batch: impl Fn() -> Result<LogBatch, StorageError>,
    sync: bool,
) -> Result<(), StorageError> {
    let mut tries = 0;
    loop {
        match engine.write(&mut batch()?, sync) {
            Ok(_) => return Ok(()),
            Err(raft_engine::Error::TryAgain(why)) if tries < FULL_DISK_RETRIES => {
                tries += 1;
                tracing::warn!(tries, "the log could not be appended ({why}); trying again");
                std::thread::sleep(FULL_DISK_PAUSE);
            }
            Err(e) => return Err(io_error(e)),
        }
    }
}

/// Deletes `path`; one already gone is no error.
fn remove_file_if_present(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// The file of the snapshot at `index`.
fn snapshot_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("snapshot-{index:020}.snap"))
}

/// The newest snapshot in `dir`. A damaged newest file is an error, not skipped: the log
/// behind it may already be truncated, so an older snapshot would silently lose writes.
fn read_latest_snapshot(dir: &Path) -> Result<Option<Snapshot>, StorageError> {
    match snapshot_files(dir)?.first() {
        Some((_, path)) => snapshot_file::read(path).map(Some),
        None => Ok(None),
    }
}

impl raft::Storage for DiskLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        super::check_range(low, high, self.truncated.0, self.last())?;
        let max_size = max_size.into();
        if let Some(mut entries) = self.recent.get(low, high) {
            raft::util::limit_size(&mut entries, max_size);
            return Ok(entries);
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let max_size = max_size.map(|size| size as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(GROUP, low, high, max_size, &mut entries)
            .map_err(|e| raft::Error::Store(RaftStorageError::Other(Box::new(e))))?;
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if let Some(known) = super::term_at_or_before(index, self.truncated) {
            return known;
        }
        if let Some(term) = self.recent.term(index) {
            return Ok(term);
        }
        match self.engine.get_entry::<EntryExt>(GROUP, index) {
            Ok(Some(entry)) => Ok(entry.term),
            Ok(None) => Err(raft::Error::Store(RaftStorageError::Unavailable)),
            Err(e) => Err(raft::Error::Store(RaftStorageError::Other(Box::new(e)))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The latest snapshot's metadata, without its data: the transport reads that from the
    /// file as it sends it (see `snapshot_opener`), so that neither a large store's state is
    /// held in memory nor its file read on the consensus thread.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        super::snapshot_for(
            &self.snapshot,
            &self.snapshot_requested,
            request_index,
            to,
            || {
                let mut snapshot = Snapshot::default();
                snapshot.set_metadata(self.snapshot.clone());
                Ok(snapshot)
            },
        )
    }
}

impl LogStore for DiskLogStore {
    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        if let Some(first) = entries.first()
            && (first.index <= self.truncated.0 || first.index > self.last() + 1)
        {
            return Err(StorageError::Inconsistent(format!(
                "append at {} outside the log ({}..={})",
                first.index,
                self.truncated.0 + 1,
                self.last() + 1
            )));
        }
        let batch = || -> Result<LogBatch, StorageError> {
            let mut batch = LogBatch::default();
            batch
                .add_entries::<EntryExt>(GROUP, entries)
                .map_err(io_error)?;
            if let Some(hard_state) = hard_state {
                batch
                    .put_message(GROUP, HARD_STATE.to_vec(), hard_state)
                    .map_err(io_error)?;
            }
            Ok(batch)
        };
        let sync = super::persist_syncs(entries, &self.hard_state, hard_state);
        write_retrying_when_full(&self.engine, batch, sync)?;
        self.recent.append(entries);
        self.log_bytes += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        if commit == self.hard_state.commit {
            return Ok(());
        }
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = commit;
        // Not synced: a lost commit index is re-learned from the leader, and entries are
        // applied only once committed on a quorum anyway.
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, HARD_STATE.to_vec(), &hard_state)
            .map_err(io_error)?;
        self.engine.write(&mut batch, false).map_err(io_error)?;
        self.hard_state = hard_state;
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, CONF_STATE.to_vec(), &conf_state)
            .map_err(io_error)?;
        self.engine.write(&mut batch, true).map_err(io_error)?;
        self.conf_state = conf_state;
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let path = snapshot_path(&self.snapshot_dir, snapshot.get_metadata().index);
        let whole = SnapshotStream::whole(snapshot.clone());
        snapshot_file::save(&self.snapshot_dir, &path, whole)?;
        self.reset_to(snapshot.get_metadata())?;
        let index = snapshot.get_metadata().index;
        self.record_snapshot(snapshot.get_metadata(), snapshot.data.len() as u64);
        self.remove_snapshots_before(index)?;
        Ok(())
    }

    fn snapshot_saver(&self) -> super::SnapshotSaver {
        let dir = self.snapshot_dir.clone();
        Box::new(move |stream| {
            let path = snapshot_path(&dir, stream.metadata.index);
            let written = snapshot_file::save(&dir, &path, stream)?;
            // The data is in the file; the store keeps only where the snapshot stands.
            let mut snapshot = Snapshot::default();
            snapshot.set_metadata(written.metadata);
            Ok(super::SavedSnapshot {
                snapshot,
                bytes: written.data_bytes,
            })
        })
    }

    fn compact_to_saved(
        &mut self,
        saved: super::SavedSnapshot,
        compact_index: u64,
    ) -> Result<(), StorageError> {
        let index = saved.metadata().index;
        if index <= self.snapshot.index {
            // A leader's newer snapshot was installed while this one was written: its file
            // (if not the very same index, which install_snapshot rewrote) is of no use.
            if index < self.snapshot.index {
                remove_file_if_present(&snapshot_path(&self.snapshot_dir, index))?;
            }
            return Ok(());
        }
        if index > self.last() || compact_index > index {
            return Err(StorageError::Inconsistent(format!(
                "snapshot at {index} (compacting to {compact_index}) beyond the log's end {}",
                self.last()
            )));
        }
        if compact_index > self.truncated.0 {
            let term = raft::Storage::term(self, compact_index)
                .map_err(|e| StorageError::Inconsistent(e.to_string()))?;
            let mut batch = LogBatch::default();
            batch
                .put(GROUP, TRUNCATED.to_vec(), truncation(compact_index, term))
                .map_err(io_error)?;
            self.engine.write(&mut batch, true).map_err(io_error)?;
            self.engine.compact_to(GROUP, compact_index + 1);
            self.recent.compact_to(compact_index);
            self.truncated = (compact_index, term);
            self.log_bytes = 0;
            self.engine.purge_expired_files().map_err(io_error)?;
        }
        self.record_snapshot(saved.metadata(), saved.bytes());
        self.snapshot_requested.store(false, Ordering::Relaxed);
        self.remove_snapshots_before(index)?;
        Ok(())
    }

    fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    /// Opens a snapshot's data from its file, checked against the file's checksum. A snapshot
    /// replaced by a newer one meanwhile is gone: raft then asks for the newer one.
    fn snapshot_opener(&self) -> Option<super::SnapshotOpener> {
        let dir = self.snapshot_dir.clone();
        Some(std::sync::Arc::new(move |wanted: &SnapshotMetadata| {
            let contents = snapshot_file::open_data(&snapshot_path(&dir, wanted.index))?;
            if &contents.metadata != wanted {
                return Err(damaged(format!(
                    "the snapshot file for index {} in {} holds another snapshot",
                    wanted.index,
                    dir.display()
                )));
            }
            Ok(contents)
        }))
    }

    fn snapshot_reader(&self) -> Option<super::SnapshotReader> {
        let index = self.snapshot.index;
        let path = snapshot_path(&self.snapshot_dir, index);
        (index > 0)
            .then(|| -> super::SnapshotReader { Box::new(move || snapshot_file::read(&path)) })
    }

    fn read_snapshot(&self) -> Result<Snapshot, StorageError> {
        if self.snapshot.index == 0 {
            return Ok(Snapshot::default());
        }
        let snapshot =
            snapshot_file::read(&snapshot_path(&self.snapshot_dir, self.snapshot.index))?;
        if snapshot.get_metadata() != &self.snapshot {
            return Err(damaged(format!(
                "the snapshot file for index {1} in {0} holds another snapshot",
                self.snapshot_dir.display(),
                self.snapshot.index
            )));
        }
        Ok(snapshot)
    }

    fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    fn snapshot_requested(&self) -> bool {
        self.snapshot_requested.load(Ordering::Relaxed)
    }

    fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes
    }
}
