//! Clusters of real `riteraft-host` processes on loopback, driven through the gRPC client
//! service as a user would: replication, failover, membership, snapshots and error semantics.
//!
//! Every test is bounded by [`within`] and every harness call by its own timeout, so a hang
//! fails with a message (and the nodes' logs) instead of stalling CI. Nodes are killed when a
//! test ends, however it ends. The suite runs against the `kv` plugin (`put KEY VALUE`,
//! `del KEY`; queries `get KEY`, `keys [PREFIX]`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use riteraft_client::proto::{ProposeRequest, QueryRequest, propose_response, query_response};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_proposes_queries_and_reports_its_status() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(1, options()).await;
        let before = cluster.status(1).await.unwrap();
        assert_eq!(before.id, 1);
        assert_eq!(before.role, "leader");
        assert_eq!(before.leader_id, 1);
        assert!(before.term >= 1, "term {}", before.term);
        assert_eq!(before.members.len(), 1, "{:?}", before.members);
        assert_eq!(before.members[0].id, 1);
        assert_eq!(before.members[0].address, cluster.addr(1).to_string());
        assert_eq!(
            before.plugin_sha256.len(),
            64,
            "plugin_sha256 is a hex sha256: {:?}",
            before.plugin_sha256
        );

        let first = cluster
            .propose_raw(1, b"put a 1".to_vec())
            .await
            .expect("propose on a one-node cluster");
        assert_eq!(
            first.result,
            Some(propose_response::Result::Output(
                b"ok: a = 1 (new)".to_vec()
            ))
        );
        assert!(first.index > before.applied_index);
        assert_eq!(
            cluster.propose(1, "put a 2").await.unwrap(),
            Ok("ok: a = 2 (was 1)".into())
        );

        assert_get(&cluster, 1, "a", "2", false).await;
        assert_get(&cluster, 1, "a", "2", true).await;
        assert_eq!(
            cluster.query(1, "get b", false).await.unwrap(),
            Err("no such key: b".into())
        );
        let read = cluster
            .query_raw(1, b"get a".to_vec(), false)
            .await
            .unwrap();
        assert!(read.applied_index > first.index, "{read:?}");

        let after = cluster.status(1).await.unwrap();
        assert!(
            after.applied_index >= before.applied_index + 2,
            "applied index {} -> {}",
            before.applied_index,
            after.applied_index
        );
        assert!(after.commit_index >= after.applied_index);
        assert_eq!(after.plugin_sha256, before.plugin_sha256);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_take_writes_through_every_node_and_serve_reads_from_every_node() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let ids = cluster.ids();
        assert_eq!(ids, [1, 2, 3]);
        // Followers forward writes to the leader: every node accepts them.
        for &writer in &ids {
            for k in 0..5 {
                put(
                    &cluster,
                    writer,
                    &format!("w{writer}k{k}"),
                    &format!("v{writer}.{k}"),
                )
                .await;
            }
        }
        // Linearizable reads see every acknowledged write, whichever node serves them.
        for &reader in &ids {
            for &writer in &ids {
                for k in 0..5 {
                    let (key, value) = (format!("w{writer}k{k}"), format!("v{writer}.{k}"));
                    assert_get(&cluster, reader, &key, &value, false).await;
                }
            }
        }
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        for &id in &ids {
            let status = cluster.status(id).await.unwrap();
            assert_eq!(status.id, id);
            assert_eq!(status.leader_id, leader, "node {id}'s leader");
            let expected_role = if id == leader { "leader" } else { "follower" };
            assert_eq!(status.role, expected_role, "node {id}'s role");
            let mut members: Vec<(u64, String)> = status
                .members
                .iter()
                .map(|m| (m.id, m.address.clone()))
                .collect();
            members.sort();
            let expected: Vec<(u64, String)> = ids
                .iter()
                .map(|&m| (m, cluster.addr(m).to_string()))
                .collect();
            assert_eq!(members, expected, "node {id}'s members");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_quickly_and_acknowledged_writes_survive() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let old_leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let writer_node = followers(&cluster, old_leader)[0];

        // A writer keeps proposing through a follower while the leader dies. Only what it got
        // an answer for is acknowledged; a failed write may or may not have applied.
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let errors = Arc::new(std::sync::Mutex::new(Vec::<tonic::Status>::new()));
        let writer = {
            let (stop, acknowledged, errors) = (stop.clone(), acknowledged.clone(), errors.clone());
            let mut client = cluster.client(writer_node);
            let call_timeout = cluster.options().call_timeout();
            tokio::spawn(async move {
                for i in 0..100_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let command = format!("put w{i} {i}").into_bytes();
                    let call = client.propose(ProposeRequest { command });
                    match tokio::time::timeout(call_timeout, call).await {
                        Ok(Ok(response)) => {
                            assert!(
                                matches!(
                                    response.get_ref().result,
                                    Some(propose_response::Result::Output(_))
                                ),
                                "put w{i}: {response:?}"
                            );
                            acknowledged.lock().unwrap().push(i);
                        }
                        Ok(Err(status)) => {
                            errors.lock().unwrap().push(status);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(_) => panic!("put w{i} got no answer within {call_timeout:?}"),
                    }
                }
            })
        };
        let acked = || acknowledged.lock().unwrap().len();
        cluster
            .wait_for("20 acknowledged writes", CONVERGE_LIMIT, async || {
                (acked() >= 20).then_some(())
            })
            .await;

        cluster.kill(old_leader);
        let killed_at = Instant::now();
        let new_leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let election = killed_at.elapsed();
        assert_ne!(new_leader, old_leader);
        assert!(election < ELECTION_LIMIT, "the election took {election:?}");
        eprintln!("new leader {new_leader} {election:?} after the old one was killed");

        // Writes go on under the new leader.
        let before = acked();
        cluster
            .wait_for(
                "10 writes acknowledged by the new leader",
                CONVERGE_LIMIT,
                async || (acked() >= before + 10).then_some(()),
            )
            .await;
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("the writer task");

        let acknowledged = acknowledged.lock().unwrap().clone();
        for survivor in cluster.live_ids() {
            for &i in &acknowledged {
                assert_get(&cluster, survivor, &format!("w{i}"), &i.to_string(), false).await;
            }
        }

        // A write lost in the failover must fail with one of the codes the contract promises
        // (proto/riteraft.proto), so clients know they may retry it.
        let errors = errors.lock().unwrap().clone();
        for status in &errors {
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Aborted | Code::DeadlineExceeded
                ),
                "a write through node {writer_node} during the failover failed with {status:?}; \
                 expected UNAVAILABLE, ABORTED or DEADLINE_EXCEEDED"
            );
        }
        eprintln!("{} writes acknowledged, {} failed", acked(), errors.len());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_two_down_still_serve_writes_and_linearizable_reads() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(5, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        put(&cluster, leader, "before", "1").await;

        // Down with the leader and one follower: the other three must elect and carry on.
        let follower = followers(&cluster, leader)[0];
        cluster.kill(leader);
        cluster.kill(follower);
        let new_leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        assert!(![leader, follower].contains(&new_leader));

        let survivors = cluster.live_ids();
        assert_eq!(survivors.len(), 3);
        for &writer in &survivors {
            put(
                &cluster,
                writer,
                &format!("after{writer}"),
                &writer.to_string(),
            )
            .await;
        }
        for &reader in &survivors {
            assert_get(&cluster, reader, "before", "1", false).await;
            for &writer in &survivors {
                assert_get(
                    &cluster,
                    reader,
                    &format!("after{writer}"),
                    &writer.to_string(),
                    false,
                )
                .await;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_compaction_catches_up_by_snapshot() {
    const ENTRIES: usize = 10_000;
    within(Duration::from_secs(240), async {
        let cluster = Cluster::start(3, options().snapshot_entries(1000)).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;

        let commands: Vec<String> = (0..ENTRIES).map(|i| format!("put k{i:05} v{i}")).collect();
        let started = Instant::now();
        let answers = cluster
            .propose_many(leader, commands, 32)
            .await
            .unwrap_or_else(|e| panic!("writing {ENTRIES} entries: {e}"));
        eprintln!("{ENTRIES} proposals took {:?}", started.elapsed());
        for (i, answer) in answers.iter().enumerate() {
            let answer = answer
                .as_ref()
                .unwrap_or_else(|e| panic!("put k{i:05}: {e}"));
            assert!(
                answer.starts_with(&format!("ok: k{i:05} = v{i}")),
                "{answer}"
            );
        }

        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let status = cluster.status(leader).await.unwrap();
        assert!(status.commit_index >= ENTRIES as u64, "{status:?}");
        // Compaction is driven by --snapshot-entries 1000, so by now the leader's last snapshot
        // covers thousands of entries (a snapshot taken for a join would sit near the start).
        let compacted = cluster
            .wait_for(
                "the leader to compact its log",
                CONVERGE_LIMIT,
                async || {
                    let status = cluster.status(leader).await.ok()?;
                    (status.snapshot_index >= 1000).then_some(status.snapshot_index)
                },
            )
            .await;
        let commit = cluster.status(leader).await.unwrap().commit_index;

        let mut cluster = cluster;
        let joined_at = Instant::now();
        let newcomer = cluster.add_node().await;
        let what = format!("node {newcomer} to apply index {commit}");
        cluster
            .wait_for(&what, Duration::from_secs(60), async || {
                let status = cluster.status(newcomer).await.ok()?;
                (status.applied_index >= commit).then_some(())
            })
            .await;
        eprintln!("node {newcomer} caught up in {:?}", joined_at.elapsed());
        let status = cluster.status(newcomer).await.unwrap();
        // The entries before `compacted` are gone from the leader's log: only a snapshot has them.
        assert!(
            status.snapshot_index >= compacted,
            "node {newcomer} should hold the snapshot at {compacted} or later: {status:?}"
        );
        for i in [0, 1, 999, 5000, ENTRIES - 1] {
            let (key, value) = (format!("k{i:05}"), format!("v{i}"));
            assert_get(&cluster, newcomer, &key, &value, true).await;
        }
        let last = format!("k{:05}", ENTRIES - 1);
        assert_get(
            &cluster,
            newcomer,
            &last,
            &format!("v{}", ENTRIES - 1),
            false,
        )
        .await;
        assert_eq!(status.members.len(), 4, "{:?}", status.members);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_follower_exits_and_the_rest_keep_serving() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        put(&cluster, leader, "a", "1").await;
        let follower = followers(&cluster, leader)[0];

        // Removed by another node (here the leader), by id.
        cluster
            .leave(leader, follower)
            .await
            .unwrap_or_else(|e| panic!("removing node {follower} through node {leader}: {e}"));
        let exit = cluster.wait_exit(follower, Duration::from_secs(15)).await;
        assert!(
            exit.is_some_and(|s| s.success()),
            "node {follower} should exit with status 0 once removed, got {exit:?}"
        );

        let mut remaining: Vec<u64> = cluster.live_ids();
        remaining.sort_unstable();
        assert_eq!(remaining.len(), 2);
        remaining_members_keep_serving(&cluster, &remaining).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_leader_hands_over_then_exits_and_the_rest_keep_serving() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let term = cluster.status(leader).await.unwrap().term;
        put(&cluster, leader, "a", "1").await;

        // The leader removes itself (node_id 0: "this node").
        cluster
            .leave(leader, 0)
            .await
            .unwrap_or_else(|e| panic!("node {leader} leaving: {e}"));
        let exit = cluster.wait_exit(leader, Duration::from_secs(15)).await;
        assert!(
            exit.is_some_and(|s| s.success()),
            "the old leader {leader} should exit with status 0, got {exit:?}"
        );

        let new_leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        assert_ne!(new_leader, leader);
        let status = cluster.status(new_leader).await.unwrap();
        assert!(
            status.term > term,
            "leadership moved, so the term grew: {status:?}"
        );
        let mut remaining = cluster.live_ids();
        remaining.sort_unstable();
        assert_eq!(remaining.len(), 2);
        remaining_members_keep_serving(&cluster, &remaining).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_chosen_follower_on_request() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let followers = followers(&cluster, leader);
        let (target, via) = (followers[0], followers[1]);

        // Asked through a follower, which forwards the request to the leader.
        cluster
            .transfer_leader(via, target)
            .await
            .unwrap_or_else(|e| panic!("transfer to node {target} through node {via}: {e}"));
        let what = format!("node {target} to lead");
        cluster
            .wait_for(&what, ELECTION_LIMIT, async || {
                let status = cluster.status(target).await.ok()?;
                (status.role == "leader").then_some(())
            })
            .await;
        put(&cluster, leader, "after", "transfer").await;
        assert_get(&cluster, target, "after", "transfer", false).await;
        assert_eq!(cluster.status(leader).await.unwrap().leader_id, target);
    })
    .await
}

/// With `--read-lease` the leader answers linearizable reads from its lease, without a round
/// to the followers. A leader frozen (SIGSTOP) while the others elect a new leader and take a
/// write must not answer from its old state when it wakes up: its lease has run out, so every
/// answer it gives is the new value or an error, never the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_read_lease_never_answers_a_stale_read() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options().arg("--read-lease")).await;
        let old = cluster.wait_for_leader(ELECTION_LIMIT).await;
        put(&cluster, old, "k", "old").await;
        for node in cluster.ids() {
            assert_get(&cluster, node, "k", "old", false).await;
        }

        cluster.pause(old);
        let others = followers(&cluster, old);
        let new = cluster
            .wait_for(
                "a new leader among the others",
                ELECTION_LIMIT,
                async || {
                    for &id in &others {
                        if cluster.status(id).await.ok()?.role == "leader" {
                            return Some(id);
                        }
                    }
                    None
                },
            )
            .await;
        put(&cluster, new, "k", "new").await;

        // Queries sent while it is frozen wait in its socket and race, when it wakes, with the
        // new leader's messages; then more right after.
        let early: Vec<_> = (0..8)
            .map(|_| {
                let mut client = cluster.client(old);
                tokio::spawn(async move {
                    let request = QueryRequest {
                        request: b"get k".to_vec(),
                        stale: false,
                    };
                    match client.query(request).await.map(|r| r.into_inner().result) {
                        Ok(Some(query_response::Result::Output(value))) => {
                            Ok(String::from_utf8_lossy(&value).into_owned())
                        }
                        Ok(other) => Err(format!("{other:?}")),
                        Err(status) => Err(status.to_string()),
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.resume(old);
        let mut answers = Vec::new();
        for query in early {
            answers.push(query.await.expect("query task"));
        }
        for _ in 0..20 {
            answers.push(match cluster.query(old, "get k", false).await {
                Ok(answer) => answer,
                Err(status) => Err(status.to_string()),
            });
        }
        eprintln!("answers of the woken leader: {answers:?}");
        for value in answers.iter().flatten() {
            assert_eq!(
                value, "new",
                "a stale read from the woken leader: {answers:?}"
            );
        }
        assert!(
            answers.iter().any(|answer| answer.is_ok()),
            "the woken node, now a follower, serves linearizable reads again: {answers:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_are_local_and_linearizable_reads_need_the_leader() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let followers = followers(&cluster, leader);

        // A linearizable read through a follower, right after a write through the leader (or
        // the other follower), sees the write: ReadIndex waits until the follower applied it.
        for i in 0..10 {
            let writer = if i % 2 == 0 { leader } else { followers[1] };
            let (key, value) = (format!("r{i}"), i.to_string());
            put(&cluster, writer, &key, &value).await;
            assert_get(&cluster, followers[0], &key, &value, false).await;
        }

        // Leave one follower alone: with no leader, it still answers stale reads from its own
        // state, but a linearizable read fails, with a clear error, in bounded time.
        let survivor = followers[0];
        cluster
            .wait_applied(
                cluster.status(leader).await.unwrap().commit_index,
                CONVERGE_LIMIT,
            )
            .await;
        cluster.kill(leader);
        cluster.kill(followers[1]);
        let what = format!("node {survivor} to notice it has no leader");
        cluster
            .wait_for(&what, ELECTION_LIMIT, async || {
                let status = cluster.status(survivor).await.ok()?;
                (status.leader_id == 0).then_some(())
            })
            .await;

        assert_get(&cluster, survivor, "r9", "9", true).await;
        assert_eq!(
            cluster.query(survivor, "get nothing", true).await.unwrap(),
            Err("no such key: nothing".into())
        );

        let started = Instant::now();
        let result = cluster.query(survivor, "get r9", false).await;
        let elapsed = started.elapsed();
        let status = result.expect_err("a linearizable read without a leader must fail");
        eprintln!("linearizable read without a leader: {status:?} after {elapsed:?}");
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "unexpected error: {status:?}"
        );
        assert!(
            !status.message().is_empty(),
            "the error says why: {status:?}"
        );
        assert!(
            elapsed <= proposal_timeout() + MARGIN,
            "the read took {elapsed:?} to fail"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_error_reaches_the_client_and_is_replicated_once() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        put(&cluster, leader, "x", "1").await;
        let before = cluster.wait_caught_up(CONVERGE_LIMIT).await;
        for id in cluster.ids() {
            let status = cluster.status(id).await.unwrap();
            assert_eq!(
                status.applied_index, before,
                "node {id} before the failing command"
            );
        }

        // Proposed through a follower, so the rejection also travels back through forwarding.
        let follower = followers(&cluster, leader)[0];
        let response = cluster
            .propose_raw(follower, b"del missing".to_vec())
            .await
            .expect("a rejected command is still an answer, not a gRPC error");
        assert_eq!(
            response.result,
            Some(propose_response::Result::Rejection(
                "no such key: missing".into()
            ))
        );
        assert_eq!(response.index, before + 1, "{response:?}");

        // The entry is applied (and rejected) once on every replica, and not retried.
        cluster.wait_applied(before + 1, CONVERGE_LIMIT).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for id in cluster.ids() {
            let status = cluster.status(id).await.unwrap();
            assert_eq!(
                status.applied_index,
                before + 1,
                "node {id}'s applied index after one rejected command"
            );
            assert_get(&cluster, id, "x", "1", true).await;
        }
        assert_eq!(
            cluster.propose(follower, "del x").await.unwrap(),
            Ok("ok: deleted x (was 1)".into())
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_to_a_node_cut_off_from_the_leader_fails_in_bounded_time() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        put(&cluster, leader, "a", "1").await;
        for follower in followers(&cluster, leader) {
            cluster.kill(follower);
        }

        // At once, the node may still believe it leads: it accepts the proposal but cannot
        // commit it, so the proposal times out. Later it knows no leader and refuses at once.
        // Either way the client gets a clear error within the proposal timeout (plus slack).
        let assert_fails_in_time = async |when: &str| {
            let started = Instant::now();
            let result = cluster.propose(leader, "put lost 1").await;
            let elapsed = started.elapsed();
            let status = result.expect_err("a proposal without a quorum must fail");
            eprintln!("proposal {when}: {status:?} after {elapsed:?}");
            assert!(
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                "proposal {when}: unexpected error {status:?}"
            );
            assert!(
                !status.message().is_empty(),
                "the error says why: {status:?}"
            );
            assert!(
                elapsed <= proposal_timeout() + MARGIN,
                "proposal {when} took {elapsed:?} to fail"
            );
        };
        assert_fails_in_time("right after the followers died").await;

        let what = format!("node {leader} to step down without a quorum");
        cluster
            .wait_for(&what, ELECTION_LIMIT, async || {
                let status = cluster.status(leader).await.ok()?;
                (status.role != "leader").then_some(())
            })
            .await;
        assert_fails_in_time("after it stepped down").await;
        // What it applied is still readable locally.
        assert_get(&cluster, leader, "a", "1", true).await;
    })
    .await
}

/// A store snapshot of more than 64 MiB reaches a new node: it travels as a stream of chunks,
/// each within the gRPC message limit (16 MiB), never as one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_64_mib_reaches_a_new_node() {
    const VALUES: usize = 1100;
    const VALUE_BYTES: usize = 64 << 10;
    within(Duration::from_secs(240), async {
        // Big entries on a busy machine: give each write more time than the other tests do.
        let options = options().snapshot_entries(1000).proposal_timeout_ms(10_000);
        let cluster = Cluster::start(1, options).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        // Values differ (so no layer can shrink the state by deduplication) and are text.
        let value = |i: usize| format!("{i:08}{}", "abcdefghijklmnop".repeat(VALUE_BYTES / 16));
        let commands: Vec<String> = (0..VALUES)
            .map(|i| format!("put big{i} {}", value(i)))
            .collect();
        let started = Instant::now();
        let answers = cluster
            .propose_many(leader, commands, 8)
            .await
            .unwrap_or_else(|e| panic!("writing {VALUES} values: {e}"));
        assert!(answers.iter().all(|a| a.is_ok()));
        eprintln!(
            "wrote {} MiB in {:?}",
            (VALUES * VALUE_BYTES) >> 20,
            started.elapsed()
        );

        let mut cluster = cluster;
        let commit = cluster.status(leader).await.unwrap().commit_index;
        let joined_at = Instant::now();
        let newcomer = cluster.add_node().await;
        cluster
            .wait_for(
                "the newcomer to catch up",
                Duration::from_secs(120),
                async || {
                    let status = cluster.status(newcomer).await.ok()?;
                    (status.applied_index >= commit).then_some(())
                },
            )
            .await;
        eprintln!("node {newcomer} caught up in {:?}", joined_at.elapsed());
        let status = cluster.status(newcomer).await.unwrap();
        assert!(status.snapshot_index >= 1000, "{status:?}");
        for i in [0, 555, VALUES - 1] {
            let answer = cluster
                .query(newcomer, &format!("get big{i}"), true)
                .await
                .unwrap();
            assert_eq!(answer, Ok(value(i)), "big{i} on node {newcomer}");
        }
    })
    .await
}

/// A plugin that traps after the node's snapshot is on disk is rebuilt from the snapshot file
/// (the node keeps no copy of the state in memory) plus the entries applied since: the trapping
/// command has no effect, on every replica alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_after_a_snapshot_is_recovered_from_the_snapshot_file() {
    within(TEST_LIMIT, async {
        let options = options()
            .plugin(riteraft_test_support::plugin("misbehaving"))
            .snapshot_entries(20);
        let cluster = Cluster::start(3, options).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        for _ in 0..50 {
            let answer = cluster.propose(leader, "add 1").await.unwrap();
            assert!(answer.is_ok(), "{answer:?}");
        }
        cluster.wait_caught_up(CONVERGE_LIMIT).await;
        for id in cluster.ids() {
            let status = cluster.status(id).await.unwrap();
            assert!(status.snapshot_index > 0, "node {id} took no snapshot");
        }
        let trapped = cluster.propose(leader, "panic").await.unwrap();
        assert!(
            matches!(&trapped, Err(reason) if reason.contains("trapped")),
            "{trapped:?}"
        );
        let answer = cluster.propose(leader, "add 1").await.unwrap();
        assert!(answer.is_ok(), "{answer:?}");
        cluster.wait_caught_up(CONVERGE_LIMIT).await;
        for id in cluster.ids() {
            assert_eq!(
                cluster.query(id, "total", true).await.unwrap(),
                Ok("51".to_string()),
                "node {id}"
            );
        }
    })
    .await
}
