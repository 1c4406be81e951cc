//! Three production `Node`s in one thread, scripted rather than seeded: the memory log store,
//! the kv store compiled in, a network that is a queue of messages, and a virtual clock passed
//! to `Node::round`. No process, no socket, no sleep: the core runs in memory, in milliseconds.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use raft::prelude::Message;
use riteraft_host::node::{Node, NodeOptions, Request};
use riteraft_host::replicated::ClusterState;
use riteraft_host::storage::{LogStore, MemLogStore};
use tokio::sync::oneshot;

use super::network::Wire;
use super::{Kv, initial_snapshot};

type MemNode = Node<Kv, MemLogStore, Wire>;

/// Virtual time per step of the simulation.
const STEP: Duration = Duration::from_millis(10);
/// Steps before a test gives up (60 s of virtual time).
const MAX_STEPS: usize = 6_000;

struct MemCluster {
    nodes: BTreeMap<u64, MemNode>,
    sent: BTreeMap<u64, Rc<RefCell<Vec<Message>>>>,
    /// Requests waiting for each node's next round (raft messages and client calls).
    inbox: BTreeMap<u64, VecDeque<Request>>,
    /// Nodes cut off: nothing they send or are sent is delivered.
    cut: Vec<u64>,
    now: Instant,
    now_ms: u64,
}

impl MemCluster {
    /// Three voters, each starting from the same snapshot at index 1 (as if bootstrapped).
    fn three_nodes() -> MemCluster {
        Self::three_nodes_with(NodeOptions::default())
    }

    /// [`MemCluster::three_nodes`], each node run with `options`.
    fn three_nodes_with(options: NodeOptions) -> MemCluster {
        let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("mem-{id}"))).collect();
        let now = Instant::now();
        let mut sim = MemCluster {
            nodes: BTreeMap::new(),
            sent: BTreeMap::new(),
            inbox: BTreeMap::new(),
            cut: Vec::new(),
            now,
            now_ms: 1_700_000_000_000,
        };
        for id in 1..=3 {
            let state_machine = Kv::new();
            let cluster = ClusterState {
                members: members.clone(),
                next_node_id: 4,
                ..ClusterState::default()
            };
            let mut store = MemLogStore::new();
            store.install_snapshot(initial_snapshot(&members)).unwrap();
            let wire = Wire::default();
            let sent = wire.sent.clone();
            let node = Node::new(
                id,
                store,
                state_machine,
                cluster,
                wire,
                options.clone(),
                now,
            )
            .unwrap();
            sim.nodes.insert(id, node);
            sim.sent.insert(id, sent);
            sim.inbox.insert(id, VecDeque::new());
        }
        sim
    }

    /// One step: every node runs a round with what reached it, then the network delivers what
    /// they sent (to the next step), and the clock moves on.
    fn step(&mut self) {
        for (id, node) in self.nodes.iter_mut() {
            let requests: Vec<Request> = self.inbox.get_mut(id).unwrap().drain(..).collect();
            assert!(
                node.round(self.now, self.now_ms, requests)
                    .unwrap()
                    .is_none()
            );
        }
        for (from, sent) in &self.sent {
            for message in sent.borrow_mut().drain(..) {
                if self.cut.contains(from) || self.cut.contains(&message.to) {
                    continue;
                }
                if let Some(inbox) = self.inbox.get_mut(&message.to) {
                    inbox.push_back(Request::Raft(Box::new(message), None));
                }
            }
        }
        self.now += STEP;
        self.now_ms += STEP.as_millis() as u64;
    }

    /// Steps until `answer` has a value; panics after [`MAX_STEPS`].
    fn wait<T>(&mut self, what: &str, mut answer: impl FnMut(&mut MemCluster) -> Option<T>) -> T {
        for _ in 0..MAX_STEPS {
            if let Some(value) = answer(self) {
                return value;
            }
            self.step();
        }
        panic!("{what}: nothing after {MAX_STEPS} steps");
    }

    /// Asks node `id` for its status and steps until it answers.
    fn status(&mut self, id: u64) -> riteraft_host::node::NodeStatus {
        let (reply, mut answer) = oneshot::channel();
        self.inbox
            .get_mut(&id)
            .unwrap()
            .push_back(Request::Status { reply });
        self.wait("a status", |_| answer.try_recv().ok())
            .expect("status never fails")
    }

    fn leader(&mut self) -> Option<u64> {
        let ids: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !self.cut.contains(id))
            .collect();
        ids.into_iter().find(|id| self.status(*id).role == "leader")
    }

    fn propose(&mut self, id: u64, command: &str) -> Result<String, String> {
        let (reply, mut answer) = oneshot::channel();
        let request = Request::Propose {
            command: command.as_bytes().to_vec(),
            reply,
        };
        self.inbox.get_mut(&id).unwrap().push_back(request);
        let applied = self.wait("a proposal's answer", |_| answer.try_recv().ok());
        let applied = applied.map_err(|e| e.to_string())?;
        applied
            .outcome
            .map(|bytes| String::from_utf8(bytes).unwrap())
            .map_err(|rejection| rejection.to_string())
    }

    fn query(&mut self, id: u64, query: &str, stale: bool) -> Result<String, String> {
        let (reply, mut answer) = oneshot::channel();
        let request = Request::Query {
            request: query.as_bytes().to_vec(),
            stale,
            reply,
        };
        self.inbox.get_mut(&id).unwrap().push_back(request);
        let answered = self.wait("a query's answer", |_| answer.try_recv().ok());
        let answered = answered.map_err(|e| e.to_string())?;
        answered
            .outcome
            .map(|bytes| String::from_utf8(bytes).unwrap())
            .map_err(|rejection| rejection.to_string())
    }
}

#[test]
fn three_nodes_in_memory_elect_replicate_and_read_linearizably() {
    let mut sim = MemCluster::three_nodes();
    sim.nodes.get_mut(&1).unwrap().campaign().unwrap();
    let leader = sim.wait("a leader", |sim| sim.leader());
    let answer = sim.propose(leader, "put a 1").unwrap();
    assert!(answer.starts_with("ok: a = 1"), "{answer}");
    // Every replica applies it; a linearizable read on a follower sees it.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    assert_eq!(sim.query(follower, "get a", false), Ok("1".into()));
    for id in 1..=3 {
        sim.wait("every replica to apply", |sim| {
            (sim.status(id).applied_index >= 3).then_some(())
        });
        assert_eq!(sim.query(id, "get a", true), Ok("1".into()));
    }
}

#[test]
fn a_cut_off_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut sim = MemCluster::three_nodes();
    sim.nodes.get_mut(&1).unwrap().campaign().unwrap();
    let old = sim.wait("a leader", |sim| sim.leader());
    for i in 0..20 {
        let answer = sim.propose(old, &format!("put k{i} v{i}")).unwrap();
        assert!(answer.starts_with(&format!("ok: k{i} = v{i}")), "{answer}");
    }
    // The leader is cut off: the other two elect one of themselves (check_quorum makes the
    // old one step down too) and go on.
    sim.cut.push(old);
    let new = sim.wait("a new leader", |sim| sim.leader());
    assert_ne!(new, old);
    let answer = sim.propose(new, "put after cut").unwrap();
    assert!(answer.starts_with("ok: after = cut"), "{answer}");
    for i in 0..20 {
        assert_eq!(
            sim.query(new, &format!("get k{i}"), false),
            Ok(format!("v{i}"))
        );
    }
    // The old leader cannot serve a linearizable read while cut off: it times out.
    let lost = sim.query(old, "get k0", false).unwrap_err();
    assert!(
        lost.contains("no leader") || lost.contains("in time"),
        "{lost}"
    );
    // Healed, it catches up with what it missed.
    sim.cut.clear();
    sim.wait("the old leader to catch up", |sim| {
        (sim.query(old, "get after", true) == Ok("cut".into())).then_some(())
    });
}

#[test]
fn a_follower_far_behind_applies_its_backlog_in_slices_between_rounds() {
    // No snapshot on the way: the follower gets every entry it missed through appends.
    let options = NodeOptions {
        snapshot_entries: 1_000_000,
        ..NodeOptions::default()
    };
    let mut sim = MemCluster::three_nodes_with(options);
    sim.nodes.get_mut(&1).unwrap().campaign().unwrap();
    let leader = sim.wait("a leader", |sim| sim.leader());
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    sim.cut.push(behind);
    const WRITES: usize = 12_000;
    let mut answers: Vec<_> = (0..WRITES)
        .map(|i| {
            let (reply, answer) = oneshot::channel();
            let command = format!("put k{i} v{i}").into_bytes();
            let inbox = sim.inbox.get_mut(&leader).unwrap();
            inbox.push_back(Request::Propose { command, reply });
            answer
        })
        .collect();
    sim.wait("every write's answer", |_| {
        answers.retain_mut(|answer| answer.try_recv().is_err());
        answers.is_empty().then_some(())
    });
    // Healed, it receives the 12,000 entries at once and applies them a slice per round:
    // between two slices its loop steps raft (answers heartbeats), and asks to come back at
    // once while entries wait.
    sim.cut.clear();
    let target = sim.nodes[&leader].applied_index();
    let mut largest_slice = 0;
    let mut came_back_at_once = false;
    for _ in 0..MAX_STEPS {
        let before = sim.nodes[&behind].applied_index();
        if before >= target {
            break;
        }
        sim.step();
        let node = &sim.nodes[&behind];
        largest_slice = largest_slice.max(node.applied_index() - before);
        came_back_at_once |= node.next_round() < node.next_tick();
    }
    assert!(
        sim.nodes[&behind].applied_index() >= target,
        "the follower did not catch up in {MAX_STEPS} steps"
    );
    assert!(
        largest_slice <= 4096,
        "a round applied {largest_slice} entries"
    );
    assert!(
        came_back_at_once,
        "the loop never asked for an immediate round"
    );
    assert_eq!(sim.query(behind, "get k11999", true), Ok("v11999".into()));
}

#[test]
fn a_leader_of_a_large_store_snapshots_as_a_follower_after_handing_over() {
    // "Large" is made small here: a 16 KiB store, a 256 KiB log.
    let options = NodeOptions {
        snapshot_entries: 200,
        snapshot_log_bytes: 256 << 10,
        large_state_bytes: 16 << 10,
        // The memory store counts the entries kept behind a snapshot as log; the disk store
        // counts from the snapshot on. None kept: both the same.
        log_entries_kept: 0,
        snapshot_on_thread: false,
        prepare_on_thread: false,
        ..NodeOptions::default()
    };
    let mut sim = MemCluster::three_nodes_with(options.clone());
    sim.nodes.get_mut(&1).unwrap().campaign().unwrap();
    let leader = sim.wait("a leader", |sim| sim.leader());
    let term = sim.status(leader).term;
    let snapshot_of =
        |sim: &MemCluster, id: u64| sim.nodes[&id].log_store().snapshot_metadata().index;
    let value = "v".repeat(64);
    let mut leader_snapshots_while_large = Vec::new();
    // The leader's log and store sizes as last seen: what a new snapshot of it was taken at.
    let mut leader_seen = (0, 0, 0);
    let mut follower_snapshots = BTreeMap::<u64, Vec<(u64, u64)>>::new();
    let mut handed_over = None;
    for batch in 0..400 {
        let target = sim.wait("a leader", |sim| sim.leader());
        if target != leader {
            handed_over = Some(batch);
            break;
        }
        let mut answers: Vec<_> = (0..20)
            .map(|i| {
                let (reply, answer) = oneshot::channel();
                let command = format!("put k{batch}-{i} {value}").into_bytes();
                sim.inbox
                    .get_mut(&target)
                    .unwrap()
                    .push_back(Request::Propose { command, reply });
                answer
            })
            .collect();
        sim.wait("the batch's answers", |sim| {
            for id in 1..=3 {
                let store = sim.nodes[&id].log_store();
                let index = snapshot_of(sim, id);
                if id == leader {
                    let (seen_index, seen_state, seen_log) = leader_seen;
                    if index != seen_index
                        && seen_state >= options.large_state_bytes
                        && seen_log < options.snapshot_log_bytes
                    {
                        leader_snapshots_while_large.push((index, seen_state, seen_log));
                    }
                    leader_seen = (index, store.snapshot_bytes(), store.log_bytes());
                } else {
                    // (index, size of the store's previous snapshot)
                    let taken = follower_snapshots.entry(id).or_default();
                    if taken.last().map(|(i, _)| *i) != Some(index) {
                        taken.push((index, store.snapshot_bytes()));
                    }
                }
            }
            answers.retain_mut(|answer| answer.try_recv().is_err());
            answers.is_empty().then_some(())
        });
    }
    // Once its store was large, the leader took no snapshot while its log had room: the
    // followers took theirs (at different points, so never both at once).
    assert!(
        leader_snapshots_while_large.is_empty(),
        "the leader snapshotted a large store: {leader_snapshots_while_large:?}"
    );
    for (id, taken) in &follower_snapshots {
        assert!(taken.len() >= 3, "follower {id} took {taken:?}");
    }
    // Their first snapshots were of a small store (a count of entries, the same for both);
    // once the store is large each waits for its own share of log, so that they rarely gather
    // at once (equal shares had them snapshot at the very same index every time).
    let later: Vec<Vec<u64>> = follower_snapshots
        .values()
        .map(|taken| {
            (taken.windows(2))
                .filter(|pair| pair[0].1 >= options.large_state_bytes)
                .map(|pair| pair[1].0)
                .collect()
        })
        .collect();
    assert!(later.iter().all(|l| l.len() >= 3), "{follower_snapshots:?}");
    let together = later[0].iter().filter(|i| later[1].contains(i)).count();
    assert!(
        together * 2 < later[0].len(),
        "the followers mostly snapshotted at the same index: {follower_snapshots:?}"
    );
    // With its log full it handed leadership over (one term, no election timeout), and took
    // its snapshot as a follower.
    assert!(handed_over.is_some(), "the leader never handed over");
    let new_leader = sim.wait("the new leader", |sim| sim.leader());
    assert_ne!(new_leader, leader);
    assert_eq!(
        sim.status(new_leader).term,
        term + 1,
        "a transfer, not elections"
    );
    let before = leader_seen.0;
    sim.wait("the old leader's snapshot", |sim| {
        (snapshot_of(sim, leader) > before).then_some(())
    });
}
