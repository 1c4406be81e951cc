//! Test-only plugin: a counter whose commands can also misbehave on purpose.
//!
//! Commands: `add N` (the good one), `panic` (a Rust panic, a trap in wasm), `spin` (an endless
//! loop: fuel runs out), `hog` (allocates until memory runs out), `stream` (calls the host's
//! `snapshot-write` outside a snapshot, which traps). Queries: `total`, and the same
//! misbehaviours, so tests can check that a bad query does not hurt the state either.

use riteraft_plugin_sdk::serde::{Deserialize, Serialize};
use riteraft_plugin_sdk::{ApplyContext, Store, Text, export_store};

#[derive(Default, Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
pub struct Misbehaving {
    total: u64,
}

fn misbehave(what: &str) -> Result<String, String> {
    match what {
        "panic" => panic!("asked to panic"),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "hog" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Reserve without touching, so memory runs out long before fuel does.
                let mut block = Vec::<u8>::with_capacity(1 << 20);
                block.push(1);
                hoard.push(std::hint::black_box(block));
            }
        }
        #[cfg(target_arch = "wasm32")]
        "stream" => {
            riteraft_plugin_sdk::__bindings::snapshot_write(b"not now");
            Err("the host let snapshot-write through outside a snapshot".into())
        }
        other => Err(format!("unknown: {other}")),
    }
}

impl Store for Misbehaving {
    type Codec = Text;
    type Command = String;
    type Output = String;
    type Query = String;
    type QueryOutput = String;

    fn apply(&mut self, _ctx: &ApplyContext, command: String) -> Result<String, String> {
        match command.strip_prefix("add ") {
            Some(n) => {
                self.total += n.trim().parse::<u64>().map_err(|e| e.to_string())?;
                Ok(self.total.to_string())
            }
            None => {
                // Change the state first, so a test can see that a failed entry left no trace.
                self.total += 1_000_000;
                misbehave(&command)
            }
        }
    }

    fn query(&self, query: String) -> Result<String, String> {
        match query.as_str() {
            "total" => Ok(self.total.to_string()),
            other => misbehave(other),
        }
    }
}

export_store!(Misbehaving);
