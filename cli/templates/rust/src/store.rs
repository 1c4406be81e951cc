//! The store's logic: a map of text keys to text values.
//!
//! Commands (replicated, through `riteraft propose`): `put KEY VALUE`, `del KEY`.
//! Queries (read-only, through `riteraft query`): `get KEY`.
//!
//! Every replica applies the same commands in the same order and must end in the same state,
//! so nothing here may depend on the clock, randomness, or the order of a hash map.

use std::collections::BTreeMap;

#[derive(Debug, Default, PartialEq)]
pub struct Store {
    // A BTreeMap, not a HashMap: its order is the same on every replica, so snapshots are too.
    values: BTreeMap<String, String>,
}

impl Store {
    /// Applies one command and answers it. An `Err` is a rejection: the client sees it, and the
    /// state must be left as it was.
    pub fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, String> {
        let command = std::str::from_utf8(command).map_err(|_| "not UTF-8 text")?;
        let (verb, rest) = split_word(command);
        match verb {
            "put" => {
                let (key, value) = split_word(rest);
                if key.is_empty() || value.is_empty() {
                    return Err("usage: put KEY VALUE".into());
                }
                self.values.insert(key.to_string(), value.to_string());
                Ok(format!("ok: {key} = {value}").into_bytes())
            }
            "del" => match self.values.remove(rest) {
                Some(old) => Ok(format!("ok: deleted {rest} (was {old})").into_bytes()),
                None => Err(format!("no such key: {rest}")),
            },
            _ => Err(format!("unknown command {verb:?}: expected put or del")),
        }
    }

    /// Answers a query from the current state, without changing it.
    pub fn query(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let request = std::str::from_utf8(request).map_err(|_| "not UTF-8 text")?;
        match split_word(request) {
            ("get", key) => match self.values.get(key) {
                Some(value) => Ok(value.clone().into_bytes()),
                None => Err(format!("no such key: {key}")),
            },
            (verb, _) => Err(format!("unknown query {verb:?}: expected get")),
        }
    }

    /// The whole state as bytes: for each key in order, its length (u32, little-endian) and
    /// bytes, then its value's. The Python and JavaScript templates write the same format, so
    /// a cluster can be switched between them with `riteraft deploy`.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in &self.values {
            for text in [key, value] {
                out.extend_from_slice(&(text.len() as u32).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
        out
    }

    /// Reads what [`Store::snapshot`] wrote.
    pub fn restore(mut bytes: &[u8]) -> Result<Store, String> {
        let mut store = Store::default();
        while !bytes.is_empty() {
            let key = take_text(&mut bytes)?;
            let value = take_text(&mut bytes)?;
            store.values.insert(key, value);
        }
        Ok(store)
    }
}

/// The first word of `text` and the rest, trimmed.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

fn take_text(bytes: &mut &[u8]) -> Result<String, String> {
    let truncated = || "the snapshot is truncated".to_string();
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(truncated());
    }
    let (text, rest) = rest.split_at(len);
    *bytes = rest;
    String::from_utf8(text.to_vec()).map_err(|_| "the snapshot is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_del() {
        let mut store = Store::default();
        assert_eq!(store.apply(b"put a 1").unwrap(), b"ok: a = 1");
        assert_eq!(store.query(b"get a").unwrap(), b"1");
        assert_eq!(store.apply(b"del a").unwrap(), b"ok: deleted a (was 1)");
        assert_eq!(store.query(b"get a"), Err("no such key: a".into()));
        assert!(store.apply(b"frobnicate").is_err());
    }

    #[test]
    fn a_snapshot_restores_the_same_store() {
        let mut store = Store::default();
        store.apply(b"put a 1").unwrap();
        store.apply("put ключ значение".as_bytes()).unwrap();
        assert_eq!(Store::restore(&store.snapshot()).unwrap(), store);
        let snapshot = store.snapshot();
        assert!(Store::restore(&snapshot[..snapshot.len() - 1]).is_err());
    }
}
