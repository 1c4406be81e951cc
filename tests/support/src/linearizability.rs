//! A client history and its check: per-key linearizability of a register (`put` writes a
//! unique value, `get` reads), with the Wing & Gong search as refined by Lowe (WGL): try every
//! operation that may come first (no other operation finished before it started), apply it to
//! the register, recurse, and remember (set of linearized operations, register value) pairs
//! already seen. Hand-written rather than a crate: it is 80 lines for this one model, and its
//! answer must not depend on anything but the history. Shared by the in-memory simulator
//! (times in steps) and the fault suite on real processes (times in microseconds).

use std::collections::{BTreeMap, HashSet};

/// When something happened: any clock that only moves forward (simulation steps, microseconds).
pub type Step = u64;

/// Most operations checked on one key. The search's memory grows with the operations that
/// overlap, and its depth with the history's length: a few thousand stay well inside a test
/// thread's stack and a second of work. Spread a longer workload over more keys.
pub const MAX_OPS_PER_KEY: usize = 4_000;

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

    /// Every operation, in all keys.
    pub fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
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
        ops.len() <= MAX_OPS_PER_KEY,
        "a key's history is too long to check: {} operations, at most {MAX_OPS_PER_KEY}",
        ops.len()
    );
    // The search recurses once per operation: on a thread of its own, with a stack sized for
    // the longest history allowed rather than the test thread's 2 MiB.
    let ops: Vec<Op> = ops.into_iter().cloned().collect();
    std::thread::Builder::new()
        .name("linearizability".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let ops: Vec<&Op> = ops.iter().collect();
            let mut seen = HashSet::new();
            let done = vec![0u64; ops.len().div_ceil(64)];
            search(&ops, done, None, &mut seen)
        })
        .expect("cannot start the checker's thread")
        .join()
        .expect("the linearizability checker panicked")
}

/// The checker thread's stack: a few hundred bytes per level of [`search`], times
/// [`MAX_OPS_PER_KEY`], with room to spare.
const STACK_BYTES: usize = 64 << 20;

/// `done` is the set of linearized operations (a bit per operation).
fn search(
    ops: &[&Op],
    done: Vec<u64>,
    value: Option<String>,
    seen: &mut HashSet<(Vec<u64>, Option<String>)>,
) -> bool {
    // Finished once every operation that completed is linearized (unknown writes may never
    // take effect).
    let pending = |i: usize| done[i / 64] & (1u64 << (i % 64)) == 0;
    if (0..ops.len()).all(|i| !pending(i) || ops[i].outcome == Outcome::Unknown) {
        return true;
    }
    if !seen.insert((done.clone(), value.clone())) {
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
        let mut with = done.clone();
        with[i / 64] |= 1u64 << (i % 64);
        if search(ops, with, next, seen) {
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
    fn a_long_history_is_checked() {
        let ok = Outcome::Ok(None);
        let mut ops = Vec::new();
        for i in 0..MAX_OPS_PER_KEY as u64 / 2 {
            let value = format!("v{i}");
            ops.push(op(Call::Put(value.clone()), 4 * i, 4 * i + 2, ok.clone()));
            // Each read overlaps the next write: it may see either value, and sees its own.
            ops.push(op(Call::Get, 4 * i + 1, 4 * i + 5, read(Some(&value))));
        }
        assert!(linearizable(&ops));
        // One stale read at the end breaks it.
        let last = ops.len() as u64 * 2 + 10;
        ops.pop();
        ops.push(op(Call::Get, last, last + 1, read(Some("v0"))));
        assert!(!linearizable(&ops));
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
