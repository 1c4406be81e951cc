//! Schedules the fault runs found anomalies with, kept as tests of their own: each sets up the
//! one fault that mattered, deterministically, instead of waiting for a random run to hit it.

use std::time::Duration;

use riteraft_client::{Client, ClientError};
use riteraft_test_support::netns::Lab;
use riteraft_test_support::{Cluster, within};

use super::nemesis::host;
use super::{RECOVERY_LIMIT, TEST_LIMIT, client_tls, options};

/// Found by `everything_mixed` (FAULT_SEED=1796190216326458766, and a pause run): a write that
/// a follower forwarded, whose connection to the leader broke after the request left, came
/// back to the client as UNAVAILABLE ("nothing applied"). The client sent it again through
/// another node, and the first copy, applied too, made one write take effect twice: a read saw
/// a value written seconds earlier come back. It must come back as "may or may not be
/// applied" (a timeout), which a client does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_into_a_cut_is_unknown_not_retried() {
    let lab = match Lab::new(3) {
        Ok(lab) => lab,
        Err(why) => {
            eprintln!("skipped, no network namespaces here: {why}");
            return;
        }
    };
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options().on_hosts(lab.hosts())).await;
        let leader = cluster.wait_for_leader(RECOVERY_LIMIT).await;
        let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        // A client of the follower alone, so every write is forwarded.
        let client = Client::builder()
            .tls(client_tls(&cluster))
            .timeout(Duration::from_secs(8))
            .connect([cluster.addr(follower).to_string()])
            .unwrap();
        // Opens the follower's channel to the leader.
        client
            .propose("put warm up")
            .await
            .expect("a forwarded write");
        // The leader's answers (and pings) no longer reach the follower; its requests still
        // reach the leader.
        lab.cut_one_way(host(&lab, &cluster, leader), host(&lab, &cluster, follower));
        let answer = client.propose("put once v1").await;
        lab.heal();
        match answer {
            Err(ClientError::Timeout(message)) => {
                assert!(message.contains("may or may not"), "{message}");
            }
            other => panic!("expected a timeout that may have applied, got {other:?}"),
        }
        // It was applied (the leader got it), once.
        cluster.wait_caught_up(RECOVERY_LIMIT).await;
        assert_eq!(
            cluster.query(leader, "get once", false).await.unwrap(),
            Ok("v1".into())
        );
    })
    .await;
}
