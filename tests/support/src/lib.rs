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

/// Plugins written in JavaScript, by their directory under `plugins/`: each is built from its
/// `store.js` with the componentize-js its `package-lock.json` pins (see [`plugin`]).
pub const JS_PLUGINS: &[&str] = &["kv-js"];

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
///
/// A plugin of [`JS_PLUGINS`] is built with npm instead, into `target/plugins/js`.
pub fn plugin(name: &str) -> PathBuf {
    if JS_PLUGINS.contains(&name) {
        static BUILT: OnceLock<PathBuf> = OnceLock::new();
        return BUILT.get_or_init(|| build_js_plugin(name)).clone();
    }
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

/// Builds the JavaScript plugin in `plugins/NAME` unless its output is newer than its sources:
/// installs its pinned toolchain (`npm ci`) the first time, then runs componentize-js.
fn build_js_plugin(name: &str) -> PathBuf {
    let root = workspace_root();
    let dir = root.join("plugins").join(name);
    let out = root
        .join("target/plugins/js")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let sources = [
        dir.join("store.js"),
        dir.join("package-lock.json"),
        root.join("proto/store.wit"),
    ];
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let built = modified(&out);
    if built.is_some() && sources.iter().all(|source| modified(source) <= built) {
        return out;
    }
    let npm = |args: &[&str]| {
        let status = Command::new("npm")
            .current_dir(&dir)
            .args(args)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run npm ({e}) to build plugins/{name}: install Node.js and npm \
                     (scripts/test does)"
                )
            });
        assert!(status.success(), "npm {args:?} failed in plugins/{name}");
    };
    if !dir.join("node_modules").is_dir() {
        npm(&["ci", "--no-audit", "--no-fund"]);
    }
    std::fs::create_dir_all(out.parent().expect("has a parent")).unwrap();
    // Built aside and renamed, so that a test process never loads half a file.
    let partial = out.with_extension(format!("{}.partial", std::process::id()));
    let wit = root.join("proto/store.wit");
    npm(&[
        "exec",
        "--no",
        "--",
        "componentize-js",
        "--wit",
        wit.to_str().expect("a UTF-8 path"),
        "--world-name",
        "store",
        "--out",
        partial.to_str().expect("a UTF-8 path"),
        "store.js",
    ]);
    std::fs::rename(&partial, &out).unwrap();
    out
}
