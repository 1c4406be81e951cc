//! Test-only plugin: on every apply it reads the wall clock, the monotonic clock and the secure
//! random source, and keeps what it saw in its state. Two replicas that disagree about any of
//! them end up with different snapshots.
//!
//! (It does not look at a `HashMap`'s iteration order: std seeds each new `HashMap` from a
//! per-instance counter, so that order differs between an instance that applied the log and one
//! restored from a snapshot. Stores must iterate sorted maps; the README says so.)

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use riteraft_plugin_sdk::serde::{Deserialize, Serialize};
use riteraft_plugin_sdk::{ApplyContext, Bincode, Store, export_store};

/// Entry index, wall clock (ms), monotonic clock, a random u64, the command.
pub type Seen = (u64, u128, String, u64, Vec<u8>);

#[derive(Default, Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
pub struct ClockRandom {
    /// One line per applied entry: what the environment looked like then.
    seen: Vec<Seen>,
}

impl Store for ClockRandom {
    type Codec = Bincode;
    type Command = Vec<u8>;
    type Output = u64;
    type Query = ();
    type QueryOutput = Vec<Seen>;

    fn apply(&mut self, ctx: &ApplyContext, command: Vec<u8>) -> Result<u64, String> {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // `Instant` has no public number; its Debug form shows the monotonic clock's reading.
        let monotonic = format!("{:?}", Instant::now());
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| e.to_string())?;
        let random = u64::from_le_bytes(random);
        self.seen
            .push((ctx.index, wall_ms, monotonic, random, command));
        Ok(random)
    }

    fn query(&self, _: ()) -> Result<Self::QueryOutput, String> {
        Ok(self.seen.clone())
    }
}

export_store!(ClockRandom);
