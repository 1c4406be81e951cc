//! A snapshot on its way to disk in pieces: the store's state streams from the consensus
//! thread to the thread that writes the file, so that a large store's state is never held in
//! the host's memory whole (it already fills the plugin's).

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::Bytes;
use raft::eraftpb::{Snapshot, SnapshotMetadata};

use super::StorageError;

/// Pieces of a tail that may wait between the two threads: with [`TailWriter`]'s 1 MiB
/// pieces, at most 4 MiB in flight, and a slow disk makes the gathering wait.
const PIECES_IN_FLIGHT: usize = 4;

/// Bytes a [`TailWriter`] gathers before it hands a piece over: large enough that the hand-off
/// costs nothing against the copy, small enough to bound what is in flight.
const PIECE_BYTES: usize = 1 << 20;

/// What comes down a snapshot's tail.
pub enum TailPiece {
    /// The next bytes.
    Bytes(Bytes),
    /// The tail is whole. A tail whose sender goes away without this was abandoned (the
    /// state could not be gathered), and the snapshot is not saved.
    End,
}

/// One snapshot for a [`super::SnapshotSaver`]. Its data is `head(tail length)` followed by
/// the tail, which arrives in pieces: the head (the encoding of everything else, which ends
/// with the tail's length) can only be made once the tail is whole.
pub struct SnapshotStream {
    /// Where the snapshot stands.
    pub metadata: SnapshotMetadata,
    /// The data's head, given the tail's length.
    pub head: Box<dyn FnOnce(u64) -> Vec<u8> + Send>,
    /// The data's tail.
    pub tail: Receiver<TailPiece>,
}

impl SnapshotStream {
    /// A stream whose tail a [`TailWriter`] writes, and that a [`TailEnd`] says is whole (two
    /// parts, so that the writer can be handed to whatever gathers the state while the caller
    /// keeps the word on whether it succeeded).
    pub fn new(
        metadata: SnapshotMetadata,
        head: Box<dyn FnOnce(u64) -> Vec<u8> + Send>,
    ) -> (Self, TailWriter, TailEnd) {
        let (sender, tail) = sync_channel(PIECES_IN_FLIGHT);
        let end = TailEnd(sender.clone());
        let writer = TailWriter {
            sender: Some(sender),
            piece: Vec::new(),
        };
        let stream = Self {
            metadata,
            head,
            tail,
        };
        (stream, writer, end)
    }

    /// A stream of a snapshot whose data is all there already (one piece, no head).
    pub fn whole(mut snapshot: Snapshot) -> Self {
        let (sender, tail) = sync_channel(2);
        let data = std::mem::take(&mut snapshot.data);
        // The receiver is right here: neither send can fail or block.
        let _ = sender.send(TailPiece::Bytes(data));
        let _ = sender.send(TailPiece::End);
        Self {
            metadata: snapshot.take_metadata(),
            head: Box::new(|_| Vec::new()),
            tail,
        }
    }

    /// Each piece of the tail in turn, with an error if the tail was abandoned.
    pub fn for_each_piece(
        &self,
        mut piece: impl FnMut(&[u8]) -> Result<(), StorageError>,
    ) -> Result<u64, StorageError> {
        let mut length = 0u64;
        loop {
            match self.tail.recv() {
                Ok(TailPiece::Bytes(bytes)) => {
                    length += bytes.len() as u64;
                    piece(&bytes)?;
                }
                Ok(TailPiece::End) => return Ok(length),
                Err(_) => return Err(abandoned()),
            }
        }
    }

    /// The whole snapshot, in memory (for stores that keep it there).
    pub fn collect(self) -> Result<Snapshot, StorageError> {
        let mut tail = Vec::new();
        let length = self.for_each_piece(|bytes| {
            tail.extend_from_slice(bytes);
            Ok(())
        })?;
        let mut data = (self.head)(length);
        data.extend_from_slice(&tail);
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        snapshot.set_metadata(self.metadata);
        Ok(snapshot)
    }
}

fn abandoned() -> StorageError {
    StorageError::Io(std::io::Error::other(
        "the snapshot's state was not gathered whole",
    ))
}

/// Says a snapshot's tail is whole, once its [`TailWriter`] is flushed. Dropped instead (and
/// the writer with it), it abandons the snapshot.
pub struct TailEnd(SyncSender<TailPiece>);

impl TailEnd {
    /// The tail is whole. (A saver that went away has its own error to give.)
    pub fn finish(self) {
        let _ = self.0.send(TailPiece::End);
    }
}

/// Writes a snapshot's tail in pieces of [`PIECE_BYTES`]; `flush` hands over the last one.
/// Once the saver stopped reading (it failed, e.g. on a full disk, and says so itself), what
/// is written is dropped: the gathering finishes as if nothing happened, and the snapshot is
/// not recorded.
pub struct TailWriter {
    /// `None` once the saver went away.
    sender: Option<SyncSender<TailPiece>>,
    piece: Vec<u8>,
}

impl TailWriter {
    fn hand_over(&mut self) {
        if self.piece.is_empty() {
            return;
        }
        let piece = std::mem::take(&mut self.piece);
        if let Some(sender) = &self.sender
            && sender.send(TailPiece::Bytes(piece.into())).is_err()
        {
            self.sender = None;
        }
    }
}

impl Write for TailWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.sender.is_none() {
            return Ok(bytes.len());
        }
        if self.piece.capacity() == 0 {
            self.piece.reserve_exact(PIECE_BYTES);
        }
        let room = PIECE_BYTES - self.piece.len();
        let taken = bytes.len().min(room);
        self.piece.extend_from_slice(&bytes[..taken]);
        if self.piece.len() == PIECE_BYTES {
            self.hand_over();
        }
        Ok(taken)
    }

    /// Hands over the piece begun (the tail goes on until [`TailEnd::finish`]).
    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_arrives_in_bounded_pieces_after_its_head() {
        let metadata = SnapshotMetadata {
            index: 7,
            ..Default::default()
        };
        let (stream, mut writer, end) =
            SnapshotStream::new(metadata, Box::new(|length| length.to_le_bytes().to_vec()));
        let tail: Vec<u8> = (0..PIECE_BYTES * 2 + 5).map(|i| i as u8).collect();
        let collected = std::thread::scope(|scope| {
            let collector = scope.spawn(|| stream.collect());
            for part in tail.chunks(1000) {
                writer.write_all(part).unwrap();
            }
            writer.flush().unwrap();
            end.finish();
            collector.join().unwrap().unwrap()
        });
        assert_eq!(collected.get_metadata().index, 7);
        let (head, rest) = collected.data.split_at(8);
        assert_eq!(head, (tail.len() as u64).to_le_bytes());
        assert_eq!(rest, &tail[..]);
    }

    #[test]
    fn a_tail_dropped_unfinished_is_abandoned() {
        let (stream, mut writer, end) =
            SnapshotStream::new(Default::default(), Box::new(|_| vec![]));
        writer.write_all(b"part of a state").unwrap();
        drop((writer, end));
        let error = stream.collect().unwrap_err();
        assert!(error.to_string().contains("not gathered whole"), "{error}");
    }

    #[test]
    fn writing_goes_on_quietly_once_the_saver_is_gone() {
        let (stream, mut writer, end) =
            SnapshotStream::new(Default::default(), Box::new(|_| vec![]));
        drop(stream);
        let big = vec![1; PIECE_BYTES * (PIECES_IN_FLIGHT + 2)];
        writer.write_all(&big).unwrap();
        writer.flush().unwrap();
        end.finish();
    }
}
