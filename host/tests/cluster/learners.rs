//! Joining as a learner: a new node votes only once it has caught up, a joiner that dies first
//! never holds a vote and is dropped, a read replica stays a learner, and a replacement swaps
//! in for a member in one joint-consensus step; all under a steady stream of writes whose
//! longest pause is printed (a figure for the README, not an assertion: timing is not tested).

use std::sync::Mutex;

use riteraft_proto::client_client::ClientClient;
use tonic::transport::Channel;

use super::*;

/// How long the leader waits for a silent joiner before dropping it, in these tests.
const JOINER_TIMEOUT_SECS: u64 = 3;

fn learner_options() -> ClusterOptions {
    options()
        .arg("--joiner-timeout-secs")
        .arg(JOINER_TIMEOUT_SECS.to_string())
}

/// One client writing `put wN N` in a loop, through one node, until stopped: it records every
/// acknowledged write and the longest gap between two acknowledgements.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    acked: Arc<Mutex<Vec<u64>>>,
    longest_pause: Arc<Mutex<Duration>>,
}

impl Writer {
    fn start(mut client: ClientClient<Channel>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let longest_pause = Arc::new(Mutex::new(Duration::ZERO));
        let task = tokio::spawn({
            let (stop, acked, longest_pause) = (stop.clone(), acked.clone(), longest_pause.clone());
            async move {
                let mut last_ack = Instant::now();
                for n in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let command = format!("put w{n} {n}").into_bytes();
                    let call = client.propose(ProposeRequest { command });
                    // An error (a leader change) is not an acknowledgement: the pause goes on.
                    let answer = tokio::time::timeout(Duration::from_secs(10), call).await;
                    if let Ok(Ok(response)) = answer
                        && matches!(
                            response.into_inner().result,
                            Some(propose_response::Result::Output(_))
                        )
                    {
                        let now = Instant::now();
                        let mut longest = longest_pause.lock().unwrap();
                        *longest = (*longest).max(now - last_ack);
                        last_ack = now;
                        acked.lock().unwrap().push(n);
                    }
                }
            }
        });
        Writer {
            stop,
            task,
            acked,
            longest_pause,
        }
    }

    /// Stops the writer; returns the acknowledged writes and the longest pause.
    async fn stop(self) -> (Vec<u64>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the writer task failed");
        let acked = self.acked.lock().unwrap().clone();
        let pause = *self.longest_pause.lock().unwrap();
        (acked, pause)
    }
}

/// Waits until the leader's status shows `id` in `role` (or, for `None`, not at all).
async fn wait_role(cluster: &Cluster, id: u64, role: Option<&str>, limit: Duration) {
    let what = format!("the leader to list node {id} as {role:?}");
    cluster
        .wait_for(&what, limit, async || {
            let leader = cluster.leader().await?;
            let status = cluster.status(leader).await.ok()?;
            let member = status.members.iter().find(|m| m.id == id);
            (member.map(|m| m.role.as_str()) == role).then_some(())
        })
        .await
}

/// Every acknowledged write of `acked` reads back, linearizably, on every running node.
async fn all_acknowledged_writes_read_back(cluster: &Cluster, acked: &[u64]) {
    assert!(!acked.is_empty(), "the writer got no write acknowledged");
    for id in cluster.live_ids() {
        // The last and a spread of the others: reading all would take longer than the test.
        for n in acked.iter().rev().step_by((acked.len() / 50).max(1)) {
            assert_get(cluster, id, &format!("w{n}"), &n.to_string(), false).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_a_one_node_and_a_three_node_cluster_under_writes_as_learners_first() {
    within(TEST_LIMIT, async {
        let mut cluster = Cluster::start(1, learner_options()).await;
        // Enough state that the newcomers' snapshot takes a moment.
        let padding = "x".repeat(200);
        for k in 0..300 {
            put(&cluster, 1, &format!("pad{k}"), &padding).await;
        }
        let writer = Writer::start(cluster.client(1));
        tokio::time::sleep(Duration::from_millis(500)).await;

        // 1 -> 2 -> 3 -> 5 nodes, each joining as a learner and promoted once caught up.
        let mut pauses = Vec::new();
        for size in [2, 3, 4, 5] {
            let started = Instant::now();
            let id = cluster.add_node().await;
            pauses.push((size, started.elapsed()));
            wait_role(&cluster, id, Some("voter"), CONVERGE_LIMIT).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (acked, longest_pause) = writer.stop().await;
        println!(
            "{} writes acknowledged while 4 nodes joined; longest write pause {longest_pause:?}; \
             time from start to voter per join (cluster size after): {pauses:?}",
            acked.len()
        );
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let status = cluster.status(leader).await.unwrap();
        assert_eq!(status.members.len(), 5, "{status:?}");
        assert!(
            status.members.iter().all(|m| m.role == "voter"),
            "every member is a voter once caught up: {status:?}"
        );
        assert!(
            status.members.iter().all(|m| m.match_index > 0),
            "the leader reports each member's match index: {status:?}"
        );
        all_acknowledged_writes_read_back(&cluster, &acked).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_killed_before_it_caught_up_never_votes_and_is_dropped() {
    within(TEST_LIMIT, async {
        let mut cluster = Cluster::start(1, learner_options()).await;
        put(&cluster, 1, "a", "1").await;
        // Wait only until the joiner is a learner, then kill it: it has had no time to stay
        // caught up for the promotion's half second.
        let joiner = cluster.add_node_with(&[], "learner").await;
        cluster.kill(joiner);
        // A voter that never came up would take the quorum of a 2-node cluster; a learner
        // takes nothing: writes go on.
        let writer = Writer::start(cluster.client(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = cluster.status(1).await.unwrap();
        let member = status.members.iter().find(|m| m.id == joiner);
        assert_eq!(
            member.map(|m| m.role.as_str()),
            Some("learner"),
            "the dead joiner is still a learner, not a voter: {status:?}"
        );
        // Dropped once the leader has not heard from it for the joiner timeout.
        let limit = Duration::from_secs(JOINER_TIMEOUT_SECS) + CONVERGE_LIMIT;
        wait_role(&cluster, joiner, None, limit).await;
        let (acked, longest_pause) = writer.stop().await;
        println!(
            "{} writes acknowledged with a dead joiner; longest pause {longest_pause:?}",
            acked.len()
        );
        all_acknowledged_writes_read_back(&cluster, &acked).await;
        // The cluster grows again afterwards.
        let newcomer = cluster.add_node().await;
        put(&cluster, newcomer, "b", "2").await;
        assert_get(&cluster, 1, "b", "2", false).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_replica_stays_a_learner_serves_reads_and_costs_no_quorum() {
    within(TEST_LIMIT, async {
        let mut cluster = Cluster::start(1, learner_options()).await;
        put(&cluster, 1, "a", "1").await;
        let replica = cluster.add_node_with(&["--learner"], "learner").await;
        put(&cluster, 1, "b", "2").await;
        // Reads on the replica: stale ones locally (once the write reached it), linearizable
        // ones confirmed with the leader.
        assert_get(&cluster, replica, "b", "2", false).await;
        assert_get(&cluster, replica, "b", "2", true).await;
        // Writes through the replica go to the leader.
        put(&cluster, replica, "c", "3").await;
        // Caught up for longer than a promotion takes, and past the joiner timeout: still a
        // learner, still a member.
        tokio::time::sleep(Duration::from_secs(JOINER_TIMEOUT_SECS + 1)).await;
        let status = cluster.status(1).await.unwrap();
        let member = status.members.iter().find(|m| m.id == replica).cloned();
        assert_eq!(
            member.as_ref().map(|m| (m.role.as_str(), m.plan.as_str())),
            Some(("learner", "stay")),
            "{status:?}"
        );
        // It holds no vote: with it down, the single voter still commits.
        cluster.kill(replica);
        put(&cluster, 1, "d", "4").await;
        tokio::time::sleep(Duration::from_secs(JOINER_TIMEOUT_SECS + 1)).await;
        let status = cluster.status(1).await.unwrap();
        assert!(
            status.members.iter().any(|m| m.id == replica),
            "a read replica that is down is not dropped: {status:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_swaps_in_for_a_follower_then_for_the_leader_under_writes() {
    within(TEST_LIMIT, async {
        let mut cluster = Cluster::start(3, learner_options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let follower = followers(&cluster, leader)[0];
        let writer = Writer::start(cluster.client(followers(&cluster, leader)[1]));
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut replaced = Vec::new();
        for old in [follower, leader] {
            let started = Instant::now();
            let new = cluster
                .add_node_with(&["--replaces", &old.to_string()], "voter")
                .await;
            let exit = cluster.wait_exit(old, CONVERGE_LIMIT).await;
            assert!(
                exit.is_some_and(|s| s.success()),
                "node {old}, replaced by node {new}, exits with status 0: {exit:?}"
            );
            wait_role(&cluster, old, None, CONVERGE_LIMIT).await;
            replaced.push((old, new, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (acked, longest_pause) = writer.stop().await;
        println!(
            "{} writes acknowledged during two replacements (old, new, time): {replaced:?}; \
             longest write pause {longest_pause:?}",
            acked.len()
        );
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let status = cluster.status(leader).await.unwrap();
        assert_eq!(status.members.len(), 3, "{status:?}");
        assert!(
            status.members.iter().all(|m| m.role == "voter"),
            "{status:?}"
        );
        all_acknowledged_writes_read_back(&cluster, &acked).await;
    })
    .await
}
