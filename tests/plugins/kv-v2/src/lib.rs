//! Test-only plugin: the next version of `plugins/kv`, to test upgrades.
//!
//! It understands kv's commands and queries plus `append KEY SUFFIX`, and stores its state in a
//! new snapshot format (2): a sorted list plus a count of writes. It reads kv's format 1
//! through `migrate`, which is what lets a running cluster switch from kv to it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use riteraft_plugin_sdk::serde::{Deserialize, Serialize};
use riteraft_plugin_sdk::{ApplyContext, Bincode, Codec, Store, Text, export_store};

#[derive(Debug, Default)]
pub struct KvV2 {
    map: BTreeMap<String, String>,
    writes: u64,
}

/// Snapshot format 2.
#[derive(Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
struct FormatV2 {
    entries: Vec<(String, String)>,
    writes: u64,
}

/// kv's snapshot format 1 (its store serialized as is).
#[derive(Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
struct FormatV1 {
    map: BTreeMap<String, String>,
}

// The SDK's default snapshot serializes the store itself; v2 writes `FormatV2` instead, so the
// store type only needs serde to satisfy the trait bound.
impl Serialize for KvV2 {
    fn serialize<S: riteraft_plugin_sdk::serde::Serializer>(
        &self,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        self.format().serialize(s)
    }
}

impl<'de> Deserialize<'de> for KvV2 {
    fn deserialize<D: riteraft_plugin_sdk::serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Self, D::Error> {
        let v2 = FormatV2::deserialize(d)?;
        Ok(KvV2 {
            map: v2.entries.into_iter().collect(),
            writes: v2.writes,
        })
    }
}

impl KvV2 {
    fn format(&self) -> FormatV2 {
        FormatV2 {
            entries: self
                .map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            writes: self.writes,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Command {
    Put(String, String),
    Del(String),
    Append(String, String),
}

#[derive(Debug, Clone)]
pub enum Query {
    Get(String),
    Keys(String),
    Writes,
}

fn words(text: &str) -> (&str, &str, &str) {
    let mut parts = text.trim().splitn(3, ' ');
    (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    )
}

impl FromStr for Command {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match words(text) {
            ("put", key, value) if !key.is_empty() && !value.is_empty() => {
                Ok(Command::Put(key.into(), value.into()))
            }
            ("append", key, suffix) if !key.is_empty() && !suffix.is_empty() => {
                Ok(Command::Append(key.into(), suffix.into()))
            }
            ("del", key, "") if !key.is_empty() => Ok(Command::Del(key.into())),
            _ => Err(format!(
                "unknown command {text:?}: put KEY VALUE, append KEY SUFFIX, del KEY"
            )),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(k, v) => write!(f, "put {k} {v}"),
            Command::Del(k) => write!(f, "del {k}"),
            Command::Append(k, s) => write!(f, "append {k} {s}"),
        }
    }
}

impl FromStr for Query {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match words(text) {
            ("get", key, "") if !key.is_empty() => Ok(Query::Get(key.into())),
            ("keys", prefix, "") => Ok(Query::Keys(prefix.into())),
            ("writes", "", "") => Ok(Query::Writes),
            _ => Err(format!(
                "unknown query {text:?}: get KEY, keys [PREFIX], writes"
            )),
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Get(k) => write!(f, "get {k}"),
            Query::Keys(p) => write!(f, "keys {p}"),
            Query::Writes => write!(f, "writes"),
        }
    }
}

impl Store for KvV2 {
    type Codec = Text;
    type Command = Command;
    type Output = String;
    type Query = Query;
    type QueryOutput = String;
    const VERSION: &'static str = "kv 2.0.0";
    const SNAPSHOT_VERSION: u32 = 2;

    fn apply(&mut self, _ctx: &ApplyContext, command: Command) -> Result<String, String> {
        let answer = match command {
            Command::Put(key, value) => {
                let answer = match self.map.get(&key) {
                    Some(old) => format!("ok: {key} = {value} (was {old})"),
                    None => format!("ok: {key} = {value} (new)"),
                };
                self.map.insert(key, value);
                answer
            }
            Command::Del(key) => match self.map.remove(&key) {
                Some(old) => format!("ok: deleted {key} (was {old})"),
                None => return Err(format!("no such key: {key}")),
            },
            Command::Append(key, suffix) => {
                let value = self.map.entry(key.clone()).or_default();
                value.push_str(&suffix);
                format!("ok: {key} = {value}")
            }
        };
        self.writes += 1;
        Ok(answer)
    }

    fn query(&self, query: Query) -> Result<String, String> {
        match query {
            Query::Get(key) => self
                .map
                .get(&key)
                .cloned()
                .ok_or_else(|| format!("no such key: {key}")),
            Query::Keys(prefix) => Ok(self
                .map
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .take(1000)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")),
            Query::Writes => Ok(self.writes.to_string()),
        }
    }

    fn migrate(from: u32, snapshot: &[u8]) -> Result<Self, String> {
        match from {
            1 => {
                let v1: FormatV1 = <Bincode as Codec<FormatV1>>::decode(snapshot)?;
                Ok(KvV2 {
                    map: v1.map,
                    writes: 0,
                })
            }
            other => Err(format!("kv 2 cannot read snapshot format {other}")),
        }
    }
}

export_store!(KvV2);
