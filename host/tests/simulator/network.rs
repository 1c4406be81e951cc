//! A seeded network between simulated nodes: each message may be dropped, duplicated or
//! delayed (which reorders it), and links can be cut both ways or one way (partitions). The
//! same seed and the same messages give the same deliveries.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use raft::prelude::{Message, MessageType};
use rand::Rng;
use rand::rngs::StdRng;
use riteraft_host::node::{Outbox, SideSender};

/// What a node sent during its round, for the network to take.
#[derive(Clone, Default)]
pub struct Wire {
    pub sent: Rc<RefCell<Vec<Message>>>,
    /// Nodes this one told they were removed, with the index (delivered as the real node's
    /// service does once the leader confirms it).
    pub removed: Rc<RefCell<Vec<(u64, u64)>>>,
    /// Where messages sent from another thread go (see `Outbox::side_sender`), if the test
    /// gives the node a way to send them: a seeded run gives none, so that it replays.
    pub side: Option<Arc<Mutex<Vec<Message>>>>,
}

impl Outbox for Wire {
    fn send(&mut self, message: Message) -> bool {
        self.sent.borrow_mut().push(message);
        true
    }
    fn set_members(&mut self, _members: &BTreeMap<u64, String>) {}
    fn notify_removed(&mut self, id: u64, _address: String, index: u64) {
        self.removed.borrow_mut().push((id, index));
    }
    fn side_sender(&self) -> Option<SideSender> {
        let side = self.side.clone()?;
        Some(Box::new(move |message| {
            side.lock().unwrap().push(message);
            true
        }))
    }
}

/// How unreliable the network is, per message.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    /// Most steps a message may be held back (0: delivered at the next step).
    pub max_delay: u64,
}

/// Messages in flight, by the step they arrive at.
pub struct Network {
    faults: Faults,
    in_flight: BTreeMap<u64, Vec<Message>>,
    /// Links that deliver nothing, as (from, to).
    cut: BTreeSet<(u64, u64)>,
    pub delivered: u64,
    pub dropped: u64,
}

impl Network {
    pub fn new(faults: Faults) -> Self {
        Self {
            faults,
            in_flight: BTreeMap::new(),
            cut: BTreeSet::new(),
            delivered: 0,
            dropped: 0,
        }
    }

    /// Takes what `from` sent this step. Messages are taken in the order sent, by recipient
    /// (raft-rs iterates its peers in a hash map's order, which differs between runs; the order
    /// per recipient is the node's own). Returns the snapshots dropped at once, which the
    /// sender must hear of (as the real transport tells it), as (sender, recipient).
    pub fn take(&mut self, mut sent: Vec<Message>, now: u64, rng: &mut StdRng) -> Vec<(u64, u64)> {
        sent.sort_by_key(|m| m.to);
        let mut lost_snapshots = Vec::new();
        for message in sent {
            if rng.random_bool(self.faults.drop) {
                self.dropped += 1;
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    lost_snapshots.push((message.from, message.to));
                }
                continue;
            }
            let copies = if rng.random_bool(self.faults.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = now + 1 + rng.random_range(0..=self.faults.max_delay);
                self.in_flight.entry(at).or_default().push(message.clone());
            }
        }
        lost_snapshots
    }

    /// The messages that arrive at step `now`, less those on cut links; and for each snapshot
    /// among them, whether it arrived, as (sender, recipient, delivered).
    pub fn arriving(&mut self, now: u64) -> (Vec<Message>, Vec<(u64, u64, bool)>) {
        let mut arriving = Vec::new();
        while let Some(entry) = self.in_flight.first_entry() {
            if *entry.key() > now {
                break;
            }
            arriving.extend(entry.remove());
        }
        let mut snapshots = Vec::new();
        arriving.retain(|m| {
            let open = !self.cut.contains(&(m.from, m.to));
            if open {
                self.delivered += 1;
            } else {
                self.dropped += 1;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                snapshots.push((m.from, m.to, open));
            }
            open
        });
        (arriving, snapshots)
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn partition(&mut self, side: &[u64], all: &[u64]) {
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                self.cut.insert((*a, *b));
                self.cut.insert((*b, *a));
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }
}
