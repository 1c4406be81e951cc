//! Measures what a deploy's switch costs the consensus loop once the new module is compiled:
//! creating an instance of it, and restoring the running store's state into it. A benchmark
//! program, not a test:
//!
//!     cargo run --release -p riteraft-host --example switch_cost -- MODULE.wasm [KEYS]
//!
//! The state is `kv`'s with KEYS keys (10,000 by default, `riteraft bench`'s key space) of
//! 256-byte values; MODULE must read kv's snapshot format (kv, kv-py, kv-js). It prints the
//! medians of several rounds.

use std::time::Instant;

use riteraft_host::plugin::{PluginLimits, PluginRuntime};
use riteraft_host::state_machine::ApplyContext;

const ROUNDS: usize = 5;
const VALUE_BYTES: usize = 256;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().expect("usage: switch_cost MODULE [KEYS]"));
    let keys: u64 = args
        .next()
        .map_or(10_000, |keys| keys.parse().expect("KEYS"));
    let runtime = PluginRuntime::new(PluginLimits::default()).unwrap();
    let kv = runtime
        .load_file(&riteraft_test_support::plugin("kv"))
        .unwrap();
    let mut store = runtime.instantiate(&kv).unwrap();
    let value = "v".repeat(VALUE_BYTES);
    for i in 0..keys {
        let ctx = ApplyContext {
            index: i + 1,
            position: 0,
            term: 1,
            timestamp_ms: i,
        };
        store
            .apply(ctx, format!("put k{i} {value}").as_bytes())
            .unwrap();
    }
    let mut snapshots = Vec::new();
    let mut state = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        state = store.snapshot().unwrap();
        snapshots.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let module = runtime.load_file(&path).unwrap();
    let state = bytes::Bytes::from(state);
    let (mut instantiates, mut restores) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut instance = runtime.instantiate(&module).unwrap();
        instantiates.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        instance.restore(&state).unwrap();
        restores.push(started.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "switching to {} with {keys} keys ({:.1} MiB of state), median of {ROUNDS} rounds:",
        path.display(),
        state.len() as f64 / (1 << 20) as f64
    );
    println!("  kv's snapshot:     {:8.1} ms", median(snapshots));
    println!("  a new instance:    {:8.1} ms", median(instantiates));
    println!("  its restore:       {:8.1} ms", median(restores));
}
