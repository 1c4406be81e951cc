//! [`CompactMap`]: a sorted map from string keys to string values that keeps each entry (key and
//! value together) in one allocation.
//!
//! Why not `BTreeMap<String, String>`: a replicated store is sized by its memory, and in wasm32
//! that map costs about 1.24× its data with 256-byte values: two allocations per entry (each
//! with its allocator header, the key's rounded up to 16 bytes) and 24 bytes of tree per slot.
//! One boxed `[key length][key][value]` per entry in a `BTreeSet` costs one header and 8 bytes of
//! tree per slot: about 30 bytes less per entry, 30 MiB for 1M keys.
//!
//! Its serde form is exactly a `BTreeMap<String, String>`'s (a map in key order), so snapshots
//! are byte-for-byte what they were, and stores in other languages read them unchanged.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::{Bound, Deref};

use riteraft_plugin_sdk::serde::de::{MapAccess, Visitor};
use riteraft_plugin_sdk::serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes before the key: its length, u32 little-endian.
const KEY_LEN_BYTES: usize = 4;

/// One entry: `[key length][key][value]`, both UTF-8 (it is only ever made from two `&str`).
struct Entry(Box<[u8]>);

impl Entry {
    fn new(key: &str, value: &str) -> Self {
        let key_len = u32::try_from(key.len()).expect("a key of wasm32 memory fits in u32");
        let mut bytes = Vec::with_capacity(KEY_LEN_BYTES + key.len() + value.len());
        bytes.extend_from_slice(&key_len.to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(value.as_bytes());
        Entry(bytes.into_boxed_slice())
    }

    fn key_end(&self) -> usize {
        let len: [u8; KEY_LEN_BYTES] = self.0[..KEY_LEN_BYTES].try_into().expect("4 bytes");
        KEY_LEN_BYTES + u32::from_le_bytes(len) as usize
    }

    fn key_bytes(&self) -> &[u8] {
        &self.0[KEY_LEN_BYTES..self.key_end()]
    }

    // Unchecked: checking every key's and value's UTF-8 made gathering a snapshot of 1M keys
    // twice as slow (1.3–2.2 s instead of 0.4–1.3 s, with fuel metering every byte's loop).
    //
    // SAFETY (both): an entry is made only by `Entry::new`, from a `&str` key and a `&str` value
    // placed whole after the length prefix, and never changed; `key_end` is where the key ends,
    // so each range is exactly one of those strings' bytes.

    fn key(&self) -> &str {
        let bytes = self.key_bytes();
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: above.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    fn value(&self) -> &str {
        let bytes = &self.0[self.key_end()..];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: above.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

// Entries are ordered, compared and looked up by their key's bytes alone, which orders them as
// `str` does; that agreement is what `Borrow` asks for.
impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key_bytes()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key_bytes() == other.key_bytes()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key_bytes().cmp(other.key_bytes())
    }
}

/// A sorted `String → String` map, one allocation per entry (see the module's notes).
#[derive(Default)]
pub struct CompactMap {
    entries: BTreeSet<Entry>,
}

impl CompactMap {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key.as_bytes()).map(Entry::value)
    }

    /// Sets `key` to `value`; the value it replaced, if any.
    pub fn insert(&mut self, key: &str, value: &str) -> Option<OldValue> {
        self.entries.replace(Entry::new(key, value)).map(OldValue)
    }

    /// Removes `key`; its value, if it had one.
    pub fn remove(&mut self, key: &str) -> Option<OldValue> {
        self.entries.take(key.as_bytes()).map(OldValue)
    }

    /// The entries from `start` on, in key order.
    pub fn range_from<'a>(&'a self, start: &str) -> impl Iterator<Item = (&'a str, &'a str)> {
        let from = (Bound::Included(start.as_bytes()), Bound::Unbounded);
        self.entries
            .range::<[u8], _>(from)
            .map(|entry| (entry.key(), entry.value()))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|entry| (entry.key(), entry.value()))
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A value taken out of the map, read in place: the entry it came in, not a copy (kv's answer
/// to every `put` of a key it had quotes the old value).
pub struct OldValue(Entry);

impl Deref for OldValue {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.value()
    }
}

impl fmt::Display for OldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for OldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Debug for CompactMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for CompactMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // An exact-size iterator, so the map's length is written first, as a BTreeMap's is.
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for CompactMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;

        impl<'de> Visitor<'de> for MapVisitor {
            type Value = CompactMap;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<CompactMap, A::Error> {
                let mut map = CompactMap::default();
                while let Some((key, value)) = access.next_entry::<String, String>()? {
                    map.entries.replace(Entry::new(&key, &value));
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use riteraft_plugin_sdk::{Bincode, Codec};

    use super::*;

    fn both(pairs: &[(&str, &str)]) -> (CompactMap, BTreeMap<String, String>) {
        let mut compact = CompactMap::default();
        let mut plain = BTreeMap::new();
        for (key, value) in pairs {
            assert_eq!(
                compact.insert(key, value).as_deref(),
                plain.insert(key.to_string(), value.to_string()).as_deref()
            );
        }
        (compact, plain)
    }

    #[test]
    fn behaves_as_a_btree_map_of_strings() {
        let pairs = [
            ("b", "2"),
            ("a", ""),
            ("ab", "x y"),
            ("b", "3"),
            ("", "empty key"),
        ];
        let (mut compact, mut plain) = both(&pairs);
        assert_eq!(compact.len(), plain.len());
        let listed: Vec<(&str, &str)> = compact.iter().collect();
        let expected: Vec<(&str, &str)> = plain
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(listed, expected);
        assert_eq!(compact.get("b"), Some("3"));
        assert_eq!(compact.get("c"), None);
        let from_a: Vec<&str> = compact.range_from("a").map(|(k, _)| k).collect();
        assert_eq!(from_a, ["a", "ab", "b"]);
        assert_eq!(
            compact.remove("ab").as_deref(),
            plain.remove("ab").as_deref()
        );
        assert_eq!(compact.remove("ab").as_deref(), None);
        assert_eq!(compact.get("ab"), None);
        assert!(!compact.is_empty());
    }

    #[test]
    fn keys_order_as_strings_do_whatever_their_lengths() {
        // The length prefix must not take part in the order: "b" < "ba" < "c" by bytes.
        let (compact, _) = both(&[("c", "1"), ("ba", "2"), ("b", "3"), ("é", "4")]);
        let keys: Vec<&str> = compact.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b", "ba", "c", "é"]);
    }

    #[test]
    fn encodes_exactly_as_a_btree_map_and_decodes_back() {
        let (compact, plain) = both(&[("k1", "one"), ("k0", "zero"), ("k2", &"v".repeat(300))]);
        let bytes = <Bincode as Codec<CompactMap>>::encode(&compact);
        assert_eq!(
            bytes,
            <Bincode as Codec<BTreeMap<String, String>>>::encode(&plain)
        );
        let back = <Bincode as Codec<CompactMap>>::decode(&bytes).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            compact.iter().collect::<Vec<_>>()
        );
        assert!(<Bincode as Codec<CompactMap>>::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
