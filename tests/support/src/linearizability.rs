//! The client history and its check: per-key linearizability of a register (`put` writes a
//! unique value, `get` reads), with the Wing & Gong search as refined by Lowe (WGL): try every
//! operation that may come first (no other operation finished before it started), apply it to
//! the register, recurse, and remember (set of linearized operations, register value) pairs
//! already seen. Hand-written rather than a crate: it is 80 lines for this one model, the
//! histories are small (a few dozen operations per key), and its answer must not depend on
//! anything but the history.

use std::collections::{BTreeMap, HashSet};

/// When something happened, in simulation steps.
pub type Step = u64;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Put(String),
    Get,
}

/// What it got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The write was applied / the read returned this value (`None`: no such key).
    Ok(Option<String>),
    /// Definitely had no effect (refused before it reached the log, or lost to a leader change).
    Failed,
    /// May or may not have taken effect (timed out, or the node died while it was pending).
    Unknown,
}

/// One operation on one key.
#[derive(Debug, Clone)]
pub struct Op {
    pub call: Call,
    pub invoked: Step,
    pub completed: Step,
    pub outcome: Outcome,
}

/// Every operation, by key.
#[derive(Debug, Default)]
pub struct History {
    pub by_key: BTreeMap<String, Vec<Op>>,
}

impl History {
    pub fn record(&mut self, key: &str, op: Op) {
        self.by_key.entry(key.to_string()).or_default().push(op);
    }

    /// The first key whose operations are not linearizable, with them.
    pub fn violation(&self) -> Option<(&String, &Vec<Op>)> {
        self.by_key.iter().find(|(_, ops)| !linearizable(ops))
    }
}

/// Whether `ops` on one register (initially absent) can be put in one order that respects
/// real time and the register's rules. Failed operations had no effect and are left out;
/// unknown writes may take effect at any time after they were invoked, or never.
pub fn linearizable(ops: &[Op]) -> bool {
    let ops: Vec<&Op> = ops
        .iter()
        .filter(|op| {
            op.outcome != Outcome::Failed
                && !(op.call == Call::Get && op.outcome == Outcome::Unknown)
        })
        .collect();
    assert!(
        ops.len() <= 128,
        "a key's history is too long to check: {}",
        ops.len()
    );
    let mut seen = HashSet::new();
    search(&ops, 0, None, &mut seen)
}

/// `done` is the set of linearized operations (a bit per operation).
fn search(
    ops: &[&Op],
    done: u128,
    value: Option<String>,
    seen: &mut HashSet<(u128, Option<String>)>,
) -> bool {
    // Finished once every operation that completed is linearized (unknown writes may never
    // take effect).
    let pending = |i: usize| done & (1u128 << i) == 0;
    if (0..ops.len()).all(|i| !pending(i) || ops[i].outcome == Outcome::Unknown) {
        return true;
    }
    if !seen.insert((done, value.clone())) {
        return false;
    }
    // An operation may go next only if no pending one completed before it was invoked.
    let first_completion = (0..ops.len())
        .filter(|&i| pending(i) && ops[i].outcome != Outcome::Unknown)
        .map(|i| ops[i].completed)
        .min()
        .unwrap_or(Step::MAX);
    for i in (0..ops.len()).filter(|&i| pending(i)) {
        let op = ops[i];
        if op.invoked > first_completion {
            continue;
        }
        let next = match (&op.call, &op.outcome) {
            (Call::Put(v), _) => Some(v.clone()),
            (Call::Get, Outcome::Ok(read)) if *read == value => value.clone(),
            (Call::Get, _) => continue,
        };
        if search(ops, done | (1u128 << i), next, seen) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, invoked: Step, completed: Step, outcome: Outcome) -> Op {
        Op {
            call,
            invoked,
            completed,
            outcome,
        }
    }
    fn put(v: &str) -> Call {
        Call::Put(v.into())
    }
    fn read(v: Option<&str>) -> Outcome {
        Outcome::Ok(v.map(str::to_string))
    }

    #[test]
    fn sequential_and_overlapping_histories() {
        let ok = Outcome::Ok(None);
        assert!(linearizable(&[
            op(put("a"), 0, 1, ok.clone()),
            op(Call::Get, 2, 3, read(Some("a"))),
        ]));
        // A read after a completed write that misses it is a stale read.
        assert!(!linearizable(&[
            op(put("a"), 0, 1, ok.clone()),
            op(Call::Get, 2, 3, read(None)),
        ]));
        // Overlapping: either order.
        assert!(linearizable(&[
            op(put("a"), 0, 5, ok.clone()),
            op(Call::Get, 1, 2, read(None)),
            op(Call::Get, 3, 4, read(Some("a"))),
        ]));
        // Once a read saw the new value, a later read may not see the old one.
        assert!(!linearizable(&[
            op(put("a"), 0, 1, ok.clone()),
            op(put("b"), 2, 9, ok.clone()),
            op(Call::Get, 3, 4, read(Some("b"))),
            op(Call::Get, 5, 6, read(Some("a"))),
        ]));
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let ok = Outcome::Ok(None);
        assert!(linearizable(&[
            op(put("a"), 0, 1, Outcome::Unknown),
            op(Call::Get, 5, 6, read(Some("a"))),
        ]));
        assert!(linearizable(&[
            op(put("a"), 0, 1, Outcome::Unknown),
            op(Call::Get, 5, 6, read(None)),
        ]));
        // But not before they were invoked.
        assert!(!linearizable(&[
            op(Call::Get, 0, 1, read(Some("a"))),
            op(put("a"), 2, 3, Outcome::Unknown),
        ]));
        // A failed write never happened.
        assert!(!linearizable(&[
            op(put("a"), 0, 1, Outcome::Failed),
            op(Call::Get, 2, 3, read(Some("a"))),
        ]));
        let _ = ok;
    }
}
