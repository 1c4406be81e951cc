//! Crash tests: real `riteraft-host` processes killed with SIGKILL (no goodbye, like a crash or
//! a power cut), restarted on their data dirs, a log file with a torn tail, and a disk that fills
//! up. What must hold: nothing acknowledged to a client is ever lost, and the replicas agree.
//!
//! Every test is bounded by [`within`]; nodes are killed when a test ends, however it ends (the
//! harness prints their logs on a failure). The store is the `kv` plugin.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use riteraft_client::proto::client_client::ClientClient;
use riteraft_client::proto::{ProposeRequest, QueryRequest, propose_response, query_response};
use riteraft_test_support::cluster::Connector;
use riteraft_test_support::{Cluster, ClusterOptions, within};
use tonic::Code;
use tonic::transport::Channel;

const PROPOSAL_TIMEOUT_MS: u64 = 2000;
/// A client's own limit on one call: the node's proposal timeout plus slack for a loaded machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const ELECTION_LIMIT: Duration = Duration::from_secs(15);
/// How long replication, catch-up or recovery may take (debug builds on a busy 2-core machine).
const CONVERGE_LIMIT: Duration = Duration::from_secs(30);

fn options() -> ClusterOptions {
    ClusterOptions::new(env!("CARGO_BIN_EXE_riteraft-host"))
        .proposal_timeout_ms(PROPOSAL_TIMEOUT_MS)
}

/// A seeded generator; the seed is printed so a failing run's choices can be looked at again.
fn rng(test: &str) -> StdRng {
    let seed: u64 = rand::random();
    eprintln!("{test}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `put key value` through `node`, which must be acknowledged.
async fn put(cluster: &Cluster, node: u64, key: &str, value: &str) {
    let answer = cluster
        .propose(node, &format!("put {key} {value}"))
        .await
        .unwrap_or_else(|e| panic!("put {key} through node {node}: {e}"))
        .unwrap_or_else(|e| panic!("put {key} through node {node} rejected: {e}"));
    assert!(
        answer.starts_with(&format!("ok: {key} = {value}")),
        "put {key}: {answer}"
    );
}

/// Writes `put {prefix}{i} v{i}` for every `i` in `range` through `node`, checking each answer;
/// returns the (key, value) pairs, all acknowledged.
async fn put_many(
    cluster: &Cluster,
    node: u64,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<(String, String)> {
    let pairs: Vec<(String, String)> = range
        .map(|i| (format!("{prefix}{i:04}"), format!("v{i}")))
        .collect();
    let commands = pairs.iter().map(|(k, v)| format!("put {k} {v}")).collect();
    let answers = cluster
        .propose_many(node, commands, 16)
        .await
        .unwrap_or_else(|e| panic!("writing {prefix}*: {e}"));
    for ((key, value), answer) in pairs.iter().zip(answers) {
        let answer = answer.unwrap_or_else(|e| panic!("put {key} rejected: {e}"));
        assert!(
            answer.starts_with(&format!("ok: {key} = {value}")),
            "{answer}"
        );
    }
    pairs
}

/// Asserts that `get` of every key on `node` answers its value (stale: this node's own state).
async fn assert_all_present(cluster: &Cluster, node: u64, pairs: &[(String, String)], stale: bool) {
    for (key, value) in pairs {
        let answer = cluster
            .query(node, &format!("get {key}"), stale)
            .await
            .unwrap_or_else(|e| panic!("get {key} on node {node} (stale: {stale}): {e}"));
        assert_eq!(
            answer.as_deref(),
            Ok(value.as_str()),
            "get {key} on node {node} (stale: {stale}): an acknowledged write is missing"
        );
    }
}

/// Waits until every node of `ids` has applied what the leader has committed, failing at once
/// if one of them exits (the harness's `wait_caught_up` only looks at running nodes).
async fn wait_all_caught_up(cluster: &Cluster, ids: &[u64]) -> u64 {
    let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
    let commit = cluster.status(leader).await.unwrap().commit_index;
    let what = format!("nodes {ids:?} to apply index {commit}");
    cluster
        .wait_for(&what, CONVERGE_LIMIT, async || {
            for &id in ids {
                assert!(
                    cluster.is_running(id),
                    "node {id} exited: see its log below"
                );
                if cluster.status(id).await.ok()?.applied_index < commit {
                    return None;
                }
            }
            Some(())
        })
        .await;
    commit
}

/// Waits until every node of `ids` has caught up and serves a linearizable `get key`: just after
/// a restart, reads may fail (UNAVAILABLE, or DEADLINE_EXCEEDED while a new leader commits its
/// first entry) and clients retry them; the checks that follow then allow no error.
async fn wait_serving(cluster: &Cluster, ids: &[u64], key: &str) {
    wait_all_caught_up(cluster, ids).await;
    for &id in ids {
        let what = format!("node {id} to serve a linearizable read");
        cluster
            .wait_for(&what, CONVERGE_LIMIT, async || {
                cluster
                    .query(id, &format!("get {key}"), false)
                    .await
                    .ok()
                    .map(drop)
            })
            .await;
    }
}

// ---- 1. random kills under load ---------------------------------------------------------------

/// What one writing client saw, by key (each key is written once, with one value).
#[derive(Default)]
struct Ledger {
    /// Acknowledged: the store's answer came back. These must be present, with their value.
    acked: BTreeMap<String, String>,
    /// Unknown outcome (DEADLINE_EXCEEDED, a transport error, no answer in time): may be present.
    unknown: BTreeMap<String, String>,
    /// Still being retried (after UNAVAILABLE/ABORTED only) when the load stopped.
    abandoned: BTreeMap<String, String>,
    /// Resends (after UNAVAILABLE/ABORTED, which promise the write did not apply) whose answer
    /// said the key was already there.
    resent_found_applied: Vec<String>,
}

/// The cluster's nodes as the clients see them: address and whether it is up (the test marks a
/// node down just before killing it and up once restarted, so clients pick live nodes).
struct Targets {
    nodes: Vec<(u64, SocketAddr)>,
    up: Vec<AtomicBool>,
    connector: Connector,
}

/// Writes `put c{client}-{seq} v{client}.{seq}` continuously through random live nodes until
/// `stop`, resending a write only after UNAVAILABLE or ABORTED (same key and value, so even a
/// resend of something that did apply would be harmless).
async fn client(
    client: usize,
    targets: Arc<Targets>,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
    seed: u64,
) -> Ledger {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut channels: Vec<ClientClient<Channel>> = targets
        .nodes
        .iter()
        .map(|(_, addr)| targets.connector.connect(*addr))
        .collect();
    let mut ledger = Ledger::default();
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (key, value) = (format!("c{client}-{seq}"), format!("v{client}.{seq}"));
        let mut resent = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                ledger.abandoned.insert(key, value);
                break;
            }
            let live: Vec<usize> = (0..targets.nodes.len())
                .filter(|&i| targets.up[i].load(Ordering::Relaxed))
                .collect();
            let Some(&i) = live.choose(&mut rng) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (node, addr) = targets.nodes[i];
            let request = ProposeRequest {
                command: format!("put {key} {value}").into_bytes(),
            };
            let outcome = tokio::time::timeout(CALL_TIMEOUT, channels[i].propose(request)).await;
            match outcome {
                Ok(Ok(response)) => {
                    let answer = match response.into_inner().result {
                        Some(propose_response::Result::Output(bytes)) => text(bytes),
                        other => panic!("put {key} through node {node}: {other:?}"),
                    };
                    assert!(
                        answer.starts_with(&format!("ok: {key} = {value} ")),
                        "put {key} through node {node}: {answer}"
                    );
                    if resent && !answer.ends_with("(new)") {
                        ledger.resent_found_applied.push(key.clone());
                    }
                    ledger.acked.insert(key, value);
                    acked_count.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // The node's own UNAVAILABLE (no leader) or ABORTED (lost to a leader change):
                // not applied, resend. A transport failure also shows as UNAVAILABLE, but with a
                // source error attached, and it may have reached the node: unknown outcome.
                Ok(Err(status))
                    if matches!(status.code(), Code::Unavailable | Code::Aborted)
                        && std::error::Error::source(&status).is_none() =>
                {
                    resent = true;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        Code::DeadlineExceeded
                            | Code::Unavailable
                            | Code::Unknown
                            | Code::Internal
                            | Code::Cancelled
                    ) =>
                {
                    if std::error::Error::source(&status).is_some() {
                        channels[i] = targets.connector.connect(addr);
                    }
                    ledger.unknown.insert(key, value);
                    break;
                }
                Ok(Err(status)) => panic!("put {key} through node {node}: {status:?}"),
                Err(_) => {
                    channels[i] = targets.connector.connect(addr);
                    ledger.unknown.insert(key, value);
                    break;
                }
            }
        }
    }
    ledger
}

/// Node `node`'s stale answer to `get` of each key (`Ok` value, or `Err` rejection).
async fn stale_gets(
    mut client: ClientClient<Channel>,
    node: u64,
    keys: Arc<Vec<String>>,
) -> Vec<Result<String, String>> {
    let mut answers = Vec::with_capacity(keys.len());
    for key in keys.iter() {
        let request = QueryRequest {
            request: format!("get {key}").into_bytes(),
            stale: true,
        };
        let response = tokio::time::timeout(CALL_TIMEOUT, client.query(request))
            .await
            .unwrap_or_else(|_| panic!("get {key} on node {node}: no answer"))
            .unwrap_or_else(|e| panic!("get {key} on node {node}: {e}"))
            .into_inner();
        answers.push(match response.result {
            Some(query_response::Result::Output(bytes)) => Ok(text(bytes)),
            Some(query_response::Result::Rejection(reason)) => Err(reason),
            None => panic!("get {key} on node {node}: no result"),
        });
    }
    answers
}

/// Waits until the clients have had 20 more writes acknowledged: the cluster serves again.
async fn progress(cluster: &Cluster, acked: &AtomicUsize, what: &str) {
    let before = acked.load(Ordering::Relaxed);
    cluster
        .wait_for(what, CONVERGE_LIMIT, async || {
            (acked.load(Ordering::Relaxed) >= before + 20).then_some(())
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_load_lose_no_acknowledged_write() {
    const NODES: usize = 3;
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 10;
    within(Duration::from_secs(240), async {
        let started = Instant::now();
        let mut rng = rng("random kills");
        // Snapshots every 300 entries: restarts rebuild from a snapshot plus the log after it.
        let mut cluster = Cluster::start(NODES, options().snapshot_entries(300)).await;
        let ids = cluster.ids();
        let targets = Arc::new(Targets {
            nodes: ids.iter().map(|&id| (id, cluster.addr(id))).collect(),
            up: ids.iter().map(|_| AtomicBool::new(true)).collect(),
            connector: cluster.connector(),
        });
        let position = |id: u64| ids.iter().position(|&i| i == id).expect("a known node");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (targets, stop, acked) = (targets.clone(), stop.clone(), acked.clone());
                tokio::spawn(client(c, targets, stop, acked, rng.random()))
            })
            .collect();
        progress(&cluster, &acked, "the first 20 writes").await;

        let (mut kills, mut leader_kills, mut restarts) = (0, 0, 0);
        for round in 0..ROUNDS {
            let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
            // Half the rounds kill the leader; one node at a time is always a minority.
            let victim = if round % 2 == 0 {
                leader
            } else {
                let others: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
                *others.choose(&mut rng).expect("followers exist")
            };
            targets.up[position(victim)].store(false, Ordering::Relaxed);
            cluster.kill(victim);
            kills += 1;
            leader_kills += usize::from(victim == leader);
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..1000))).await;
            cluster.restart(victim).await;
            restarts += 1;
            targets.up[position(victim)].store(true, Ordering::Relaxed);
            eprintln!(
                "round {round}: killed node {victim}{} and restarted it ({} acknowledged so far)",
                if victim == leader { " (leader)" } else { "" },
                acked.load(Ordering::Relaxed)
            );
            let what = format!("20 more writes after round {round}");
            progress(&cluster, &acked, &what).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut ledger = Ledger::default();
        for task in clients {
            let one = task.await.expect("a client task");
            ledger.acked.extend(one.acked);
            ledger.unknown.extend(one.unknown);
            ledger.abandoned.extend(one.abandoned);
            ledger.resent_found_applied.extend(one.resent_found_applied);
        }

        let commit = wait_all_caught_up(&cluster, &ids).await;
        eprintln!("random kills: every node applied index {commit}");
        // Every key ever written, acknowledged or not, read on every node from its own state.
        let written: BTreeMap<&String, &String> = ledger
            .acked
            .iter()
            .chain(&ledger.unknown)
            .chain(&ledger.abandoned)
            .collect();
        let keys: Arc<Vec<String>> = Arc::new(written.keys().map(|k| k.to_string()).collect());
        let readers: Vec<_> = ids
            .iter()
            .map(|&id| tokio::spawn(stale_gets(cluster.client(id), id, keys.clone())))
            .collect();
        let mut answers = Vec::new();
        for reader in readers {
            answers.push(reader.await.expect("a reader task"));
        }
        let mut lost = Vec::new();
        let mut unknown_present = 0;
        for (k, key) in keys.iter().enumerate() {
            for (n, id) in ids.iter().enumerate().skip(1) {
                assert_eq!(
                    answers[n][k], answers[0][k],
                    "get {key}: node {id} and node {} disagree",
                    ids[0]
                );
            }
            let present = answers[0][k].as_ref().ok();
            match ledger.acked.get(key) {
                Some(value) if present != Some(value) => lost.push(key.clone()),
                Some(_) => {}
                None => {
                    if let Some(found) = present {
                        assert_eq!(found, written[key], "get {key}: a value never written");
                        unknown_present += 1;
                    }
                }
            }
        }
        // The same listing everywhere (the first 1000 keys, in order).
        let mut listings = Vec::new();
        for &id in &ids {
            listings.push(cluster.query(id, "keys c", true).await.unwrap());
        }
        assert!(
            listings.iter().all(|l| *l == listings[0]),
            "keys listings differ"
        );

        eprintln!(
            "random kills: {NODES} nodes, {CLIENTS} clients, {kills} kills ({leader_kills} of \
             the leader), {restarts} restarts; {} writes acknowledged, {} with an unknown \
             outcome ({unknown_present} of those present), {} abandoned; acknowledged writes \
             missing: {}; {} keys compared on every node, replicas identical; resends found \
             already applied: {:?}; {:?}",
            ledger.acked.len(),
            ledger.unknown.len(),
            ledger.abandoned.len(),
            lost.len(),
            keys.len(),
            ledger.resent_found_applied,
            started.elapsed(),
        );
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        assert_eq!(kills, ROUNDS);
        assert_eq!(restarts, ROUNDS);
    })
    .await
}

// ---- 2. the whole cluster killed at once ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_killed_at_once_restarts_with_every_acknowledged_write() {
    within(Duration::from_secs(150), async {
        let started = Instant::now();
        let mut cluster = Cluster::start(3, options().snapshot_entries(200)).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let mut pairs = put_many(&cluster, leader, "k", 0..250).await;
        // The first writes are in a snapshot by now; the next ones only in the log after it.
        cluster
            .wait_for(
                "every node to take a snapshot",
                CONVERGE_LIMIT,
                async || {
                    for id in cluster.live_ids() {
                        if cluster.status(id).await.ok()?.snapshot_index < 200 {
                            return None;
                        }
                    }
                    Some(())
                },
            )
            .await;
        pairs.extend(put_many(&cluster, leader, "k", 250..350).await);

        let ids = cluster.ids();
        for &id in &ids {
            cluster.kill(id);
        }
        for &id in &ids {
            cluster.restart(id).await;
        }
        wait_serving(&cluster, &ids, &pairs[0].0).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        // Linearizable reads, spread over the nodes.
        for (i, chunk) in pairs.chunks(pairs.len().div_ceil(ids.len())).enumerate() {
            assert_all_present(&cluster, ids[i], chunk, false).await;
        }
        for &id in &ids {
            put(&cluster, id, &format!("after-restart-{id}"), "yes").await;
        }
        wait_all_caught_up(&cluster, &ids).await;
        for &id in &ids {
            assert_all_present(&cluster, id, &pairs[pairs.len() - 20..], true).await;
        }
        eprintln!(
            "whole cluster: {} acknowledged writes survived killing all {} nodes (leader now \
             {leader}); {:?}",
            pairs.len(),
            ids.len(),
            started.elapsed()
        );
    })
    .await
}

// ---- 3. a torn log tail -----------------------------------------------------------------------

/// The newest file of raft-engine's append queue in `log_dir` (`<seq>.raftlog`).
fn newest_log_file(log_dir: &Path) -> PathBuf {
    fs::read_dir(log_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", log_dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let seq: u64 = name.strip_suffix(".raftlog")?.parse().ok()?;
            Some((seq, path))
        })
        .max()
        .unwrap_or_else(|| panic!("no .raftlog file in {}", log_dir.display()))
        .1
}

/// Where each write batch lies in a raft-engine log file. The format (raft-engine 0.4): a file
/// header (magic, version, and for version 2 a u64 more), then batches, each starting with a
/// big-endian u64 `length << 8 | compression`. raft-engine preallocates files with zeros, so
/// the data ends where no further batch header is, not at the file's length.
fn log_batches(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    const MAGIC: &[u8] = b"RAFT-LOG-FILE-HEADER-9986AB3E47F320B394C8E84916EB0ED5";
    const BATCH_HEADER: usize = 16;
    assert!(bytes.starts_with(MAGIC), "not a raft-engine log file");
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let version = u64_at(MAGIC.len());
    assert!(matches!(version, 1 | 2), "raft-engine log format {version}");
    let mut at = MAGIC.len() + 8 * version as usize;
    let mut batches = Vec::new();
    while at + BATCH_HEADER <= bytes.len() {
        let len = (u64_at(at) >> 8) as usize;
        if len < BATCH_HEADER || at + len > bytes.len() {
            break;
        }
        batches.push(at..at + len);
        at += len;
    }
    batches
}

/// Cuts `cut` bytes off the end of the data in the newest log file of `log_dir` (as if the
/// disk had lost the end of the last writes). Returns the file and its data length before.
fn cut_log_tail(log_dir: &Path, cut: usize) -> (PathBuf, usize) {
    let file = newest_log_file(log_dir);
    let batches = log_batches(&fs::read(&file).expect("reading the log file"));
    let end = batches.last().expect("the log holds batches").end;
    assert!(end > cut + 200, "{} holds only {end} bytes", file.display());
    let handle = OpenOptions::new().write(true).open(&file).unwrap();
    handle.set_len((end - cut) as u64).unwrap();
    handle.sync_all().unwrap();
    (file, end)
}

/// Writes the first `len` bytes of a copy of the last batch right after it, in the newest log
/// file of `log_dir`: a write torn by a crash (its header promises more than is there), which
/// was never synced, so nothing in it was acknowledged. Returns the file and the torn length.
fn tear_a_write(log_dir: &Path, len: usize) -> (PathBuf, usize) {
    use std::os::unix::fs::FileExt;
    let file = newest_log_file(log_dir);
    let bytes = fs::read(&file).expect("reading the log file");
    let last = log_batches(&bytes)
        .last()
        .expect("the log holds batches")
        .clone();
    let torn = &bytes[last.start..last.start + len.min(last.len() - 1)];
    let handle = OpenOptions::new().write(true).open(&file).unwrap();
    handle.write_all_at(torn, last.end as u64).unwrap();
    handle.sync_all().unwrap();
    (file, torn.len())
}

/// What raft-engine said about repairing node `id`'s log, from the node's log (informational).
fn repair_note(cluster: &Cluster, id: u64) -> String {
    let log = fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
    log.lines()
        .find(|line| line.contains("Truncating log file"))
        .and_then(|line| line.split("raft_engine").nth(1))
        .map_or("(raft-engine logged no repair)".into(), |s| {
            format!("raft_engine{s}")
        })
}

/// A follower whose log lost its last bytes restarts and catches up from the leader, with every
/// acknowledged write. Only the 3-node case: cut this way, a single node could lose an entry it
/// had acknowledged, as nothing else holds it; in a cluster an acknowledged entry is also on a
/// majority. (The bytes cut here were synced, so the follower had acknowledged them to the
/// leader: harsher than a crash alone, which can only tear a write that was never synced; that
/// case is the next test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_tail_was_cut_restarts_and_catches_up() {
    within(Duration::from_secs(120), async {
        let started = Instant::now();
        let mut rng = rng("cut tail");
        let mut cluster = Cluster::start(3, options()).await;
        let ids = cluster.ids();
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let follower = *ids.iter().find(|&&id| id != leader).expect("a follower");
        let start = cluster.status(leader).await.unwrap().commit_index;
        // Killed in the middle of a stream of writes, so that its last log writes hold entries.
        let (mut pairs, applied) = tokio::join!(put_many(&cluster, leader, "t", 0..300), async {
            let what = format!("node {follower} to apply 100 writes");
            let applied = cluster
                .wait_for(&what, CONVERGE_LIMIT, async || {
                    let applied = cluster.status(follower).await.ok()?.applied_index;
                    (applied >= start + 100).then_some(applied)
                })
                .await;
            cluster.kill(follower);
            applied
        });
        // More writes while it is down: it has to fetch these from the leader too.
        pairs.extend(put_many(&cluster, leader, "t", 300..400).await);
        let cut = rng.random_range(1..=100);
        let (file, data_len) = cut_log_tail(&cluster.data_dir(follower).join("raft-log"), cut);
        eprintln!(
            "cut tail: node {follower} killed after applying about {applied}; cut {cut} of the \
             {data_len} bytes of data in {}",
            file.display()
        );

        cluster.restart(follower).await;
        eprintln!("cut tail: {}", repair_note(&cluster, follower));
        wait_all_caught_up(&cluster, &ids).await;
        assert_all_present(&cluster, follower, &pairs, true).await;
        put(&cluster, follower, "after-cut", "yes").await;
        assert_all_present(&cluster, follower, &pairs[pairs.len() - 1..], false).await;
        eprintln!(
            "cut tail: node {follower} recovered with all {} acknowledged writes; {:?}",
            pairs.len(),
            started.elapsed()
        );
    })
    .await
}

/// A write torn by a crash (partly on disk, never synced, so never acknowledged) is discarded
/// when the node restarts, and nothing else: one node alone, so nobody else holds the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_at_the_log_tail_is_discarded_and_nothing_acknowledged_is_lost() {
    within(Duration::from_secs(90), async {
        let started = Instant::now();
        let mut rng = rng("torn write");
        let mut cluster = Cluster::start(1, options()).await;
        let mut pairs = put_many(&cluster, 1, "w", 0..200).await;
        cluster.kill(1);
        let log_dir = cluster.data_dir(1).join("raft-log");
        let (file, torn) = tear_a_write(&log_dir, rng.random_range(1..=100));
        eprintln!(
            "torn write: {torn} bytes of a batch after the data in {}",
            file.display()
        );

        cluster.restart(1).await;
        eprintln!("torn write: {}", repair_note(&cluster, 1));
        wait_serving(&cluster, &[1], &pairs[0].0).await;
        assert_all_present(&cluster, 1, &pairs, false).await;
        pairs.extend(put_many(&cluster, 1, "w", 200..250).await);
        // The log raft-engine repaired takes new writes and recovers again.
        cluster.kill(1);
        cluster.restart(1).await;
        wait_serving(&cluster, &[1], &pairs[0].0).await;
        assert_all_present(&cluster, 1, &pairs, false).await;
        eprintln!(
            "torn write: all {} acknowledged writes there after two restarts; {:?}",
            pairs.len(),
            started.elapsed()
        );
    })
    .await
}

// ---- 4. a full disk ---------------------------------------------------------------------------

/// A tmpfs mounted on a fresh temporary directory, unmounted when dropped (also on a panic).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot (typically: not root).
    fn mount(mib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("riteraft-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    /// [`Tmpfs::mount`], or `None` after saying on stderr why the calling test is skipped.
    fn mount_or_skip(mib: u64) -> Option<Tmpfs> {
        Self::mount(mib)
            .inspect_err(|why| {
                eprintln!("SKIPPED: the full-disk tests need to mount a tmpfs (root): {why}")
            })
            .ok()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it now, the kernel frees it later.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// `len` random characters of the base64 alphabet: raft-engine compresses its log, and these
/// do not compress.
fn random_value(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| *ALPHABET.choose(rng).expect("not empty") as char)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_serving_and_recovers() {
    const FILLER_MIB: u64 = 34;
    within(Duration::from_secs(120), async {
        let started = Instant::now();
        let Some(tmpfs) = Tmpfs::mount_or_skip(48) else {
            return;
        };
        let mut rng = rng("full disk");
        let options = options()
            .data_root(tmpfs.path())
            .arg("--min-free-disk-mib")
            .arg("8");
        let mut cluster = Cluster::start(1, options).await;
        put(&cluster, 1, "before", "filler").await;

        // Random bytes, so that nothing on the way can compress them.
        let filler = tmpfs.path().join("filler");
        let mut urandom = File::open("/dev/urandom").unwrap().take(FILLER_MIB << 20);
        std::io::copy(&mut urandom, &mut File::create(&filler).unwrap()).unwrap();

        let mut acked: Vec<(String, String)> = vec![("before".into(), "filler".into())];
        let refusal = loop {
            assert!(
                acked.len() < 1000,
                "1000 writes of ~50 KiB and no refusal on a 48 MiB filesystem"
            );
            let key = format!("big{:04}", acked.len());
            let len = rng.random_range(40 << 10..60 << 10);
            let value = random_value(&mut rng, len);
            match cluster.propose(1, &format!("put {key} {value}")).await {
                Ok(answer) => {
                    let answer = answer.unwrap_or_else(|e| panic!("put {key} rejected: {e}"));
                    assert!(answer.starts_with(&format!("ok: {key} = ")));
                    acked.push((key, value));
                }
                Err(status) if status.code() == Code::ResourceExhausted => break status,
                Err(status) => {
                    panic!("put {key}: expected success or RESOURCE_EXHAUSTED: {status:?}")
                }
            }
        };
        // The filler leaves ~12 MiB: the refusal comes after a few MiB of writes, not at once.
        assert!(acked.len() > 10, "refused after {} writes", acked.len());
        eprintln!(
            "full disk: refused after {} acknowledged writes ({:?}): {}",
            acked.len(),
            started.elapsed(),
            refusal.message()
        );
        assert!(refusal.message().contains("disk full"), "{refusal:?}");
        assert!(cluster.is_running(1), "the node died on a full disk");
        // Still refused, still alive; reads go on, with the earlier values.
        let again = cluster.propose(1, "put refused yes").await.unwrap_err();
        assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
        assert_all_present(&cluster, 1, &acked, true).await;
        assert_all_present(&cluster, 1, &acked[acked.len() - 3..], false).await;

        fs::remove_file(&filler).unwrap();
        let freed = Instant::now();
        cluster
            .wait_for(
                "writes to resume once space is freed",
                Duration::from_secs(5),
                async || match cluster.propose(1, "put resumed yes").await {
                    Ok(answer) => Some(answer.expect("put resumed")),
                    Err(status) if status.code() == Code::ResourceExhausted => None,
                    Err(status) => panic!("put resumed: {status:?}"),
                },
            )
            .await;
        eprintln!(
            "full disk: writes resumed {:?} after the filler was deleted",
            freed.elapsed()
        );
        acked.push(("resumed".into(), "yes".into()));
        let value = random_value(&mut rng, 50 << 10);
        put(&cluster, 1, "big-after", &value).await;
        acked.push(("big-after".into(), value));

        // A crash now must lose nothing either: the log written near the limit is intact.
        cluster.kill(1);
        cluster.restart(1).await;
        wait_serving(&cluster, &[1], "before").await;
        assert_all_present(&cluster, 1, &acked, false).await;
        put(&cluster, 1, "after-restart", "yes").await;
        eprintln!(
            "full disk: all {} acknowledged writes intact after kill -9 and restart; {:?}",
            acked.len(),
            started.elapsed()
        );
        drop(cluster); // before the filesystem goes
        drop(tmpfs);
    })
    .await
}

/// Fills `dir`'s filesystem with a file of random bytes until about `leave` bytes are free.
fn fill_until_free(dir: &Path, filler: &Path, leave: u64) {
    let free = |path: &Path| {
        let stat = rustix::fs::statvfs(path).unwrap();
        stat.f_bavail * stat.f_frsize
    };
    let to_fill = free(dir).saturating_sub(leave);
    let mut urandom = File::open("/dev/urandom").unwrap().take(to_fill);
    std::io::copy(&mut urandom, &mut File::create(filler).unwrap()).unwrap();
}

/// The index of the one snapshot file in `dir`, if that is all it holds (no second file, no
/// temporary one: no snapshot is being written).
fn only_snapshot_file(dir: &Path) -> Option<u64> {
    let names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [name] => name
            .strip_prefix("snapshot-")?
            .strip_suffix(".snap")?
            .parse()
            .ok(),
        _ => None,
    }
}

/// A snapshot that does not fit on the disk is put off, not fatal: the node says why, keeps
/// its log whole (and no half-written file), goes on serving, and takes the snapshot once there
/// is room. Writes are still accepted: the disk is full for a whole store, not for entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_fit_is_put_off_and_the_node_keeps_serving() {
    const VALUE_BYTES: usize = 200 << 10;
    within(Duration::from_secs(120), async {
        let Some(tmpfs) = Tmpfs::mount_or_skip(64) else {
            return;
        };
        let mut rng = rng("snapshot on a full disk");
        let options = options()
            .data_root(tmpfs.path())
            .snapshot_entries(10)
            .arg("--min-free-disk-mib")
            .arg("1");
        let cluster = Cluster::start(1, options).await;
        // A store of about 12 MiB, snapshotted on the way.
        let mut acked = Vec::new();
        for i in 0..60 {
            let (key, value) = (format!("big{i:02}"), random_value(&mut rng, VALUE_BYTES));
            put(&cluster, 1, &key, &value).await;
            acked.push((key, value));
        }
        // Snapshots are written in the background: let the last one finish (the same single
        // file across a pause, and recorded) before measuring what is free.
        let snapshots = cluster.data_dir(1).join("snapshots");
        cluster
            .wait_for(
                "the node's snapshot writing to settle",
                Duration::from_secs(10),
                async || {
                    let index = only_snapshot_file(&snapshots)?;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let recorded = cluster.status(1).await.ok()?.snapshot_index;
                    (only_snapshot_file(&snapshots) == Some(index) && recorded == index)
                        .then_some(())
                },
            )
            .await;
        // Room for more entries, not for another copy of the store.
        let filler = tmpfs.path().join("filler");
        fill_until_free(tmpfs.path(), &filler, 8 << 20);
        // A quarter of the store's size in new entries makes the next snapshot due.
        // While the doomed snapshot file grows, the disk may look full for a moment and a
        // write be refused; the node accepts writes again once the file is removed.
        let put_through_refusals = async |key: &str, value: &str| {
            let answer = cluster
                .wait_for(
                    "a write refused for a full disk to be accepted again",
                    Duration::from_secs(10),
                    async || match cluster.propose(1, &format!("put {key} {value}")).await {
                        Ok(answer) => Some(answer.expect("put accepted")),
                        Err(status) if status.code() == Code::ResourceExhausted => None,
                        Err(status) => panic!("put {key}: {status:?}"),
                    },
                )
                .await;
            assert!(
                answer.starts_with(&format!("ok: {key} = ")),
                "put {key}: {answer}"
            );
        };
        for i in 60..80 {
            let (key, value) = (format!("big{i:02}"), random_value(&mut rng, VALUE_BYTES));
            put_through_refusals(&key, &value).await;
            acked.push((key, value));
        }
        let log = cluster.log_path(1);
        cluster
            .wait_for(
                "the node to report the snapshot it could not write",
                Duration::from_secs(30),
                async || {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    text.lines()
                        .find(|line| line.contains("cannot write a snapshot"))
                        .map(str::to_string)
                },
            )
            .await;
        let half_written: Vec<_> = fs::read_dir(&snapshots)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(half_written.is_empty(), "left behind: {half_written:?}");
        assert!(
            cluster.is_running(1),
            "a snapshot that did not fit stopped the node"
        );
        put_through_refusals("after", "yes").await;
        acked.push(("after".into(), "yes".into()));
        assert_all_present(&cluster, 1, &acked, true).await;

        // With room again, the snapshot is taken (retried within ten seconds).
        let applied = cluster.status(1).await.unwrap().applied_index;
        fs::remove_file(&filler).unwrap();
        cluster
            .wait_for(
                "a snapshot once there is room",
                Duration::from_secs(30),
                async || {
                    let status = cluster.status(1).await.ok()?;
                    (status.snapshot_index >= applied).then_some(())
                },
            )
            .await;
        assert_all_present(&cluster, 1, &acked, false).await;
        drop(cluster); // before the filesystem goes
        drop(tmpfs);
    })
    .await
}
