//! Commands packed into shared log entries, on real processes: commands that reach the leader
//! together share an entry, and each still applies, traps or is refused on its own, alike on
//! every replica; a store built for the first contract (0.1.0) gets an entry per command.

use std::collections::BTreeMap;

use riteraft_proto::ProposeResponse;
use riteraft_test_support::plugin;

use super::*;

/// Proposes every command through node `id` at once, each on a call of its own; the answers
/// in the order of `commands`.
async fn propose_at_once(
    cluster: &Arc<Cluster>,
    id: u64,
    commands: Vec<Vec<u8>>,
) -> Vec<ProposeResponse> {
    let mut calls = tokio::task::JoinSet::new();
    for (i, command) in commands.into_iter().enumerate() {
        let cluster = cluster.clone();
        calls.spawn(async move { (i, cluster.propose_raw(id, command).await) });
    }
    let mut answers = BTreeMap::new();
    while let Some(joined) = calls.join_next().await {
        let (i, answer) = joined.unwrap();
        answers.insert(i, answer.unwrap_or_else(|e| panic!("command {i}: {e}")));
    }
    answers.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_together_share_entries_and_a_trap_among_them_rejects_only_itself() {
    within(TEST_LIMIT, async {
        let options = options().plugin(plugin("misbehaving"));
        let cluster = Arc::new(Cluster::start(3, options).await);
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        // It packs once it has asked its members what their hosts read (every second).
        let packing = "all 2 other members read packed entries";
        cluster.wait_for_log(leader, packing, CONVERGE_LIMIT).await;
        // 300 commands at once; every 25th makes the plugin panic.
        let commands: Vec<Vec<u8>> = (0..300)
            .map(|i| match i % 25 {
                12 => b"panic".to_vec(),
                _ => b"add 1".to_vec(),
            })
            .collect();
        let answers = propose_at_once(&cluster, leader, commands).await;
        let mut commands_at: BTreeMap<u64, usize> = BTreeMap::new();
        let mut entries_with_a_trap = Vec::new();
        for (i, answer) in answers.iter().enumerate() {
            *commands_at.entry(answer.index).or_default() += 1;
            match (i % 25, &answer.result) {
                (12, Some(propose_response::Result::Rejection(why))) => {
                    assert!(why.contains("trapped"), "command {i}: {why}");
                    entries_with_a_trap.push(answer.index);
                }
                (12, other) => panic!("command {i} (panic) got {other:?}"),
                (_, Some(propose_response::Result::Output(_))) => {}
                (_, other) => panic!("command {i} (add 1) got {other:?}"),
            }
        }
        println!("300 commands in {} entries", commands_at.len());
        assert!(
            commands_at.len() < 200,
            "{} entries: little packing",
            commands_at.len()
        );
        assert!(
            entries_with_a_trap
                .iter()
                .any(|index| commands_at[index] > 1),
            "no trap shared its entry: {commands_at:?}"
        );
        // The traps changed nothing, anywhere; every other command counted once.
        cluster.wait_caught_up(CONVERGE_LIMIT).await;
        for id in cluster.ids() {
            let total = cluster.query(id, "total", true).await.unwrap();
            assert_eq!(total, Ok("288".to_string()), "node {id}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packing_goes_on_through_a_failover_with_a_member_down() {
    within(TEST_LIMIT, async {
        let cluster = Arc::new(Cluster::start(3, options()).await);
        let leader = cluster.wait_for_leader(ELECTION_LIMIT).await;
        // Every node asks the others what their hosts read, not only the leader.
        for id in cluster.ids() {
            let packing = "all 2 other members read packed entries";
            cluster.wait_for_log(id, packing, CONVERGE_LIMIT).await;
        }
        // The leader goes down for good: the new one cannot ask it, but knew it already.
        cluster.kill(leader);
        let next = cluster
            .wait_for("a new leader", ELECTION_LIMIT, async || {
                cluster.leader().await.filter(|id| *id != leader)
            })
            .await;
        let commands = (0..200)
            .map(|i| format!("put k{i} v").into_bytes())
            .collect();
        let answers = propose_at_once(&cluster, next, commands).await;
        let mut entries: Vec<u64> = answers.iter().map(|answer| answer.index).collect();
        entries.sort_unstable();
        entries.dedup();
        println!(
            "200 commands in {} entries after the failover",
            entries.len()
        );
        assert!(
            entries.len() < 150,
            "{} entries: little packing",
            entries.len()
        );
        assert!(!cluster.log(next).contains("not packing commands"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_built_for_the_first_contract_gets_an_entry_per_command() {
    within(TEST_LIMIT, async {
        // bare-wit is built against proto/store-0.1.0.wit: it adds up little-endian u64s.
        let options = options().plugin(plugin("bare-wit"));
        let cluster = Arc::new(Cluster::start(1, options).await);
        let commands: Vec<Vec<u8>> = (1..=100u64).map(|n| n.to_le_bytes().to_vec()).collect();
        let answers = propose_at_once(&cluster, 1, commands).await;
        let mut indexes: Vec<u64> = answers.iter().map(|answer| answer.index).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), 100, "commands shared entries");
        let sum = cluster.query_raw(1, Vec::new(), true).await.unwrap();
        let expected = Some(query_response::Result::Output(
            5050u64.to_le_bytes().to_vec(),
        ));
        assert_eq!(sum.result, expected);
    })
    .await
}
