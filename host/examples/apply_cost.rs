//! Measures what one `apply` costs through the plugin runtime, against the same `kv` logic
//! compiled natively. A benchmark program, not a test: run it in release,
//!
//!     cargo run --release -p riteraft-host --example apply_cost [-- STORE.wasm ...]
//!
//! It prints the median over several rounds of the per-call time for small `put` commands,
//! and what folding each answer into the divergence check's digest adds to it; then the same
//! per-call time for each STORE given, a kv-compatible store in any language (e.g.
//! `target/plugins/py/kv_py.wasm` and `target/plugins/js/kv_js.wasm`, which the tests build).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use riteraft_host::node::fold_answer;
use riteraft_host::plugin::{PluginLimits, PluginRuntime};
use riteraft_host::state_machine::{ApplyContext, NativeStateMachine, Outcome, StateMachine};
use riteraft_host::wasm_state_machine::{ReplayLimits, WasmStateMachine};
use riteraft_plugin_sdk::Typed;

/// Calls per round, and rounds (the median of which is reported).
const CALLS: u64 = 20_000;
const ROUNDS: usize = 7;

fn per_call_ns(machine: &mut impl StateMachine, round: usize) -> f64 {
    let started = Instant::now();
    for i in 0..CALLS {
        let index = round as u64 * CALLS + i + 1;
        let ctx = ApplyContext {
            index,
            position: 0,
            term: 1,
            timestamp_ms: index,
        };
        let entry = format!("put k{} v{i}", i % 1000);
        machine.apply(ctx, entry.as_bytes()).unwrap().unwrap();
    }
    started.elapsed().as_nanos() as f64 / CALLS as f64
}

/// The answers of one round of `put`s, as the divergence check folds them.
fn answers(machine: &mut impl StateMachine) -> Vec<Outcome> {
    (0..CALLS)
        .map(|i| {
            let ctx = ApplyContext {
                index: i + 1,
                position: 0,
                term: 1,
                timestamp_ms: i,
            };
            let entry = format!("put k{} v{i}", i % 1000);
            machine.apply(ctx, entry.as_bytes()).unwrap()
        })
        .collect()
}

/// What folding one answer into the running digest costs, per answer.
fn digest_ns(answers: &[Outcome]) -> f64 {
    let started = Instant::now();
    let mut digest = [0; 32];
    for (i, answer) in answers.iter().enumerate() {
        digest = fold_answer(&digest, i as u64 + 1, black_box(answer));
    }
    black_box(digest);
    started.elapsed().as_nanos() as f64 / answers.len() as f64
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let runtime = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let module = runtime
        .load_file(&riteraft_test_support::plugin("kv"))
        .unwrap();
    // Replay limits as in production: checkpoints every 10,000 entries are part of the cost.
    let mut wasm = WasmStateMachine::new(runtime, module, ReplayLimits::default()).unwrap();
    let mut native = NativeStateMachine::<Typed<kv::KvStore>>::new();
    let outputs = answers(&mut NativeStateMachine::<Typed<kv::KvStore>>::new());
    let (mut wasm_ns, mut native_ns, mut fold_ns) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        wasm_ns.push(per_call_ns(&mut wasm, round));
        native_ns.push(per_call_ns(&mut native, round));
        fold_ns.push(digest_ns(&outputs));
    }
    let (w, n, f) = (
        median(wasm_ns.clone()),
        median(native_ns.clone()),
        median(fold_ns.clone()),
    );
    println!("apply of a small `put` (kv), median of {ROUNDS} rounds of {CALLS} calls:");
    println!(
        "  wasm plugin: {:.2} µs per call   (rounds: {:?})",
        w / 1e3,
        rounded(&wasm_ns)
    );
    println!(
        "  native:      {:.2} µs per call   (rounds: {:?})",
        n / 1e3,
        rounded(&native_ns)
    );
    println!(
        "  wasm costs {:.2} µs more per call ({:.1}x native)",
        (w - n) / 1e3,
        w / n
    );
    println!(
        "  divergence digest: {:.2} µs per answer ({:.1}% of the wasm apply)   (rounds: {:?})",
        f / 1e3,
        100.0 * f / w,
        rounded(&fold_ns)
    );
    for path in std::env::args_os().skip(1) {
        let path = std::path::PathBuf::from(path);
        let runtime = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
        let module = runtime.load_file(&path).unwrap();
        let mut store = WasmStateMachine::new(runtime, module, ReplayLimits::default()).unwrap();
        let samples: Vec<f64> = (0..ROUNDS)
            .map(|round| per_call_ns(&mut store, round))
            .collect();
        println!(
            "  {}: {:.2} µs per call ({:.1}x the kv plugin)   (rounds: {:?})",
            path.display(),
            median(samples.clone()) / 1e3,
            median(samples.clone()) / w,
            rounded(&samples)
        );
    }
}

fn rounded(samples: &[f64]) -> Vec<f64> {
    samples
        .iter()
        .map(|ns| (ns / 10.0).round() / 100.0)
        .collect()
}
