//! Test-only plugin: exports everything but `query`.

wit_bindgen::generate!({ path: "wit", world: "store" });

struct Incomplete;

impl Guest for Incomplete {
    fn apply(_ctx: ApplyContext, entry: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(entry)
    }
    fn snapshot() -> Vec<u8> {
        Vec::new()
    }
    fn restore(_snapshot: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

export!(Incomplete);
