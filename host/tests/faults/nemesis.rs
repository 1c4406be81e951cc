//! The faults, one at a time, each followed by its repair and a measure of the recovery: the
//! time from the repair (heal, resume, restart) to the first write that succeeds again through
//! the same client the workload uses, and for a partition the time until the node that was cut
//! off is back in step (knows the leader and has applied what was committed at the heal).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use riteraft_client::Client;
use riteraft_test_support::Cluster;
use riteraft_test_support::netns::Lab;
use riteraft_test_support::tmpfs::fill_until_free;

use super::workload::Workload;
use super::{RECOVERY_LIMIT, Report, seconds};

/// What a test injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nemesis {
    /// kill -9 a node (the leader half the time), restart it after up to 2.5 s.
    Kill,
    /// SIGSTOP the leader (or a follower) for longer than an election timeout, then SIGCONT.
    Pause,
    /// Network partitions: a node or the leader isolated, a bridge node that sees both halves,
    /// a link cut one way, links that lose a share of their packets.
    Partition,
    /// A follower removed and a fresh node added, and leadership transfers.
    Churn,
    /// All of the above, and a deploy of new store code while a follower is cut off.
    Mixed,
    /// A node's disk (a tmpfs of its own) filled up for a while, then freed.
    FullDisk,
}

/// One fault of a kind.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Pause,
    PauseFollower,
    Isolate,
    IsolateLeader,
    Bridge,
    OneWay,
    Lossy,
    Replace,
    Transfer,
    DeployWhileCut,
    FillDisk,
}

impl Nemesis {
    fn faults(self) -> &'static [Fault] {
        use Fault::*;
        match self {
            Nemesis::Kill => &[Kill],
            Nemesis::Pause => &[Pause, Pause, PauseFollower],
            Nemesis::Partition => &[Isolate, IsolateLeader, Bridge, OneWay, Lossy],
            Nemesis::Churn => &[Replace, Transfer],
            Nemesis::Mixed => &[
                Kill,
                Pause,
                PauseFollower,
                Isolate,
                IsolateLeader,
                Bridge,
                OneWay,
                Lossy,
                Replace,
                Transfer,
                DeployWhileCut,
            ],
            Nemesis::FullDisk => &[FillDisk],
        }
    }
}

/// Injects faults of `nemesis` for [`seconds`], each repaired before the next.
pub async fn inject(
    nemesis: Nemesis,
    lab: &Lab,
    cluster: &mut Cluster,
    client: &Client,
    workload: &Workload,
    seed: u64,
) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report::new();
    let deadline = Instant::now() + Duration::from_secs(seconds());
    while Instant::now() < deadline {
        sleep(&mut rng, 300..1200).await;
        let fault = *nemesis.faults().choose(&mut rng).unwrap();
        let leader = cluster.wait_for_leader(RECOVERY_LIMIT).await;
        let live = cluster.live_ids();
        let others: Vec<u64> = live.iter().copied().filter(|id| *id != leader).collect();
        let before = workload.acknowledged.load(Ordering::Relaxed);
        let started = Instant::now();
        eprintln!("fault {}: {fault:?} (leader {leader})", report.faults + 1);
        let mut cut_off = Vec::new();
        match fault {
            Fault::Kill => {
                let id = if rng.random_bool(0.5) {
                    leader
                } else {
                    *live.choose(&mut rng).unwrap()
                };
                cluster.kill(id);
                sleep(&mut rng, 200..2500).await;
                cluster.restart(id).await;
            }
            Fault::Pause | Fault::PauseFollower => {
                let id = match fault {
                    Fault::Pause => leader,
                    _ => *others.choose(&mut rng).unwrap(),
                };
                cluster.pause(id);
                // Longer than an election timeout (about a second).
                sleep(&mut rng, 1500..4000).await;
                cluster.resume(id);
            }
            Fault::Isolate | Fault::IsolateLeader => {
                let id = match fault {
                    Fault::IsolateLeader => leader,
                    _ => *live.choose(&mut rng).unwrap(),
                };
                lab.partition(&[host(lab, cluster, id)]);
                cut_off.push(id);
                sleep(&mut rng, 1000..6000).await;
                lab.heal();
            }
            Fault::Bridge => {
                // Two nodes cannot see each other; the third sees both.
                let pair: Vec<u64> = live.choose_multiple(&mut rng, 2).copied().collect();
                let (a, b) = (host(lab, cluster, pair[0]), host(lab, cluster, pair[1]));
                lab.cut_one_way(a, b);
                lab.cut_one_way(b, a);
                cut_off.extend(&pair);
                sleep(&mut rng, 1000..6000).await;
                lab.heal();
            }
            Fault::OneWay => {
                let pair: Vec<u64> = live.choose_multiple(&mut rng, 2).copied().collect();
                lab.cut_one_way(host(lab, cluster, pair[0]), host(lab, cluster, pair[1]));
                cut_off.extend(&pair);
                sleep(&mut rng, 1000..6000).await;
                lab.heal();
            }
            Fault::Lossy => {
                // The leader's links both ways lose 10-50% of their packets.
                let loss = rng.random_range(0.1..0.5);
                eprintln!(
                    "  links of the leader lose {:.0}% of their packets",
                    loss * 100.0
                );
                let at = host(lab, cluster, leader);
                for id in &others {
                    let other = host(lab, cluster, *id);
                    lab.lossy_one_way(at, other, loss);
                    lab.lossy_one_way(other, at, loss);
                }
                cut_off.extend(&others);
                sleep(&mut rng, 1000..6000).await;
                lab.heal();
            }
            Fault::Replace => {
                // A follower leaves and a fresh node joins, while the clients run; without a
                // spare host, leadership moves instead.
                // The workload's client knows the first three nodes only: two of them stay.
                let originals = live.iter().filter(|id| **id <= 3).count();
                let removable: Vec<u64> = others
                    .iter()
                    .copied()
                    .filter(|id| *id > 3 || originals > 2)
                    .collect();
                if cluster.ids().len() < lab.hosts().len() && !removable.is_empty() {
                    let id = *removable.choose(&mut rng).unwrap();
                    if let Err(e) = cluster.leave(leader, id).await {
                        eprintln!("leave of node {id} failed: {e}");
                    }
                    cluster.add_node().await;
                } else if let Some(&to) = others.choose(&mut rng) {
                    let _ = cluster.transfer_leader(leader, to).await;
                }
            }
            Fault::Transfer => {
                if let Some(&to) = others.choose(&mut rng)
                    && let Err(e) = cluster.transfer_leader(leader, to).await
                {
                    eprintln!("transfer to node {to} failed: {e}");
                }
            }
            Fault::DeployWhileCut => {
                let id = *others.choose(&mut rng).unwrap();
                lab.partition(&[host(lab, cluster, id)]);
                cut_off.push(id);
                let module = std::fs::read(riteraft_test_support::plugin("kv-v2")).unwrap();
                match client.deploy(&module, false).await {
                    Ok(deployed) => eprintln!("deployed: {}", deployed.message),
                    Err(e) => eprintln!("deploy failed: {e}"),
                }
                sleep(&mut rng, 500..3000).await;
                lab.heal();
            }
            Fault::FillDisk => {
                // The leader half the time: it refuses writes while its disk is full.
                let id = if rng.random_bool(0.5) {
                    leader
                } else {
                    *others.choose(&mut rng).unwrap()
                };
                let filler = filler_of(cluster, id);
                fill_until_free(&cluster.data_dir(id), &filler, 1 << 20);
                sleep(&mut rng, 1500..5000).await;
                std::fs::remove_file(&filler).unwrap();
                // A node whose write failed stopped; it resumes from its data dir.
                if !cluster.is_running(id) {
                    eprintln!("  node {id} stopped on the full disk; restarting it");
                    cluster.restart(id).await;
                }
            }
        }
        let repaired = Instant::now();
        let during = workload.acknowledged.load(Ordering::Relaxed) - before;
        report.fault_time += repaired - started;
        report.fault_writes += during;
        first_write(client, report.faults).await;
        let recovery = repaired.elapsed();
        report.recoveries.push(recovery);
        for id in cut_off {
            let back = back_in_step(cluster, id).await.duration_since(repaired);
            eprintln!("  node {id} back in step {back:?} after the heal");
            report.catch_ups.push(back);
        }
        eprintln!(
            "  first write {recovery:?} after the repair; {during} writes acknowledged in the \
             {:?} of the fault",
            repaired - started
        );
        report.faults += 1;
    }
    lab.heal();
    report
}

/// The file that fills node `id`'s disk: next to its data dir, on its tmpfs (see
/// `small_disks` in main.rs).
fn filler_of(cluster: &Cluster, id: u64) -> std::path::PathBuf {
    cluster.data_dir(id).join("..").join("filler")
}

/// The lab host node `id` runs on.
pub(super) fn host(lab: &Lab, cluster: &Cluster, id: u64) -> usize {
    let ip: IpAddr = cluster.addr(id).ip();
    lab.hosts()
        .iter()
        .position(|host| host.ip == ip)
        .unwrap_or_else(|| panic!("node {id} ({ip}) runs on no host of the lab"))
}

/// Writes through `client` until a write succeeds; panics after [`RECOVERY_LIMIT`].
async fn first_write(client: &Client, fault: u32) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < RECOVERY_LIMIT {
        match client.propose(format!("put probe {fault}")).await {
            Ok(applied) if applied.result.is_ok() => return,
            Ok(applied) => last = format!("{:?}", applied.result),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no write succeeded within {RECOVERY_LIMIT:?} after fault {fault}: {last}");
}

/// When node `id` (if still a member and running) knows a leader and has applied what the
/// leader had committed when this was first called.
async fn back_in_step(cluster: &Cluster, id: u64) -> Instant {
    if !cluster.live_ids().contains(&id) {
        return Instant::now();
    }
    let leader = cluster.wait_for_leader(RECOVERY_LIMIT).await;
    let Ok(status) = cluster.status(leader).await else {
        return Instant::now();
    };
    let commit = status.commit_index;
    let what = format!("node {id} to know a leader and apply index {commit}");
    cluster
        .wait_for(&what, RECOVERY_LIMIT, async || {
            let status = cluster.status(id).await.ok()?;
            (status.leader_id != 0 && status.applied_index >= commit).then_some(())
        })
        .await;
    Instant::now()
}

async fn sleep(rng: &mut StdRng, millis: std::ops::Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(millis))).await;
}
