//! Test-only plugin written straight against the first store contract,
//! `proto/store-0.1.0.wit`, with plain wit-bindgen, as a plugin in another language would be:
//! no SDK. It keeps a sum of little-endian u64 entries. It stays on 0.1.0 so that the tests
//! prove a plugin built for it still loads and runs.

use std::cell::Cell;

wit_bindgen::generate!({
    path: "../../../proto/store-0.1.0.wit",
    world: "store",
});

thread_local! {
    static SUM: Cell<u64> = const { Cell::new(0) };
}

struct Sum;

fn read_u64(bytes: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| format!("expected 8 bytes, got {}", bytes.len()))?;
    Ok(u64::from_le_bytes(bytes))
}

impl Guest for Sum {
    fn apply(_ctx: ApplyContext, entry: Vec<u8>) -> Result<Vec<u8>, String> {
        let add = read_u64(&entry)?;
        let sum = SUM.with(|s| {
            s.set(s.get().wrapping_add(add));
            s.get()
        });
        Ok(sum.to_le_bytes().to_vec())
    }

    fn query(_request: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(SUM.with(Cell::get).to_le_bytes().to_vec())
    }

    fn snapshot() -> Vec<u8> {
        SUM.with(Cell::get).to_le_bytes().to_vec()
    }

    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        let sum = read_u64(&snapshot)?;
        SUM.with(|s| s.set(sum));
        Ok(())
    }
}

export!(Sum);
