//! Test-only plugin: a "kv 3" that cannot read any earlier snapshot. Deploying it over a
//! running kv must be refused the same way on every replica, with the old code still serving.

use riteraft_plugin_sdk::serde::{Deserialize, Serialize};
use riteraft_plugin_sdk::{ApplyContext, Store, Text, export_store};

#[derive(Default, Serialize, Deserialize)]
#[serde(crate = "riteraft_plugin_sdk::serde")]
pub struct KvV3;

impl Store for KvV3 {
    type Codec = Text;
    type Command = String;
    type Output = String;
    type Query = String;
    type QueryOutput = String;
    const VERSION: &'static str = "kv 3.0.0 (broken)";
    const SNAPSHOT_VERSION: u32 = 3;

    fn apply(&mut self, _ctx: &ApplyContext, _command: String) -> Result<String, String> {
        Err("kv 3 accepts nothing".into())
    }

    fn query(&self, _query: String) -> Result<String, String> {
        Err("kv 3 knows nothing".into())
    }

    fn migrate(from: u32, _snapshot: &[u8]) -> Result<Self, String> {
        Err(format!("kv 3 has no migration from snapshot format {from}"))
    }
}

export_store!(KvV3);
