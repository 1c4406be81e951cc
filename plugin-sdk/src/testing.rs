//! Unit-test a store natively with `cargo test`, through the same bytes the wasm path uses.
//!
//! ```ignore
//! let mut store = StoreHarness::<Counter>::new();
//! assert_eq!(store.apply(5), Ok(5));
//! assert_eq!(store.query(()), Ok(5));
//! let copy = store.reopen();   // snapshot -> restore round trip
//! ```

use std::cell::RefCell;

use crate::codec::Codec;
use crate::store::{self, ApplyContext, Store, Typed};

/// Drives a [`Store`] the way the host drives the plugin: every command, query and answer is
/// encoded with the store's codec and passed through the same glue as the wasm exports.
///
/// Like the host, a command that panics is reported as an error and has no effect: the harness
/// puts back the state from before the command.
#[derive(Debug)]
pub struct StoreHarness<S: Store> {
    /// The store, behind the same slot type the wasm exports use.
    slot: RefCell<Option<Typed<S>>>,
    /// The context the next `apply` gets; `index` counts up by one per command.
    next: ApplyContext,
}

impl<S: Store> Default for StoreHarness<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Store> StoreHarness<S> {
    /// A harness around `S::default()`.
    pub fn new() -> Self {
        Self {
            slot: RefCell::new(None),
            next: ApplyContext {
                index: 1,
                position: 0,
                term: 1,
                timestamp_ms: 0,
            },
        }
    }

    /// Sets the leader timestamp that the following commands carry.
    pub fn set_time_ms(&mut self, timestamp_ms: u64) {
        self.next.timestamp_ms = timestamp_ms;
    }

    /// Applies a command as the next log entry and decodes the answer.
    pub fn apply(&mut self, command: S::Command) -> Result<S::Output, String> {
        let bytes = <S::Codec as Codec<S::Command>>::encode(&command);
        let output = self.apply_bytes(&bytes)?;
        <S::Codec as Codec<S::Output>>::decode(&output)
    }

    /// Applies raw entry bytes as the next log entry, as a client sending garbage would.
    pub fn apply_bytes(&mut self, entry: &[u8]) -> Result<Vec<u8>, String> {
        let ctx = self.next;
        self.next.index += 1;
        let before = store::snapshot(&self.slot);
        let result = store::apply(&self.slot, &ctx, entry);
        if matches!(&result, Err(e) if e.starts_with("store panicked")) {
            store::restore(&self.slot, &before).expect("restoring the pre-command snapshot");
        }
        result
    }

    /// Runs a query and decodes the answer.
    pub fn query(&self, query: S::Query) -> Result<S::QueryOutput, String> {
        let bytes = <S::Codec as Codec<S::Query>>::encode(&query);
        let output = store::query(&self.slot, &bytes)?;
        <S::Codec as Codec<S::QueryOutput>>::decode(&output)
    }

    /// The store's snapshot bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        store::snapshot(&self.slot)
    }

    /// Replaces the state with one from a snapshot.
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        store::restore(&self.slot, snapshot)
    }

    /// A new harness restored from this one's snapshot, continuing at the same log position:
    /// what a replica that joins by snapshot would hold.
    pub fn reopen(&self) -> Self {
        let mut copy = Self::new();
        copy.next = self.next;
        copy.restore(&self.snapshot())
            .expect("a store must restore its own snapshot");
        copy
    }

    /// The store itself, for assertions on its fields.
    pub fn store(&self) -> std::cell::Ref<'_, S> {
        let mut slot = self.slot.borrow_mut();
        slot.get_or_insert_with(Typed::default);
        drop(slot);
        std::cell::Ref::map(self.slot.borrow(), |s| {
            &s.as_ref().expect("initialised just above").0
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::Bincode;

    #[derive(Default, Serialize, Deserialize)]
    struct Counter(u64);

    impl Store for Counter {
        type Codec = Bincode;
        type Command = u64;
        type Output = u64;
        type Query = ();
        type QueryOutput = u64;

        fn apply(&mut self, _ctx: &ApplyContext, add: u64) -> Result<u64, String> {
            self.0 = self.0.checked_add(add).ok_or("overflow")?;
            if add == 13 {
                panic!("unlucky");
            }
            Ok(self.0)
        }

        fn query(&self, _: ()) -> Result<u64, String> {
            Ok(self.0)
        }
    }

    #[test]
    fn applies_queries_and_reopens() {
        let mut h = StoreHarness::<Counter>::new();
        assert_eq!(h.apply(2), Ok(2));
        assert_eq!(h.apply(3), Ok(5));
        assert_eq!(h.apply(u64::MAX), Err("overflow".to_string()));
        let copy = h.reopen();
        assert_eq!(copy.query(()), Ok(5));
        assert_eq!(copy.store().0, 5);
    }

    #[test]
    fn a_panic_is_an_error_and_has_no_effect() {
        let mut h = StoreHarness::<Counter>::new();
        h.apply(1).unwrap();
        let err = h.apply(13).unwrap_err();
        assert!(err.contains("unlucky"), "{err}");
        assert_eq!(h.query(()), Ok(1));
    }

    #[test]
    fn garbage_bytes_are_rejected_not_applied() {
        let mut h = StoreHarness::<Counter>::new();
        let err = h.apply_bytes(&[0xff; 3]).unwrap_err();
        assert!(err.starts_with("malformed input"), "{err}");
    }
}
