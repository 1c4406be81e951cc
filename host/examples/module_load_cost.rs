//! Measures what loading a plugin costs when a node starts: compiling it, against loading its
//! compiled form from the data dir's cache (`compiled/`). A benchmark program, not a test:
//!
//!     cargo run --release -p riteraft-host --example module_load_cost [-- MODULE.wasm]
//!
//! Without an argument it loads the `kv` plugin. It prints the median over several rounds.

use std::time::Instant;

use riteraft_host::plugin::{PluginLimits, PluginRuntime};

const ROUNDS: usize = 5;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Milliseconds to load `path` in a fresh runtime (so nothing is cached in memory).
fn load_ms(path: &std::path::Path, cache: Option<&std::path::Path>) -> f64 {
    let mut runtime = PluginRuntime::new(PluginLimits::default()).unwrap();
    if let Some(dir) = cache {
        runtime = runtime.with_compiled_cache(dir.to_path_buf());
    }
    let started = Instant::now();
    runtime.load_file(path).unwrap();
    started.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| riteraft_test_support::plugin("kv"));
    let size = std::fs::metadata(&path).unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    // Warms the cache: the first load compiles and stores.
    load_ms(&path, Some(dir.path()));
    let (mut compiled, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        compiled.push(load_ms(&path, None));
        cached.push(load_ms(&path, Some(dir.path())));
    }
    println!(
        "loading {} ({:.1} MiB), median of {ROUNDS} rounds:",
        path.display(),
        size as f64 / (1 << 20) as f64
    );
    let (c, k) = (median(compiled.clone()), median(cached.clone()));
    println!("  compiling:            {c:8.1} ms   (rounds: {compiled:.1?})");
    println!("  from the disk cache:  {k:8.1} ms   (rounds: {cached:.1?})");
    println!("  {:.1}x faster", c / k);
}
