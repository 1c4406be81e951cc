//! The newest entries of the log, kept in memory after they were written, so that raft reads
//! them back without going to the disk store.
//!
//! Why: raft-rs hands the leader its committed entries (to apply) by reading them from
//! storage, since they were persisted by then, and so with followers that lag a little. From
//! raft-engine each such read is a `pread`, an LZ4 decompression and a protobuf decode: on a
//! loaded leader one `pread` per request, its largest count of system calls after the
//! pipelined client (perf stat, 64 clients writing). TiKV's raftstore keeps an entry cache for
//! the same reason.
//!
//! The cache holds a contiguous run of entries ending at the log's last one, exactly as the disk
//! store holds them: entries go in only once written, an overwritten suffix is dropped with the
//! write that replaced it, and compaction or a snapshot drops what it drops from the log.

use std::collections::VecDeque;

use raft::eraftpb::Entry;

/// Most entries kept: a few rounds of a busy leader's appends (a round commits tens to a few
/// hundred), enough for apply and for followers a little behind; one further behind is read
/// from disk as before.
const CACHE_ENTRIES: usize = 4096;

/// Most bytes of entry data kept, so that large commands (up to the 16 MiB limit each) cannot
/// make the cache hold hundreds of MiB; the newest entry is kept whatever its size. 4 MiB is
/// still a few hundred rounds of 64 clients writing 256-byte values (about 20 KiB a round),
/// and every node holds it resident: at 16 MiB it was the largest part of a node's memory
/// after the store's own.
const CACHE_BYTES: usize = 4 << 20;

/// A contiguous run of the newest entries.
#[derive(Debug, Default)]
pub struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl EntryCache {
    /// `entries` (contiguous, starting anywhere after the log's first index and at most one
    /// past its last) were just written to the log: a suffix they overwrite goes.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        match self.range() {
            Some((low, high)) if first.index < low || first.index > high + 1 => self.clear(),
            Some(_) => {
                while self.entries.back().is_some_and(|e| e.index >= first.index) {
                    self.pop_back();
                }
            }
            None => {}
        }
        for entry in entries {
            self.bytes += entry.data.len();
            self.entries.push_back(entry.clone());
        }
        while self.entries.len() > CACHE_ENTRIES
            || (self.bytes > CACHE_BYTES && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    /// The entries `low..high`, if the cache holds all of them.
    pub fn get(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let (first, last) = self.range()?;
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let start = (low - first) as usize;
        let end = (high - first) as usize;
        Some(self.entries.range(start..end).cloned().collect())
    }

    /// The term of the entry at `index`, if cached.
    pub fn term(&self, index: u64) -> Option<u64> {
        let (first, last) = self.range()?;
        (first..=last)
            .contains(&index)
            .then(|| self.entries[(index - first) as usize].term)
    }

    /// The log was compacted up to `index` (included): those entries go.
    pub fn compact_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            self.pop_front();
        }
    }

    /// The log was replaced (a snapshot installed): nothing cached is in it any more.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn range(&self) -> Option<(u64, u64)> {
        Some((self.entries.front()?.index, self.entries.back()?.index))
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.data.len();
        }
    }

    fn pop_back(&mut self) {
        if let Some(entry) = self.entries.pop_back() {
            self.bytes -= entry.data.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![7; bytes].into(),
            ..Entry::default()
        }
    }

    fn run(low: u64, high: u64, term: u64) -> Vec<Entry> {
        (low..high).map(|i| entry(i, term, 10)).collect()
    }

    #[test]
    fn serves_what_it_holds_and_nothing_else() {
        let mut cache = EntryCache::default();
        assert_eq!(cache.get(1, 2), None);
        cache.append(&run(5, 10, 1));
        assert_eq!(cache.get(5, 10).unwrap().len(), 5);
        assert_eq!(cache.get(7, 8).unwrap()[0].index, 7);
        assert_eq!(cache.get(4, 6), None, "starts before the cache");
        assert_eq!(cache.get(9, 11), None, "ends past the log");
        assert_eq!(cache.term(9), Some(1));
        assert_eq!(cache.term(10), None);
    }

    #[test]
    fn an_overwritten_suffix_is_replaced() {
        let mut cache = EntryCache::default();
        cache.append(&run(1, 10, 1));
        cache.append(&run(6, 8, 2));
        let held = cache.get(1, 8).unwrap();
        assert_eq!(
            held.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2)]
        );
        assert_eq!(cache.get(8, 9), None, "the old 8 and 9 are gone");
        // A write before what the cache holds (here: after compaction) replaces all of it.
        cache.compact_to(4);
        cache.append(&run(3, 4, 3));
        assert_eq!(cache.get(5, 6), None);
        assert_eq!(cache.term(3), Some(3));
    }

    #[test]
    fn compaction_and_snapshots_drop_entries() {
        let mut cache = EntryCache::default();
        cache.append(&run(1, 10, 1));
        cache.compact_to(4);
        assert_eq!(cache.get(4, 5), None);
        assert_eq!(cache.get(5, 10).unwrap().len(), 5);
        cache.clear();
        assert_eq!(cache.get(5, 6), None);
        // After a snapshot at 20 the log goes on from 21.
        cache.append(&run(21, 23, 2));
        assert_eq!(cache.get(21, 23).unwrap().len(), 2);
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let mut cache = EntryCache::default();
        cache.append(&run(1, CACHE_ENTRIES as u64 + 101, 1));
        assert_eq!(cache.get(100, 101), None);
        assert!(cache.get(101, CACHE_ENTRIES as u64 + 101).is_some());
        let mut cache = EntryCache::default();
        cache.append(&[entry(1, 1, CACHE_BYTES), entry(2, 1, 10)]);
        assert_eq!(cache.get(1, 2), None, "past the byte bound");
        assert!(cache.get(2, 3).is_some());
        cache.append(&[entry(3, 1, CACHE_BYTES * 2)]);
        assert!(
            cache.get(3, 4).is_some(),
            "the newest stays whatever its size"
        );
    }
}
