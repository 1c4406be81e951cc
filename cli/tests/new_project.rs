//! `riteraft new` writes a project that builds, in each language: its own test passes, its
//! toolchain turns it into a module, and a real `riteraft-host` replicates it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{host_binary, riteraft, stdout};
use riteraft_test_support::cluster::{Cluster, ClusterOptions};
use riteraft_test_support::wait::within;
use riteraft_test_support::{componentize_js, componentize_py, workspace_root};

/// Runs `program args` in `dir` off the async runtime; panics with its output unless it
/// succeeds. Returns its stdout and stderr.
async fn run(dir: &Path, program: &Path, args: &[&str]) -> String {
    let (dir, program) = (dir.to_path_buf(), program.to_path_buf());
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(&program)
            .current_dir(&dir)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "{} {args:?} in {}:\n{text}",
            program.display(),
            dir.display()
        );
        text
    })
    .await
    .unwrap()
}

/// Writes project `name` in `lang` under a fresh temporary dir.
async fn new_project(root: &Path, name: &str, lang: &str) -> PathBuf {
    let dir = root.join(name);
    let output = riteraft(
        &["new", name, "--lang", lang, "--dir", dir.to_str().unwrap()],
        None,
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert!(stdout(&output).contains("next, in it:"), "{output:?}");
    dir
}

/// Runs `module` on one real node: a write and a read through it.
async fn replicate(module: PathBuf) {
    let started = Instant::now();
    let mut options = ClusterOptions::new(host_binary()).plugin(&module);
    // A Python or JavaScript module takes a debug build tens of seconds to compile.
    options.ready_timeout = Duration::from_secs(150);
    let cluster = Cluster::start(1, options).await;
    let id = cluster.wait_for_leader(Duration::from_secs(30)).await;
    println!("{} up after {:.1?}", module.display(), started.elapsed());
    let answer = cluster.propose(id, "put greeting hello").await.unwrap();
    assert_eq!(answer.unwrap(), "ok: greeting = hello");
    let answer = cluster.propose(id, "del nothing").await.unwrap();
    assert_eq!(answer.unwrap_err(), "no such key: nothing");
    let value = cluster.query(id, "get greeting", false).await.unwrap();
    assert_eq!(value.unwrap(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_store_builds_tests_and_runs() {
    within(Duration::from_secs(600), async {
        let root = tempfile::tempdir().unwrap();
        let dir = new_project(root.path(), "my-store", "rust").await;
        // The plugins' target dir: the wit-bindgen the workspace builds is reused there.
        let target = workspace_root().join("target/plugins");
        let target = target.to_str().unwrap();
        let cargo = PathBuf::from(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        let tested = run(&dir, &cargo, &["test", "--target-dir", target]).await;
        assert!(tested.contains("2 passed"), "{tested}");
        let release = ["build", "--release", "--target", "wasm32-wasip2"];
        run(
            &dir,
            &cargo,
            &[&release[..], &["--target-dir", target]].concat(),
        )
        .await;
        replicate(Path::new(target).join("wasm32-wasip2/release/my_store.wasm")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_python_store_builds_tests_and_runs() {
    within(Duration::from_secs(600), async {
        let root = tempfile::tempdir().unwrap();
        let dir = new_project(root.path(), "my-store", "python").await;
        let tested = run(&dir, Path::new("python3"), &["-m", "unittest", "-v"]).await;
        assert!(tested.contains("Ran 2 tests"), "{tested}");
        // The build its README gives, with the toolchain plugins/kv-py pins (the same pin).
        let componentize = componentize_py();
        let args = ["-d", "wit/store.wit", "-w", "store", "componentize", "app"];
        run(
            &dir,
            &componentize,
            &[&args[..], &["-o", "my_store.wasm"]].concat(),
        )
        .await;
        replicate(dir.join("my_store.wasm")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_javascript_store_builds_tests_and_runs() {
    within(Duration::from_secs(600), async {
        let root = tempfile::tempdir().unwrap();
        let dir = new_project(root.path(), "my-store", "js").await;
        let tested = run(&dir, Path::new("node"), &["--test"]).await;
        assert!(tested.contains("# pass 2"), "{tested}");
        // `npm run build`'s command, with the toolchain plugins/kv-js pins (the same pin),
        // rather than a second download of it.
        let package = std::fs::read_to_string(dir.join("package.json")).unwrap();
        let build =
            "componentize-js --wit wit/store.wit --world-name store --out my_store.wasm store.js";
        assert!(package.contains(build), "{package}");
        let args: Vec<&str> = build.split(' ').skip(1).collect();
        run(&dir, &componentize_js(), &args).await;
        replicate(dir.join("my_store.wasm")).await;
    })
    .await;
}
