//! The `riteraft` binary against fake nodes (riteraft-test-support's `fake_node`): what it
//! prints and how it exits.

mod common;

use std::process::Output;

use common::{json_out, stderr, stdout};

use riteraft_test_support::fake_node::{Fake, dead_address, serve};
use serde_json::{Value, json};

/// Runs `riteraft` with `args`, without `RITERAFT_CLUSTER`.
async fn riteraft(args: &[&str]) -> Output {
    common::riteraft(args, None).await
}

#[tokio::test]
async fn propose_prints_the_answer() {
    let address = serve(Fake::new(1)).await;
    let output = riteraft(&["--cluster", &address, "propose", "put a 1"]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "ok put a 1\n");
    assert_eq!(stderr(&output), "");

    // Flags may also follow the command, as in `riteraft propose --cluster ADDR TEXT`.
    let output = riteraft(&["propose", "--cluster", &address, "--json", "put b 2"]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        json_out(&output),
        json!({ "index": 2, "output": "ok put b 2" })
    );
}

#[tokio::test]
async fn a_rejection_exits_1_naming_the_store() {
    let address = serve(Fake::new(1)).await;
    let output = riteraft(&["--cluster", &address, "propose", "reject no such key"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "error: rejected by the store: no such key\n"
    );

    let output = riteraft(&["--cluster", &address, "--json", "query", "reject bad"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        json_out(&output),
        json!({ "applied_index": 1, "rejection": "bad" })
    );
}

#[tokio::test]
async fn query_fails_over_and_honours_stale() {
    let address = serve(Fake::new(2)).await;
    let cluster = format!("{},{address}", dead_address());
    let output = riteraft(&["--cluster", &cluster, "query", "--stale", "get a"]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "get a from node 2 (stale)\n");
}

#[tokio::test]
async fn the_cluster_can_come_from_the_environment() {
    let address = serve(Fake::new(1)).await;
    let output = common::riteraft(&["query", "get a"], Some(&address)).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "get a from node 1\n");
}

#[tokio::test]
async fn status_as_text_and_json() {
    let address = serve(Fake::new(2)).await;
    let output = riteraft(&["--cluster", &address, "status"]).await;
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    for line in [
        "id:             2\n",
        "role:           follower\n",
        "leader:         1 (127.0.0.1:7001)\n",
        "  * 1  127.0.0.1:7001  voter  match 12, lag 0  (leader)\n",
        "    2  127.0.0.1:7002  learner (promote)  match 9, lag 3  (this node)\n",
        "  index 4 at 1970-01-02 00:00:00.000 UTC: sha256 5ca1ab1e version 2.0\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }

    let output = riteraft(&["--cluster", &address, "--json", "status"]).await;
    assert!(output.status.success(), "{output:?}");
    let status = json_out(&output);
    assert_eq!(status["id"], 2);
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["plugin_version"], Value::Null);
    assert_eq!(
        status["members"],
        json!([
            { "id": 1, "address": "127.0.0.1:7001", "role": "voter", "match_index": 12, "lag": 0 },
            { "id": 2, "address": "127.0.0.1:7002", "role": "learner", "plan": "promote", "match_index": 9, "lag": 3 },
        ])
    );
}

#[tokio::test]
async fn leave_and_transfer_leader() {
    let node = Fake::new(1);
    let address = serve(node.clone()).await;
    let output = riteraft(&["--cluster", &address, "leave", "--node", "3"]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "node 3 is leaving the cluster\n");
    let output = riteraft(&["--cluster", &address, "leave"]).await;
    assert_eq!(
        stdout(&output),
        format!("the node at {address} is leaving the cluster\n")
    );
    let output = riteraft(&[
        "--cluster",
        &address,
        "--json",
        "transfer-leader",
        "--to",
        "2",
    ])
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(json_out(&output), json!({ "ok": true, "to": 2 }));
    assert_eq!(node.log(), ["leave 3", "leave 0", "transfer 2"]);
}

#[tokio::test]
async fn unreachable_cluster_exits_1_with_an_error() {
    let dead = dead_address();
    let output = riteraft(&["--cluster", &dead, "propose", "put a 1"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stdout(&output), "");
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!("error: could not reach any node (tried {dead})")),
        "{message}"
    );

    let output = riteraft(&["--cluster", &dead, "--json", "status"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let error = json_out(&output)["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("could not reach any node"), "{error}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["propose"][..],
        &["transfer-leader"],
        &["frobnicate"],
        &["--timeout", "0", "status"],
        &["--cluster", "nowhere", "status"],
    ] {
        let output = riteraft(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        assert!(stderr(&output).contains("error"), "{args:?}: {output:?}");
    }
}

#[tokio::test]
async fn help_lists_the_commands_and_flags() {
    let output = riteraft(&["--help"]).await;
    assert!(output.status.success(), "{output:?}");
    let help = stdout(&output);
    for word in [
        "propose",
        "query",
        "status",
        "leave",
        "transfer-leader",
        "--cluster",
        "--json",
        "--timeout",
        "RITERAFT_CLUSTER",
    ] {
        assert!(help.contains(word), "{word} not in\n{help}");
    }
}

#[tokio::test]
async fn version_names_the_source_revision() {
    let output = riteraft(&["--version"]).await;
    assert!(output.status.success(), "{output:?}");
    let version = stdout(&output);
    let expected = format!("riteraft {} (rev ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&expected), "{version}");
    assert!(!version.contains("(rev )"), "{version}");
}
