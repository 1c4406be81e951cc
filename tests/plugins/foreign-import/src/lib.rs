//! Test-only plugin that imports an interface the sandbox does not provide, as mainstream
//! guest toolchains do by default (componentize-js imports `wasi:http`, for instance): it
//! must load, run, and fail the same way on every replica only when it calls the import.
//!
//! `apply` answers its entry back, except `call`, which calls the missing import. The state is
//! the number of entries applied.

use std::cell::Cell;

wit_bindgen::generate!({
    inline: r#"
        package riteraft:foreign-import;

        interface network {
            send: func(what: string) -> result<string, string>;
        }

        world store {
            import network;

            record apply-context {
                index: u64,
                term: u64,
                timestamp-ms: u64,
            }

            export apply: func(ctx: apply-context, entry: list<u8>) -> result<list<u8>, string>;
            export query: func(request: list<u8>) -> result<list<u8>, string>;
            export snapshot: func() -> list<u8>;
            export restore: func(snapshot: list<u8>) -> result<_, string>;
        }
    "#,
});

thread_local! {
    static APPLIED: Cell<u64> = const { Cell::new(0) };
}

struct Echo;

impl Guest for Echo {
    fn apply(_ctx: ApplyContext, entry: Vec<u8>) -> Result<Vec<u8>, String> {
        APPLIED.with(|n| n.set(n.get() + 1));
        if entry == b"call" {
            return riteraft::foreign_import::network::send("hello").map(String::into_bytes);
        }
        Ok(entry)
    }

    fn query(_request: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(APPLIED.with(Cell::get).to_le_bytes().to_vec())
    }

    fn snapshot() -> Vec<u8> {
        APPLIED.with(Cell::get).to_le_bytes().to_vec()
    }

    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        let bytes: [u8; 8] = snapshot
            .try_into()
            .map_err(|_| "expected 8 bytes".to_string())?;
        APPLIED.with(|n| n.set(u64::from_le_bytes(bytes)));
        Ok(())
    }
}

export!(Echo);
