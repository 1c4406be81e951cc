//! Linearizable reads: batched behind one read index at a time (raft ReadIndex), or answered
//! from the leader's lease (`--read-lease`, see [`Lease`]); stale reads are answered at once.
//!
//! [`Reads`] holds the rules and the waiting queries, and knows nothing of raft-rs or the
//! clock: the node passes in what raft says ([`RaftView`]) and the time, and acts on what it
//! gets back (read-index requests to make, queries to answer). So the rules are tested here
//! without a node.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::mailbox::{Answered, NodeError, NodeFatal, Reply};
use super::{Node, Outbox};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;

/// A linearizable query waiting for its answer.
pub(super) struct PendingQuery {
    pub(super) request: Vec<u8>,
    /// When a linearizable query arrived (for `riteraft_read_seconds`); `None` for a stale one.
    pub(super) received: Option<Instant>,
    pub(super) reply: Reply<Answered>,
}

/// Queries that share one read index.
struct ReadBatch<Q> {
    queries: Vec<Q>,
    deadline: Instant,
    /// When the read index was first requested: the heartbeats that confirm it left no
    /// earlier, so a lease counted from here is never longer than the followers' promise.
    first_asked: Instant,
    /// When the read index was last requested: raft-rs drops requests it cannot serve yet
    /// (no leader, or a new leader without a commit in its term), so we ask again.
    asked: Instant,
}

/// A leader's read lease (`--read-lease`): until `until`, no other node can have become leader,
/// so a linearizable read may be answered from the leader's state at its commit index without
/// asking the followers first.
///
/// Why it holds: with check_quorum, a follower ignores vote requests until `election_ticks`
/// of its ticks have passed since it last heard from the leader (at least `election_ticks - 1`
/// tick lengths, as its first tick may come at once), and a node restarted within that time
/// does not vote either (see `Node::ignores_votes`). A read-index round that a quorum
/// confirmed started at `first_asked`, so each follower of that quorum heard from the leader
/// after it: no other leader before `first_asked + (election_ticks - 1) ticks`. The lease ends
/// one tick earlier ([`ReadRules::lease_length`]), leaving 100 ms (with the default ticks) for
/// the clocks of the nodes to run at different rates and for the leader to be paused between
/// its check of the lease and its answer. That margin is the assumption ReadIndex does not
/// make. A lease is dropped when leadership is handed over or the membership changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    /// The term it was earned in: it never outlives its term.
    term: u64,
    until: Instant,
}

/// The timing of reads, from the node's options.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadRules {
    /// How long a query may wait for its answer.
    pub(super) timeout: Duration,
    /// How long a lease lasts from the start of the round that earned it; `None` without
    /// `--read-lease`.
    pub(super) lease_length: Option<Duration>,
    /// How long a read-index request may go unanswered before it is asked again.
    pub(super) retry_after: Duration,
}

impl ReadRules {
    /// One tick less than the followers' promise not to vote (see [`Lease`]).
    pub(super) fn lease_length(tick: Duration, election_ticks: usize) -> Duration {
        tick * (election_ticks.saturating_sub(2) as u32)
    }
}

/// What the read rules need to know of raft, at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RaftView {
    pub(super) is_leader: bool,
    /// Some node is known to lead.
    pub(super) leader_known: bool,
    pub(super) term: u64,
    /// Leadership is being handed over.
    pub(super) transferring: bool,
    pub(super) committed: u64,
    /// The entry at `committed` is of `term`: a new leader knows what is committed only once
    /// an entry of its own term is.
    pub(super) committed_in_term: bool,
}

/// What became of a query handed to [`Reads::submit`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Submitted<Q> {
    /// The lease covers it and its index is applied: answer it now.
    AnswerNow(Q),
    /// No leader is known: it cannot be confirmed.
    NoLeader(Q),
    /// It waits (see [`Reads::answerable`]).
    Queued,
}

/// The linearizable queries of one node and its lease.
pub(super) struct Reads<Q> {
    rules: ReadRules,
    /// Queries not yet in a batch: they share the next read index.
    new: Vec<Q>,
    /// When the oldest of `new` times out: a query waiting for the batch ahead of it gets no
    /// more time than one sent into a batch at once.
    new_deadline: Option<Instant>,
    /// Batches waiting for raft to confirm a read index, by request id (one at a time).
    waiting: BTreeMap<u64, ReadBatch<Q>>,
    /// Batches with a confirmed read index, waiting for the state machine to apply it.
    ready: VecDeque<(u64, ReadBatch<Q>)>,
    next_id: u64,
    lease: Option<Lease>,
    /// Rounds first asked at or before this earn no lease: leadership was handed over or the
    /// membership changed after they started.
    lease_barrier: Instant,
    /// A read was answered from the lease since it was last renewed: worth renewing.
    lease_used: bool,
}

impl<Q> Reads<Q> {
    pub(super) fn new(rules: ReadRules, now: Instant) -> Self {
        Self {
            rules,
            new: Vec::new(),
            new_deadline: None,
            waiting: BTreeMap::new(),
            ready: VecDeque::new(),
            next_id: 1,
            lease: None,
            lease_barrier: now,
            lease_used: false,
        }
    }

    /// Takes a linearizable query.
    pub(super) fn submit(
        &mut self,
        query: Q,
        raft: &RaftView,
        applied: u64,
        now: Instant,
    ) -> Submitted<Q> {
        if !raft.leader_known {
            return Submitted::NoLeader(query);
        }
        if let Some(index) = self.lease_read_index(raft, now) {
            self.lease_used = true;
            if index <= applied {
                return Submitted::AnswerNow(query);
            }
            let batch = ReadBatch {
                queries: vec![query],
                deadline: now + self.rules.timeout,
                first_asked: now,
                asked: now,
            };
            self.ready.push_back((index, batch));
            return Submitted::Queued;
        }
        self.new_deadline.get_or_insert(now + self.rules.timeout);
        self.new.push(query);
        Submitted::Queued
    }

    /// The index a read may be answered at right now from the lease, if one is held.
    fn lease_read_index(&self, raft: &RaftView, now: Instant) -> Option<u64> {
        let lease = self.lease?;
        let valid = raft.is_leader
            && raft.term == lease.term
            && !raft.transferring
            && now < lease.until
            && raft.committed_in_term;
        valid.then_some(raft.committed)
    }

    /// The read-index requests to make now, by id: one covering every query taken since the
    /// last one, if none is waiting (only one at a time, as etcd does: each costs a heartbeat
    /// round, so under load the queries of one round all share the next); one to renew a used
    /// lease past half its length, so a steady stream of reads never waits for a round; and
    /// again for any raft has not answered within [`ReadRules::retry_after`].
    pub(super) fn read_indexes_due(&mut self, now: Instant) -> Vec<u64> {
        let mut ask = Vec::new();
        let renew = self.lease_used
            && self.rules.lease_length.is_some_and(|length| {
                self.lease
                    .is_some_and(|lease| lease.until.saturating_duration_since(now) < length / 2)
            });
        if (!self.new.is_empty() || renew) && self.waiting.is_empty() {
            self.lease_used = false;
            let id = self.next_id;
            self.next_id += 1;
            let batch = ReadBatch {
                queries: std::mem::take(&mut self.new),
                deadline: self.new_deadline.take().unwrap_or(now + self.rules.timeout),
                first_asked: now,
                asked: now,
            };
            self.waiting.insert(id, batch);
            ask.push(id);
            return ask;
        }
        for (id, batch) in self.waiting.iter_mut() {
            if now.duration_since(batch.asked) >= self.rules.retry_after {
                batch.asked = now;
                ask.push(*id);
            }
        }
        ask
    }

    /// raft confirmed read index `index` for request `id`: its queries may be answered once
    /// `index` is applied, and with a lease configured the round earns (or extends) it.
    pub(super) fn confirmed(&mut self, id: u64, index: u64, raft: &RaftView) {
        let Some(batch) = self.waiting.remove(&id) else {
            return;
        };
        if let Some(length) = self.rules.lease_length
            && raft.is_leader
            && batch.first_asked > self.lease_barrier
        {
            let until = batch.first_asked + length;
            if self
                .lease
                .is_none_or(|lease| lease.term != raft.term || lease.until < until)
            {
                self.lease = Some(Lease {
                    term: raft.term,
                    until,
                });
            }
        }
        self.ready.push_back((index, batch));
    }

    /// The queries whose read index is applied, in order.
    pub(super) fn answerable(&mut self, applied: u64) -> Vec<Q> {
        let mut answerable = Vec::new();
        while self
            .ready
            .front()
            .is_some_and(|(index, _)| *index <= applied)
        {
            let (_, batch) = self.ready.pop_front().expect("checked above");
            answerable.extend(batch.queries);
        }
        answerable
    }

    /// The queries whose time is up: their read index was not confirmed in time, or this
    /// node did not apply it in time (it fell behind).
    pub(super) fn expired(&mut self, now: Instant) -> Vec<Q> {
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, batch)| batch.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut expired: Vec<Q> = late
            .into_iter()
            .filter_map(|id| self.waiting.remove(&id))
            .flat_map(|batch| batch.queries)
            .collect();
        while self
            .ready
            .front()
            .is_some_and(|(_, batch)| batch.deadline <= now)
        {
            let (_, batch) = self.ready.pop_front().expect("checked above");
            expired.extend(batch.queries);
        }
        expired
    }

    /// Forgets the lease and refuses one from rounds already under way: leadership is being
    /// handed over, or the membership changed.
    pub(super) fn drop_lease(&mut self, now: Instant) {
        self.lease = None;
        self.lease_barrier = now;
    }

    /// Every waiting query (the node stops).
    pub(super) fn take_all(&mut self) -> Vec<Q> {
        self.new_deadline = None;
        let mut all = std::mem::take(&mut self.new);
        all.extend(
            std::mem::take(&mut self.waiting)
                .into_values()
                .flat_map(|batch| batch.queries),
        );
        all.extend(
            std::mem::take(&mut self.ready)
                .into_iter()
                .flat_map(|(_, batch)| batch.queries),
        );
        all
    }
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// Answers a query: a stale one at once, a linearizable one once its read is confirmed.
    pub(super) fn query(
        &mut self,
        request: Vec<u8>,
        stale: bool,
        reply: Reply<Answered>,
    ) -> Result<(), NodeFatal> {
        if let Some(diverged) = self.refuse_if_diverged() {
            let _ = reply.send(Err(diverged));
            return Ok(());
        }
        self.options.metrics.read(stale);
        let received = (!stale).then(Instant::now);
        let query = PendingQuery {
            request,
            received,
            reply,
        };
        if stale {
            return self.answer(query);
        }
        let view = self.raft_view();
        match self.reads.submit(query, &view, self.applied, self.now) {
            Submitted::AnswerNow(query) => self.answer(query)?,
            Submitted::NoLeader(query) => {
                let _ = query.reply.send(Err(NodeError::NoLeader));
            }
            Submitted::Queued => {}
        }
        Ok(())
    }

    /// What the read rules need to know of raft now.
    pub(super) fn raft_view(&self) -> RaftView {
        let raft = &self.raw.raft;
        let committed = raft.raft_log.committed;
        RaftView {
            is_leader: self.is_leader(),
            leader_known: raft.leader_id != raft::INVALID_ID,
            term: raft.term,
            transferring: raft.lead_transferee.is_some(),
            committed,
            committed_in_term: raft.raft_log.term(committed).ok() == Some(raft.term),
        }
    }

    /// Asks raft for the read indexes the read rules want now.
    pub(super) fn ask_read_index(&mut self) {
        for id in self.reads.read_indexes_due(self.now) {
            tracing::debug!(id, "asking for a read index");
            self.raw.read_index(id.to_le_bytes().to_vec());
        }
    }

    pub(super) fn note_read_states(&mut self, states: Vec<raft::ReadState>) {
        let view = self.raft_view();
        for state in states {
            if let Ok(id) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) {
                tracing::debug!(
                    id = u64::from_le_bytes(id),
                    index = state.index,
                    applied = self.applied,
                    leader = view.is_leader,
                    "read index confirmed"
                );
                self.reads
                    .confirmed(u64::from_le_bytes(id), state.index, &view);
            }
        }
    }

    pub(super) fn drop_lease(&mut self) {
        self.reads.drop_lease(self.now);
    }

    pub(super) fn serve_reads(&mut self) -> Result<(), NodeFatal> {
        for query in self.reads.answerable(self.applied) {
            tracing::debug!(applied = self.applied, "answering a linearizable read");
            self.answer(query)?;
        }
        Ok(())
    }

    /// Answers a query from the state machine as it is now.
    pub(super) fn answer(&mut self, query: PendingQuery) -> Result<(), NodeFatal> {
        let outcome = self.state_machine.query(&query.request)?;
        self.options.metrics.read_answered(query.received, &outcome);
        let _ = query.reply.send(Ok(Answered {
            applied_index: self.applied,
            outcome,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);
    const LEASE: Duration = Duration::from_millis(800);
    const RETRY: Duration = Duration::from_millis(300);

    fn rules(lease: bool) -> ReadRules {
        ReadRules {
            timeout: TIMEOUT,
            lease_length: lease.then_some(LEASE),
            retry_after: RETRY,
        }
    }

    fn leader(term: u64, committed: u64) -> RaftView {
        RaftView {
            is_leader: true,
            leader_known: true,
            term,
            transferring: false,
            committed,
            committed_in_term: true,
        }
    }

    fn ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// One read, confirmed and answered in a round asked at `at` (with a lease configured and
    /// `raft` leading, the round earns one).
    fn confirmed_round(reads: &mut Reads<i32>, raft: &RaftView, at: Instant) {
        reads.submit(1, raft, 10, at);
        for id in reads.read_indexes_due(at) {
            reads.confirmed(id, 10, raft);
        }
        reads.answerable(10);
    }

    #[test]
    fn reads_that_arrive_during_a_round_share_the_next_one() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(false), t0);
        let raft = leader(2, 10);
        assert_eq!(reads.submit(1, &raft, 10, t0), Submitted::Queued);
        assert_eq!(reads.submit(2, &raft, 10, t0), Submitted::Queued);
        assert_eq!(reads.read_indexes_due(t0), vec![1]);
        // While round 1 waits, no second round starts, however many reads arrive.
        assert_eq!(reads.submit(3, &raft, 10, ms(t0, 10)), Submitted::Queued);
        assert_eq!(reads.read_indexes_due(ms(t0, 10)), Vec::<u64>::new());
        reads.confirmed(1, 10, &raft);
        assert_eq!(reads.answerable(10), vec![1, 2]);
        assert_eq!(reads.read_indexes_due(ms(t0, 20)), vec![2]);
        reads.confirmed(2, 12, &raft);
        // Confirmed, but not applied yet.
        assert_eq!(reads.answerable(11), Vec::<i32>::new());
        assert_eq!(reads.answerable(12), vec![3]);
    }

    #[test]
    fn an_unanswered_round_is_asked_again_and_times_out() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(false), t0);
        reads.submit(1, &leader(2, 10), 10, t0);
        assert_eq!(reads.read_indexes_due(t0), vec![1]);
        assert_eq!(reads.read_indexes_due(ms(t0, 299)), Vec::<u64>::new());
        assert_eq!(reads.read_indexes_due(ms(t0, 300)), vec![1]);
        assert_eq!(
            reads.expired(t0 + TIMEOUT - Duration::from_millis(1)),
            Vec::<i32>::new()
        );
        assert_eq!(reads.expired(t0 + TIMEOUT), vec![1]);
        // Its late confirmation finds nothing.
        reads.confirmed(1, 10, &leader(2, 10));
        assert_eq!(reads.answerable(10), Vec::<i32>::new());
    }

    #[test]
    fn a_read_waiting_for_the_next_round_gets_no_more_time_than_one_sent_at_once() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(false), t0);
        let raft = leader(2, 10);
        reads.submit(1, &raft, 10, t0);
        reads.read_indexes_due(t0);
        reads.submit(2, &raft, 10, ms(t0, 100));
        reads.confirmed(1, 10, &raft);
        reads.answerable(10);
        // Round 2 starts late, but read 2's deadline counts from when it arrived.
        reads.read_indexes_due(ms(t0, 4000));
        assert_eq!(reads.expired(ms(t0, 100) + TIMEOUT), vec![2]);
    }

    #[test]
    fn without_a_leader_a_read_cannot_be_confirmed() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(true), t0);
        let none = RaftView::default();
        assert_eq!(reads.submit(7, &none, 0, t0), Submitted::NoLeader(7));
    }

    #[test]
    fn a_confirmed_round_earns_a_lease_that_answers_reads_until_it_ends() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(true), ms(t0, 0));
        let raft = leader(2, 10);
        reads.submit(1, &raft, 10, ms(t0, 1));
        reads.read_indexes_due(ms(t0, 1));
        reads.confirmed(1, 10, &raft);
        assert_eq!(reads.answerable(10), vec![1]);
        // Lease from the round's start (1 ms) for 800 ms.
        assert_eq!(
            reads.submit(2, &raft, 10, ms(t0, 500)),
            Submitted::AnswerNow(2)
        );
        assert_eq!(
            reads.submit(3, &raft, 10, ms(t0, 800)),
            Submitted::AnswerNow(3)
        );
        assert_eq!(reads.submit(4, &raft, 10, ms(t0, 801)), Submitted::Queued);
    }

    #[test]
    fn a_lease_is_not_used_in_another_term_during_a_transfer_or_before_a_commit_of_its_term() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(true), t0);
        let raft = leader(2, 10);
        confirmed_round(&mut reads, &raft, ms(t0, 1));
        let later_term = leader(3, 10);
        let transferring = RaftView {
            transferring: true,
            ..raft
        };
        let no_commit_yet = RaftView {
            committed_in_term: false,
            ..raft
        };
        let follower = RaftView {
            is_leader: false,
            ..raft
        };
        for view in [later_term, transferring, no_commit_yet, follower] {
            assert_eq!(
                reads.submit(9, &view, 10, ms(t0, 10)),
                Submitted::Queued,
                "{view:?}"
            );
        }
    }

    #[test]
    fn a_lease_read_waits_for_the_commit_index_to_apply() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(true), t0);
        confirmed_round(&mut reads, &leader(2, 10), ms(t0, 1));
        assert_eq!(
            reads.submit(2, &leader(2, 12), 10, ms(t0, 5)),
            Submitted::Queued
        );
        assert_eq!(reads.answerable(11), Vec::<i32>::new());
        assert_eq!(reads.answerable(12), vec![2]);
    }

    #[test]
    fn rounds_started_before_a_dropped_lease_earn_none() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(true), t0);
        let raft = leader(2, 10);
        reads.submit(1, &raft, 10, ms(t0, 1));
        reads.read_indexes_due(ms(t0, 1));
        // Leadership is handed over (or the membership changes) while the round is out.
        reads.drop_lease(ms(t0, 2));
        reads.confirmed(1, 10, &raft);
        reads.answerable(10);
        assert_eq!(reads.submit(2, &raft, 10, ms(t0, 3)), Submitted::Queued);
        // A round started after the drop earns one again.
        reads.read_indexes_due(ms(t0, 4));
        reads.confirmed(2, 10, &raft);
        reads.answerable(10);
        assert_eq!(
            reads.submit(3, &raft, 10, ms(t0, 5)),
            Submitted::AnswerNow(3)
        );
    }

    #[test]
    fn no_lease_without_read_lease_and_none_for_a_follower() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(false), t0);
        let raft = leader(2, 10);
        confirmed_round(&mut reads, &raft, ms(t0, 1));
        assert_eq!(reads.submit(2, &raft, 10, ms(t0, 2)), Submitted::Queued);

        let mut reads = Reads::new(rules(true), t0);
        let follower = RaftView {
            is_leader: false,
            ..raft
        };
        confirmed_round(&mut reads, &follower, ms(t0, 1));
        assert_eq!(reads.submit(2, &raft, 10, ms(t0, 2)), Submitted::Queued);
    }

    #[test]
    fn a_used_lease_is_renewed_past_half_its_length() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(true), t0);
        let raft = leader(2, 10);
        confirmed_round(&mut reads, &raft, ms(t0, 1));
        // Unused: no renewal even near its end.
        assert_eq!(reads.read_indexes_due(ms(t0, 700)), Vec::<u64>::new());
        assert_eq!(
            reads.submit(2, &raft, 10, ms(t0, 100)),
            Submitted::AnswerNow(2)
        );
        // Used, but more than half remains (until 801 ms).
        assert_eq!(reads.read_indexes_due(ms(t0, 300)), Vec::<u64>::new());
        assert_eq!(reads.read_indexes_due(ms(t0, 402)), vec![2]);
    }

    #[test]
    fn a_stopping_node_hands_back_every_waiting_query() {
        let t0 = Instant::now();
        let mut reads = Reads::new(rules(false), t0);
        let raft = leader(2, 10);
        reads.submit(1, &raft, 10, t0);
        reads.read_indexes_due(t0);
        reads.confirmed(1, 12, &raft);
        reads.submit(2, &raft, 10, t0);
        reads.read_indexes_due(t0);
        reads.submit(3, &raft, 10, t0);
        let mut all = reads.take_all();
        all.sort();
        assert_eq!(all, vec![1, 2, 3]);
        assert_eq!(reads.answerable(u64::MAX), Vec::<i32>::new());
    }
}
