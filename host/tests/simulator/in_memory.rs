//! Three production `Node`s in one thread, scripted rather than seeded: the memory log store,
//! the kv store compiled in, a network that is a queue of messages, and a virtual clock passed
//! to `Node::round`. No process, no socket, no sleep: the core runs in memory, in milliseconds.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::prelude::{Message, MessageType};
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
    /// What each node sent from another thread (see [`MemCluster::build`]).
    side: BTreeMap<u64, Arc<Mutex<Vec<Message>>>>,
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
        Self::build(options, false)
    }

    /// With `side`, each node's wire also takes messages sent from another thread, kept in
    /// [`MemCluster::side`] (never delivered).
    fn build(options: NodeOptions, side: bool) -> MemCluster {
        let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("mem-{id}"))).collect();
        let now = Instant::now();
        let mut sim = MemCluster {
            nodes: BTreeMap::new(),
            sent: BTreeMap::new(),
            inbox: BTreeMap::new(),
            cut: Vec::new(),
            side: BTreeMap::new(),
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
            let mut wire = Wire::default();
            if side {
                let messages = Arc::new(Mutex::new(Vec::new()));
                sim.side.insert(id, messages.clone());
                wire.side = Some(messages);
            }
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
    // Healed, it receives the 12,000 commands at once (packed 256 to an entry: the leader had
    // them all in one round) and applies them a slice per round: at most 4,096 commands
    // (and one entry's worth more), so at least three rounds, between which its loop steps
    // raft (answers heartbeats); it asks to come back at once while entries wait.
    sim.cut.clear();
    let target = sim.nodes[&leader].applied_index();
    assert!(
        target < 100,
        "{target} entries: the commands were not packed"
    );
    let mut rounds_applying = 0;
    let mut came_back_at_once = false;
    for _ in 0..MAX_STEPS {
        let before = sim.nodes[&behind].applied_index();
        if before >= target {
            break;
        }
        sim.step();
        let node = &sim.nodes[&behind];
        rounds_applying += usize::from(node.applied_index() > before);
        came_back_at_once |= node.next_round() < node.next_tick();
    }
    assert!(
        sim.nodes[&behind].applied_index() >= target,
        "the follower did not catch up in {MAX_STEPS} steps"
    );
    assert!(
        rounds_applying >= WRITES / (4096 + 256),
        "12,000 commands applied in {rounds_applying} rounds"
    );
    assert!(
        came_back_at_once,
        "the loop never asked for an immediate round"
    );
    assert_eq!(sim.query(behind, "get k11999", true), Ok("v11999".into()));
}

#[test]
fn a_leader_gathering_its_snapshot_keeps_sending_heartbeats() {
    // A 1 ms tick: heartbeats are due every 2 ms, so gathering a store of 12 MiB (tens of ms
    // in a debug build) spans several. No snapshot until the 30 batches of 100 commands are
    // in: each batch arrives in one round, so it is one packed entry.
    let options = NodeOptions {
        tick: Duration::from_millis(1),
        snapshot_entries: 30,
        snapshot_on_thread: false,
        prepare_on_thread: false,
        ..NodeOptions::default()
    };
    let mut sim = MemCluster::build(options, true);
    sim.nodes.get_mut(&1).unwrap().campaign().unwrap();
    let leader = sim.wait("a leader", |sim| sim.leader());
    let term = sim.status(leader).term;
    let value = "v".repeat(4096);
    for batch in 0..30 {
        let mut answers: Vec<_> = (0..100)
            .map(|i| {
                let (reply, answer) = oneshot::channel();
                let command = format!("put k{batch}-{i} {value}").into_bytes();
                (sim.inbox.get_mut(&leader).unwrap())
                    .push_back(Request::Propose { command, reply });
                answer
            })
            .collect();
        sim.wait("the batch's answers", |_| {
            answers.retain_mut(|answer| answer.try_recv().is_err());
            answers.is_empty().then_some(())
        });
    }
    sim.wait("the leader's snapshot", |sim| {
        (sim.nodes[&leader].log_store().snapshot_metadata().index > 1).then_some(())
    });
    assert_eq!(sim.status(leader).role, "leader");
    let sent = sim.side[&leader].lock().unwrap().clone();
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for follower in &followers {
        let to_it: Vec<&Message> = sent.iter().filter(|m| m.to == *follower).collect();
        assert!(
            !to_it.is_empty(),
            "no heartbeat to {follower} while gathering"
        );
        for heartbeat in to_it {
            assert_eq!(heartbeat.get_msg_type(), MessageType::MsgHeartbeat);
            assert_eq!((heartbeat.from, heartbeat.term), (leader, term));
            let applied = sim.nodes[follower].applied_index();
            assert!(
                heartbeat.commit <= sim.nodes[&leader].applied_index() && heartbeat.commit > 0,
                "commit {} (follower applied {applied})",
                heartbeat.commit
            );
        }
    }
    // Followers, which gather without a leader's duty, send none.
    for follower in &followers {
        assert!(sim.side[follower].lock().unwrap().is_empty());
    }
}

#[test]
fn commands_of_one_round_share_entries_and_each_gets_its_own_answer() {
    let mut sim = MemCluster::three_nodes();
    sim.nodes.get_mut(&1).unwrap().campaign().unwrap();
    let leader = sim.wait("a leader", |sim| sim.leader());
    // 600 commands reach the leader in one round: three entries (256, 256, 88 commands).
    // Every tenth is a `del` of a key that is not there, which kv refuses.
    const COMMANDS: usize = 600;
    let command = |i: usize| match i % 10 {
        7 => format!("del missing{i}"),
        _ => format!("put k{i} v{i}"),
    };
    let mut waiting: Vec<_> = (0..COMMANDS)
        .map(|i| {
            let (reply, answer) = oneshot::channel();
            let command = command(i).into_bytes();
            (sim.inbox.get_mut(&leader).unwrap()).push_back(Request::Propose { command, reply });
            (i, answer)
        })
        .collect();
    let mut answers = BTreeMap::new();
    sim.wait("every command's answer", |_| {
        waiting.retain_mut(|(i, answer)| match answer.try_recv() {
            Ok(applied) => {
                answers.insert(*i, applied.expect("applied"));
                false
            }
            Err(_) => true,
        });
        waiting.is_empty().then_some(())
    });
    let mut by_index: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, applied) in &answers {
        by_index.entry(applied.index).or_default().push(*i);
        let outcome = (applied.outcome.clone())
            .map(|bytes| String::from_utf8(bytes).unwrap())
            .map_err(|rejection| rejection.to_string());
        match i % 10 {
            7 => assert_eq!(outcome, Err(format!("no such key: missing{i}"))),
            _ => assert_eq!(outcome, Ok(format!("ok: k{i} = v{i} (new)")), "command {i}"),
        }
    }
    let sizes: Vec<usize> = by_index.values().map(Vec::len).collect();
    assert_eq!(sizes, [256, 256, 88], "commands per entry");
    // In the order they came, a run of consecutive commands per entry.
    let order: Vec<usize> = by_index.values().flatten().copied().collect();
    assert_eq!(order, (0..COMMANDS).collect::<Vec<_>>());
    // Every replica applied each command.
    let last = *by_index.keys().last().unwrap();
    for id in 1..=3 {
        sim.wait("every replica to apply", |sim| {
            (sim.status(id).applied_index >= last).then_some(())
        });
        for i in [0, 255, 256, 599] {
            assert_eq!(
                sim.query(id, &format!("get k{i}"), true),
                Ok(format!("v{i}"))
            );
        }
        let refused = sim.query(id, "get missing7", true);
        assert_eq!(refused, Err("no such key: missing7".into()), "node {id}");
    }
}

#[test]
fn a_leader_packs_only_once_every_member_reads_packed_entries() {
    let options = NodeOptions {
        check_member_log_formats: true,
        ..NodeOptions::default()
    };
    let mut sim = MemCluster::three_nodes_with(options);
    sim.nodes.get_mut(&1).unwrap().campaign().unwrap();
    let leader = sim.wait("a leader", |sim| sim.leader());
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    // 50 commands in one round; the distinct entries they landed in.
    let burst = |sim: &mut MemCluster, round: usize| {
        let mut waiting: Vec<_> = (0..50)
            .map(|i| {
                let (reply, answer) = oneshot::channel();
                let command = format!("put r{round}k{i} v").into_bytes();
                (sim.inbox.get_mut(&leader).unwrap())
                    .push_back(Request::Propose { command, reply });
                answer
            })
            .collect();
        let mut indexes = BTreeSet::new();
        sim.wait("the burst's answers", |_| {
            waiting.retain_mut(|answer| match answer.try_recv() {
                Ok(applied) => {
                    indexes.insert(applied.expect("applied").index);
                    false
                }
                Err(_) => true,
            });
            waiting.is_empty().then_some(())
        });
        indexes.len()
    };
    // Nobody has said what its host reads: one entry per command, as an old host needs.
    assert_eq!(burst(&mut sim, 0), 50);
    let tell = |sim: &mut MemCluster, readers: &[u64]| {
        let readers = readers.iter().copied().collect();
        (sim.inbox.get_mut(&leader).unwrap()).push_back(Request::PackedReaders(readers));
    };
    tell(&mut sim, &followers[..1]);
    assert_eq!(burst(&mut sim, 1), 50, "one member still on an old host");
    tell(&mut sim, &followers);
    assert_eq!(burst(&mut sim, 2), 1, "every member reads packed entries");
    tell(&mut sim, &followers[1..]);
    assert_eq!(burst(&mut sim, 3), 50, "a member went back to an old host");
}
