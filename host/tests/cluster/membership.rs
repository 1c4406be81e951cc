use super::*;

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
