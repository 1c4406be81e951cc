//! Crash tests: real `riteraft-host` processes killed with SIGKILL (no goodbye, like a crash or
//! a power cut), restarted on their data dirs, a log file with a torn tail, and a disk that fills
//! up. What must hold: nothing acknowledged to a client is ever lost, and the replicas agree.
//!
//! Every test is bounded by [`within`]; nodes are killed when a test ends, however it ends (the
//! harness prints their logs on a failure). The store is the `kv` plugin.
//!
//! One test binary, a module per scenario: `kills` (kill -9 under load, the whole cluster at
//! once), `torn_logs` (lost or torn log tails), `full_disk` (tmpfs: writes refused and resumed,
//! snapshots put off). Shared helpers are here.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use riteraft_proto::client_client::ClientClient;
use riteraft_proto::{ProposeRequest, QueryRequest, propose_response, query_response};
use riteraft_test_support::cluster::Connector;
use riteraft_test_support::tmpfs::{Tmpfs, fill_until_free};
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

// ---- 2. the whole cluster killed at once ------------------------------------------------------

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

// ---- 4. a full disk ---------------------------------------------------------------------------

/// `len` random characters of the base64 alphabet: raft-engine compresses its log, and these
/// do not compress.
fn random_value(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| *ALPHABET.choose(rng).expect("not empty") as char)
        .collect()
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

mod full_disk;
mod kills;
mod torn_logs;
