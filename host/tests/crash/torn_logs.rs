use super::*;

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
            // Entries, each holding several of the writes (the leader packs them).
            let what = format!("node {follower} to apply 10 entries of writes");
            let applied = cluster
                .wait_for(&what, CONVERGE_LIMIT, async || {
                    let applied = cluster.status(follower).await.ok()?.applied_index;
                    (applied >= start + 10).then_some(applied)
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
