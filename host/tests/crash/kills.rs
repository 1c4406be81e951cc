use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_load_lose_no_acknowledged_write() {
    const NODES: usize = 3;
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 10;
    within(Duration::from_secs(240), async {
        let started = Instant::now();
        let mut rng = rng("random kills");
        // Snapshots every 50 entries (each holding several writes, which the leader packs
        // together): restarts rebuild from a snapshot plus the log after it.
        let mut cluster = Cluster::start(NODES, options().snapshot_entries(50)).await;
        let ids = cluster.ids();
        let targets = Arc::new(Targets {
            nodes: ids.iter().map(|&id| (id, cluster.addr(id))).collect(),
            up: ids.iter().map(|_| AtomicBool::new(true)).collect(),
            connector: cluster.connector(),
        });
        let position = |id: u64| ids.iter().position(|&i| i == id).expect("a known node");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (targets, stop, acked) = (targets.clone(), stop.clone(), acked.clone());
                tokio::spawn(client(c, targets, stop, acked, rng.random()))
            })
            .collect();
        progress(&cluster, &acked, "the first 20 writes").await;

        let (mut kills, mut leader_kills, mut restarts) = (0, 0, 0);
        for round in 0..ROUNDS {
            let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
            // Half the rounds kill the leader; one node at a time is always a minority.
            let victim = if round % 2 == 0 {
                leader
            } else {
                let others: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
                *others.choose(&mut rng).expect("followers exist")
            };
            targets.up[position(victim)].store(false, Ordering::Relaxed);
            cluster.kill(victim);
            kills += 1;
            leader_kills += usize::from(victim == leader);
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..1000))).await;
            cluster.restart(victim).await;
            restarts += 1;
            targets.up[position(victim)].store(true, Ordering::Relaxed);
            eprintln!(
                "round {round}: killed node {victim}{} and restarted it ({} acknowledged so far)",
                if victim == leader { " (leader)" } else { "" },
                acked.load(Ordering::Relaxed)
            );
            let what = format!("20 more writes after round {round}");
            progress(&cluster, &acked, &what).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut ledger = Ledger::default();
        for task in clients {
            let one = task.await.expect("a client task");
            ledger.acked.extend(one.acked);
            ledger.unknown.extend(one.unknown);
            ledger.abandoned.extend(one.abandoned);
            ledger.resent_found_applied.extend(one.resent_found_applied);
        }

        let commit = wait_all_caught_up(&cluster, &ids).await;
        eprintln!("random kills: every node applied index {commit}");
        // Every key ever written, acknowledged or not, read on every node from its own state.
        let written: BTreeMap<&String, &String> = ledger
            .acked
            .iter()
            .chain(&ledger.unknown)
            .chain(&ledger.abandoned)
            .collect();
        let keys: Arc<Vec<String>> = Arc::new(written.keys().map(|k| k.to_string()).collect());
        let readers: Vec<_> = ids
            .iter()
            .map(|&id| tokio::spawn(stale_gets(cluster.client(id), id, keys.clone())))
            .collect();
        let mut answers = Vec::new();
        for reader in readers {
            answers.push(reader.await.expect("a reader task"));
        }
        let mut lost = Vec::new();
        let mut unknown_present = 0;
        for (k, key) in keys.iter().enumerate() {
            for (n, id) in ids.iter().enumerate().skip(1) {
                assert_eq!(
                    answers[n][k], answers[0][k],
                    "get {key}: node {id} and node {} disagree",
                    ids[0]
                );
            }
            let present = answers[0][k].as_ref().ok();
            match ledger.acked.get(key) {
                Some(value) if present != Some(value) => lost.push(key.clone()),
                Some(_) => {}
                None => {
                    if let Some(found) = present {
                        assert_eq!(found, written[key], "get {key}: a value never written");
                        unknown_present += 1;
                    }
                }
            }
        }
        // The same listing everywhere (the first 1000 keys, in order).
        let mut listings = Vec::new();
        for &id in &ids {
            listings.push(cluster.query(id, "keys c", true).await.unwrap());
        }
        assert!(
            listings.iter().all(|l| *l == listings[0]),
            "keys listings differ"
        );

        eprintln!(
            "random kills: {NODES} nodes, {CLIENTS} clients, {kills} kills ({leader_kills} of \
             the leader), {restarts} restarts; {} writes acknowledged, {} with an unknown \
             outcome ({unknown_present} of those present), {} abandoned; acknowledged writes \
             missing: {}; {} keys compared on every node, replicas identical; resends found \
             already applied: {:?}; {:?}",
            ledger.acked.len(),
            ledger.unknown.len(),
            ledger.abandoned.len(),
            lost.len(),
            keys.len(),
            ledger.resent_found_applied,
            started.elapsed(),
        );
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        assert_eq!(kills, ROUNDS);
        assert_eq!(restarts, ROUNDS);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_killed_at_once_restarts_with_every_acknowledged_write() {
    within(Duration::from_secs(150), async {
        let started = Instant::now();
        // 16 writers: the leader packs their writes several to an entry, so 250 writes take
        // a few dozen entries; a snapshot every 10.
        let mut cluster = Cluster::start(3, options().snapshot_entries(10)).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        let mut pairs = put_many(&cluster, leader, "k", 0..250).await;
        // The first writes are in a snapshot by now; the next ones only in the log after it.
        cluster
            .wait_for(
                "every node to take a snapshot",
                CONVERGE_LIMIT,
                async || {
                    for id in cluster.live_ids() {
                        if cluster.status(id).await.ok()?.snapshot_index < 10 {
                            return None;
                        }
                    }
                    Some(())
                },
            )
            .await;
        pairs.extend(put_many(&cluster, leader, "k", 250..350).await);

        let ids = cluster.ids();
        for &id in &ids {
            cluster.kill(id);
        }
        for &id in &ids {
            cluster.restart(id).await;
        }
        wait_serving(&cluster, &ids, &pairs[0].0).await;
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        // Linearizable reads, spread over the nodes.
        for (i, chunk) in pairs.chunks(pairs.len().div_ceil(ids.len())).enumerate() {
            assert_all_present(&cluster, ids[i], chunk, false).await;
        }
        for &id in &ids {
            put(&cluster, id, &format!("after-restart-{id}"), "yes").await;
        }
        wait_all_caught_up(&cluster, &ids).await;
        for &id in &ids {
            assert_all_present(&cluster, id, &pairs[pairs.len() - 20..], true).await;
        }
        eprintln!(
            "whole cluster: {} acknowledged writes survived killing all {} nodes (leader now \
             {leader}); {:?}",
            pairs.len(),
            ids.len(),
            started.elapsed()
        );
    })
    .await
}
