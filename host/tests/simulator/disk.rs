//! A simulated node's disk: the production `MemLogStore` behind the sync rules of the real
//! `DiskLogStore`, so that a crash can lose what was written but not synced, and a switch that
//! makes every write fail as on a full disk.
//!
//! Which writes are synced is the real disk's rule: `persist` asks `storage::persist_syncs`,
//! as `DiskLogStore` does (entries and a changed term or vote are synced, and so is everything
//! written before them: a sync flushes the whole file); `set_commit` is never synced; a conf
//! state, an installed snapshot and a compaction are. After a power loss, the commit index is
//! the one of the last sync.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use riteraft_host::storage::{
    LogStore, MemLogStore, SavedSnapshot, SnapshotSaver, StorageError, persist_syncs,
};

#[derive(Clone)]
pub struct SimDisk {
    store: MemLogStore,
    /// The commit index as of the last synced write: what a power loss leaves.
    synced_commit: u64,
    /// Set while the disk is full; shared by every copy of this disk (it is one device).
    full: Arc<AtomicBool>,
}

impl SimDisk {
    pub fn new(store: MemLogStore) -> SimDisk {
        let synced_commit = raft::Storage::initial_state(&store)
            .unwrap()
            .hard_state
            .commit;
        SimDisk {
            store,
            synced_commit,
            full: Arc::default(),
        }
    }

    /// What the disk holds after the machine lost power: only what was synced.
    pub fn after_power_loss(&self) -> SimDisk {
        let mut lost = self.clone();
        lost.store.set_commit(self.synced_commit).unwrap();
        lost
    }

    /// Fills the disk (every write fails from now on), or frees it.
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::Relaxed);
    }

    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// The error of a write to a full disk, or `Ok` if it has room.
    fn room(&self) -> Result<(), StorageError> {
        if self.is_full() {
            return Err(StorageError::Io(io::Error::from(
                io::ErrorKind::StorageFull,
            )));
        }
        Ok(())
    }

    fn commit(&self) -> u64 {
        raft::Storage::initial_state(&self.store)
            .unwrap()
            .hard_state
            .commit
    }

    /// Records that a synced write happened: everything written so far is durable.
    fn synced(&mut self) {
        self.synced_commit = self.commit();
    }
}

/// Whether `error` is what a full [`SimDisk`] returns.
pub fn is_disk_full(error: &StorageError) -> bool {
    matches!(error, StorageError::Io(e) if e.kind() == io::ErrorKind::StorageFull)
}

impl raft::Storage for SimDisk {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.store.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.store.entries(low, high, max_size, context)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.store.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.store.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.store.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.store.snapshot(request_index, to)
    }
}

impl LogStore for SimDisk {
    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        self.room()?;
        let before = raft::Storage::initial_state(&self.store)
            .unwrap()
            .hard_state;
        self.store.persist(entries, hard_state)?;
        if persist_syncs(entries, &before, hard_state) {
            self.synced();
        }
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        if commit == self.commit() {
            return Ok(());
        }
        self.room()?;
        // Not synced, as on the real disk.
        self.store.set_commit(commit)
    }

    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        self.room()?;
        self.store.set_conf_state(conf_state)?;
        self.synced();
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.room()?;
        self.store.install_snapshot(snapshot)?;
        self.synced();
        Ok(())
    }

    fn snapshot_saver(&self) -> SnapshotSaver {
        let full = self.full.clone();
        let save = self.store.snapshot_saver();
        Box::new(move |snapshot| {
            if full.load(Ordering::Relaxed) {
                return Err(StorageError::Io(io::Error::from(
                    io::ErrorKind::StorageFull,
                )));
            }
            save(snapshot)
        })
    }

    fn compact_to_saved(
        &mut self,
        saved: SavedSnapshot,
        compact_index: u64,
    ) -> Result<(), StorageError> {
        self.room()?;
        self.store.compact_to_saved(saved, compact_index)?;
        self.synced();
        Ok(())
    }

    fn snapshot_metadata(&self) -> &SnapshotMetadata {
        self.store.snapshot_metadata()
    }

    fn read_snapshot(&self) -> Result<Snapshot, StorageError> {
        self.store.read_snapshot()
    }

    fn log_bytes(&self) -> u64 {
        self.store.log_bytes()
    }

    fn snapshot_requested(&self) -> bool {
        self.store.snapshot_requested()
    }

    fn snapshot_bytes(&self) -> u64 {
        self.store.snapshot_bytes()
    }
}
