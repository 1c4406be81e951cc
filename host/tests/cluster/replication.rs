use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_proposes_queries_and_reports_its_status() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(1, options()).await;
        let before = cluster.status(1).await.unwrap();
        assert_eq!(before.id, 1);
        assert_eq!(before.role, "leader");
        assert_eq!(before.leader_id, 1);
        assert!(before.term >= 1, "term {}", before.term);
        assert_eq!(before.members.len(), 1, "{:?}", before.members);
        assert_eq!(before.members[0].id, 1);
        assert_eq!(before.members[0].address, cluster.addr(1).to_string());
        assert_eq!(
            before.plugin_sha256.len(),
            64,
            "plugin_sha256 is a hex sha256: {:?}",
            before.plugin_sha256
        );

        let first = cluster
            .propose_raw(1, b"put a 1".to_vec())
            .await
            .expect("propose on a one-node cluster");
        assert_eq!(
            first.result,
            Some(propose_response::Result::Output(
                b"ok: a = 1 (new)".to_vec()
            ))
        );
        assert!(first.index > before.applied_index);
        assert_eq!(
            cluster.propose(1, "put a 2").await.unwrap(),
            Ok("ok: a = 2 (was 1)".into())
        );

        assert_get(&cluster, 1, "a", "2", false).await;
        assert_get(&cluster, 1, "a", "2", true).await;
        assert_eq!(
            cluster.query(1, "get b", false).await.unwrap(),
            Err("no such key: b".into())
        );
        let read = cluster
            .query_raw(1, b"get a".to_vec(), false)
            .await
            .unwrap();
        assert!(read.applied_index > first.index, "{read:?}");

        let after = cluster.status(1).await.unwrap();
        assert!(
            after.applied_index >= before.applied_index + 2,
            "applied index {} -> {}",
            before.applied_index,
            after.applied_index
        );
        assert!(after.commit_index >= after.applied_index);
        assert_eq!(after.plugin_sha256, before.plugin_sha256);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_take_writes_through_every_node_and_serve_reads_from_every_node() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let ids = cluster.ids();
        assert_eq!(ids, [1, 2, 3]);
        // Followers forward writes to the leader: every node accepts them.
        for &writer in &ids {
            for k in 0..5 {
                put(
                    &cluster,
                    writer,
                    &format!("w{writer}k{k}"),
                    &format!("v{writer}.{k}"),
                )
                .await;
            }
        }
        // Linearizable reads see every acknowledged write, whichever node serves them.
        for &reader in &ids {
            for &writer in &ids {
                for k in 0..5 {
                    let (key, value) = (format!("w{writer}k{k}"), format!("v{writer}.{k}"));
                    assert_get(&cluster, reader, &key, &value, false).await;
                }
            }
        }
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        for &id in &ids {
            let status = cluster.status(id).await.unwrap();
            assert_eq!(status.id, id);
            assert_eq!(status.leader_id, leader, "node {id}'s leader");
            let expected_role = if id == leader { "leader" } else { "follower" };
            assert_eq!(status.role, expected_role, "node {id}'s role");
            let mut members: Vec<(u64, String)> = status
                .members
                .iter()
                .map(|m| (m.id, m.address.clone()))
                .collect();
            members.sort();
            let expected: Vec<(u64, String)> = ids
                .iter()
                .map(|&m| (m, cluster.addr(m).to_string()))
                .collect();
            assert_eq!(members, expected, "node {id}'s members");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_quickly_and_acknowledged_writes_survive() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(3, options()).await;
        let old_leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let writer_node = followers(&cluster, old_leader)[0];

        // A writer keeps proposing through a follower while the leader dies. Only what it got
        // an answer for is acknowledged; a failed write may or may not have applied.
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let errors = Arc::new(std::sync::Mutex::new(Vec::<tonic::Status>::new()));
        let writer = {
            let (stop, acknowledged, errors) = (stop.clone(), acknowledged.clone(), errors.clone());
            let mut client = cluster.client(writer_node);
            let call_timeout = cluster.options().call_timeout();
            tokio::spawn(async move {
                for i in 0..100_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let command = format!("put w{i} {i}").into_bytes();
                    let call = client.propose(ProposeRequest { command });
                    match tokio::time::timeout(call_timeout, call).await {
                        Ok(Ok(response)) => {
                            assert!(
                                matches!(
                                    response.get_ref().result,
                                    Some(propose_response::Result::Output(_))
                                ),
                                "put w{i}: {response:?}"
                            );
                            acknowledged.lock().unwrap().push(i);
                        }
                        Ok(Err(status)) => {
                            errors.lock().unwrap().push(status);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(_) => panic!("put w{i} got no answer within {call_timeout:?}"),
                    }
                }
            })
        };
        let acked = || acknowledged.lock().unwrap().len();
        cluster
            .wait_for("20 acknowledged writes", CONVERGE_LIMIT, async || {
                (acked() >= 20).then_some(())
            })
            .await;

        cluster.kill(old_leader);
        let killed_at = Instant::now();
        let new_leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let election = killed_at.elapsed();
        assert_ne!(new_leader, old_leader);
        assert!(election < ELECTION_LIMIT, "the election took {election:?}");
        eprintln!("new leader {new_leader} {election:?} after the old one was killed");

        // Writes go on under the new leader.
        let before = acked();
        cluster
            .wait_for(
                "10 writes acknowledged by the new leader",
                CONVERGE_LIMIT,
                async || (acked() >= before + 10).then_some(()),
            )
            .await;
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("the writer task");

        let acknowledged = acknowledged.lock().unwrap().clone();
        for survivor in cluster.live_ids() {
            for &i in &acknowledged {
                assert_get(&cluster, survivor, &format!("w{i}"), &i.to_string(), false).await;
            }
        }

        // A write lost in the failover must fail with one of the codes the contract promises
        // (proto/riteraft.proto), so clients know they may retry it.
        let errors = errors.lock().unwrap().clone();
        for status in &errors {
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Aborted | Code::DeadlineExceeded
                ),
                "a write through node {writer_node} during the failover failed with {status:?}; \
                 expected UNAVAILABLE, ABORTED or DEADLINE_EXCEEDED"
            );
        }
        eprintln!("{} writes acknowledged, {} failed", acked(), errors.len());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_two_down_still_serve_writes_and_linearizable_reads() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(5, options()).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        put(&cluster, leader, "before", "1").await;

        // Down with the leader and one follower: the other three must elect and carry on.
        let follower = followers(&cluster, leader)[0];
        cluster.kill(leader);
        cluster.kill(follower);
        let new_leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        assert!(![leader, follower].contains(&new_leader));

        let survivors = cluster.live_ids();
        assert_eq!(survivors.len(), 3);
        for &writer in &survivors {
            put(
                &cluster,
                writer,
                &format!("after{writer}"),
                &writer.to_string(),
            )
            .await;
        }
        for &reader in &survivors {
            assert_get(&cluster, reader, "before", "1", false).await;
            for &writer in &survivors {
                assert_get(
                    &cluster,
                    reader,
                    &format!("after{writer}"),
                    &writer.to_string(),
                    false,
                )
                .await;
            }
        }
    })
    .await
}
