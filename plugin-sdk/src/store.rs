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

    /// The whole state as bytes.
    fn snapshot(&self) -> Vec<u8> {
        <Bincode as Codec<Self>>::encode(self)
    }

    /// A store rebuilt from [`Store::snapshot`]'s bytes.
    fn restore(snapshot: &[u8]) -> Result<Self, String> {
        <Bincode as Codec<Self>>::decode(snapshot)
    }
}

/// A store that handles the raw bytes of commands, queries and snapshots itself.
///
/// The contract is that of [`Store`]; the host sees exactly these bytes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a RiteRaft raw store",
    label = "this type must implement `riteraft_plugin_sdk::RawStore`",
    note = "use `export_store!` for a type that implements the typed `Store` trait"
)]
pub trait RawStore: Default + 'static {
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
        self.0.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = S::restore(snapshot)?;
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
