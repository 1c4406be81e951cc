//! Divergence detection with a store that diverges the way real ones do: `hash-order` answers
//! `keys` in its `HashMap`'s iteration order, which differs on a replica restored from a
//! snapshot. The restored replica must raise the alarm and stop serving; the others go on.

use riteraft_test_support::metrics::scrape;
use riteraft_test_support::plugin;

use super::*;

/// Checkpoints every this many entries, so the test needs few writes.
const CHECK_ENTRIES: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_answers_differ_raises_the_alarm_and_stops_serving() {
    within(TEST_LIMIT, async {
        let options = options()
            .plugin(plugin("hash-order"))
            .snapshot_entries(100)
            .with_metrics()
            .arg("--divergence-check-entries")
            .arg(CHECK_ENTRIES.to_string());
        let mut cluster = Cluster::start(3, options).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        // A map grown to 300 keys, then emptied to 50: it keeps its size, while a map restored
        // from a snapshot is sized for 50, and iterates in another order.
        let commands: Vec<String> = (0..300)
            .map(|k| format!("put k{k} v{k}"))
            .chain((0..250).map(|k| format!("del k{k}")))
            .chain((250..300).map(|k| format!("put k{k} w{k}")))
            .collect();
        for command in &commands {
            let answer = cluster.propose(leader, command).await.unwrap();
            assert!(answer.is_ok(), "{command}: {answer:?}");
        }
        // The replicas agree so far: every one answers `keys` alike.
        let keys = cluster.propose(leader, "keys").await.unwrap().unwrap();
        assert_eq!(keys.split(' ').count(), 50);
        let caught_up = cluster.wait_caught_up(CONVERGE_LIMIT).await;
        let restored = followers(&cluster, leader)[0];
        let snapshot = cluster.status(restored).await.unwrap().snapshot_index;
        assert!(
            snapshot > 550,
            "node {restored} has a snapshot after the deletes: {snapshot}"
        );
        let before = order(&cluster, leader).await;
        for id in cluster.ids() {
            let status = cluster.status(id).await.unwrap();
            assert_eq!(status.alarm, "", "no alarm before the restart on node {id}");
            assert_eq!(
                order(&cluster, id).await,
                before,
                "node {id} iterates like the leader"
            );
        }

        // A restart restores the follower from its snapshot; from then on its `keys` answers
        // show another order, and the next checkpoint shows it.
        cluster.restart(restored).await;
        cluster.wait_applied(caught_up, CONVERGE_LIMIT).await;
        let after = order(&cluster, restored).await;
        println!("leader's order:   {before}\nrestored's order: {after}");
        assert_ne!(after, before, "the restored map iterates in another order");
        for _ in 0..2 * CHECK_ENTRIES {
            cluster.propose(leader, "keys").await.unwrap().unwrap();
        }
        let what = format!("node {restored} to raise the divergence alarm");
        let alarm = cluster
            .wait_for(&what, CONVERGE_LIMIT, async || {
                let status = cluster.status(restored).await.ok()?;
                (!status.alarm.is_empty()).then_some(status.alarm)
            })
            .await;
        println!("node {restored}: {alarm}");
        assert!(alarm.contains("diverged: at log index"), "{alarm}");
        let log = std::fs::read_to_string(cluster.log_path(restored)).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("diverged") && l.contains("agreed")),
            "the log names the index and both digests"
        );

        // The alarm shows in the metrics (sampled once per tick), on this replica only.
        let diverged = async |id| {
            let addr = cluster
                .metrics_addr(id)
                .expect("started with --metrics-listen");
            scrape(addr).await.value("riteraft_diverged", "")
        };
        cluster
            .wait_for("the diverged gauge to show 1", CONVERGE_LIMIT, async || {
                (diverged(restored).await == Some(1.0)).then_some(())
            })
            .await;
        for id in cluster.ids().into_iter().filter(|id| *id != restored) {
            assert_eq!(diverged(id).await, Some(0.0), "node {id}'s diverged gauge");
        }

        // It refuses reads and writes, naming the alarm; the others serve on.
        let refused = cluster.query(restored, "get k260", true).await.unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
        assert!(refused.message().contains("diverged"), "{refused:?}");
        let refused = cluster.propose(restored, "put a 1").await.unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
        for id in cluster.ids().into_iter().filter(|id| *id != restored) {
            assert_eq!(cluster.status(id).await.unwrap().alarm, "", "node {id}");
            put(&cluster, id, &format!("after{id}"), "1").await;
            assert_get(&cluster, id, "k260", "w260", false).await;
        }

        // The alarm survives a restart: only a rebuild clears it.
        cluster.restart(restored).await;
        let status = cluster.status(restored).await.unwrap();
        assert!(status.alarm.contains("diverged"), "{status:?}");

        // The rebuild: remove it, and a fresh node joins in its place.
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        cluster.leave(leader, restored).await.unwrap();
        cluster.wait_exit(restored, CONVERGE_LIMIT).await;
        let fresh = cluster.add_node().await;
        assert_get(&cluster, fresh, "k260", "w260", false).await;
    })
    .await
}

/// Node `id`'s keys in its map's iteration order (a stale read of its own state).
async fn order(cluster: &Cluster, id: u64) -> String {
    cluster.query(id, "keys", true).await.unwrap().unwrap()
}
