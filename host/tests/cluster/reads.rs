use super::*;

/// With `--read-lease` the leader answers linearizable reads from its lease, without a round
/// to the followers. A leader frozen (SIGSTOP) while the others elect a new leader and take a
/// write must not answer from its old state when it wakes up: its lease has run out, so every
/// answer it gives is the new value or an error, never the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_read_lease_never_answers_a_stale_read() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options().arg("--read-lease")).await;
        let old = cluster.wait_for_leader(ELECTION_LIMIT).await;
        put(&cluster, old, "k", "old").await;
        for node in cluster.ids() {
            assert_get(&cluster, node, "k", "old", false).await;
        }

        cluster.pause(old);
        let others = followers(&cluster, old);
        let new = cluster
            .wait_for(
                "a new leader among the others",
                ELECTION_LIMIT,
                async || {
                    for &id in &others {
                        if cluster.status(id).await.ok()?.role == "leader" {
                            return Some(id);
                        }
                    }
                    None
                },
            )
            .await;
        put(&cluster, new, "k", "new").await;

        // Queries sent while it is frozen wait in its socket and race, when it wakes, with the
        // new leader's messages; then more right after.
        let early: Vec<_> = (0..8)
            .map(|_| {
                let mut client = cluster.client(old);
                tokio::spawn(async move {
                    let request = QueryRequest {
                        request: b"get k".to_vec(),
                        stale: false,
                    };
                    match client.query(request).await.map(|r| r.into_inner().result) {
                        Ok(Some(query_response::Result::Output(value))) => {
                            Ok(String::from_utf8_lossy(&value).into_owned())
                        }
                        Ok(other) => Err(format!("{other:?}")),
                        Err(status) => Err(status.to_string()),
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.resume(old);
        let mut answers = Vec::new();
        for query in early {
            answers.push(query.await.expect("query task"));
        }
        for _ in 0..20 {
            answers.push(match cluster.query(old, "get k", false).await {
                Ok(answer) => answer,
                Err(status) => Err(status.to_string()),
            });
        }
        eprintln!("answers of the woken leader: {answers:?}");
        for value in answers.iter().flatten() {
            assert_eq!(
                value, "new",
                "a stale read from the woken leader: {answers:?}"
            );
        }
        assert!(
            answers.iter().any(|answer| answer.is_ok()),
            "the woken node, now a follower, serves linearizable reads again: {answers:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_are_local_and_linearizable_reads_need_the_leader() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let followers = followers(&cluster, leader);

        // A linearizable read through a follower, right after a write through the leader (or
        // the other follower), sees the write: ReadIndex waits until the follower applied it.
        for i in 0..10 {
            let writer = if i % 2 == 0 { leader } else { followers[1] };
            let (key, value) = (format!("r{i}"), i.to_string());
            put(&cluster, writer, &key, &value).await;
            assert_get(&cluster, followers[0], &key, &value, false).await;
        }

        // Leave one follower alone: with no leader, it still answers stale reads from its own
        // state, but a linearizable read fails, with a clear error, in bounded time.
        let survivor = followers[0];
        cluster
            .wait_applied(
                cluster.status(leader).await.unwrap().commit_index,
                CONVERGE_LIMIT,
            )
            .await;
        cluster.kill(leader);
        cluster.kill(followers[1]);
        let what = format!("node {survivor} to notice it has no leader");
        cluster
            .wait_for(&what, ELECTION_LIMIT, async || {
                let status = cluster.status(survivor).await.ok()?;
                (status.leader_id == 0).then_some(())
            })
            .await;

        assert_get(&cluster, survivor, "r9", "9", true).await;
        assert_eq!(
            cluster.query(survivor, "get nothing", true).await.unwrap(),
            Err("no such key: nothing".into())
        );

        let started = Instant::now();
        let result = cluster.query(survivor, "get r9", false).await;
        let elapsed = started.elapsed();
        let status = result.expect_err("a linearizable read without a leader must fail");
        eprintln!("linearizable read without a leader: {status:?} after {elapsed:?}");
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "unexpected error: {status:?}"
        );
        assert!(
            !status.message().is_empty(),
            "the error says why: {status:?}"
        );
        assert!(
            elapsed <= proposal_timeout() + MARGIN,
            "the read took {elapsed:?} to fail"
        );
    })
    .await
}
