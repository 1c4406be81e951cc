use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_serving_and_recovers() {
    const FILLER_MIB: u64 = 34;
    within(Duration::from_secs(120), async {
        let started = Instant::now();
        let Some(tmpfs) = Tmpfs::mount_or_skip(48) else {
            return;
        };
        let mut rng = rng("full disk");
        let options = options()
            .data_root(tmpfs.path())
            .arg("--min-free-disk-mib")
            .arg("8");
        let mut cluster = Cluster::start(1, options).await;
        put(&cluster, 1, "before", "filler").await;

        // Random bytes, so that nothing on the way can compress them.
        let filler = tmpfs.path().join("filler");
        let mut urandom = File::open("/dev/urandom").unwrap().take(FILLER_MIB << 20);
        std::io::copy(&mut urandom, &mut File::create(&filler).unwrap()).unwrap();

        let mut acked: Vec<(String, String)> = vec![("before".into(), "filler".into())];
        let refusal = loop {
            assert!(
                acked.len() < 1000,
                "1000 writes of ~50 KiB and no refusal on a 48 MiB filesystem"
            );
            let key = format!("big{:04}", acked.len());
            let len = rng.random_range(40 << 10..60 << 10);
            let value = random_value(&mut rng, len);
            match cluster.propose(1, &format!("put {key} {value}")).await {
                Ok(answer) => {
                    let answer = answer.unwrap_or_else(|e| panic!("put {key} rejected: {e}"));
                    assert!(answer.starts_with(&format!("ok: {key} = ")));
                    acked.push((key, value));
                }
                Err(status) if status.code() == Code::ResourceExhausted => break status,
                Err(status) => {
                    panic!("put {key}: expected success or RESOURCE_EXHAUSTED: {status:?}")
                }
            }
        };
        // The filler leaves ~12 MiB: the refusal comes after a few MiB of writes, not at once.
        assert!(acked.len() > 10, "refused after {} writes", acked.len());
        eprintln!(
            "full disk: refused after {} acknowledged writes ({:?}): {}",
            acked.len(),
            started.elapsed(),
            refusal.message()
        );
        assert!(refusal.message().contains("disk full"), "{refusal:?}");
        assert!(cluster.is_running(1), "the node died on a full disk");
        // Still refused, still alive; reads go on, with the earlier values.
        let again = cluster.propose(1, "put refused yes").await.unwrap_err();
        assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
        assert_all_present(&cluster, 1, &acked, true).await;
        assert_all_present(&cluster, 1, &acked[acked.len() - 3..], false).await;

        fs::remove_file(&filler).unwrap();
        let freed = Instant::now();
        cluster
            .wait_for(
                "writes to resume once space is freed",
                Duration::from_secs(5),
                async || match cluster.propose(1, "put resumed yes").await {
                    Ok(answer) => Some(answer.expect("put resumed")),
                    Err(status) if status.code() == Code::ResourceExhausted => None,
                    Err(status) => panic!("put resumed: {status:?}"),
                },
            )
            .await;
        eprintln!(
            "full disk: writes resumed {:?} after the filler was deleted",
            freed.elapsed()
        );
        acked.push(("resumed".into(), "yes".into()));
        let value = random_value(&mut rng, 50 << 10);
        put(&cluster, 1, "big-after", &value).await;
        acked.push(("big-after".into(), value));

        // A crash now must lose nothing either: the log written near the limit is intact.
        cluster.kill(1);
        cluster.restart(1).await;
        wait_serving(&cluster, &[1], "before").await;
        assert_all_present(&cluster, 1, &acked, false).await;
        put(&cluster, 1, "after-restart", "yes").await;
        eprintln!(
            "full disk: all {} acknowledged writes intact after kill -9 and restart; {:?}",
            acked.len(),
            started.elapsed()
        );
        drop(cluster); // before the filesystem goes
        drop(tmpfs);
    })
    .await
}

/// A snapshot that does not fit on the disk is put off, not fatal: the node says why, keeps
/// its log whole (and no half-written file), goes on serving, and takes the snapshot once there
/// is room. Writes are still accepted: the disk is full for a whole store, not for entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_fit_is_put_off_and_the_node_keeps_serving() {
    const VALUE_BYTES: usize = 200 << 10;
    within(Duration::from_secs(120), async {
        let Some(tmpfs) = Tmpfs::mount_or_skip(64) else {
            return;
        };
        let mut rng = rng("snapshot on a full disk");
        let options = options()
            .data_root(tmpfs.path())
            .snapshot_entries(10)
            .arg("--min-free-disk-mib")
            .arg("1");
        let cluster = Cluster::start(1, options).await;
        // A store of about 12 MiB, snapshotted on the way.
        let mut acked = Vec::new();
        for i in 0..60 {
            let (key, value) = (format!("big{i:02}"), random_value(&mut rng, VALUE_BYTES));
            put(&cluster, 1, &key, &value).await;
            acked.push((key, value));
        }
        // Snapshots are written in the background: let the last one finish (the same single
        // file across a pause, and recorded) before measuring what is free.
        let snapshots = cluster.data_dir(1).join("snapshots");
        cluster
            .wait_for(
                "the node's snapshot writing to settle",
                Duration::from_secs(10),
                async || {
                    let index = only_snapshot_file(&snapshots)?;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let recorded = cluster.status(1).await.ok()?.snapshot_index;
                    (only_snapshot_file(&snapshots) == Some(index) && recorded == index)
                        .then_some(())
                },
            )
            .await;
        // Room for more entries, not for another copy of the store.
        let filler = tmpfs.path().join("filler");
        fill_until_free(tmpfs.path(), &filler, 8 << 20);
        // A quarter of the store's size in new entries makes the next snapshot due.
        // While the doomed snapshot file grows, the disk may look full for a moment and a
        // write be refused; the node accepts writes again once the file is removed.
        let put_through_refusals = async |key: &str, value: &str| {
            let answer = cluster
                .wait_for(
                    "a write refused for a full disk to be accepted again",
                    Duration::from_secs(10),
                    async || match cluster.propose(1, &format!("put {key} {value}")).await {
                        Ok(answer) => Some(answer.expect("put accepted")),
                        Err(status) if status.code() == Code::ResourceExhausted => None,
                        Err(status) => panic!("put {key}: {status:?}"),
                    },
                )
                .await;
            assert!(
                answer.starts_with(&format!("ok: {key} = ")),
                "put {key}: {answer}"
            );
        };
        for i in 60..80 {
            let (key, value) = (format!("big{i:02}"), random_value(&mut rng, VALUE_BYTES));
            put_through_refusals(&key, &value).await;
            acked.push((key, value));
        }
        let log = cluster.log_path(1);
        cluster
            .wait_for(
                "the node to report the snapshot it could not write",
                Duration::from_secs(30),
                async || {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    text.lines()
                        .find(|line| line.contains("cannot write a snapshot"))
                        .map(str::to_string)
                },
            )
            .await;
        let half_written: Vec<_> = fs::read_dir(&snapshots)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(half_written.is_empty(), "left behind: {half_written:?}");
        assert!(
            cluster.is_running(1),
            "a snapshot that did not fit stopped the node"
        );
        put_through_refusals("after", "yes").await;
        acked.push(("after".into(), "yes".into()));
        assert_all_present(&cluster, 1, &acked, true).await;

        // With room again, the snapshot is taken (retried within ten seconds).
        let applied = cluster.status(1).await.unwrap().applied_index;
        fs::remove_file(&filler).unwrap();
        cluster
            .wait_for(
                "a snapshot once there is room",
                Duration::from_secs(30),
                async || {
                    let status = cluster.status(1).await.ok()?;
                    (status.snapshot_index >= applied).then_some(())
                },
            )
            .await;
        assert_all_present(&cluster, 1, &acked, false).await;
        drop(cluster); // before the filesystem goes
        drop(tmpfs);
    })
    .await
}
