use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_compaction_catches_up_by_snapshot() {
    const ENTRIES: usize = 10_000;
    within(Duration::from_secs(240), async {
        // 32 writers at once: the leader packs their commands, several to a log entry, so
        // the 10,000 writes take fewer entries (about 1,000): a snapshot every 100 of them.
        let cluster = Cluster::start(3, options().snapshot_entries(100)).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;

        let commands: Vec<String> = (0..ENTRIES).map(|i| format!("put k{i:05} v{i}")).collect();
        let started = Instant::now();
        let answers = cluster
            .propose_many(leader, commands, 32)
            .await
            .unwrap_or_else(|e| panic!("writing {ENTRIES} entries: {e}"));
        eprintln!("{ENTRIES} proposals took {:?}", started.elapsed());
        for (i, answer) in answers.iter().enumerate() {
            let answer = answer
                .as_ref()
                .unwrap_or_else(|e| panic!("put k{i:05}: {e}"));
            assert!(
                answer.starts_with(&format!("ok: k{i:05} = v{i}")),
                "{answer}"
            );
        }

        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let written = cluster.status(leader).await.unwrap().commit_index;
        // Compaction is driven by --snapshot-entries 100, so by now the leader's last snapshot
        // covers most of the log (a snapshot taken for a join would sit near the start).
        let compacted = cluster
            .wait_for(
                "the leader to compact its log",
                CONVERGE_LIMIT,
                async || {
                    let status = cluster.status(leader).await.ok()?;
                    (status.snapshot_index >= written / 2).then_some(status.snapshot_index)
                },
            )
            .await;
        let commit = cluster.status(leader).await.unwrap().commit_index;

        let mut cluster = cluster;
        let joined_at = Instant::now();
        let newcomer = cluster.add_node().await;
        let what = format!("node {newcomer} to apply index {commit}");
        cluster
            .wait_for(&what, Duration::from_secs(60), async || {
                let status = cluster.status(newcomer).await.ok()?;
                (status.applied_index >= commit).then_some(())
            })
            .await;
        eprintln!("node {newcomer} caught up in {:?}", joined_at.elapsed());
        let status = cluster.status(newcomer).await.unwrap();
        // The entries before `compacted` are gone from the leader's log: only a snapshot has them.
        assert!(
            status.snapshot_index >= compacted,
            "node {newcomer} should hold the snapshot at {compacted} or later: {status:?}"
        );
        for i in [0, 1, 999, 5000, ENTRIES - 1] {
            let (key, value) = (format!("k{i:05}"), format!("v{i}"));
            assert_get(&cluster, newcomer, &key, &value, true).await;
        }
        let last = format!("k{:05}", ENTRIES - 1);
        assert_get(
            &cluster,
            newcomer,
            &last,
            &format!("v{}", ENTRIES - 1),
            false,
        )
        .await;
        assert_eq!(status.members.len(), 4, "{:?}", status.members);
    })
    .await
}

/// A leader reads the snapshot it sends from its file, checked whole first: a damaged file is
/// never sent (nor does it stop the leader, as when raft read it on the consensus thread); the
/// leader says so, keeps serving, and its next snapshot catches the follower up. Under load
/// another node may take over: every live node's file is damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_is_never_sent_and_the_next_snapshot_is() {
    within(Duration::from_secs(180), async {
        let mut cluster = Cluster::start(3, options().snapshot_entries(100)).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let behind = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
        cluster.kill(behind);
        // One at a time, so an entry each: the leader compacts its log (it keeps 1,000 entries
        // behind its snapshot) past what `behind` holds, and a snapshot is the only way to
        // catch it up.
        let commands: Vec<String> = (0..1600).map(|i| format!("put k{i:04} v{i}")).collect();
        cluster.propose_many(leader, commands, 1).await.unwrap();
        // Both live nodes' latest snapshot files are damaged, so that whichever leads when
        // `behind` comes back (a busy machine may change leader) holds a damaged one.
        let live: Vec<u64> = cluster.live_ids();
        for &id in &live {
            let file = settled_snapshot_file(&cluster, id).await;
            // Flip one byte in the middle of the store's state.
            let mut bytes = std::fs::read(&file).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&file, &bytes).unwrap();
            eprintln!("damaged {}", file.display());
        }

        // Once a leader has refused to send its damaged file, more writes make it take a
        // newer snapshot, which the follower gets.
        let logs: Vec<_> = live.iter().map(|id| cluster.log_path(*id)).collect();
        let mut client = cluster.client(leader);
        let writer = tokio::spawn(async move {
            let refused = async {
                while !logs.iter().any(|log| {
                    (std::fs::read_to_string(log).unwrap_or_default())
                        .contains("cannot send a snapshot")
                }) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(60), refused)
                .await
                .expect("no leader said it cannot send the damaged snapshot");
            // Through `leader`, which forwards them if it no longer leads.
            for i in 1600..1800 {
                let command = format!("put k{i:04} v{i}").into_bytes();
                let call = client.propose(ProposeRequest { command });
                tokio::time::timeout(Duration::from_secs(10), call)
                    .await
                    .expect("a write after the damaged snapshot timed out")
                    .expect("a write after the damaged snapshot failed");
            }
        });
        cluster.restart(behind).await;
        writer.await.unwrap();
        for &id in &live {
            assert!(cluster.is_running(id), "node {id} stopped");
        }
        let logs: Vec<String> = live.iter().map(|id| cluster.log(*id)).collect();
        assert!(
            logs.iter().any(|log| log.contains("checksum mismatch")),
            "{logs:?}"
        );
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let commit = cluster.status(leader).await.unwrap().commit_index;
        cluster
            .wait_for("the follower to catch up", CONVERGE_LIMIT, async || {
                let status = cluster.status(behind).await.ok()?;
                (status.applied_index >= commit).then_some(())
            })
            .await;
        for i in [0, 1599, 1799] {
            let (key, value) = (format!("k{i:04}"), format!("v{i}"));
            assert_get(&cluster, behind, &key, &value, true).await;
        }
    })
    .await
}

/// The file of the snapshot node `id` records as its latest (and so would send), once no
/// other is being written: one finished after the test damaged this one would be sent instead.
async fn settled_snapshot_file(cluster: &Cluster, id: u64) -> std::path::PathBuf {
    let snapshots = cluster.data_dir(id).join("snapshots");
    let mut seen = 0;
    let what = format!("node {id}'s last snapshot file");
    cluster
        .wait_for(&what, CONVERGE_LIMIT, async || {
            let index = cluster.status(id).await.ok()?.snapshot_index;
            let writing = std::fs::read_dir(&snapshots)
                .ok()?
                .any(|entry| entry.is_ok_and(|e| e.path().extension() == Some("tmp".as_ref())));
            let path = snapshots.join(format!("snapshot-{index:020}.snap"));
            let settled = index == seen && !writing && path.exists();
            seen = index;
            if !settled {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (index > 1000 && settled).then_some(path)
        })
        .await
}

/// A store snapshot of more than 64 MiB reaches a new node: it travels as a stream of chunks,
/// each within the gRPC message limit (16 MiB), never as one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_64_mib_reaches_a_new_node() {
    const VALUES: usize = 1100;
    const VALUE_BYTES: usize = 64 << 10;
    within(Duration::from_secs(240), async {
        // Big entries on a busy machine: give each write more time than the other tests do.
        // Eight writers at once, packed into shared entries: 1,100 writes take far fewer.
        let options = options().snapshot_entries(50).proposal_timeout_ms(10_000);
        let cluster = Cluster::start(1, options).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        // Values differ (so no layer can shrink the state by deduplication) and are text.
        let value = |i: usize| format!("{i:08}{}", "abcdefghijklmnop".repeat(VALUE_BYTES / 16));
        let commands: Vec<String> = (0..VALUES)
            .map(|i| format!("put big{i} {}", value(i)))
            .collect();
        let started = Instant::now();
        let answers = cluster
            .propose_many(leader, commands, 8)
            .await
            .unwrap_or_else(|e| panic!("writing {VALUES} values: {e}"));
        assert!(answers.iter().all(|a| a.is_ok()));
        eprintln!(
            "wrote {} MiB in {:?}",
            (VALUES * VALUE_BYTES) >> 20,
            started.elapsed()
        );

        let mut cluster = cluster;
        let commit = cluster.status(leader).await.unwrap().commit_index;
        let joined_at = Instant::now();
        let newcomer = cluster.add_node().await;
        cluster
            .wait_for(
                "the newcomer to catch up",
                Duration::from_secs(120),
                async || {
                    let status = cluster.status(newcomer).await.ok()?;
                    (status.applied_index >= commit).then_some(())
                },
            )
            .await;
        eprintln!("node {newcomer} caught up in {:?}", joined_at.elapsed());
        let status = cluster.status(newcomer).await.unwrap();
        assert!(status.snapshot_index >= 50, "{status:?}");
        for i in [0, 555, VALUES - 1] {
            let answer = cluster
                .query(newcomer, &format!("get big{i}"), true)
                .await
                .unwrap();
            assert_eq!(answer, Ok(value(i)), "big{i} on node {newcomer}");
        }
    })
    .await
}

/// A plugin that traps after the node's snapshot is on disk is rebuilt from the snapshot file
/// (the node keeps no copy of the state in memory) plus the entries applied since: the trapping
/// command has no effect, on every replica alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_after_a_snapshot_is_recovered_from_the_snapshot_file() {
    within(TEST_LIMIT, async {
        let options = options()
            .plugin(riteraft_test_support::plugin("misbehaving"))
            .snapshot_entries(20);
        let cluster = Cluster::start(3, options).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        for _ in 0..50 {
            let answer = cluster.propose(leader, "add 1").await.unwrap();
            assert!(answer.is_ok(), "{answer:?}");
        }
        cluster.wait_caught_up(CONVERGE_LIMIT).await;
        for id in cluster.ids() {
            let status = cluster.status(id).await.unwrap();
            assert!(status.snapshot_index > 0, "node {id} took no snapshot");
        }
        let trapped = cluster.propose(leader, "panic").await.unwrap();
        assert!(
            matches!(&trapped, Err(reason) if reason.contains("trapped")),
            "{trapped:?}"
        );
        let answer = cluster.propose(leader, "add 1").await.unwrap();
        assert!(answer.is_ok(), "{answer:?}");
        cluster.wait_caught_up(CONVERGE_LIMIT).await;
        for id in cluster.ids() {
            assert_eq!(
                cluster.query(id, "total", true).await.unwrap(),
                Ok("51".to_string()),
                "node {id}"
            );
        }
    })
    .await
}
