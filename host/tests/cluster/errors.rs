use super::*;

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
