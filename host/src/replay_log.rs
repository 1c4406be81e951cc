//! The commands a wasm state machine applied since its checkpoint, kept to replay after a trap.
//!
//! A running node keeps them in a file of its data dir rather than in memory: with a large
//! store they are tens of MiB (up to [`crate::wasm_state_machine::ReplayLimits`]) that are
//! read back only after a trap, and held in memory they were a sixth of a node's resident
//! size. The file is anonymous (it has no name, so nothing is left behind by a crash), is
//! never synced (it is of no use after a restart, which restores the node's snapshot and log
//! instead), and is written through a small buffer, so a command costs a copy, not a syscall.
//! It never takes the disk's last `keep_free` bytes: the log says the disk is full instead,
//! and its owner holds them in memory from then on. Tests and in-process clusters keep them in
//! memory.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::state_machine::ApplyContext;

/// Bytes of a record's header: index, position, term, timestamp, length of the command.
pub const RECORD_HEADER: usize = 8 + 4 + 8 + 8 + 4;

/// The write buffer of a log in a file: one write syscall per this many bytes of commands.
const WRITE_BUFFER: usize = 64 << 10;

/// How often a log in a file checks the disk's free space: once per this many bytes written
/// (a `statvfs` per 1 MiB is nothing beside writing it).
const SPACE_CHECK_BYTES: u64 = 1 << 20;

/// A place in the log, to drop what comes before it (see [`ReplayLog::drop_before`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayMark {
    records: usize,
    bytes: u64,
}

/// Commands with their contexts, in the order they were applied.
pub struct ReplayLog {
    place: Place,
    records: usize,
    bytes: u64,
}

enum Place {
    Memory(Vec<u8>),
    File {
        file: BufWriter<File>,
        /// Free space on its disk that it leaves alone.
        keep_free: u64,
        /// Bytes written since free space was last checked.
        unchecked: u64,
    },
}

impl std::fmt::Debug for ReplayLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.place {
            Place::Memory(_) => "memory",
            Place::File { .. } => "file",
        };
        (f.debug_struct("ReplayLog"))
            .field("place", &place)
            .field("records", &self.records)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl ReplayLog {
    /// A log held in memory.
    pub fn in_memory() -> Self {
        Self::at(Place::Memory(Vec::new()))
    }

    /// A log in an anonymous file of `dir`, which leaves `keep_free` bytes of its disk free.
    pub fn in_file(dir: &Path, keep_free: u64) -> io::Result<Self> {
        let file = tempfile::tempfile_in(dir)?;
        check_free(&file, keep_free)?;
        Ok(Self::at(Place::File {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            keep_free,
            unchecked: 0,
        }))
    }

    fn at(place: Place) -> Self {
        Self {
            place,
            records: 0,
            bytes: 0,
        }
    }

    /// Commands held.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes held, each command with its [`RECORD_HEADER`].
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Where the log ends now.
    pub fn mark(&self) -> ReplayMark {
        ReplayMark {
            records: self.records,
            bytes: self.bytes,
        }
    }

    /// Adds a command. After an error (the disk is full, or has less than `keep_free` left) the
    /// log is of no use until `clear`.
    pub fn push(&mut self, ctx: ApplyContext, command: &[u8]) -> io::Result<()> {
        let length = u32::try_from(command.len())
            .map_err(|_| io::Error::other("a command of 4 GiB or more"))?;
        let mut header = [0; RECORD_HEADER];
        header[0..8].copy_from_slice(&ctx.index.to_le_bytes());
        header[8..12].copy_from_slice(&ctx.position.to_le_bytes());
        header[12..20].copy_from_slice(&ctx.term.to_le_bytes());
        header[20..28].copy_from_slice(&ctx.timestamp_ms.to_le_bytes());
        header[28..32].copy_from_slice(&length.to_le_bytes());
        match &mut self.place {
            Place::Memory(bytes) => {
                bytes.extend_from_slice(&header);
                bytes.extend_from_slice(command);
            }
            Place::File {
                file,
                keep_free,
                unchecked,
            } => {
                *unchecked += (RECORD_HEADER + command.len()) as u64;
                if *unchecked >= SPACE_CHECK_BYTES {
                    *unchecked = 0;
                    check_free(file.get_ref(), *keep_free)?;
                }
                file.write_all(&header)?;
                file.write_all(command)?;
            }
        }
        self.records += 1;
        self.bytes += (RECORD_HEADER + command.len()) as u64;
        Ok(())
    }

    /// Drops every command.
    pub fn clear(&mut self) -> io::Result<()> {
        self.records = 0;
        self.bytes = 0;
        match &mut self.place {
            // A new vector, not `clear`: the memory goes back.
            Place::Memory(bytes) => *bytes = Vec::new(),
            Place::File { .. } => self.empty_file()?,
        }
        Ok(())
    }

    /// Drops the commands before `mark`, keeping the ones added since. After an error the log
    /// is of no use until `clear`.
    pub fn drop_before(&mut self, mark: ReplayMark) -> io::Result<()> {
        if mark.records > self.records || mark.bytes > self.bytes {
            return Err(io::Error::other("a mark beyond the end of the replay log"));
        }
        match &mut self.place {
            Place::Memory(bytes) => drop(bytes.drain(..mark.bytes as usize)),
            Place::File { file, .. } => {
                // What is kept was written while a snapshot was saved: little, so it is moved
                // to the front through memory.
                file.flush()?;
                let file = file.get_mut();
                file.seek(SeekFrom::Start(mark.bytes))?;
                let mut kept = Vec::new();
                file.read_to_end(&mut kept)?;
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                file.write_all(&kept)?;
            }
        }
        self.records -= mark.records;
        self.bytes -= mark.bytes;
        Ok(())
    }

    /// Calls `apply` with each command in order; stops at its first error.
    pub fn replay<E>(
        &mut self,
        mut apply: impl FnMut(ApplyContext, &[u8]) -> Result<(), E>,
    ) -> Result<(), ReplayError<E>> {
        let end = self.bytes;
        let mut reader: Box<dyn Read + '_> = match &mut self.place {
            Place::Memory(bytes) => Box::new(&bytes[..]),
            Place::File { file, .. } => {
                file.flush().map_err(ReplayError::Read)?;
                let file = file.get_mut();
                file.seek(SeekFrom::Start(0)).map_err(ReplayError::Read)?;
                Box::new(io::BufReader::with_capacity(WRITE_BUFFER, file).take(end))
            }
        };
        let mut command = Vec::new();
        for _ in 0..self.records {
            let mut header = [0; RECORD_HEADER];
            reader.read_exact(&mut header).map_err(ReplayError::Read)?;
            let field = |at: usize, len: usize| {
                let mut bytes = [0; 8];
                bytes[..len].copy_from_slice(&header[at..at + len]);
                u64::from_le_bytes(bytes)
            };
            let ctx = ApplyContext {
                index: field(0, 8),
                position: field(8, 4) as u32,
                term: field(12, 8),
                timestamp_ms: field(20, 8),
            };
            command.resize(field(28, 4) as usize, 0);
            reader.read_exact(&mut command).map_err(ReplayError::Read)?;
            apply(ctx, &command).map_err(ReplayError::Apply)?;
        }
        drop(reader);
        if let Place::File { file, .. } = &mut self.place {
            file.get_mut()
                .seek(SeekFrom::Start(end))
                .map_err(ReplayError::Read)?;
        }
        Ok(())
    }

    /// Empties the file; what its buffer holds is dropped, not written.
    fn empty_file(&mut self) -> io::Result<()> {
        let place = std::mem::replace(&mut self.place, Place::Memory(Vec::new()));
        let Place::File {
            file: writer,
            keep_free,
            ..
        } = place
        else {
            self.place = place;
            return Ok(());
        };
        let (mut file, _unwritten) = writer.into_parts();
        let emptied = (file.set_len(0)).and_then(|()| file.seek(SeekFrom::Start(0)).map(drop));
        self.place = Place::File {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            keep_free,
            unchecked: 0,
        };
        emptied
    }
}

/// An error if the disk of `file` has less than `keep_free` bytes free.
fn check_free(file: &File, keep_free: u64) -> io::Result<()> {
    let stat = rustix::fs::fstatvfs(file)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < keep_free {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{} MiB free on the data dir's disk, under the {} MiB kept free",
                free >> 20,
                keep_free >> 20
            ),
        ));
    }
    Ok(())
}

/// Why a replay stopped.
#[derive(Debug)]
pub enum ReplayError<E> {
    /// The log could not be read back.
    Read(io::Error),
    /// `apply` failed.
    Apply(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(index: u64) -> ApplyContext {
        ApplyContext {
            index,
            position: (index % 3) as u32,
            term: index / 10 + 1,
            timestamp_ms: index * 7,
        }
    }

    fn command(index: u64) -> Vec<u8> {
        vec![index as u8; (index as usize * 37) % 300]
    }

    fn replayed(log: &mut ReplayLog) -> Vec<(ApplyContext, Vec<u8>)> {
        let mut all = Vec::new();
        log.replay(|ctx, command| {
            all.push((ctx, command.to_vec()));
            Ok::<_, ()>(())
        })
        .unwrap();
        all
    }

    fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(ApplyContext, Vec<u8>)> {
        range.map(|i| (ctx(i), command(i))).collect()
    }

    /// The same checks for both places.
    fn holds_commands_in_order(mut log: ReplayLog) {
        for i in 1..=500 {
            log.push(ctx(i), &command(i)).unwrap();
        }
        assert_eq!(log.len(), 500);
        assert_eq!(replayed(&mut log), expected(1..=500));
        // Replaying leaves it as it was, and it goes on from its end.
        let mark = log.mark();
        for i in 501..=600 {
            log.push(ctx(i), &command(i)).unwrap();
        }
        assert_eq!(replayed(&mut log), expected(1..=600));
        log.drop_before(mark).unwrap();
        assert_eq!(log.len(), 100);
        assert_eq!(replayed(&mut log), expected(501..=600));
        log.push(ctx(601), &command(601)).unwrap();
        assert_eq!(replayed(&mut log), expected(501..=601));
        let bytes: u64 = (501..=601)
            .map(|i| (RECORD_HEADER + command(i).len()) as u64)
            .sum();
        assert_eq!(log.bytes(), bytes);
        log.clear().unwrap();
        assert!(log.is_empty());
        assert_eq!(replayed(&mut log), Vec::new());
        log.push(ctx(700), &command(700)).unwrap();
        assert_eq!(replayed(&mut log), expected(700..=700));
        assert!(
            log.drop_before(ReplayMark {
                records: 2,
                bytes: 1
            })
            .is_err()
        );
    }

    #[test]
    fn a_log_in_memory_holds_commands_in_order() {
        holds_commands_in_order(ReplayLog::in_memory());
    }

    #[test]
    fn a_log_in_a_file_holds_commands_in_order_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        holds_commands_in_order(ReplayLog::in_file(dir.path(), 0).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_log_in_a_file_leaves_the_disk_its_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let error = ReplayLog::in_file(dir.path(), u64::MAX).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
        let stat = rustix::fs::statvfs(dir.path()).unwrap();
        let free = stat.f_bavail * stat.f_frsize;
        // Room for about 2 MiB more. (Other processes may write meanwhile: creating the log
        // may be refused already, and pushes go well past 2 MiB.)
        let refused = match ReplayLog::in_file(dir.path(), free.saturating_sub(2 << 20)) {
            Err(e) => e,
            Ok(mut log) => {
                let command = vec![1; 64 << 10];
                let refused = (0..256).find_map(|i| log.push(ctx(i), &command).err());
                refused.expect("refused once the disk nears its free space")
            }
        };
        assert_eq!(refused.kind(), io::ErrorKind::StorageFull, "{refused}");
    }

    #[test]
    fn a_replay_stops_at_the_first_error() {
        let mut log = ReplayLog::in_memory();
        for i in 1..=5 {
            log.push(ctx(i), &command(i)).unwrap();
        }
        let mut seen = 0;
        let stopped = log.replay(|ctx, _| {
            seen += 1;
            if ctx.index == 3 {
                Err("trapped")
            } else {
                Ok(())
            }
        });
        assert!(matches!(stopped, Err(ReplayError::Apply("trapped"))));
        assert_eq!(seen, 3);
    }
}
