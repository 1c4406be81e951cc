//! A store in Python (`plugins/kv-py`, built with componentize-py and its defaults: 18 MB)
//! runs replicated on real processes: writes through every node, a follower killed with
//! SIGKILL and restarted (from its compiled-module cache), nothing acknowledged lost.

use std::time::{Duration, Instant};

use riteraft_test_support::cluster::{Cluster, ClusterOptions};
use riteraft_test_support::plugin;
use riteraft_test_support::wait::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_in_python_runs_replicated_and_survives_a_killed_follower() {
    within(Duration::from_secs(400), async {
        let mut options = ClusterOptions::new(env!("CARGO_BIN_EXE_riteraft-host"))
            .plugin(plugin("kv-py"))
            .proposal_timeout_ms(5000)
            .share_compiled_plugins();
        // The 18 MB module takes tens of seconds to compile on a debug build: once for the
        // three nodes, and not again if another test compiled it already.
        options.ready_timeout = Duration::from_secs(150);
        let started = Instant::now();
        let mut cluster = Cluster::start(3, options).await;
        println!("3 nodes with kv-py up after {:.2?}", started.elapsed());
        let ids = cluster.ids();
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;

        let mut written = Vec::new();
        for (n, id) in ids.iter().cycle().take(60).enumerate() {
            let answer = cluster
                .propose(*id, &format!("put k{n} v{n}"))
                .await
                .unwrap();
            assert_eq!(answer.unwrap(), format!("ok: k{n} = v{n} (new)"));
            written.push(n);
        }
        let answer = cluster.propose(leader, "del nothing").await.unwrap();
        assert_eq!(
            answer.unwrap_err(),
            "no such key: nothing",
            "the store's own rejection"
        );

        let follower = *ids.iter().find(|id| **id != leader).unwrap();
        let restarted = Instant::now();
        cluster.restart(follower).await;
        let caught_up = cluster.wait_caught_up(Duration::from_secs(60)).await;
        println!(
            "node {follower} killed and restarted: caught up to {caught_up} after {:.2?}",
            restarted.elapsed()
        );
        for id in &ids {
            for n in &written {
                let value = cluster
                    .query(*id, &format!("get k{n}"), true)
                    .await
                    .unwrap();
                assert_eq!(value.unwrap(), format!("v{n}"), "node {id}");
            }
            let keys = cluster.query(*id, "keys k1", true).await.unwrap().unwrap();
            assert!(
                keys.starts_with("k1\nk10\nk11"),
                "node {id}: sorted as kv: {keys:?}"
            );
        }
    })
    .await
}
