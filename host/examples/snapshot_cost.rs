//! Measures what a snapshot of a large store costs through the plugin runtime: the plugin's
//! `snapshot` call (its serialization, streamed out through `snapshot-write`) and its
//! `restore`, against the same `kv` logic compiled natively. A benchmark program, not a test:
//!
//!     cargo run --release -p riteraft-host --example snapshot_cost [KEYS]
//!
//! It fills the store with KEYS keys (1,000,000 by default) of 256-byte values, then prints
//! the median of several snapshots and restores.

use std::sync::Arc;
use std::time::Instant;

use riteraft_host::plugin::{PluginLimits, PluginRuntime};
use riteraft_host::state_machine::{ApplyContext, NativeStateMachine, StateMachine};
use riteraft_host::wasm_state_machine::{ReplayLimits, WasmStateMachine};
use riteraft_plugin_sdk::Typed;

/// Snapshots (and restores) timed; the median is reported.
const ROUNDS: usize = 5;
/// Bytes of each value, as in the README's memory figure.
const VALUE_BYTES: usize = 256;

fn fill(machine: &mut impl StateMachine, keys: u64) {
    let value = "v".repeat(VALUE_BYTES);
    for i in 0..keys {
        let ctx = ApplyContext {
            index: i + 1,
            position: 0,
            term: 1,
            timestamp_ms: i,
        };
        let entry = format!("put k{i} {value}");
        machine.apply(ctx, entry.as_bytes()).unwrap().unwrap();
    }
}

/// Median seconds of `ROUNDS` snapshots and of `ROUNDS` restores, and the snapshot's size.
fn measure(machine: &mut impl StateMachine) -> (f64, f64, usize) {
    let (mut taken, mut restored, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let snapshot = machine.snapshot().unwrap();
        taken.push(started.elapsed().as_secs_f64());
        bytes = snapshot.len();
        let started = Instant::now();
        machine.restore(&snapshot).unwrap();
        restored.push(started.elapsed().as_secs_f64());
    }
    (median(taken), median(restored), bytes)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let keys = std::env::args()
        .nth(1)
        .map_or(1_000_000, |keys| keys.parse().expect("KEYS is a number"));
    let runtime = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let module = runtime
        .load_file(&riteraft_test_support::plugin("kv"))
        .unwrap();
    // No replay limit: the fill must not checkpoint on its own (snapshots are what is timed).
    let unlimited = ReplayLimits {
        max_entries: usize::MAX / 2,
        max_bytes: usize::MAX / 2,
    };
    let mut wasm = WasmStateMachine::new(runtime, module, unlimited).unwrap();
    let mut native = NativeStateMachine::<Typed<kv::KvStore>>::new();
    fill(&mut wasm, keys);
    fill(&mut native, keys);
    let (w_taken, w_restored, bytes) = measure(&mut wasm);
    let (n_taken, n_restored, _) = measure(&mut native);
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "kv with {keys} keys of {VALUE_BYTES} B: snapshot of {mib:.0} MiB, median of {ROUNDS}:"
    );
    println!(
        "  wasm plugin: snapshot {:.0} ms ({:.0} MiB/s), restore {:.0} ms",
        w_taken * 1e3,
        mib / w_taken,
        w_restored * 1e3
    );
    println!(
        "  native:      snapshot {:.0} ms ({:.0} MiB/s), restore {:.0} ms",
        n_taken * 1e3,
        mib / n_taken,
        n_restored * 1e3
    );
}
