//! The two store traits a plugin implements, and the glue that runs them behind the WIT exports.

use std::any::Any;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Bincode, Codec};

/// Where a command sits in the replicated log, and when the leader proposed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyContext {
    /// The raft log index of the command's entry. A leader may pack several commands into one
    /// entry: they share it.
    pub index: u64,
    /// The command's place within its entry, from 0: `(index, position)` is strictly increasing
    /// from one `apply` to the next, and names the command.
    pub position: u32,
    /// The raft term in which the entry was proposed.
    pub term: u64,
    /// Milliseconds since the Unix epoch, stamped by the leader at proposal time. The same on
    /// every replica: use it instead of a clock.
    pub timestamp_ms: u64,
}

/// A replicated store with typed commands and queries.
///
/// Contract:
/// - `apply` runs once per committed command, in log order, on every replica. It must be
///   deterministic: the same state and command give the same new state and answer everywhere.
/// - `Err` from `apply` is an answer, not a failure: it is returned to the client that proposed
///   the command. Leave the state unchanged when you return it.
/// - `query` must not change anything observable; it may run on any replica, any number of times.
/// - A panic is reported to the client as an error, and the host rebuilds the store from its last
///   snapshot, so a command that panics has no effect.
/// - The default `write_snapshot`/`read_snapshot` stream the whole store as bincode; override
///   them to keep a format of your own.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a RiteRaft store",
    label = "this type must implement `riteraft_plugin_sdk::Store`",
    note = "implement `Store` (typed) for it, or `RawStore` and use `export_raw_store!`"
)]
pub trait Store: Default + Serialize + DeserializeOwned + 'static {
    /// How commands, queries and answers are encoded: [`Bincode`] or [`crate::Text`].
    type Codec: Codec<Self::Command>
        + Codec<Self::Output>
        + Codec<Self::Query>
        + Codec<Self::QueryOutput>;
    /// What a client proposes.
    type Command;
    /// What `apply` answers.
    type Output;
    /// What a client asks.
    type Query;
    /// What `query` answers.
    type QueryOutput;

    /// Applies one committed command.
    fn apply(&mut self, ctx: &ApplyContext, command: Self::Command)
    -> Result<Self::Output, String>;

    /// Answers a read-only query.
    fn query(&self, query: Self::Query) -> Result<Self::QueryOutput, String>;

    /// A version of this store's code for people, shown by `riteraft status` (e.g.
    /// `concat!("kv ", env!("CARGO_PKG_VERSION"))`).
    const VERSION: &'static str = "";

    /// The format of this store's snapshots. Bump it whenever `write_snapshot` writes another
    /// layout, and teach [`Store::migrate`] to read the previous ones: when a cluster switches
    /// to new code (`riteraft deploy`), the new code restores the old code's snapshot.
    const SNAPSHOT_VERSION: u32 = 1;

    /// Writes the whole state to `out` (after the SDK's stamp of [`Store::SNAPSHOT_VERSION`]).
    /// `out` takes it piece by piece, so a large store never holds its serialized form in its
    /// own memory; the default streams the store as bincode.
    fn write_snapshot(&self, out: &mut dyn Write) -> Result<(), String> {
        bincode::serde::encode_into_std_write(self, &mut { out }, Bincode::config())
            .map(drop)
            .map_err(|e| format!("cannot write the snapshot: {e}"))
    }

    /// A store rebuilt from [`Store::write_snapshot`]'s bytes of this same snapshot version,
    /// read piece by piece from `input`.
    fn read_snapshot(input: &mut dyn Read) -> Result<Self, String> {
        let store = bincode::serde::decode_from_std_read(&mut &mut *input, Bincode::config())
            .map_err(|e| format!("cannot read the snapshot: {e}"))?;
        let mut rest = [0u8; 1];
        match input.read(&mut rest) {
            Ok(0) => Ok(store),
            Ok(_) => Err("the snapshot has bytes after the store's".into()),
            Err(e) => Err(format!("cannot read the snapshot: {e}")),
        }
    }

    /// A store rebuilt from a snapshot that an older version of the code wrote, in format
    /// `from` (< [`Store::SNAPSHOT_VERSION`]). The default refuses, which makes a deploy of
    /// this code fail cleanly (the old code keeps serving) rather than lose data.
    fn migrate(from: u32, snapshot: &[u8]) -> Result<Self, String> {
        let _ = snapshot;
        Err(format!(
            "this store reads snapshot format {} but was given format {from}, and has no \
             migration for it",
            Self::SNAPSHOT_VERSION
        ))
    }
}

/// First bytes of every snapshot the typed path writes, followed by the format version (u32,
/// little-endian) and the store's own bytes.
const SNAPSHOT_MAGIC: &[u8; 4] = b"RRS\x01";

/// A store that handles the raw bytes of commands, queries and snapshots itself.
///
/// The contract is that of [`Store`]; the host sees exactly these bytes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a RiteRaft raw store",
    label = "this type must implement `riteraft_plugin_sdk::RawStore`",
    note = "use `export_store!` for a type that implements the typed `Store` trait"
)]
pub trait RawStore: Default + 'static {
    /// A version of this store's code for people, shown by `riteraft status`.
    const VERSION: &'static str = "";

    /// Applies one committed entry.
    fn apply(&mut self, ctx: &ApplyContext, entry: &[u8]) -> Result<Vec<u8>, String>;
    /// Answers a read-only request.
    fn query(&self, request: &[u8]) -> Result<Vec<u8>, String>;
    /// The whole state as bytes.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with one from [`RawStore::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;

    /// Writes [`RawStore::snapshot`]'s bytes to `out`; override to stream them instead of
    /// building them in memory first.
    fn write_snapshot(&self, out: &mut dyn Write) -> Result<(), String> {
        out.write_all(&self.snapshot())
            .map_err(|e| format!("cannot write the snapshot: {e}"))
    }

    /// [`RawStore::restore`] from bytes read from `input`; override to read them piece by
    /// piece.
    fn read_snapshot(&mut self, input: &mut dyn Read) -> Result<(), String> {
        let mut snapshot = Vec::new();
        input
            .read_to_end(&mut snapshot)
            .map_err(|e| format!("cannot read the snapshot: {e}"))?;
        self.restore(&snapshot)
    }
}

/// Runs a typed [`Store`] as a [`RawStore`] by decoding and encoding with its codec.
#[derive(Debug, Default)]
pub struct Typed<S>(pub S);

impl<S: Store> RawStore for Typed<S> {
    const VERSION: &'static str = S::VERSION;

    fn apply(&mut self, ctx: &ApplyContext, entry: &[u8]) -> Result<Vec<u8>, String> {
        let command = <S::Codec as Codec<S::Command>>::decode(entry)?;
        let output = self.0.apply(ctx, command)?;
        Ok(<S::Codec as Codec<S::Output>>::encode(&output))
    }

    fn query(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let query = <S::Codec as Codec<S::Query>>::decode(request)?;
        let output = self.0.query(query)?;
        Ok(<S::Codec as Codec<S::QueryOutput>>::encode(&output))
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write_snapshot(&mut bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.read_snapshot(&mut &snapshot[..])
    }

    fn write_snapshot(&self, out: &mut dyn Write) -> Result<(), String> {
        let mut stamp = SNAPSHOT_MAGIC.to_vec();
        stamp.extend_from_slice(&S::SNAPSHOT_VERSION.to_le_bytes());
        out.write_all(&stamp)
            .map_err(|e| format!("cannot write the snapshot: {e}"))?;
        self.0.write_snapshot(out)
    }

    fn read_snapshot(&mut self, input: &mut dyn Read) -> Result<(), String> {
        let read_error = |e: std::io::Error| format!("cannot read the snapshot: {e}");
        let mut stamp = Vec::with_capacity(8);
        input.take(8).read_to_end(&mut stamp).map_err(read_error)?;
        let version = match stamp.strip_prefix(SNAPSHOT_MAGIC) {
            Some(version) if version.len() == 4 => {
                u32::from_le_bytes(version.try_into().expect("4 bytes"))
            }
            Some(_) => return Err("truncated snapshot".into()),
            // Not stamped: written by a raw store, or by hand. Version 0 for `migrate`.
            None => 0,
        };
        self.0 = if version == S::SNAPSHOT_VERSION {
            S::read_snapshot(input)?
        } else if version < S::SNAPSHOT_VERSION {
            // An older format: rare (once per upgrade), so read it whole for `migrate`.
            let mut data = if version == 0 { stamp } else { Vec::new() };
            input.read_to_end(&mut data).map_err(read_error)?;
            S::migrate(version, &data)?
        } else {
            return Err(format!(
                "the snapshot has format {version}, newer than this store's format {}: it was \
                 written by newer code",
                S::SNAPSHOT_VERSION
            ));
        };
        Ok(())
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Runs `f` on the store in `slot` (creating it on first use). A panic becomes `Err` where
/// unwinding exists (native tests); in wasm a panic aborts, the host sees a trap, and the
/// panic hook has already written the message to stderr for the host to report.
fn with_store<S: RawStore, R>(
    slot: &RefCell<Option<S>>,
    f: impl FnOnce(&mut S) -> Result<R, String>,
) -> Result<R, String> {
    let mut slot = slot.borrow_mut();
    let store = slot.get_or_insert_with(S::default);
    match catch_unwind(AssertUnwindSafe(|| f(store))) {
        Ok(result) => result,
        Err(payload) => Err(format!(
            "store panicked: {}",
            panic_message(payload.as_ref())
        )),
    }
}

/// The `apply` export.
pub fn apply<S: RawStore>(
    slot: &RefCell<Option<S>>,
    ctx: &ApplyContext,
    entry: &[u8],
) -> Result<Vec<u8>, String> {
    with_store(slot, |store| store.apply(ctx, entry))
}

/// The `query` export.
pub fn query<S: RawStore>(slot: &RefCell<Option<S>>, request: &[u8]) -> Result<Vec<u8>, String> {
    with_store(slot, |store| store.query(request))
}

/// The `snapshot` export. WIT gives `snapshot` no error channel, so a panic here aborts (in wasm
/// it is a trap the host reports).
pub fn snapshot<S: RawStore>(slot: &RefCell<Option<S>>) -> Vec<u8> {
    slot.borrow_mut().get_or_insert_with(S::default).snapshot()
}

/// The `restore` export: builds a fresh store, so nothing of the old state survives.
pub fn restore<S: RawStore>(slot: &RefCell<Option<S>>, snapshot: &[u8]) -> Result<(), String> {
    restore_with(slot, |fresh| fresh.restore(snapshot))
}

/// Size of the pieces a snapshot travels in between a wasm store and the host: large enough
/// that the calls cost nothing next to the copying, small against any store's memory.
#[cfg(target_arch = "wasm32")]
const SNAPSHOT_CHUNK: usize = 64 << 10;

/// The `snapshot` export in wasm: the bytes go to the host piece by piece through the
/// `snapshot-write` import, so the store never holds them whole; nothing is returned.
#[cfg(target_arch = "wasm32")]
pub fn snapshot_to_host<S: RawStore>(slot: &RefCell<Option<S>>) -> Vec<u8> {
    struct ToHost;
    impl Write for ToHost {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            crate::__bindings::snapshot_write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = std::io::BufWriter::with_capacity(SNAPSHOT_CHUNK, ToHost);
    let store = &mut slot.borrow_mut();
    let written = store
        .get_or_insert_with(S::default)
        .write_snapshot(&mut out)
        .and_then(|()| out.flush().map_err(|e| e.to_string()));
    // WIT gives `snapshot` no error channel: a failure is a trap, which the host reports.
    if let Err(e) = written {
        panic!("{e}");
    }
    Vec::new()
}

/// The `restore` export in wasm: an empty `snapshot` means the host offers it piece by piece
/// through the `snapshot-read` import.
#[cfg(target_arch = "wasm32")]
pub fn restore_from_host<S: RawStore>(
    slot: &RefCell<Option<S>>,
    snapshot: &[u8],
) -> Result<(), String> {
    struct FromHost;
    impl Read for FromHost {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let max = u32::try_from(buf.len().min(SNAPSHOT_CHUNK)).unwrap_or(u32::MAX);
            let chunk = crate::__bindings::snapshot_read(max);
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            Ok(n)
        }
    }
    if !snapshot.is_empty() {
        return restore(slot, snapshot);
    }
    let mut input = std::io::BufReader::with_capacity(SNAPSHOT_CHUNK, FromHost);
    restore_with(slot, |fresh| fresh.read_snapshot(&mut input))
}

/// Builds a fresh store with `fill` and puts it in `slot` if that succeeds.
fn restore_with<S: RawStore>(
    slot: &RefCell<Option<S>>,
    fill: impl FnOnce(&mut S) -> Result<(), String>,
) -> Result<(), String> {
    let mut fresh = S::default();
    match catch_unwind(AssertUnwindSafe(|| fill(&mut fresh))) {
        Ok(Ok(())) => {
            *slot.borrow_mut() = Some(fresh);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(payload) => Err(format!(
            "store panicked in restore: {}",
            panic_message(payload.as_ref())
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Default, Serialize, Deserialize)]
    struct V1 {
        total: u64,
    }

    #[derive(Default, Serialize, Deserialize)]
    struct V2 {
        total: u64,
        writes: u64,
    }

    impl Store for V1 {
        type Codec = Bincode;
        type Command = u64;
        type Output = u64;
        type Query = ();
        type QueryOutput = u64;
        const VERSION: &'static str = "counter 1";

        fn apply(&mut self, _: &ApplyContext, add: u64) -> Result<u64, String> {
            self.total += add;
            Ok(self.total)
        }

        fn query(&self, _: ()) -> Result<u64, String> {
            Ok(self.total)
        }
    }

    impl Store for V2 {
        type Codec = Bincode;
        type Command = u64;
        type Output = u64;
        type Query = ();
        type QueryOutput = (u64, u64);
        const SNAPSHOT_VERSION: u32 = 2;

        fn apply(&mut self, _: &ApplyContext, add: u64) -> Result<u64, String> {
            self.total += add;
            self.writes += 1;
            Ok(self.total)
        }

        fn query(&self, _: ()) -> Result<(u64, u64), String> {
            Ok((self.total, self.writes))
        }

        fn migrate(from: u32, snapshot: &[u8]) -> Result<Self, String> {
            match from {
                1 => {
                    let v1: V1 = <Bincode as Codec<V1>>::decode(snapshot)?;
                    Ok(V2 {
                        total: v1.total,
                        writes: 0,
                    })
                }
                _ => Err(format!("no migration from {from}")),
            }
        }
    }

    #[test]
    fn a_newer_store_migrates_an_older_snapshot() {
        let mut v1 = Typed(V1::default());
        v1.apply(
            &ApplyContext::default(),
            &<Bincode as Codec<u64>>::encode(&5),
        )
        .unwrap();
        let old = v1.snapshot();
        let mut v2 = Typed(V2::default());
        v2.restore(&old).unwrap();
        assert_eq!(v2.0.total, 5);
        // Same-version snapshots round-trip without migration.
        let mut again = Typed(V2::default());
        again.restore(&v2.snapshot()).unwrap();
        assert_eq!(again.0.total, 5);
    }

    #[test]
    fn an_older_store_refuses_a_newer_snapshot_and_default_migrate_refuses() {
        let v2 = Typed(V2 {
            total: 1,
            writes: 1,
        });
        let mut v1 = Typed(V1::default());
        let error = v1.restore(&v2.snapshot()).unwrap_err();
        assert!(error.contains("newer"), "{error}");
        // An unstamped (format 0) snapshot needs a migration V1 does not have.
        let error = v1.restore(b"raw bytes").unwrap_err();
        assert!(error.contains("no migration"), "{error}");
        assert_eq!(<Typed<V1> as RawStore>::VERSION, "counter 1");
    }
}
