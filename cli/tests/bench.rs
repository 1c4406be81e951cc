//! `riteraft bench`: against fake nodes (riteraft-test-support's `fake_node`) for its output
//! and its choices, and one short smoke run on a real local cluster that the bench starts itself, when the node binary
//! and the kv plugin have been built (cargo does not build `riteraft-host` for this crate's
//! tests; CI runs the same smoke as a command of its own, see `.ci/run`).

mod common;

use std::path::{Path, PathBuf};

use common::{json_out, riteraft, stderr, stdout};
use riteraft_test_support::fake_node::{Fake, serve};
use serde_json::Value;

/// The fields every `--json` run has.
fn assert_run_shape(json: &Value) {
    for key in [
        "ops_per_sec",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "mean_ms",
    ] {
        assert!(json[key].is_number(), "{key} in {json}");
    }
    for key in [
        "ops",
        "errors",
        "rejections",
        "clients",
        "connections",
        "value_size",
        "keys",
    ] {
        assert!(json[key].is_u64(), "{key} in {json}");
    }
    assert!(json["addresses"].is_array(), "{json}");
    assert!(json["nodes"].is_array(), "{json}");
    assert!(json["plugin_sha256"].is_string(), "{json}");
}

#[tokio::test]
async fn json_against_a_given_cluster() {
    let node = Fake::new(1);
    let address = serve(node.clone()).await;
    let output = riteraft(
        &[
            "--cluster",
            &address,
            "--json",
            "bench",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--clients",
            "4",
            "--value-size",
            "200",
        ],
        None,
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stderr(&output),
        "",
        "no progress bar when stderr is not a terminal"
    );
    assert_eq!(stdout(&output).lines().count(), 1, "one JSON object");
    let json = json_out(&output);
    assert_run_shape(&json);
    assert!(json["ops"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["errors"], 0);
    assert_eq!(json["cluster"], "given");
    assert_eq!(json["addresses"][0], address.as_str());
    assert_eq!(json["leader"]["address"], address.as_str());
    assert_eq!(json["plugin_sha256"], "5ca1ab1e");
    assert_eq!(json["clients"], 4);
    assert_eq!(json["connections"], 4);
    assert_eq!(json["value_size"], 200);
    assert_eq!(json["duration_s"], 0.5);
    assert_eq!(json["plugin"], Value::Null);
    let proposals = node
        .log()
        .iter()
        .filter(|call| call.starts_with("propose put k"))
        .count();
    assert!(proposals as u64 >= json["ops"].as_u64().unwrap());
}

#[tokio::test]
async fn reads_prefill_the_keys_and_text_shows_the_figures() {
    let node = Fake::new(1);
    let address = serve(node.clone()).await;
    let output = riteraft(
        &[
            "bench",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--clients",
            "3",
            "--reads",
            "100",
            "--stale",
            "--keys",
            "10",
        ],
        Some(&address),
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    for expected in [
        "3 clients over 3 connections (pipelined), reads only (stale), 256-byte values, 10 keys",
        "(given)",
        "prefill:     10 keys written once",
        "throughput:",
        "latency:     p50",
        "errors:      0",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    let log = node.log();
    let puts = log
        .iter()
        .filter(|call| call.starts_with("propose put"))
        .count();
    assert_eq!(puts, 10, "every key written once, then only reads");
    assert!(
        log.iter()
            .any(|call| call.starts_with("query get k") && call.ends_with("stale=true"))
    );
}

#[tokio::test]
async fn a_cluster_that_answers_nothing_fails_the_bench() {
    // No node answers Status: nothing to load.
    let failing = Fake::new(1);
    failing.fail_always(tonic::Code::InvalidArgument);
    let failing_address = serve(failing).await;
    let output = riteraft(
        &[
            "--cluster",
            &failing_address,
            "--json",
            "bench",
            "--duration",
            "0.3",
        ],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr(&output).contains("no node of the cluster answers"),
        "{output:?}"
    );
    assert!(json_out(&output)["error"].is_string());

    // Status works but every write times out: the errors are counted, and with no request
    // answered at all the bench fails, quoting them.
    let slow = Fake::new(1);
    slow.delay_proposals(std::time::Duration::from_secs(5));
    let slow_address = serve(slow).await;
    let output = riteraft(
        &[
            "--cluster",
            &slow_address,
            "--timeout",
            "0.1",
            "bench",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--clients",
            "2",
        ],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = stderr(&output);
    assert!(message.contains("no request was answered"), "{message}");
    assert!(message.contains("timed out"), "{message}");
}

#[tokio::test]
async fn local_only_flags_are_refused_with_a_given_cluster() {
    let address = serve(Fake::new(1)).await;
    let output = riteraft(&["bench", "--native", "--duration", "0.1"], Some(&address)).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = stderr(&output);
    assert!(message.contains("--native"), "{message}");
    assert!(message.contains(&address), "{message}");

    let output = riteraft(&["bench", "--stale"], Some(&address)).await;
    assert!(stderr(&output).contains("--reads"), "{output:?}");
}

#[tokio::test]
async fn a_missing_node_binary_is_explained() {
    let output = riteraft(
        &[
            "bench",
            "--host",
            "/no/such/riteraft-host",
            "--plugin",
            "/no/such/kv.wasm",
            "--duration",
            "0.1",
        ],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr(&output).contains("no riteraft-host binary at /no/such/riteraft-host"),
        "{output:?}"
    );
}

/// The `riteraft-host` binary and the kv plugin, if built: `RITERAFT_BENCH_HOST` and
/// `RITERAFT_BENCH_PLUGIN`, or the usual places in the target dir.
fn built_node_and_plugin() -> Option<(PathBuf, PathBuf)> {
    let riteraft = Path::new(env!("CARGO_BIN_EXE_riteraft"));
    let bin_dir = riteraft.parent()?;
    let target_dir = bin_dir.parent()?;
    let host = std::env::var_os("RITERAFT_BENCH_HOST")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir.join("riteraft-host"));
    let plugin = std::env::var_os("RITERAFT_BENCH_PLUGIN")
        .map(PathBuf::from)
        .or_else(|| {
            [
                "wasm32-wasip2/release/kv.wasm",
                "plugins/wasm32-wasip2/release/kv.wasm",
            ]
            .iter()
            .map(|path| target_dir.join(path))
            .find(|path| path.is_file())
        })?;
    (host.is_file() && plugin.is_file()).then_some((host, plugin))
}

#[tokio::test]
async fn smoke_on_a_local_cluster() {
    let Some((host, plugin)) = built_node_and_plugin() else {
        println!(
            "skipped: no riteraft-host next to riteraft or no kv plugin built; run \
             `cargo build -p riteraft-host && cargo build --release --target wasm32-wasip2 -p kv`"
        );
        return;
    };
    let output = riteraft(
        &[
            "--json",
            "bench",
            "--duration",
            "1",
            "--clients",
            "4",
            "--host",
            host.to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let json = json_out(&output);
    assert_run_shape(&json);
    assert_eq!(json["cluster"], "local");
    assert_eq!(json["state_machine"], "wasm");
    assert!(json["ops"].as_u64().unwrap() > 0, "{json}");
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        let pid = node["pid"].as_u64().unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || !cfg!(target_os = "linux"),
            "node {pid} outlived the bench"
        );
        if cfg!(target_os = "linux") {
            assert!(node["rss_kib"].as_u64().unwrap() > 0, "{node}");
        }
    }
    let dir = json["data_dir"].as_str().unwrap();
    assert!(!Path::new(dir).exists(), "{dir} was left behind");
}
