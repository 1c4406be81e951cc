//! `hashstore`: the `HashStore` example of the original riteraft, as a RiteRaft plugin.
//!
//! Programs talk to it in bincode: a [`Message`] is proposed, [`Query`] is asked.

use std::collections::BTreeMap;

use riteraft_plugin_sdk::serde::{Deserialize, Serialize};
use riteraft_plugin_sdk::{ApplyContext, Bincode, Store, export_store};

/// A write, as in the original example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
pub enum Message {
    /// Set `key` to `value`; answers the value stored.
    Insert { key: u64, value: String },
}

/// A read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
pub enum Query {
    /// The value under `key`, if any.
    Get { key: u64 },
}

/// The map. The original used a `HashMap`; a `BTreeMap` keeps the snapshot bytes identical on
/// every replica whatever order the entries were inserted or restored in.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
pub struct HashStore(BTreeMap<u64, String>);

impl Store for HashStore {
    type Codec = Bincode;
    type Command = Message;
    type Output = String;
    type Query = Query;
    type QueryOutput = Option<String>;

    fn apply(&mut self, _ctx: &ApplyContext, message: Message) -> Result<String, String> {
        match message {
            Message::Insert { key, value } => {
                self.0.insert(key, value.clone());
                Ok(value)
            }
        }
    }

    fn query(&self, query: Query) -> Result<Option<String>, String> {
        match query {
            Query::Get { key } => Ok(self.0.get(&key).cloned()),
        }
    }
}

export_store!(HashStore);

#[cfg(test)]
mod tests {
    use riteraft_plugin_sdk::testing::StoreHarness;

    use super::*;

    #[test]
    fn insert_then_get_survives_a_snapshot() {
        let mut store = StoreHarness::<HashStore>::new();
        let value = store
            .apply(Message::Insert {
                key: 1,
                value: "one".into(),
            })
            .unwrap();
        assert_eq!(value, "one");
        let copy = store.reopen();
        assert_eq!(copy.query(Query::Get { key: 1 }), Ok(Some("one".into())));
        assert_eq!(copy.query(Query::Get { key: 2 }), Ok(None));
    }
}
