//! The two store traits a plugin implements, and the glue that runs them behind the WIT exports.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Bincode, Codec};

/// Where an entry sits in the replicated log, and when the leader proposed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyContext {
    /// The entry's raft log index; strictly increasing from one `apply` to the next.
    pub index: u64,
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
/// - The default `snapshot`/`restore` serialize the whole store with bincode; override them to
///   keep a versioned format of your own.
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

    /// The format of this store's snapshots. Bump it whenever `snapshot` writes a different
    /// layout, and teach [`Store::migrate`] to read the previous ones: when a cluster switches
    /// to new code (`riteraft deploy`), the new code restores the old code's snapshot.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The whole state as bytes (the SDK stamps them with [`Store::SNAPSHOT_VERSION`]).
    fn snapshot(&self) -> Vec<u8> {
        <Bincode as Codec<Self>>::encode(self)
    }

    /// A store rebuilt from [`Store::snapshot`]'s bytes of this same snapshot version.
    fn restore(snapshot: &[u8]) -> Result<Self, String> {
        <Bincode as Codec<Self>>::decode(snapshot)
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
        let store = self.0.snapshot();
        let version = S::SNAPSHOT_VERSION.to_le_bytes();
        // Exactly sized: see `Bincode::encode` on why a store avoids growing large buffers.
        let mut bytes = Vec::with_capacity(SNAPSHOT_MAGIC.len() + version.len() + store.len());
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&version);
        bytes.extend_from_slice(&store);
        bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (version, data) = match snapshot.strip_prefix(SNAPSHOT_MAGIC) {
            Some(rest) if rest.len() >= 4 => {
                let (version, data) = rest.split_at(4);
                let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
                (version, data)
            }
            Some(_) => return Err("truncated snapshot".into()),
            // Not stamped: written by a raw store, or by hand. Version 0 for `migrate`.
            None => (0, snapshot),
        };
        self.0 = if version == S::SNAPSHOT_VERSION {
            S::restore(data)?
        } else if version < S::SNAPSHOT_VERSION {
            S::migrate(version, data)?
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
    let mut fresh = S::default();
    match catch_unwind(AssertUnwindSafe(|| fresh.restore(snapshot))) {
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
