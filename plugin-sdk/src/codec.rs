//! How typed commands, queries and their answers become the bytes in the raft log.

use std::fmt::Display;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Turns values of `T` into bytes and back. A store picks one with [`crate::Store::Codec`].
///
/// Encoding must be deterministic (the same value gives the same bytes on every replica), and
/// `decode(encode(v)) == v`.
pub trait Codec<T> {
    /// The bytes for `value`.
    fn encode(value: &T) -> Vec<u8>;
    /// The value in `bytes`, or a message saying why they are not one.
    fn decode(bytes: &[u8]) -> Result<T, String>;
}

/// bincode (standard configuration): compact and fast, for programs that talk to the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

impl Bincode {
    /// bincode's standard configuration with a cap on what one decode may allocate, so a
    /// malformed length prefix cannot make the store allocate gigabytes.
    pub(crate) const fn config() -> bincode::config::Configuration<
        bincode::config::LittleEndian,
        bincode::config::Varint,
        bincode::config::Limit<{ Bincode::DECODE_LIMIT }>,
    > {
        bincode::config::standard().with_limit::<{ Bincode::DECODE_LIMIT }>()
    }

    /// 1 GiB: above any single command or snapshot a 32-bit wasm store can hold.
    const DECODE_LIMIT: usize = 1 << 30;
}

impl<T: Serialize + DeserializeOwned> Codec<T> for Bincode {
    fn encode(value: &T) -> Vec<u8> {
        // Two passes, measuring then writing into a buffer of exactly that size: a store's
        // memory never shrinks (wasm linear memory), and growing a Vec by doubling would leave
        // about twice a large snapshot's size in use for good.
        // Serializing plain data cannot fail; a type whose Serialize impl returns an error is a
        // bug in that type, so say so loudly.
        fn fail<T>(e: bincode::error::EncodeError) -> T {
            panic!("bincode could not encode a value: {e}")
        }
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(value, &mut size, Self::config()).unwrap_or_else(fail);
        let mut bytes = vec![0; size.bytes_written];
        let written = bincode::serde::encode_into_slice(value, &mut bytes, Self::config())
            .unwrap_or_else(fail);
        assert_eq!(
            written,
            bytes.len(),
            "bincode wrote another size than it measured"
        );
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<T, String> {
        match bincode::serde::decode_from_slice(bytes, Self::config()) {
            Ok((value, read)) if read == bytes.len() => Ok(value),
            Ok((_, read)) => Err(format!(
                "malformed input: {} trailing bytes after the value",
                bytes.len() - read
            )),
            Err(e) => Err(format!("malformed input: {e}")),
        }
    }
}

/// UTF-8 text through `Display` and `FromStr`: for stores that people drive from a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Text;

impl<T: Display + FromStr> Codec<T> for Text
where
    T::Err: Display,
{
    fn encode(value: &T) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<T, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
        text.parse().map_err(|e: T::Err| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bincode_round_trips_and_rejects_trailing_bytes() {
        let bytes = <Bincode as Codec<(u64, String)>>::encode(&(7, "seven".into()));
        let back: (u64, String) = Bincode::decode(&bytes).unwrap();
        assert_eq!(back, (7, "seven".to_string()));

        let mut longer = bytes.clone();
        longer.push(0);
        let err = <Bincode as Codec<(u64, String)>>::decode(&longer).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
    }

    #[test]
    fn bincode_refuses_a_hostile_length_prefix() {
        // A String claiming u64::MAX bytes: must be an error, not an allocation.
        let mut bytes = vec![0xff];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(<Bincode as Codec<String>>::decode(&bytes).is_err());
    }

    #[test]
    fn text_rejects_invalid_utf8() {
        let err = <Text as Codec<String>>::decode(&[0xff, 0xfe]).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
    }
}
