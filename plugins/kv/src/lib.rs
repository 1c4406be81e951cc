//! `kv`: a replicated key-value map driven by text commands, the store the demo runs.
//!
//! Commands (proposed through raft): `put KEY VALUE` and `del KEY`.
//! Queries (read-only): `get KEY` and `keys [PREFIX]`.
//! Keys are single words; a value is the rest of the line, spaces included.

mod compact_map;

use std::fmt;
use std::str::FromStr;

use riteraft_plugin_sdk::serde::{Deserialize, Serialize};
use riteraft_plugin_sdk::{ApplyContext, Store, Text, export_store};

pub use compact_map::{CompactMap, OldValue};

/// Longest key accepted, in bytes: keys are names, not payloads, and `keys` lists them.
pub const MAX_KEY_LEN: usize = 1024;
/// Most keys one `keys` query returns, so one query cannot build an answer bigger than the store.
pub const MAX_KEYS_LISTED: usize = 1000;

/// The whole state: a sorted map, so snapshots and `keys` answers are the same on every replica
/// (compact in memory, encoded as a `BTreeMap<String, String>`: see [`CompactMap`]).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
pub struct KvStore {
    map: CompactMap,
}

/// A write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put { key: String, value: String },
    /// Remove `key`.
    Del { key: String },
}

/// A read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvQuery {
    /// The value of `key`.
    Get { key: String },
    /// The keys starting with `prefix`, one per line, sorted.
    Keys { prefix: String },
}

impl Store for KvStore {
    type Codec = Text;
    type Command = KvCommand;
    type Output = String;
    type Query = KvQuery;
    type QueryOutput = String;
    const VERSION: &'static str = concat!("kv ", env!("CARGO_PKG_VERSION"));

    fn apply(&mut self, _ctx: &ApplyContext, command: KvCommand) -> Result<String, String> {
        match command {
            // Joined rather than `format!`ted: one allocation of the exact size, and in wasm
            // the formatting machinery was a tenth of a put's time.
            KvCommand::Put { key, value } => Ok(match self.map.insert(&key, &value) {
                Some(old) => ["ok: ", &key, " = ", &value, " (was ", &old, ")"].concat(),
                None => ["ok: ", &key, " = ", &value, " (new)"].concat(),
            }),
            KvCommand::Del { key } => match self.map.remove(&key) {
                Some(old) => Ok(format!("ok: deleted {key} (was {old})")),
                None => Err(format!("no such key: {key}")),
            },
        }
    }

    fn query(&self, query: KvQuery) -> Result<String, String> {
        match query {
            KvQuery::Get { key } => self
                .map
                .get(&key)
                .map(str::to_owned)
                .ok_or_else(|| format!("no such key: {key}")),
            KvQuery::Keys { prefix } => {
                let keys: Vec<&str> = self
                    .map
                    .range_from(&prefix)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .take(MAX_KEYS_LISTED)
                    .map(|(k, _)| k)
                    .collect();
                Ok(keys.join("\n"))
            }
        }
    }
}

export_store!(KvStore);

/// Splits `verb rest` and checks the key of `rest`'s first word.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    }
}

fn checked_key(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("missing KEY".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key is {} bytes; the limit is {MAX_KEY_LEN}",
            key.len()
        ));
    }
    Ok(key.to_string())
}

impl FromStr for KvCommand {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (verb, rest) = split_word(text);
        let (key, value) = split_word(rest);
        match verb {
            "put" if value.is_empty() => Err("usage: put KEY VALUE".into()),
            "put" => Ok(KvCommand::Put {
                key: checked_key(key)?,
                value: value.trim_end().to_string(),
            }),
            "del" if !value.is_empty() => Err("usage: del KEY".into()),
            "del" => Ok(KvCommand::Del {
                key: checked_key(key)?,
            }),
            _ => Err(format!(
                "unknown command {verb:?}: expected `put KEY VALUE` or `del KEY`"
            )),
        }
    }
}

impl fmt::Display for KvCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvCommand::Put { key, value } => write!(f, "put {key} {value}"),
            KvCommand::Del { key } => write!(f, "del {key}"),
        }
    }
}

impl FromStr for KvQuery {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (verb, rest) = split_word(text);
        let (arg, extra) = split_word(rest);
        if !extra.is_empty() {
            return Err(format!("unexpected {extra:?} after {verb} {arg}"));
        }
        match verb {
            "get" => Ok(KvQuery::Get {
                key: checked_key(arg)?,
            }),
            "keys" => Ok(KvQuery::Keys {
                prefix: arg.to_string(),
            }),
            _ => Err(format!(
                "unknown query {verb:?}: expected `get KEY` or `keys [PREFIX]`"
            )),
        }
    }
}

impl fmt::Display for KvQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvQuery::Get { key } => write!(f, "get {key}"),
            KvQuery::Keys { prefix } => write!(f, "keys {prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use riteraft_plugin_sdk::testing::StoreHarness;

    use super::*;

    fn cmd(text: &str) -> KvCommand {
        text.parse().unwrap()
    }

    fn q(text: &str) -> KvQuery {
        text.parse().unwrap()
    }

    #[test]
    fn put_get_del() {
        let mut kv = StoreHarness::<KvStore>::new();
        assert_eq!(kv.apply(cmd("put a 1")).unwrap(), "ok: a = 1 (new)");
        assert_eq!(
            kv.apply(cmd("put a hello world")).unwrap(),
            "ok: a = hello world (was 1)"
        );
        assert_eq!(kv.query(q("get a")).unwrap(), "hello world");
        assert_eq!(
            kv.apply(cmd("del a")).unwrap(),
            "ok: deleted a (was hello world)"
        );
        assert_eq!(kv.apply(cmd("del a")), Err("no such key: a".into()));
        assert_eq!(kv.query(q("get a")), Err("no such key: a".into()));
    }

    #[test]
    fn keys_lists_a_prefix_in_order() {
        let mut kv = StoreHarness::<KvStore>::new();
        for key in ["b2", "a", "b1", "c"] {
            kv.apply(cmd(&format!("put {key} x"))).unwrap();
        }
        assert_eq!(kv.query(q("keys b")).unwrap(), "b1\nb2");
        assert_eq!(kv.query(q("keys")).unwrap(), "a\nb1\nb2\nc");
    }

    #[test]
    fn bad_text_is_rejected_with_usage() {
        let mut kv = StoreHarness::<KvStore>::new();
        assert!(kv.apply_bytes(b"put a").unwrap_err().contains("usage"));
        assert!(
            kv.apply_bytes(b"frobnicate")
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(kv.apply_bytes(&[0xff]).unwrap_err().contains("UTF-8"));
        let long = format!("put {} v", "k".repeat(MAX_KEY_LEN + 1));
        assert!(
            kv.apply_bytes(long.as_bytes())
                .unwrap_err()
                .contains("limit")
        );
    }

    #[test]
    fn snapshot_round_trip() {
        let mut kv = StoreHarness::<KvStore>::new();
        kv.apply(cmd("put x 1")).unwrap();
        let copy = kv.reopen();
        assert_eq!(copy.query(q("get x")).unwrap(), "1");
        assert_eq!(copy.snapshot(), kv.snapshot());
    }
}
