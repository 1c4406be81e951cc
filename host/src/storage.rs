//! Where a node keeps its raft log, hard state, membership and latest snapshot.
//!
//! [`LogStore`] is what the node needs beyond raft-rs' read-only [`raft::Storage`]: the writes of
//! the Ready loop, each durable when it returns. [`DiskLogStore`] is the real one;
//! [`MemLogStore`] keeps everything in memory, for tests. One test suite runs against both.

use std::sync::atomic::{AtomicBool, Ordering};

mod disk;
mod entry_cache;
mod snapshot_file;
mod snapshot_stream;

pub use disk::DiskLogStore;
pub use snapshot_file::SnapshotContents;
pub use snapshot_stream::{SnapshotStream, TailEnd, TailPiece, TailWriter};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

/// A failure to read or write the node's durable state. The node cannot go on safely after one.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The underlying files could not be written or synced (e.g. the disk is full).
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The request contradicts what is stored (a bug, or a damaged store).
    #[error("inconsistent raft log: {0}")]
    Inconsistent(String),
}

/// Opens the data of this node's snapshot of the given metadata, to be read piece by piece
/// (see [`LogStore::snapshot_opener`]).
pub type SnapshotOpener = std::sync::Arc<
    dyn Fn(&SnapshotMetadata) -> Result<SnapshotContents, StorageError> + Send + Sync,
>;

/// Reads one snapshot back (see [`LogStore::snapshot_reader`]).
pub type SnapshotReader = Box<dyn Fn() -> Result<Snapshot, StorageError> + Send>;

/// Writes one snapshot durably where its store will find it, as its pieces arrive (see
/// [`LogStore::snapshot_saver`]).
pub type SnapshotSaver =
    Box<dyn FnOnce(SnapshotStream) -> Result<SavedSnapshot, StorageError> + Send>;

/// A snapshot a [`SnapshotSaver`] wrote durably, for [`LogStore::compact_to_saved`] to record.
#[derive(Debug)]
pub struct SavedSnapshot {
    /// The snapshot; its data left out when the data went to a file.
    snapshot: Snapshot,
    /// Bytes of its data.
    bytes: u64,
}

impl SavedSnapshot {
    /// Where the snapshot stands.
    pub fn metadata(&self) -> &SnapshotMetadata {
        self.snapshot.get_metadata()
    }

    /// Bytes of its data.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The writes of the Ready loop. Every method is durable when it returns `Ok`.
///
/// Contract: entries are contiguous from `first_index()`, `term(first_index() - 1)` is known,
/// and the latest snapshot's index is at least `first_index() - 1`. The snapshot raft gets
/// (`raft::Storage::snapshot`) comes with its data, or, from a store with a
/// [`LogStore::snapshot_opener`], possibly with its metadata alone: the transport then reads
/// the data through the opener as it sends it.
pub trait LogStore: raft::Storage + Send + 'static {
    /// Appends `entries` (replacing any conflicting suffix) and records `hard_state`: one sync
    /// for both (the group commit of a Ready).
    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError>;

    /// Records a new commit index (from a `LightReady`).
    fn set_commit(&mut self, commit: u64) -> Result<(), StorageError>;

    /// Records the membership in force after applying a conf change.
    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError>;

    /// Installs a snapshot received from the leader: the log is replaced by it.
    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError>;

    /// What writes a snapshot this node took of its own state durably, on any thread: writing
    /// a large store takes seconds, which the Ready loop need not wait for. Nothing changes
    /// for this store until [`LogStore::compact_to_saved`] records the result.
    fn snapshot_saver(&self) -> SnapshotSaver;

    /// Records a snapshot the saver wrote, then drops the log entries up to `compact_index` (at
    /// most the snapshot's index: entries after it stay, so that a follower a little behind
    /// can still catch up from the log instead of a whole snapshot). A snapshot no newer than
    /// the latest one (the leader's, installed while this one was being written) is dropped.
    fn compact_to_saved(
        &mut self,
        saved: SavedSnapshot,
        compact_index: u64,
    ) -> Result<(), StorageError>;

    /// Writes and records a snapshot of this node's own state at once (see `snapshot_saver`
    /// and `compact_to_saved`).
    fn compact_to_snapshot(
        &mut self,
        snapshot: Snapshot,
        compact_index: u64,
    ) -> Result<(), StorageError> {
        let saved = self.snapshot_saver()(SnapshotStream::whole(snapshot))?;
        self.compact_to_saved(saved, compact_index)
    }

    /// Where the latest snapshot stands (index 0 when there is none).
    fn snapshot_metadata(&self) -> &SnapshotMetadata;

    /// The latest snapshot with its data, read whole (a node restarting from it). A
    /// [`DiskLogStore`] reads it from its file: a store's whole state is not worth keeping in
    /// memory; a follower that needs it is sent it through [`LogStore::snapshot_opener`].
    fn read_snapshot(&self) -> Result<Snapshot, StorageError>;

    /// The bytes of log entries kept after the latest snapshot.
    fn log_bytes(&self) -> u64;

    /// What opens the data of a snapshot this store gave raft without it; `None` for a store
    /// that always gives the data (a [`MemLogStore`]).
    fn snapshot_opener(&self) -> Option<SnapshotOpener> {
        None
    }

    /// Something that reads the latest snapshot back later, from another place than this
    /// store's memory (its file), even after the store moved on; `None` if there is no such
    /// place (a [`MemLogStore`]) or no snapshot yet.
    fn snapshot_reader(&self) -> Option<SnapshotReader> {
        None
    }

    /// Whether raft asked for a snapshot newer than the latest one (e.g. for a follower that
    /// joined after it was taken). The node then takes one; raft asks again and gets it.
    fn snapshot_requested(&self) -> bool;

    /// Bytes of the latest snapshot's data (0 when there is none): large stores snapshot less
    /// often.
    fn snapshot_bytes(&self) -> u64;
}

/// Whether [`LogStore::persist`] of `entries` and `hard_state` (over `before`) must sync, in a
/// store that syncs only when it has to ([`DiskLogStore`]; the simulator's disk follows the
/// same rule). Entries, term and vote must be durable before raft acts on them; a commit index
/// alone need not be (it is re-learned from the leader), which spares followers a sync per
/// heartbeat that only moved the commit.
pub fn persist_syncs(
    entries: &[Entry],
    before: &HardState,
    hard_state: Option<&HardState>,
) -> bool {
    let vote_or_term_changed =
        hard_state.is_some_and(|hs| hs.term != before.term || hs.vote != before.vote);
    !entries.is_empty() || vote_or_term_changed
}

/// Checks a `raft::Storage::entries` range against a log holding `(truncated, last]`.
fn check_range(low: u64, high: u64, truncated: u64, last: u64) -> raft::Result<()> {
    if low <= truncated {
        return Err(raft::Error::Store(RaftStorageError::Compacted));
    }
    if high > last + 1 {
        return Err(raft::Error::Store(RaftStorageError::Unavailable));
    }
    Ok(())
}

/// `raft::Storage::term` for indexes the log no longer holds: the truncation point's term, or
/// "compacted" before it. `None` for indexes after it, which the log itself answers.
fn term_at_or_before(
    index: u64,
    (truncated_index, truncated_term): (u64, u64),
) -> Option<raft::Result<u64>> {
    if index == truncated_index {
        Some(Ok(truncated_term))
    } else if index < truncated_index {
        Some(Err(raft::Error::Store(RaftStorageError::Compacted)))
    } else {
        None
    }
}

/// `raft::Storage::snapshot` for a store whose latest snapshot is `latest`: it, when it is
/// recent enough and its membership includes the follower `to` (a follower ignores a snapshot
/// that does not list it); otherwise "temporarily unavailable", and `requested` is set so the
/// node takes a new one.
fn snapshot_for(
    meta: &SnapshotMetadata,
    requested: &AtomicBool,
    request_index: u64,
    to: u64,
    read: impl FnOnce() -> Result<Snapshot, StorageError>,
) -> raft::Result<Snapshot> {
    let conf = meta.get_conf_state();
    let knows_peer = conf.voters.contains(&to) || conf.learners.contains(&to);
    if meta.index < request_index || !knows_peer {
        requested.store(true, Ordering::Relaxed);
        return Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ));
    }
    read().map_err(|e| raft::Error::Store(RaftStorageError::Other(Box::new(e))))
}

/// A [`LogStore`] in memory. A clone is a copy of everything it holds: what a simulated node
/// that crashes finds again when it restarts (every write is "synced" at once).
#[derive(Debug, Default)]
pub struct MemLogStore {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Index and term of the last entry dropped from the log (0, 0 for none).
    truncated: (u64, u64),
    /// Entries after `truncated`: `entries[0].index == truncated.0 + 1`.
    entries: Vec<Entry>,
    entry_bytes: u64,
    /// Set by `snapshot()` (which only has `&self`) when the latest snapshot will not do.
    snapshot_requested: AtomicBool,
}

impl Clone for MemLogStore {
    fn clone(&self) -> Self {
        Self {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
            snapshot: self.snapshot.clone(),
            truncated: self.truncated,
            entries: self.entries.clone(),
            entry_bytes: self.entry_bytes,
            snapshot_requested: AtomicBool::new(self.snapshot_requested.load(Ordering::Relaxed)),
        }
    }
}

impl MemLogStore {
    /// An empty store: a node that has not joined any cluster yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the last entry dropped from the log.
    fn offset(&self) -> u64 {
        self.truncated.0
    }
}

impl raft::Storage for MemLogStore {
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
        check_range(
            low,
            high,
            self.offset(),
            self.offset() + self.entries.len() as u64,
        )?;
        let offset = self.offset() + 1;
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if let Some(known) = term_at_or_before(index, self.truncated) {
            return known;
        }
        match self.entries.get((index - self.offset() - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.offset() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.offset() + self.entries.len() as u64)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        snapshot_for(
            self.snapshot.get_metadata(),
            &self.snapshot_requested,
            request_index,
            to,
            || Ok(self.snapshot.clone()),
        )
    }
}

impl LogStore for MemLogStore {
    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if let Some(first) = entries.first() {
            let offset = self.offset() + 1;
            if first.index < offset {
                return Err(StorageError::Inconsistent(format!(
                    "append at {} before the start of the log after {}",
                    first.index,
                    offset - 1
                )));
            }
            let keep = (first.index - offset) as usize;
            if keep > self.entries.len() {
                return Err(StorageError::Inconsistent(format!(
                    "append at {} leaves a gap after {}",
                    first.index,
                    offset - 1 + self.entries.len() as u64
                )));
            }
            for dropped in self.entries.drain(keep..) {
                self.entry_bytes -= dropped.data.len() as u64;
            }
            for entry in entries {
                self.entry_bytes += entry.data.len() as u64;
            }
            self.entries.extend_from_slice(entries);
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        self.hard_state.commit = commit;
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        self.conf_state = conf_state;
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.entry_bytes = 0;
        self.truncated = (meta.index, meta.term);
        self.snapshot = snapshot;
        Ok(())
    }

    fn snapshot_saver(&self) -> SnapshotSaver {
        Box::new(|stream| {
            let snapshot = stream.collect()?;
            let bytes = snapshot.data.len() as u64;
            Ok(SavedSnapshot { snapshot, bytes })
        })
    }

    fn compact_to_saved(
        &mut self,
        saved: SavedSnapshot,
        compact_index: u64,
    ) -> Result<(), StorageError> {
        let snapshot = saved.snapshot;
        let index = snapshot.get_metadata().index;
        if index <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        let last = self.offset() + self.entries.len() as u64;
        if index > last || compact_index > index {
            return Err(StorageError::Inconsistent(format!(
                "snapshot at {index} (compacting to {compact_index}) beyond the log's end {last}"
            )));
        }
        if compact_index > self.offset() {
            let term = raft::Storage::term(self, compact_index)
                .map_err(|e| StorageError::Inconsistent(e.to_string()))?;
            let drop = (compact_index - self.offset()) as usize;
            for dropped in self.entries.drain(..drop) {
                self.entry_bytes -= dropped.data.len() as u64;
            }
            self.truncated = (compact_index, term);
        }
        self.snapshot = snapshot;
        self.snapshot_requested.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn snapshot_metadata(&self) -> &SnapshotMetadata {
        self.snapshot.get_metadata()
    }

    fn read_snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }

    fn log_bytes(&self) -> u64 {
        self.entry_bytes
    }

    fn snapshot_requested(&self) -> bool {
        self.snapshot_requested.load(Ordering::Relaxed)
    }

    fn snapshot_bytes(&self) -> u64 {
        self.snapshot.data.len() as u64
    }
}

#[cfg(test)]
mod tests {
    //! One suite for every `LogStore`: the contract above, checked against each.

    use std::io::Read;

    use raft::Storage;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![0; 10].into(),
            ..Default::default()
        }
    }

    fn snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().mut_conf_state().voters = voters;
        snapshot.data = vec![7; 100].into();
        snapshot
    }

    fn all(store: &impl LogStore, low: u64, high: u64) -> raft::Result<Vec<Entry>> {
        store.entries(low, high, None, GetEntriesContext::empty(false))
    }

    fn append_overwrites_a_conflicting_suffix(mut store: impl LogStore) {
        store
            .persist(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
            .unwrap();
        store.persist(&[entry(2, 2)], None).unwrap();
        assert_eq!(store.last_index().unwrap(), 2);
        assert_eq!(store.term(2).unwrap(), 2);
        assert_eq!(all(&store, 1, 3).unwrap().len(), 2);
        assert!(store.persist(&[entry(9, 2)], None).is_err(), "a gap");
    }

    fn compaction_keeps_the_entries_behind_the_snapshot(mut store: impl LogStore) {
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1)).collect();
        store.persist(&entries, None).unwrap();
        store
            .compact_to_snapshot(snapshot(8, 1, vec![1]), 6)
            .unwrap();
        assert_eq!(store.first_index().unwrap(), 7);
        assert_eq!(store.term(6).unwrap(), 1);
        assert!(store.term(5).is_err());
        assert_eq!(all(&store, 7, 11).unwrap().len(), 4);
        assert!(all(&store, 5, 8).is_err());
        let served = store.snapshot(8, 1).unwrap();
        assert_eq!(served.get_metadata().index, 8);
        let data_len = match store.snapshot_opener() {
            // Without its data, which opens in full.
            Some(open) if served.data.is_empty() => {
                let mut contents = open(served.get_metadata()).unwrap();
                let mut data = Vec::new();
                contents.reader.read_to_end(&mut data).unwrap();
                assert_eq!(data, vec![7; 100]);
                contents.len
            }
            _ => served.data.len() as u64,
        };
        assert_eq!(data_len, 100, "with its data, read back");
        assert_eq!(store.snapshot_bytes(), 100);
        // Node 2 is not in the snapshot's membership: a newer one is requested.
        assert!(store.snapshot(8, 2).is_err());
        assert!(store.snapshot_requested());
    }

    fn an_installed_snapshot_replaces_the_log(mut store: impl LogStore) {
        store.persist(&[entry(1, 1), entry(2, 1)], None).unwrap();
        store.install_snapshot(snapshot(20, 3, vec![1, 2])).unwrap();
        assert_eq!(store.first_index().unwrap(), 21);
        assert_eq!(store.last_index().unwrap(), 20);
        assert_eq!(store.term(20).unwrap(), 3);
        let state = store.initial_state().unwrap();
        assert_eq!(state.hard_state.commit, 20);
        assert_eq!(state.conf_state.voters, vec![1, 2]);
        store.persist(&[entry(21, 3)], None).unwrap();
        assert_eq!(store.last_index().unwrap(), 21);
    }

    /// The node writes its own snapshot on another thread; a leader's newer snapshot may be
    /// installed meanwhile, and must not be replaced by the older one when that is recorded.
    fn a_snapshot_saved_behind_an_installed_one_is_dropped(mut store: impl LogStore) {
        let entries: Vec<_> = (1..=10).map(|i| entry(i, 1)).collect();
        store.persist(&entries, None).unwrap();
        let saver = store.snapshot_saver();
        let saved =
            std::thread::spawn(move || saver(SnapshotStream::whole(snapshot(8, 1, vec![1]))))
                .join()
                .unwrap()
                .unwrap();
        assert_eq!(store.snapshot_metadata().index, 0, "not recorded yet");
        store.install_snapshot(snapshot(20, 2, vec![1, 2])).unwrap();
        store.compact_to_saved(saved, 6).unwrap();
        assert_eq!(store.snapshot_metadata().index, 20);
        assert_eq!(store.first_index().unwrap(), 21);
        assert_eq!(store.read_snapshot().unwrap().get_metadata().index, 20);
    }

    #[test]
    fn mem_store_meets_the_contract() {
        append_overwrites_a_conflicting_suffix(MemLogStore::new());
        compaction_keeps_the_entries_behind_the_snapshot(MemLogStore::new());
        an_installed_snapshot_replaces_the_log(MemLogStore::new());
        a_snapshot_saved_behind_an_installed_one_is_dropped(MemLogStore::new());
    }

    #[test]
    fn disk_store_meets_the_contract() {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        append_overwrites_a_conflicting_suffix(DiskLogStore::open(dirs[0].path()).unwrap());
        compaction_keeps_the_entries_behind_the_snapshot(
            DiskLogStore::open(dirs[1].path()).unwrap(),
        );
        an_installed_snapshot_replaces_the_log(DiskLogStore::open(dirs[2].path()).unwrap());
        a_snapshot_saved_behind_an_installed_one_is_dropped(
            DiskLogStore::open(dirs[3].path()).unwrap(),
        );
        // The dropped snapshot's file is gone too.
        let files = std::fs::read_dir(dirs[3].path().join("snapshots"))
            .unwrap()
            .count();
        assert_eq!(files, 1);
    }

    #[test]
    fn disk_store_reopens_with_everything_it_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = DiskLogStore::open(dir.path()).unwrap();
            assert!(store.is_empty());
            store.install_snapshot(snapshot(1, 1, vec![1])).unwrap();
            let entries: Vec<_> = (2..=30).map(|i| entry(i, 2)).collect();
            let hard_state = HardState {
                term: 2,
                vote: 1,
                commit: 25,
                ..Default::default()
            };
            store.persist(&entries, Some(&hard_state)).unwrap();
            store
                .compact_to_snapshot(snapshot(25, 2, vec![1, 2]), 20)
                .unwrap();
            store
                .set_conf_state(ConfState {
                    voters: vec![1, 2, 3],
                    ..Default::default()
                })
                .unwrap();
        }
        let store = DiskLogStore::open(dir.path()).unwrap();
        assert!(!store.is_empty());
        let state = store.initial_state().unwrap();
        assert_eq!((state.hard_state.term, state.hard_state.vote), (2, 1));
        assert_eq!(state.hard_state.commit, 25);
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(store.first_index().unwrap(), 21);
        assert_eq!(store.last_index().unwrap(), 30);
        assert_eq!(store.snapshot_metadata().index, 25);
        assert_eq!(store.snapshot_bytes(), 100);
        assert_eq!(store.read_snapshot().unwrap().data.len(), 100);
        assert_eq!(all(&store, 21, 31).unwrap().len(), 10);
        // Only the newest snapshot file is kept.
        let files = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .count();
        assert_eq!(files, 1);
    }

    #[test]
    fn a_damaged_snapshot_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = DiskLogStore::open(dir.path()).unwrap();
            store.install_snapshot(snapshot(5, 1, vec![1])).unwrap();
        }
        let file = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let whole = std::fs::read(&file).unwrap();
        // A byte of the store's state (the first after magic and checksum), and the last.
        for at in [52, whole.len() - 1] {
            let mut bytes = whole.clone();
            bytes[at] ^= 0xff;
            std::fs::write(&file, bytes).unwrap();
            let error = DiskLogStore::open(dir.path()).err().expect("refused");
            assert!(error.to_string().contains("damaged"), "{error}");
        }
    }
}
