//! Linearizable reads: batched behind one read index at a time (raft ReadIndex), or answered
//! from the leader's lease (`--read-lease`, see [`Lease`]); stale reads are answered at once.

use std::time::{Duration, Instant};

use raft::ReadState;

use super::Node;
use super::NodeFatal;
use super::mailbox::{Answered, NodeError, Reply};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

pub(super) struct PendingQuery {
    pub(super) request: Vec<u8>,
    pub(super) reply: Reply<Answered>,
}

pub(super) struct ReadBatch {
    pub(super) queries: Vec<PendingQuery>,
    pub(super) deadline: Instant,
    /// When the read index was first requested: the heartbeats that confirm it left no
    /// earlier, so a lease counted from here is never longer than the followers' promise.
    pub(super) first_asked: Instant,
    /// When the read index was last requested: raft-rs drops requests it cannot serve yet
    /// (no leader, or a new leader without a commit in its term), so we ask again.
    pub(super) asked: Instant,
}

/// A leader's read lease (`--read-lease`): until `until`, no other node can have become leader,
/// so a linearizable read may be answered from the leader's state at its commit index without
/// asking the followers first.
///
/// Why it holds: with check_quorum, a follower ignores vote requests until `election_ticks`
/// of its ticks have passed since it last heard from the leader (at least `election_ticks - 1`
/// tick lengths, as its first tick may come at once), and a node restarted within that time
/// does not vote either (see [`Node::ignores_votes`]). A read-index round that a quorum
/// confirmed started at `first_asked`, so each follower of that quorum heard from the leader
/// after it: no other leader before `first_asked + (election_ticks - 1) ticks`. The lease ends
/// one tick earlier ([`Node::lease_length`]), leaving 100 ms (with the default ticks) for the
/// clocks of the nodes to run at different rates and for the leader to be paused between its
/// check of the lease and its answer. That margin is the assumption ReadIndex does not make.
/// A lease is dropped when leadership is handed over or the membership changes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// The term it was earned in: it never outlives its term.
    pub(super) term: u64,
    pub(super) until: Instant,
}

impl<S: StateMachine, L: LogStore> Node<S, L> {
    pub(super) fn query(
        &mut self,
        request: Vec<u8>,
        stale: bool,
        reply: Reply<Answered>,
    ) -> Result<(), NodeFatal> {
        if stale {
            self.answer(PendingQuery { request, reply })?;
        } else if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(NodeError::NoLeader));
        } else if let Some(index) = self.lease_read_index() {
            self.lease_used = true;
            let query = PendingQuery { request, reply };
            if index <= self.applied {
                self.answer(query)?;
            } else {
                let now = Instant::now();
                let batch = ReadBatch {
                    queries: vec![query],
                    deadline: now + self.options.request_timeout,
                    first_asked: now,
                    asked: now,
                };
                self.reads_ready.push_back((index, batch));
            }
        } else {
            self.new_reads_deadline
                .get_or_insert_with(|| Instant::now() + self.options.request_timeout);
            self.new_reads.push(PendingQuery { request, reply });
        }
        Ok(())
    }

    /// How long a read lease lasts from the start of the round that earned it: one tick less
    /// than the followers' promise not to vote (see [`Lease`]).
    pub(super) fn lease_length(&self) -> Duration {
        self.options.tick * (self.options.election_ticks.saturating_sub(2) as u32)
    }

    /// The index a linearizable read may be answered at right now from the lease, if this
    /// node holds a valid one.
    pub(super) fn lease_read_index(&self) -> Option<u64> {
        let lease = self.lease?;
        let raft = &self.raw.raft;
        let valid = self.is_leader()
            && raft.term == lease.term
            && raft.lead_transferee.is_none()
            && Instant::now() < lease.until;
        let committed = raft.raft_log.committed;
        // A new leader knows what is committed only once an entry of its own term is.
        (valid && raft.raft_log.term(committed).ok() == Some(raft.term)).then_some(committed)
    }

    /// Whether the lease, having been used, is past half its length: then a read-index round
    /// renews it before it runs out, so a steady stream of reads never waits for one.
    pub(super) fn lease_wants_renewal(&self) -> bool {
        self.lease_used
            && self.lease.is_some_and(|lease| {
                lease.until.saturating_duration_since(Instant::now()) < self.lease_length() / 2
            })
    }

    /// Forgets the lease and refuses one from rounds already under way: leadership is being
    /// handed over, or the membership changed.
    pub(super) fn drop_lease(&mut self) {
        self.lease = None;
        self.lease_barrier = Instant::now();
    }

    /// Asks raft for one read index covering every linearizable query received since the last
    /// one was asked, and again for batches raft has not answered within a few ticks.
    ///
    /// Only one batch waits for raft at a time (as etcd does): each read index costs a
    /// heartbeat round to every follower, so under load the queries that arrive during one
    /// round all share the next, instead of every loop iteration starting a round of its own.
    pub(super) fn ask_read_index(&mut self) {
        let now = Instant::now();
        let renew = self.lease_wants_renewal();
        if (!self.new_reads.is_empty() || renew) && self.reads_waiting.is_empty() {
            self.lease_used = false;
            let id = self.next_read_id;
            self.next_read_id += 1;
            self.raw.read_index(id.to_le_bytes().to_vec());
            let batch = ReadBatch {
                queries: std::mem::take(&mut self.new_reads),
                deadline: self
                    .new_reads_deadline
                    .take()
                    .unwrap_or(now + self.options.request_timeout),
                first_asked: now,
                asked: now,
            };
            self.reads_waiting.insert(id, batch);
        }
        let retry_after = self.options.tick * 3;
        for (id, batch) in self.reads_waiting.iter_mut() {
            if now.duration_since(batch.asked) >= retry_after {
                batch.asked = now;
                self.raw.read_index(id.to_le_bytes().to_vec());
            }
        }
    }

    pub(super) fn note_read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            let Ok(id) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(batch) = self.reads_waiting.remove(&u64::from_le_bytes(id)) {
                self.earn_lease(batch.first_asked);
                self.reads_ready.push_back((state.index, batch));
            }
        }
    }

    /// A quorum confirmed a read-index round first asked at `first_asked`: with
    /// `--read-lease`, that earns (or extends) the leader's lease.
    pub(super) fn earn_lease(&mut self, first_asked: Instant) {
        if !self.options.read_lease || !self.is_leader() || first_asked <= self.lease_barrier {
            return;
        }
        let until = first_asked + self.lease_length();
        let term = self.raw.raft.term;
        if self
            .lease
            .is_none_or(|lease| lease.term != term || lease.until < until)
        {
            self.lease = Some(Lease { term, until });
        }
    }

    pub(super) fn serve_reads(&mut self) -> Result<(), NodeFatal> {
        while self
            .reads_ready
            .front()
            .is_some_and(|(index, _)| *index <= self.applied)
        {
            let (_, batch) = self.reads_ready.pop_front().expect("checked above");
            for query in batch.queries {
                self.answer(query)?;
            }
        }
        Ok(())
    }

    /// Answers a query from the state machine as it is now.
    pub(super) fn answer(&mut self, query: PendingQuery) -> Result<(), NodeFatal> {
        let outcome = self.state_machine.query(&query.request)?;
        let _ = query.reply.send(Ok(Answered {
            applied_index: self.applied,
            outcome,
        }));
        Ok(())
    }
}
