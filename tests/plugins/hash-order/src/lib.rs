//! Test-only plugin: a store that diverges the way real ones do. Its state is a `HashMap`, and
//! the command `keys` answers the keys in the map's iteration order. The map grows on inserts
//! and never shrinks on deletes, while a snapshot restores into a map sized for what it holds:
//! after many deletes, a replica restored from a snapshot iterates in another order than the
//! replicas that applied every entry, and its answers to `keys` differ.
//!
//! The hasher has fixed keys, so that the order depends on the map's history only, as on a
//! native store whose keys are fixed per process: with std's `RandomState` every map made in
//! an instance gets the next keys, and a replica that joined by snapshot would iterate in
//! another order from its start, not only after the restart the test sets up.
//!
//! Commands: `put KEY VALUE`, `del KEY`, `keys` (a write, so its answer is replicated).
//! Queries: `get KEY`, and `keys` (this replica's order, which the test compares).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::str::FromStr;

use riteraft_plugin_sdk::serde::{Deserialize, Serialize};
use riteraft_plugin_sdk::{ApplyContext, Store, Text, export_store};

/// A map whose iteration order depends only on what was done to it.
type Map = HashMap<String, String, BuildHasherDefault<DefaultHasher>>;

#[derive(Debug, Default)]
pub struct HashOrder {
    map: Map,
}

/// The snapshot: the pairs, sorted (so the snapshot itself is the same on every replica).
#[derive(Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
struct Pairs(Vec<(String, String)>);

impl Serialize for HashOrder {
    fn serialize<S: riteraft_plugin_sdk::serde::Serializer>(
        &self,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut pairs: Vec<(String, String)> = self
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        pairs.sort();
        Pairs(pairs).serialize(s)
    }
}

impl<'de> Deserialize<'de> for HashOrder {
    fn deserialize<D: riteraft_plugin_sdk::serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Self, D::Error> {
        let Pairs(pairs) = Pairs::deserialize(d)?;
        // Sized for what it holds: the bug this plugin exists for.
        let mut map = Map::with_capacity_and_hasher(pairs.len(), Default::default());
        map.extend(pairs);
        Ok(HashOrder { map })
    }
}

#[derive(Debug, Clone)]
pub enum Command {
    Put(String, String),
    Del(String),
    Keys,
}

#[derive(Debug, Clone)]
pub enum Get {
    Value(String),
    Keys,
}

impl FromStr for Command {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut words = text.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("put"), Some(key), Some(value)) => Ok(Command::Put(key.into(), value.into())),
            (Some("del"), Some(key), None) => Ok(Command::Del(key.into())),
            (Some("keys"), None, None) => Ok(Command::Keys),
            _ => Err(format!(
                "unknown command {text:?}: put KEY VALUE, del KEY, keys"
            )),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(k, v) => write!(f, "put {k} {v}"),
            Command::Del(k) => write!(f, "del {k}"),
            Command::Keys => write!(f, "keys"),
        }
    }
}

impl FromStr for Get {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_whitespace().collect::<Vec<_>>()[..] {
            ["get", key] => Ok(Get::Value(key.into())),
            ["keys"] => Ok(Get::Keys),
            _ => Err(format!("unknown query {text:?}: get KEY, keys")),
        }
    }
}

impl fmt::Display for Get {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Get::Value(key) => write!(f, "get {key}"),
            Get::Keys => write!(f, "keys"),
        }
    }
}

impl HashOrder {
    /// The keys in the map's iteration order: what a store must never let into an answer.
    fn keys(&self) -> String {
        self.map.keys().cloned().collect::<Vec<_>>().join(" ")
    }
}

impl Store for HashOrder {
    type Codec = Text;
    type Command = Command;
    type Output = String;
    type Query = Get;
    type QueryOutput = String;
    const VERSION: &'static str = "hash-order 1";

    fn apply(&mut self, _ctx: &ApplyContext, command: Command) -> Result<String, String> {
        match command {
            Command::Put(key, value) => {
                self.map.insert(key.clone(), value.clone());
                Ok(format!("ok: {key} = {value}"))
            }
            Command::Del(key) => match self.map.remove(&key) {
                Some(_) => Ok(format!("ok: deleted {key}")),
                None => Err(format!("no such key: {key}")),
            },
            Command::Keys => Ok(self.keys()),
        }
    }

    fn query(&self, query: Get) -> Result<String, String> {
        match query {
            Get::Value(key) => self
                .map
                .get(&key)
                .cloned()
                .ok_or_else(|| format!("no such key: {key}")),
            Get::Keys => Ok(self.keys()),
        }
    }
}

export_store!(HashOrder);
