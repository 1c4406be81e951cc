//! Hot swap through the raft log: `kv` v1 → v2 while clients write, a broken v3 refused
//! everywhere, and the new code surviving restarts and reaching new members.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use riteraft_proto::{DeployChunk, DeployResponse, propose_response};
use riteraft_test_support::cluster::{Cluster, ClusterOptions};
use riteraft_test_support::plugin;
use riteraft_test_support::wait::within;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

fn options() -> ClusterOptions {
    ClusterOptions::new(env!("CARGO_BIN_EXE_riteraft-host")).proposal_timeout_ms(2000)
}

/// The bytes of plugin `name`, made several MiB big (as a Rust plugin with debug info is) by a
/// custom section of `padding` bytes, which WebAssembly ignores.
fn module(name: &str, padding: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(plugin(name)).unwrap();
    if padding > 0 {
        let section_name = b"riteraft-test-padding";
        let mut payload = vec![section_name.len() as u8];
        payload.extend_from_slice(section_name);
        payload.resize(payload.len() + padding, 0x5a);
        bytes.push(0); // custom section id
        let mut size = payload.len();
        loop {
            let byte = (size & 0x7f) as u8;
            size >>= 7;
            if size == 0 {
                bytes.push(byte);
                break;
            }
            bytes.push(byte | 0x80);
        }
        bytes.extend_from_slice(&payload);
    }
    bytes
}

/// Each test here keeps both cores of a small machine busy for seconds at a time (three nodes
/// compiling a module of several MiB, the Python one 18 MB). Two at once made their deadlines
/// measure the machine rather than the code (a 60 s wait for `kv-big` ran out in CI), so they
/// take turns; the wait for a turn is outside each test's own time bound.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// v2 as deployed here: padded to several MiB, so the upload takes many chunks and the log
/// entry and snapshots carry a realistic module.
const V2_PADDING: usize = 5 << 20;

/// Uploads `bytes` through node `via` in 256 KiB chunks.
async fn deploy_bytes(
    cluster: &Cluster,
    via: u64,
    bytes: &[u8],
    dry_run: bool,
) -> Result<DeployResponse, Status> {
    let chunks: Vec<DeployChunk> = bytes
        .chunks(256 << 10)
        .map(|data| DeployChunk {
            data: data.to_vec(),
            dry_run,
        })
        .collect();
    let mut client = cluster.client(via);
    // A 12 MB module takes a debug build tens of seconds to compile, twice when it is
    // forwarded (the receiving node and the leader each check it).
    tokio::time::timeout(
        Duration::from_secs(300),
        client.deploy(tokio_stream::iter(chunks)),
    )
    .await
    .expect("deploy answered in time")
    .map(|response| response.into_inner())
}

/// Uploads plugin `name` (v2 padded as in [`V2_PADDING`]).
async fn deploy(
    cluster: &Cluster,
    via: u64,
    name: &str,
    dry_run: bool,
) -> Result<DeployResponse, Status> {
    deploy_bytes(cluster, via, &module(name, padding_of(name)), dry_run).await
}

fn padding_of(name: &str) -> usize {
    if name == "kv-v2" { V2_PADDING } else { 0 }
}

fn sha256_of(name: &str) -> String {
    hex::encode(Sha256::digest(module(name, padding_of(name))))
}

/// What a [`writer`] saw: the indexes and keys of the acknowledged writes, how many had an
/// unknown outcome, and the longest time between two acknowledgements.
type Written = (Vec<(u64, String)>, u64, Duration);

/// Writes `put w{writer}-{i} {i}` through node `via` until `stop`.
async fn writer(cluster: Arc<Cluster>, writer: u64, via: u64, stop: Arc<AtomicBool>) -> Written {
    let mut acknowledged = Vec::new();
    let mut unknown = 0;
    let mut i = 0u64;
    let (mut last, mut longest_pause) = (std::time::Instant::now(), Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{writer}-{i}");
        match cluster
            .propose_raw(via, format!("put {key} {i}").into_bytes())
            .await
        {
            Ok(response) => {
                assert!(
                    matches!(response.result, Some(propose_response::Result::Output(_))),
                    "put {key} was rejected: {response:?}"
                );
                acknowledged.push((response.index, key));
                longest_pause = longest_pause.max(last.elapsed());
                last = std::time::Instant::now();
            }
            Err(status) if status.code() == Code::Unavailable || status.code() == Code::Aborted => {
            }
            Err(_) => unknown += 1,
        }
        i += 1;
    }
    (acknowledged, unknown, longest_pause)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_upgrades_to_v2_under_load_and_a_broken_v3_is_refused() {
    let _turn = ONE_AT_A_TIME.lock().await;
    within(Duration::from_secs(240), async {
        let cluster = Arc::new(Cluster::start(3, options()).await);
        let v1 = sha256_of("kv");
        let v2 = sha256_of("kv-v2");
        let ids = cluster.ids();
        let status = cluster.status(ids[0]).await.unwrap();
        assert_eq!(status.plugin_sha256, v1);
        assert_eq!(status.plugin_version, "kv 0.1.0");

        // v2's command does not exist yet: an answer, not an error.
        let before = cluster.propose(ids[0], "append early x").await.unwrap();
        assert!(before.unwrap_err().contains("unknown command"));

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(n, via)| tokio::spawn(writer(cluster.clone(), n as u64, *via, stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(800)).await;

        // Deploy through a follower: it validates, then forwards to the leader.
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = *ids.iter().find(|id| **id != leader).unwrap();
        let deployed = deploy(&cluster, follower, "kv-v2", false).await.unwrap();
        assert_eq!(deployed.sha256, v2);
        assert_eq!(deployed.version, "kv 2.0.0");
        assert!(!deployed.unchanged && deployed.index > 0, "{deployed:?}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, Ordering::Relaxed);
        let mut acknowledged = Vec::new();
        let mut unknown = 0;
        for writer in writers {
            let (acked, unsure, _) = writer.await.unwrap();
            acknowledged.extend(acked);
            unknown += unsure;
        }
        let after_switch = acknowledged.iter().filter(|(i, _)| *i > deployed.index).count();
        eprintln!(
            "{} writes acknowledged ({after_switch} after the switch at {}), {unknown} unknown",
            acknowledged.len(),
            deployed.index
        );
        assert!(after_switch > 0, "no write landed after the switch: the test proves nothing");

        // v2's new command works through every node.
        for id in &ids {
            let answer = cluster.propose(*id, "append counter x").await.unwrap();
            assert!(answer.unwrap().starts_with("ok: counter = x"));
        }

        // A broken v3 is refused, the same way everywhere; v2 keeps serving.
        let refused = deploy(&cluster, leader, "kv-v3-broken", false).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("no migration"), "{refused:?}");
        let dry = deploy(&cluster, follower, "kv-v3-broken", true).await.unwrap_err();
        assert!(dry.message().contains("no migration"), "{dry:?}");
        let again = deploy(&cluster, leader, "kv-v2", false).await.unwrap();
        assert!(again.unchanged, "{again:?}");
        let dry = deploy(&cluster, follower, "kv-v2", true).await.unwrap();
        assert!(dry.unchanged && dry.index == 0, "{dry:?}");

        let commit = cluster.wait_caught_up(Duration::from_secs(20)).await;
        for id in &ids {
            let status = cluster.status(*id).await.unwrap();
            assert!(status.applied_index >= commit);
            assert_eq!(status.plugin_sha256, v2, "node {id}");
            assert_eq!(status.plugin_version, "kv 2.0.0", "node {id}");
            assert_eq!(status.upgrades.len(), 1, "node {id}: {:?}", status.upgrades);
            assert_eq!(status.upgrades[0].index, deployed.index);
            // No acknowledged write lost...
            for (_, key) in &acknowledged {
                let value = cluster.query(*id, &format!("get {key}"), true).await.unwrap();
                assert!(value.is_ok(), "node {id} lost {key}");
            }
            let counter = cluster.query(*id, "get counter", true).await.unwrap();
            assert_eq!(counter, Ok("xxx".to_string()), "node {id}");
            // ... and none applied twice: v2 counts the writes it applied since the switch.
            let writes: u64 = cluster
                .query(*id, "writes", true)
                .await
                .unwrap()
                .unwrap()
                .parse()
                .unwrap();
            let expected = after_switch as u64 + 3;
            assert!(
                writes >= expected && writes <= expected + unknown,
                "node {id} applied {writes} writes since the switch; expected {expected} (+{unknown} unknown)"
            );
        }

        // A restarted node, and a node joining now with the old --plugin, both run v2.
        let mut cluster = Arc::try_unwrap(cluster).ok().expect("writers are done");
        cluster.restart(follower).await;
        let newcomer = cluster.add_node().await;
        let commit = cluster.wait_caught_up(Duration::from_secs(30)).await;
        for id in [follower, newcomer] {
            cluster
                .wait_for("the node to catch up", Duration::from_secs(30), async || {
                    let status = cluster.status(id).await.ok()?;
                    (status.applied_index >= commit).then_some(())
                })
                .await;
            let status = cluster.status(id).await.unwrap();
            assert_eq!(status.plugin_sha256, v2, "node {id} after restart/join");
            let counter = cluster.query(id, "get counter", true).await.unwrap();
            assert_eq!(counter, Ok("xxx".to_string()), "node {id}");
        }
        let answer = cluster.propose(newcomer, "append counter y").await.unwrap();
        assert_eq!(answer, Ok("ok: counter = xxxy".to_string()));
    })
    .await
}

/// A module that takes seconds to compile (`kv-big`) is compiled on a thread of its own on
/// every node, from when its entry reaches the node's log: raft goes on meanwhile, so the
/// deploy costs no election, and writes go on through the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_slow_to_compile_is_deployed_under_load_without_an_election() {
    let _turn = ONE_AT_A_TIME.lock().await;
    within(Duration::from_secs(240), async {
        let cluster = Arc::new(Cluster::start(3, options()).await);
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let term = cluster.status(leader).await.unwrap().term;
        let stop = Arc::new(AtomicBool::new(false));
        let writes = tokio::spawn({
            let (cluster, stop) = (cluster.clone(), stop.clone());
            async move {
                let (mut acknowledged, mut longest_pause) = (Vec::new(), Duration::ZERO);
                let mut last = std::time::Instant::now();
                for i in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("slow-{i}");
                    if let Ok(Ok(_)) = cluster.propose(leader, &format!("put {key} {i}")).await {
                        longest_pause = longest_pause.max(last.elapsed());
                        last = std::time::Instant::now();
                        acknowledged.push(key);
                    }
                }
                (acknowledged, longest_pause)
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;

        let started = std::time::Instant::now();
        let deployed = deploy(&cluster, leader, "kv-big", false).await.unwrap();
        assert_eq!(deployed.version, "kv-big 1", "{deployed:?}");
        let on_leader = started.elapsed();
        for id in cluster.ids() {
            cluster
                .wait_for(
                    "every node to run kv-big",
                    Duration::from_secs(60),
                    async || {
                        let status = cluster.status(id).await.ok()?;
                        (status.plugin_version == "kv-big 1").then_some(())
                    },
                )
                .await;
        }
        let everywhere = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (acknowledged, longest_pause) = writes.await.unwrap();
        println!(
            "kv-big ({} bytes): applied on the leader after {on_leader:.2?}, on every node \
             after {everywhere:.2?}; {} writes, the longest pause between two {longest_pause:.2?}",
            module("kv-big", 0).len(),
            acknowledged.len(),
        );

        // No election: every node is in the same term, under the same leader.
        for id in cluster.ids() {
            let status = cluster.status(id).await.unwrap();
            assert_eq!((status.term, status.leader_id), (term, leader), "node {id}");
        }
        // Every acknowledged write is there, and the new code runs everywhere.
        cluster.wait_caught_up(Duration::from_secs(20)).await;
        for id in cluster.ids() {
            for key in &acknowledged {
                let value = cluster
                    .query(id, &format!("get {key}"), true)
                    .await
                    .unwrap();
                assert!(value.is_ok(), "node {id} lost {key}");
            }
            let mixed = cluster.propose(id, "mix 7").await.unwrap();
            assert!(mixed.is_ok(), "node {id}: {mixed:?}");
        }
    })
    .await
}

/// Rust → Python → JavaScript → Rust under writes: `plugins/kv-py` (componentize-py, 18 MB)
/// and `plugins/kv-js` (componentize-js, 12 MB), both built with their toolchains' defaults,
/// read and write kv's snapshot format, so each switch carries the state over, and no
/// acknowledged write is lost. The Python module is larger than a log entry or gRPC message
/// may be: it reaches the followers in chunks, by hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_swaps_to_python_javascript_and_back_under_writes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    within(Duration::from_secs(700), async {
        let options = options().share_compiled_plugins();
        let cluster = Arc::new(Cluster::start(3, options).await);
        let ids = cluster.ids();
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let stop = Arc::new(AtomicBool::new(false));
        // One writer, through a follower: three nodes compiling a 12 MB module on two cores
        // are slow enough.
        let follower = *ids.iter().find(|id| **id != leader).unwrap();
        let writers = [tokio::spawn(writer(
            cluster.clone(),
            0,
            follower,
            stop.clone(),
        ))];
        let python = std::fs::read(plugin("kv-py")).unwrap();
        let js = std::fs::read(plugin("kv-js")).unwrap();
        let rust = std::fs::read(plugin("kv")).unwrap();
        let swaps = [("Python", &python), ("JavaScript", &js), ("Rust", &rust)];
        for (language, module) in swaps {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let started = std::time::Instant::now();
            // Through a follower, which checks the module and forwards it to the leader.
            let deployed = deploy_bytes(&cluster, follower, module, false)
                .await
                .unwrap();
            let on_leader = started.elapsed();
            let sha256 = hex::encode(Sha256::digest(module));
            assert_eq!(deployed.sha256, sha256);
            assert!(!deployed.unchanged, "{deployed:?}");
            for id in &ids {
                cluster
                    .wait_for(
                        "every node to switch",
                        Duration::from_secs(120),
                        async || {
                            let status = cluster.status(*id).await.ok()?;
                            (status.plugin_sha256 == sha256).then_some(())
                        },
                    )
                    .await;
            }
            println!(
                "to {language} ({} bytes) at index {}: on the leader after {on_leader:.2?}, on \
                 every node after {:.2?}",
                module.len(),
                deployed.index,
                started.elapsed()
            );
            // The store in the other language answers what the first one stored.
            let answer = cluster
                .propose(leader, &format!("put lang {language}"))
                .await;
            assert!(
                answer.unwrap().unwrap().starts_with("ok: lang = "),
                "{language}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let [writer] = writers;
        let (acknowledged, _, longest_pause) = writer.await.unwrap();
        println!(
            "{} writes acknowledged, the longest pause between two {longest_pause:.2?}",
            acknowledged.len()
        );
        cluster.wait_caught_up(Duration::from_secs(30)).await;
        for id in &ids {
            let status = cluster.status(*id).await.unwrap();
            assert_eq!(status.upgrades.len(), 3, "node {id}: {:?}", status.upgrades);
            for (_, key) in &acknowledged {
                let value = cluster
                    .query(*id, &format!("get {key}"), true)
                    .await
                    .unwrap();
                assert!(value.is_ok(), "node {id} lost {key}");
            }
            let lang = cluster.query(*id, "get lang", true).await.unwrap();
            assert_eq!(lang.unwrap(), "Rust", "node {id}");
        }
    })
    .await
}
