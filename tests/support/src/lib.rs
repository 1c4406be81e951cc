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

/// Plugins written in Python, by their directory under `plugins/`: each is built from its
/// `app.py` with the componentize-py its `requirements.txt` pins (see [`plugin`]).
pub const PY_PLUGINS: &[&str] = &["kv-py"];

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
/// A plugin of [`JS_PLUGINS`] is built with npm instead, and one of [`PY_PLUGINS`] with pip
/// and componentize-py, into `target/plugins/js` and `target/plugins/py`.
pub fn plugin(name: &str) -> PathBuf {
    if JS_PLUGINS.contains(&name) {
        static BUILT: OnceLock<PathBuf> = OnceLock::new();
        return BUILT.get_or_init(|| build_js_plugin(name)).clone();
    }
    if PY_PLUGINS.contains(&name) {
        static BUILT: OnceLock<PathBuf> = OnceLock::new();
        return BUILT.get_or_init(|| build_py_plugin(name)).clone();
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

/// Where the plugin in `plugins/NAME`, built by `kind`'s toolchain, is written, and whether it
/// needs building: it does when its output is older than one of its `sources` (relative to
/// its directory) or than `proto/store.wit`.
fn foreign_output(name: &str, kind: &str, sources: &[&str]) -> (PathBuf, bool) {
    let root = workspace_root();
    let dir = root.join("plugins").join(name);
    let out = root
        .join("target/plugins")
        .join(kind)
        .join(format!("{}.wasm", name.replace('-', "_")));
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let built = modified(&out);
    let fresh = built.is_some()
        && (sources.iter().map(|source| dir.join(source)))
            .chain([root.join("proto/store.wit")])
            .all(|source| modified(&source) <= built);
    (out, !fresh)
}

/// Runs `program args` in `dir`, naming `what` it builds if that fails.
fn run_in(dir: &Path, program: &Path, args: &[&std::ffi::OsStr], what: &str) {
    let status = Command::new(program)
        .current_dir(dir)
        .args(args)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}) to build {what}: scripts/test installs what it needs",
                program.display()
            )
        });
    assert!(
        status.success(),
        "{} {args:?} failed for {what}",
        program.display()
    );
}

/// Runs `build(partial)` and renames what it wrote to `out`: a test process never loads half a
/// file.
fn build_into(out: &Path, build: impl FnOnce(&Path)) {
    std::fs::create_dir_all(out.parent().expect("has a parent")).unwrap();
    let partial = out.with_extension(format!("{}.partial", std::process::id()));
    build(&partial);
    std::fs::rename(&partial, out).unwrap();
}

/// The componentize-js that `plugins/kv-js` pins (installed with `npm ci` the first time),
/// for building JavaScript stores outside the repo, as `riteraft new` writes them.
pub fn componentize_js() -> PathBuf {
    let dir = workspace_root().join("plugins/kv-js");
    install_js_toolchain(&dir, "plugins/kv-js (Node.js and npm)");
    dir.join("node_modules/.bin/componentize-js")
}

/// The componentize-py that `plugins/kv-py` pins, in `target/plugins/py-venv` (made the
/// first time), for building Python stores outside the repo.
pub fn componentize_py() -> PathBuf {
    let dir = workspace_root().join("plugins/kv-py");
    install_py_toolchain(&dir, "plugins/kv-py (Python 3 with venv)")
}

/// Installs the pinned JavaScript toolchain of the plugin in `dir` unless it is there.
fn install_js_toolchain(dir: &Path, what: &str) {
    if !dir.join("node_modules").is_dir() {
        let args = ["ci", "--no-audit", "--no-fund"].map(std::ffi::OsStr::new);
        run_in(dir, Path::new("npm"), &args, what);
    }
}

/// Makes `target/plugins/py-venv` with the Python toolchain the plugin in `dir` pins, unless
/// it is there; returns its componentize-py.
fn install_py_toolchain(dir: &Path, what: &str) -> PathBuf {
    let venv = workspace_root().join("target/plugins/py-venv");
    let componentize = venv.join("bin/componentize-py");
    if !componentize.exists() {
        let args = ["-m".as_ref(), "venv".as_ref(), venv.as_os_str()];
        run_in(dir, Path::new("python3"), &args, what);
        let args = ["install", "--quiet", "-r", "requirements.txt"].map(std::ffi::OsStr::new);
        run_in(dir, &venv.join("bin/pip"), &args, what);
    }
    componentize
}

/// Builds the JavaScript plugin in `plugins/NAME` unless it is fresh: installs its pinned
/// toolchain (`npm ci`) the first time, then runs componentize-js.
fn build_js_plugin(name: &str) -> PathBuf {
    let (out, stale) = foreign_output(name, "js", &["store.js", "package-lock.json"]);
    if !stale {
        return out;
    }
    let root = workspace_root();
    let dir = root.join("plugins").join(name);
    let what = format!("plugins/{name} (Node.js and npm)");
    let npm = Path::new("npm");
    install_js_toolchain(&dir, &what);
    build_into(&out, |partial| {
        let wit = root.join("proto/store.wit");
        let args: [&std::ffi::OsStr; 11] = [
            "exec".as_ref(),
            "--no".as_ref(),
            "--".as_ref(),
            "componentize-js".as_ref(),
            "--wit".as_ref(),
            wit.as_os_str(),
            "--world-name".as_ref(),
            "store".as_ref(),
            "--out".as_ref(),
            partial.as_os_str(),
            "store.js".as_ref(),
        ];
        run_in(&dir, npm, &args, &what);
    });
    out
}

/// Builds the Python plugin in `plugins/NAME` unless it is fresh: makes a virtual environment
/// with its pinned toolchain (`target/plugins/py-venv`) the first time, then runs
/// componentize-py.
fn build_py_plugin(name: &str) -> PathBuf {
    let (out, stale) = foreign_output(name, "py", &["app.py", "requirements.txt"]);
    if !stale {
        return out;
    }
    let root = workspace_root();
    let dir = root.join("plugins").join(name);
    let what = format!("plugins/{name} (Python 3 with venv)");
    let componentize = install_py_toolchain(&dir, &what);
    build_into(&out, |partial| {
        let wit = root.join("proto/store.wit");
        let args: [&std::ffi::OsStr; 8] = [
            "-d".as_ref(),
            wit.as_os_str(),
            "-w".as_ref(),
            "store".as_ref(),
            "componentize".as_ref(),
            "app".as_ref(),
            "-o".as_ref(),
            partial.as_os_str(),
        ];
        run_in(&dir, &componentize, &args, &what);
    });
    out
}
