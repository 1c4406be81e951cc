//! Clusters of real `riteraft-host` processes on loopback, driven through the gRPC client
//! service as a user would: replication, failover, membership, snapshots and error semantics.
//!
//! Every test is bounded by [`within`] and every harness call by its own timeout, so a hang
//! fails with a message (and the nodes' logs) instead of stalling CI. Nodes are killed when a
//! test ends, however it ends. The suite runs against the `kv` plugin (`put KEY VALUE`,
//! `del KEY`; queries `get KEY`, `keys [PREFIX]`).
//!
//! One test binary, a module per scenario: `replication` (writes, reads, failover), `membership`
//! (leaving, removal, transfers), `learners` (joining as a learner, read replicas,
//! replacements), `divergence` (a replica whose answers differ), `packing` (commands sharing
//! log entries), `reads` (stale, linearizable, leases), `snapshots` (catch-up,
//! large stores, traps after a snapshot), `errors` (what a client gets back), `health` (the
//! health and reflection services). Shared helpers are here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use riteraft_proto::{ProposeRequest, QueryRequest, propose_response, query_response};
use riteraft_test_support::{Cluster, ClusterOptions, within};
use tonic::Code;

/// A short proposal timeout keeps the tests that wait for one to expire short.
const PROPOSAL_TIMEOUT_MS: u64 = 2000;
/// Slack on top of a node-side timeout before the test calls it a hang: a debug build on a
/// loaded 2-core machine is slow.
const MARGIN: Duration = Duration::from_secs(3);
/// Limit for a whole test (the catch-up test, which writes 10,000 entries, gets more).
const TEST_LIMIT: Duration = Duration::from_secs(90);
/// How long an election may take after a leader dies.
const ELECTION_LIMIT: Duration = Duration::from_secs(10);
/// How long replication to every node may take once writes stopped.
const CONVERGE_LIMIT: Duration = Duration::from_secs(20);

fn options() -> ClusterOptions {
    ClusterOptions::new(env!("CARGO_BIN_EXE_riteraft-host"))
        .proposal_timeout_ms(PROPOSAL_TIMEOUT_MS)
}

fn proposal_timeout() -> Duration {
    Duration::from_millis(PROPOSAL_TIMEOUT_MS)
}

/// Proposes `put key value` through `node` and checks the store acknowledged it.
async fn put(cluster: &Cluster, node: u64, key: &str, value: &str) {
    let answer = cluster
        .propose(node, &format!("put {key} {value}"))
        .await
        .unwrap_or_else(|e| panic!("put {key} through node {node}: {e}"));
    let answer = answer.unwrap_or_else(|e| panic!("put {key} through node {node} rejected: {e}"));
    assert!(
        answer.starts_with(&format!("ok: {key} = {value}")),
        "unexpected answer to put {key}: {answer}"
    );
}

/// Asserts `get key` on `node` answers `value` (linearizable unless `stale`).
async fn assert_get(cluster: &Cluster, node: u64, key: &str, value: &str, stale: bool) {
    let answer = cluster
        .query(node, &format!("get {key}"), stale)
        .await
        .unwrap_or_else(|e| panic!("get {key} on node {node} (stale: {stale}): {e}"));
    assert_eq!(
        answer,
        Ok(value.to_string()),
        "get {key} on node {node} (stale: {stale})"
    );
}

/// The running nodes other than `leader`.
fn followers(cluster: &Cluster, leader: u64) -> Vec<u64> {
    cluster
        .live_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect()
}

/// Waits until every running node lists exactly `members` (ids, sorted) and knows a leader.
async fn wait_members(cluster: &Cluster, members: &[u64]) {
    let what = format!("every running node to list members {members:?}");
    cluster
        .wait_for(&what, CONVERGE_LIMIT, async || {
            for id in cluster.live_ids() {
                let status = cluster.status(id).await.ok()?;
                let mut ids: Vec<u64> = status.members.iter().map(|m| m.id).collect();
                ids.sort_unstable();
                if ids != members || status.leader_id == 0 {
                    return None;
                }
            }
            Some(())
        })
        .await
}

/// After a node left: the others are the members, each takes a write, and each reads the
/// write made before (`a` = 1) and every write made after.
async fn remaining_members_keep_serving(cluster: &Cluster, remaining: &[u64]) {
    wait_members(cluster, remaining).await;
    for &id in remaining {
        put(cluster, id, &format!("after{id}"), "2").await;
    }
    for &id in remaining {
        assert_get(cluster, id, "a", "1", false).await;
        for &writer in remaining {
            assert_get(cluster, id, &format!("after{writer}"), "2", false).await;
        }
    }
}

mod divergence;
mod errors;
mod health;
mod learners;
mod membership;
mod packing;
mod reads;
mod replication;
mod snapshots;
