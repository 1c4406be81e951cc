//! Test-only plugin: `query` has the wrong type.

wit_bindgen::generate!({ path: "wit", world: "store" });

struct Mistyped;

impl Guest for Mistyped {
    fn apply(_ctx: ApplyContext, entry: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(entry)
    }
    fn query(request: String) -> String {
        request
    }
    fn snapshot() -> Vec<u8> {
        Vec::new()
    }
    fn restore(_snapshot: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

export!(Mistyped);
