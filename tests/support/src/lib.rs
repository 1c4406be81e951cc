//! Helpers shared by RiteRaft's test suites.
//!
//! - [`plugin`]: builds the example and test plugins for `wasm32-wasip2` (once per run) and
//!   returns the path of one, so no `.wasm` binary is ever committed.
//! - [`ports`]: free loopback ports, never hard-coded.
//! - [`process`]: [`NodeProcess`], a child process killed when its test ends, however it ends.
//! - [`cluster`]: [`Cluster`], a local cluster of real `riteraft-host` processes.
//! - [`metrics`]: scraping a node's `/metrics` (a tiny HTTP GET) and reading what it says.
//! - [`linearizability`]: a client history of a register per key, and its WGL check.
//! - [`netns`]: a private network of namespaces for a cluster, with links to cut.
//! - [`fake_node`]: a scripted fake node (the `Client` service only) for the client's and the
//!   CLI's tests.
//! - [`tmpfs`]: a filesystem of a test's own, to fill up.
//! - [`wait`]: bounded polling ([`wait_until`]) and a time limit for a whole test ([`within`]).

pub mod cluster;
pub mod fake_node;
pub mod linearizability;
pub mod metrics;
pub mod netns;
pub mod ports;
pub mod process;
pub mod tmpfs;
pub mod wait;

pub use cluster::{Cluster, ClusterOptions};
pub use ports::{free_addr, free_port};
pub use process::NodeProcess;
pub use wait::{wait_until, within};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every plugin crate the tests use, by package name.
pub const PLUGINS: &[&str] = &[
    "kv",
    "hashstore",
    "misbehaving",
    "clock-random",
    "bare-wit",
    "missing-export",
    "wrong-signature",
    "kv-v2",
    "kv-v3-broken",
    "hash-order",
    "kv-big",
    "foreign-import",
];

/// The workspace root (this crate lives in `tests/support`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The path of plugin `name` (a package in [`PLUGINS`]) built for `wasm32-wasip2` in release.
///
/// The first call in a process builds all of them with one `cargo build` into
/// `target/plugins`: a target dir of its own, because the `cargo test` that runs us holds the
/// lock on the main one. Cargo's own lock serialises concurrent test processes, and a second
/// run finds everything fresh and returns at once.
pub fn plugin(name: &str) -> PathBuf {
    assert!(
        PLUGINS.contains(&name),
        "unknown plugin {name}: add it to PLUGINS"
    );
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_plugins);
    dir.join(format!("{}.wasm", name.replace('-', "_")))
}

fn build_plugins() -> PathBuf {
    let root = workspace_root();
    let target_dir = root.join("target/plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        // Small plugins load faster: no debug info in them.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    for name in PLUGINS {
        command.args(["-p", name]);
    }
    let status = command
        .status()
        .expect("cannot run cargo to build the plugins");
    assert!(
        status.success(),
        "building the plugins failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    target_dir.join("wasm32-wasip2/release")
}
