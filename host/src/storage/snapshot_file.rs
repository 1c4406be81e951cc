//! The snapshot files of a [`super::DiskLogStore`]: written as their pieces arrive, read back
//! whole, or piece by piece for a follower ([`open_data`]).
//!
//! Format 2, written since snapshots stream: a magic line, the sha256 of everything after it,
//! then the data's tail (the store's state, as it came), the data's head, the snapshot's
//! metadata (protobuf), and the lengths of those three (u64 little-endian each). The head comes
//! after the tail because it ends with the tail's length, known only once the tail is written.
//! Format 1 (a magic line, the sha256 of the rest, the raft snapshot as protobuf) is still read,
//! so a node upgraded in place resumes from its data dir.

use std::fs::{self, File};
use std::io::{BufWriter, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{Snapshot, SnapshotMetadata};
use sha2::{Digest, Sha256};

use super::{SnapshotStream, StorageError};

/// First line of a snapshot file of format 1 (read only).
const MAGIC_1: &[u8] = b"RITERAFT-SNAPSHOT-1\n";
/// First line of a snapshot file of format 2.
const MAGIC_2: &[u8] = b"RITERAFT-SNAPSHOT-2\n";
/// Bytes of a format 2 file's trailer: three lengths.
const TRAILER: usize = 24;
/// A checksum's bytes.
const CHECKSUM: usize = 32;

/// What a saved snapshot file holds, besides its data.
pub struct Written {
    pub metadata: SnapshotMetadata,
    /// Bytes of the snapshot's data (head and tail).
    pub data_bytes: u64,
}

/// Writes `stream` durably at `path` (temp file, fsync, rename, fsync of the directory).
/// Touches no other file, so it may run beside the store's own writes. On failure (e.g. the
/// disk is full, or the stream was abandoned) the temp file is removed, giving its space back.
pub fn save(dir: &Path, path: &Path, stream: SnapshotStream) -> Result<Written, StorageError> {
    let temp = path.with_extension("tmp");
    let written = match write(&temp, stream) {
        Ok(written) => written,
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
    };
    fs::rename(&temp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(written)
}

/// Writes and syncs one file of format 2 at `path`. The pieces go straight into the file
/// through the hasher; the checksum, which comes first, is filled in afterwards.
fn write(path: &Path, stream: SnapshotStream) -> Result<Written, StorageError> {
    let mut file = File::create(path)?;
    file.write_all(MAGIC_2)?;
    file.write_all(&[0; CHECKSUM])?;
    let mut body = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, &mut file),
        hasher: Sha256::new(),
    };
    let tail_len = stream.for_each_piece(|piece| Ok(body.write_all(piece)?))?;
    let SnapshotStream { metadata, head, .. } = stream;
    let head = head(tail_len);
    let encoded_metadata = metadata.write_to_bytes().map_err(super::disk::io_error)?;
    body.write_all(&head)?;
    body.write_all(&encoded_metadata)?;
    for length in [tail_len, head.len() as u64, encoded_metadata.len() as u64] {
        body.write_all(&length.to_le_bytes())?;
    }
    let HashingWriter { inner, hasher } = body;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(MAGIC_2.len() as u64))?;
    file.write_all(&hasher.finalize())?;
    file.sync_all()?;
    Ok(Written {
        metadata,
        data_bytes: tail_len + head.len() as u64,
    })
}

/// Opens the snapshot file at `path` and reads its magic line (of either format: both are
/// as long).
fn open(path: &Path) -> Result<(File, [u8; MAGIC_2.len()]), StorageError> {
    let mut file = File::open(path)?;
    let mut magic = [0; MAGIC_2.len()];
    file.read_exact(&mut magic)
        .map_err(|_| damaged_file(path, "not a RiteRaft snapshot"))?;
    Ok((file, magic))
}

/// The error for the snapshot file at `path`, damaged as `why` says.
fn damaged_file(path: &Path, why: &str) -> StorageError {
    super::disk::damaged(format!("snapshot file {}: {why}", path.display()))
}

/// Reads and checks one snapshot file, of either format.
pub fn read(path: &Path) -> Result<Snapshot, StorageError> {
    let damaged = |why: &str| damaged_file(path, why);
    let (mut file, magic) = open(path)?;
    if magic == MAGIC_1 {
        let mut rest = Vec::new();
        file.read_to_end(&mut rest)?;
        if rest.len() < CHECKSUM {
            return Err(damaged("truncated"));
        }
        let (checksum, body) = rest.split_at(CHECKSUM);
        if Sha256::digest(body).as_slice() != checksum {
            return Err(damaged("checksum mismatch (the file is damaged)"));
        }
        return Snapshot::parse_from_bytes(body).map_err(|e| damaged(&e.to_string()));
    }
    if magic != MAGIC_2 {
        return Err(damaged("not a RiteRaft snapshot"));
    }
    let layout = Layout::of(&mut file, damaged)?;
    // Read into the data's final place (head, then tail), hashing in the file's order.
    let (tail_len, head_len) = (layout.tail_len as usize, layout.head_len as usize);
    let mut data = vec![0; head_len + tail_len];
    let mut encoded_metadata = vec![0; layout.metadata_len as usize];
    file.seek(SeekFrom::Start(BODY))?;
    file.read_exact(&mut data[head_len..])?;
    file.read_exact(&mut data[..head_len])?;
    file.read_exact(&mut encoded_metadata)?;
    let mut hasher = Sha256::new();
    hasher.update(&data[head_len..]);
    hasher.update(&data[..head_len]);
    hasher.update(&encoded_metadata);
    hasher.update(layout.trailer);
    if hasher.finalize().as_slice() != layout.checksum {
        return Err(damaged("checksum mismatch (the file is damaged)"));
    }
    let metadata = SnapshotMetadata::parse_from_bytes(&encoded_metadata)
        .map_err(|e| damaged(&e.to_string()))?;
    let mut snapshot = Snapshot {
        data: data.into(),
        ..Default::default()
    };
    snapshot.set_metadata(metadata);
    Ok(snapshot)
}

/// A snapshot file's data, to be read piece by piece: what a leader sends a follower, without
/// holding a large store's state in memory. Its metadata and the data's length come with it.
pub struct SnapshotContents {
    pub metadata: SnapshotMetadata,
    pub len: u64,
    pub reader: Box<dyn Read + Send>,
}

/// Opens the data of the snapshot file at `path`, checked first against the file's checksum
/// in one pass over it (so nothing damaged is ever sent), then read as it is needed.
pub fn open_data(path: &Path) -> Result<SnapshotContents, StorageError> {
    let damaged = |why: &str| damaged_file(path, why);
    let (mut file, magic) = open(path)?;
    if magic != MAGIC_2 {
        // Format 1 keeps the data inside a protobuf message: read it whole.
        let mut snapshot = read(path)?;
        let data = std::mem::take(&mut snapshot.data);
        return Ok(SnapshotContents {
            metadata: snapshot.take_metadata(),
            len: data.len() as u64,
            reader: Box::new(Cursor::new(data)),
        });
    }
    let layout = Layout::of(&mut file, damaged)?;
    let mut hasher = HashingWriter {
        inner: std::io::sink(),
        hasher: Sha256::new(),
    };
    file.seek(SeekFrom::Start(BODY))?;
    std::io::copy(
        &mut (&mut file).take(layout.tail_len + layout.head_len),
        &mut hasher,
    )?;
    let mut encoded_metadata = vec![0; layout.metadata_len as usize];
    file.read_exact(&mut encoded_metadata)?;
    hasher.write_all(&encoded_metadata)?;
    hasher.write_all(&layout.trailer)?;
    if hasher.hasher.finalize().as_slice() != layout.checksum {
        return Err(damaged("checksum mismatch (the file is damaged)"));
    }
    let metadata = SnapshotMetadata::parse_from_bytes(&encoded_metadata)
        .map_err(|e| damaged(&e.to_string()))?;
    let head = (BODY + layout.tail_len, layout.head_len);
    let tail = (BODY, layout.tail_len);
    Ok(SnapshotContents {
        metadata,
        len: layout.head_len + layout.tail_len,
        reader: Box::new(RegionsReader {
            file,
            regions: [head, tail],
            region: 0,
        }),
    })
}

/// Where a format 2 file's data starts: after its magic line and checksum.
const BODY: u64 = (MAGIC_2.len() + CHECKSUM) as u64;

/// What a format 2 file's trailer and checksum say.
struct Layout {
    checksum: [u8; CHECKSUM],
    trailer: [u8; TRAILER],
    tail_len: u64,
    head_len: u64,
    metadata_len: u64,
}

impl Layout {
    /// Reads them from `file`; `damaged` makes the error that says how the file is damaged.
    fn of(file: &mut File, damaged: impl Fn(&str) -> StorageError) -> Result<Layout, StorageError> {
        let file_len = file.metadata()?.len();
        let fixed = BODY + TRAILER as u64;
        if file_len < fixed {
            return Err(damaged("truncated"));
        }
        let mut checksum = [0; CHECKSUM];
        file.seek(SeekFrom::Start(MAGIC_2.len() as u64))?;
        file.read_exact(&mut checksum)?;
        let mut trailer = [0; TRAILER];
        file.seek(SeekFrom::Start(file_len - TRAILER as u64))?;
        file.read_exact(&mut trailer)?;
        let length =
            |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().expect("8 bytes"));
        let (tail_len, head_len, metadata_len) = (length(0), length(8), length(16));
        let lengths_fit = tail_len
            .checked_add(head_len)
            .and_then(|sum| sum.checked_add(metadata_len))
            .and_then(|sum| sum.checked_add(fixed))
            == Some(file_len);
        if !lengths_fit {
            return Err(damaged("its lengths do not add up (the file is damaged)"));
        }
        Ok(Layout {
            checksum,
            trailer,
            tail_len,
            head_len,
            metadata_len,
        })
    }
}

/// Reads regions of a file one after the other, each from its own offset (`pread`, so no
/// shared file position to keep right).
struct RegionsReader {
    file: File,
    /// (offset, length) of each region; a region is shrunk from the front as it is read.
    regions: [(u64, u64); 2],
    region: usize,
}

impl Read for RegionsReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some((offset, left)) = self.regions.get_mut(self.region) {
            if *left == 0 {
                self.region += 1;
                continue;
            }
            let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            let read = self.file.read_at(&mut buf[..want], *offset)?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            *offset += read as u64;
            *left -= read as u64;
            return Ok(read);
        }
        Ok(0)
    }
}

/// Writes through to `inner` and hashes what it writes.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(index: u64, data: &[u8]) -> Snapshot {
        let mut snapshot = Snapshot {
            data: data.to_vec().into(),
            ..Default::default()
        };
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = 2;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snapshot
    }

    #[test]
    fn a_streamed_snapshot_reads_back_as_its_head_then_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let metadata = snapshot(9, b"").take_metadata();
        let (stream, mut writer, end) = SnapshotStream::new(
            metadata.clone(),
            Box::new(|tail_len| format!("head:{tail_len}:").into_bytes()),
        );
        let tail = vec![5u8; 3 << 20];
        let saved = std::thread::scope(|scope| {
            let saver = scope.spawn(|| save(dir.path(), &path, stream));
            writer.write_all(&tail).unwrap();
            writer.flush().unwrap();
            end.finish();
            saver.join().unwrap().unwrap()
        });
        let head = format!("head:{}:", tail.len()).into_bytes();
        assert_eq!(saved.data_bytes, (head.len() + tail.len()) as u64);
        let read = read(&path).unwrap();
        assert_eq!(read.get_metadata(), &metadata);
        assert_eq!(&read.data[..head.len()], &head[..]);
        assert!(read.data[head.len()..] == tail[..]);
        assert_eq!(read_by_pieces(&path), read);
    }

    /// The snapshot at `path` as `open_data` gives it, read in small odd-sized pieces.
    fn read_by_pieces(path: &Path) -> Snapshot {
        let mut contents = open_data(path).unwrap();
        let mut data = Vec::new();
        let mut piece = [0; 1000];
        loop {
            let read = contents.reader.read(&mut piece).unwrap();
            if read == 0 {
                break;
            }
            data.extend_from_slice(&piece[..read]);
        }
        assert_eq!(data.len() as u64, contents.len);
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        snapshot.set_metadata(contents.metadata.clone());
        snapshot
    }

    #[test]
    fn an_abandoned_stream_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let (stream, mut writer, end) =
            SnapshotStream::new(SnapshotMetadata::default(), Box::new(|_| Vec::new()));
        writer.write_all(&[1; 100]).unwrap();
        drop((writer, end));
        assert!(save(dir.path(), &path, stream).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_of_format_1_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.snap");
        let body = snapshot(4, b"old state").write_to_bytes().unwrap();
        let mut file = MAGIC_1.to_vec();
        file.extend_from_slice(&Sha256::digest(&body));
        file.extend_from_slice(&body);
        fs::write(&path, file).unwrap();
        assert_eq!(read(&path).unwrap(), snapshot(4, b"old state"));
        assert_eq!(read_by_pieces(&path), snapshot(4, b"old state"));
    }

    #[test]
    fn damage_anywhere_in_a_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        save(
            dir.path(),
            &path,
            SnapshotStream::whole(snapshot(3, b"0123456789")),
        )
        .unwrap();
        let whole = fs::read(&path).unwrap();
        for at in 0..whole.len() {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x40;
            fs::write(&path, &bytes).unwrap();
            assert!(read(&path).is_err(), "a flipped bit at {at} went unnoticed");
            assert!(
                open_data(&path).is_err(),
                "a flipped bit at {at} went unnoticed when opened to be sent"
            );
        }
        fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        assert!(read(&path).is_err(), "a truncated file went unnoticed");
        assert!(open_data(&path).is_err(), "a truncated file was opened");
    }
}
