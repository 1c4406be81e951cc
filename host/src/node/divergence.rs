//! Divergence detection: replicas that apply the same log must give the same answers. Every
//! replica folds each answer it applies (output, rejection, or the code a deploy leaves
//! running) into a running sha256 digest, replicated in [`ClusterState::answers_digest`] so
//! that a replica restored from a snapshot carries the chain on. Every `digest_interval`
//! entries each replica reports its digest at that index *through the log* (a
//! `DigestReport` entry, which a follower's raft forwards to the leader). Once a majority of
//! the voters reported the same digest for an index, that digest is the cluster's; a replica
//! whose own differs has diverged: it raises an alarm (status, health, the log, a file in its
//! data dir that keeps it raised across restarts) and refuses reads and writes until an
//! operator rebuilds it. The rest of the cluster goes on.
//!
//! Why answers and not a hash of the state at snapshots: answers are what clients see, each is
//! hashed once when it is produced (a few hundred nanoseconds for a short answer), and two
//! replicas whose states are equal but serialize differently (a `HashMap` in another order)
//! are not flagged; a state that differs shows in the answers of the entries that touch it.
//! Why through the log: every replica decides at the same log position with the same
//! voters, so the decision needs no extra protocol, and the simulator checks it like the rest.
//!
//! [`ClusterState::answers_digest`]: crate::replicated::ClusterState::answers_digest

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::{Node, Outbox};
use crate::replicated::{EntryPayload, encode};
use crate::state_machine::{Outcome, StateMachine};
use crate::storage::LogStore;

/// Checkpoints whose reports are kept while they gather a majority: a replica more than this
/// many checkpoints behind never completes one, and no memory grows without bound.
const CHECKPOINTS_KEPT: usize = 16;

/// The file in the data dir that records a divergence, so a restart does not clear the alarm.
pub const ALARM_FILE: &str = "DIVERGED";

/// This replica's answers differ from the cluster's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// The checkpoint at which it was found.
    pub index: u64,
    /// This replica's digest there (hex).
    pub own: String,
    /// The digest a majority of the voters reported (hex).
    pub agreed: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this replica diverged: at log index {} its answers' digest is {}, the cluster's is \
             {}; it serves no reads or writes until it is rebuilt (remove it with `riteraft \
             leave`, empty its data dir, join again)",
            self.index, self.own, self.agreed
        )
    }
}

/// The replica's side of the check (node-local, except the digest itself).
#[derive(Debug, Default)]
pub(super) struct DivergenceCheck {
    /// This replica's digest at each recent checkpoint.
    own: BTreeMap<u64, [u8; 32]>,
    /// Reports gathered per checkpoint, by reporting node, until a majority agrees.
    reports: BTreeMap<u64, BTreeMap<u64, [u8; 32]>>,
    /// The digest the cluster agreed on at each recent checkpoint.
    agreed: BTreeMap<u64, [u8; 32]>,
    /// Reports to propose once the current Ready is processed.
    to_report: Vec<(u64, [u8; 32])>,
    /// Set once this replica diverged: it stays so (see [`ALARM_FILE`]).
    pub(super) diverged: Option<String>,
}

impl DivergenceCheck {
    /// The check for a node whose data dir is `data_dir`: diverged already if the alarm file
    /// is there.
    pub(super) fn open(data_dir: Option<&PathBuf>) -> Self {
        let diverged = data_dir
            .map(|dir| dir.join(ALARM_FILE))
            .and_then(|file| std::fs::read_to_string(file).ok());
        if let Some(why) = &diverged {
            tracing::error!("{}", why.trim_end());
        }
        Self {
            diverged,
            ..Self::default()
        }
    }
}

/// Logs node `node`'s report at checkpoint `index` if it is not the `agreed` digest.
fn log_mismatch(node: u64, index: u64, reported: &[u8; 32], agreed: &[u8; 32]) {
    if reported != agreed {
        tracing::error!(
            node,
            index,
            reported = %hex::encode(reported),
            agreed = %hex::encode(agreed),
            "a replica's answers differ from the cluster's: it diverged"
        );
    }
}

/// The digest after `previous`, folding in the answer to the entry at `index`.
pub fn fold(previous: &[u8; 32], index: u64, outcome: &Outcome) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(previous);
    hash.update(index.to_le_bytes());
    match outcome {
        Ok(output) => {
            hash.update([0]);
            hash.update(output);
        }
        Err(rejection) => {
            hash.update([1]);
            hash.update(rejection.to_string().as_bytes());
        }
    }
    hash.finalize().into()
}

impl<S: StateMachine, L: LogStore, O: Outbox> Node<S, L, O> {
    /// Folds the answer to the entry at `index` into the running digest. Always, whatever
    /// `digest_interval` says: the digest travels in snapshots, and a replica restored from a
    /// snapshot of a node that skipped it would look diverged.
    pub(super) fn fold_answer(&mut self, index: u64, outcome: &Outcome) {
        self.cluster.answers_digest = fold(&self.cluster.answers_digest, index, outcome);
    }

    /// After the entry at `index` is applied: at a checkpoint, note this replica's digest and
    /// queue its report.
    pub(super) fn checkpoint_digest(&mut self, index: u64) {
        let interval = self.options.digest_interval;
        if interval == 0 || !index.is_multiple_of(interval) {
            return;
        }
        let check = &mut self.divergence;
        check.own.insert(index, self.cluster.answers_digest);
        while check.own.len() > CHECKPOINTS_KEPT {
            check.own.pop_first();
        }
        check.to_report.push((index, self.cluster.answers_digest));
    }

    /// Proposes the queued reports (a follower's raft forwards them to the leader; one lost to
    /// a leader change is not retried: the next checkpoint comes soon).
    pub(super) fn send_digest_reports(&mut self) {
        for (index, digest) in std::mem::take(&mut self.divergence.to_report) {
            let report = EntryPayload::DigestReport {
                node: self.id,
                index,
                digest,
            };
            if let Err(e) = self.raw.propose(vec![], encode(&report)) {
                tracing::debug!(index, "a digest report was not sent: {e}");
            }
        }
    }

    /// Applies node `node`'s report of its digest at checkpoint `index`, identically on every
    /// replica.
    pub(super) fn apply_digest_report(&mut self, node: u64, index: u64, digest: [u8; 32]) {
        let check = &mut self.divergence;
        if let Some(agreed) = check.agreed.get(&index) {
            log_mismatch(node, index, &digest, agreed);
            return;
        }
        let reports = check.reports.entry(index).or_default();
        reports.insert(node, digest);
        // A majority of the voters (of the incoming ones during a joint change).
        let voters = self.raw.raft.prs().conf().to_conf_state().voters;
        let votes = reports
            .iter()
            .filter(|(reporter, reported)| voters.contains(reporter) && **reported == digest)
            .count();
        let needed = voters.len() / 2 + 1;
        if votes < needed {
            while check.reports.len() > CHECKPOINTS_KEPT {
                check.reports.pop_first();
            }
            return;
        }
        let reports = check.reports.remove(&index).unwrap_or_default();
        check.agreed.insert(index, digest);
        while check.agreed.len() > CHECKPOINTS_KEPT {
            check.agreed.pop_first();
        }
        for (reporter, reported) in &reports {
            log_mismatch(*reporter, index, reported, &digest);
        }
        if let Some(own) = check.own.get(&index)
            && *own != digest
        {
            let divergence = Divergence {
                index,
                own: hex::encode(own),
                agreed: hex::encode(digest),
            };
            self.raise_divergence(divergence);
        }
    }

    /// Raises the alarm on this replica, once, and records it in the data dir.
    fn raise_divergence(&mut self, divergence: Divergence) {
        if self.divergence.diverged.is_some() {
            return;
        }
        let why = divergence.to_string();
        tracing::error!(
            index = divergence.index,
            own = %divergence.own,
            agreed = %divergence.agreed,
            "{why}"
        );
        if let Some(dir) = &self.options.data_dir
            && let Err(e) = std::fs::write(dir.join(ALARM_FILE), format!("{why}\n"))
        {
            tracing::error!("cannot record the divergence in {}: {e}", dir.display());
        }
        self.divergence.diverged = Some(why);
    }

    /// Why this replica serves nothing, if it diverged.
    pub fn diverged(&self) -> Option<&str> {
        self.divergence.diverged.as_deref()
    }

    /// The error for a client request to a diverged replica, if it is one.
    pub(super) fn refuse_if_diverged(&self) -> Option<super::NodeError> {
        let why = self.divergence.diverged.as_ref()?;
        Some(super::NodeError::Diverged(why.trim_end().to_string()))
    }

    /// Every tick: a diverged leader hands leadership to a voter that has not diverged, so
    /// that the cluster keeps taking writes.
    pub(super) fn step_down_if_diverged(&mut self) {
        if self.divergence.diverged.is_none()
            || !self.is_leader()
            || self.raw.raft.lead_transferee.is_some()
        {
            return;
        }
        if let Some(successor) = self.successor(self.id) {
            tracing::warn!(successor, "diverged: handing leadership over");
            self.drop_lease();
            self.raw.transfer_leader(successor);
        }
    }
}
