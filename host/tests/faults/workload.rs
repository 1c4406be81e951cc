//! The clients of a fault run: each writes unique values and reads linearizably on a few keys
//! through `riteraft-client` (failover, retries and all), and records every operation with the
//! real time it was invoked and answered, and what came back: ok, failed (certainly no effect)
//! or unknown (may have taken effect).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use riteraft_client::{Client, ClientError, Consistency};
use riteraft_test_support::linearizability::{Call, History, Op, Outcome};
use tokio::task::JoinHandle;

/// Keys the clients share: few enough that operations on one key overlap, enough that each
/// key's history stays short for the checker.
pub const KEYS: usize = 12;

/// The clients, running until [`Workload::stop`].
pub struct Workload {
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    /// The applied index each successful read was answered at, by (key, invoked): to tell
    /// which replica answered when a history fails.
    read_at: Arc<Mutex<BTreeMap<(String, u64), u64>>>,
    tasks: Vec<JoinHandle<()>>,
    /// Acknowledged writes so far, for recovery checks.
    pub acknowledged: Arc<AtomicU64>,
}

/// Counts of a finished workload.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub ops: usize,
    pub acknowledged_writes: usize,
    pub unknown: usize,
    pub failed: usize,
}

impl Workload {
    /// Starts `clients` clients on `client` (each its own clone: they share connections), the
    /// `seed` choosing their keys, values and pauses.
    pub fn start(client: &Client, clients: usize, seed: u64) -> Workload {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let read_at = Arc::new(Mutex::new(BTreeMap::new()));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let next_value = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|i| {
                let worker = Worker {
                    client: client.clone(),
                    rng: StdRng::seed_from_u64(seed ^ (i as u64 + 1) << 32),
                    start,
                    stop: stop.clone(),
                    history: history.clone(),
                    read_at: read_at.clone(),
                    acknowledged: acknowledged.clone(),
                    next_value: next_value.clone(),
                    id: i,
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Workload {
            start,
            stop,
            history,
            read_at,
            tasks,
            acknowledged,
        }
    }

    /// Microseconds since the workload started: the history's clock.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Stops the clients (each finishes the operation it is in) and returns the history, with
    /// the applied index of each successful read.
    pub async fn stop(self) -> (History, BTreeMap<(String, u64), u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a client task panicked");
        }
        let history = Arc::try_unwrap(self.history)
            .unwrap_or_else(|_| panic!("the history is still shared"))
            .into_inner()
            .unwrap();
        let read_at = std::mem::take(&mut *self.read_at.lock().unwrap());
        (history, read_at)
    }
}

/// Counts the outcomes in `history`.
pub fn tally(history: &History) -> Tally {
    let mut tally = Tally::default();
    for op in history.by_key.values().flatten() {
        tally.ops += 1;
        match (&op.call, &op.outcome) {
            (Call::Put(_), Outcome::Ok(_)) => tally.acknowledged_writes += 1,
            (_, Outcome::Unknown) => tally.unknown += 1,
            (_, Outcome::Failed) => tally.failed += 1,
            _ => {}
        }
    }
    tally
}

/// The name of key `i`.
pub fn key(i: usize) -> String {
    format!("k{i}")
}

struct Worker {
    client: Client,
    rng: StdRng,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    read_at: Arc<Mutex<BTreeMap<(String, u64), u64>>>,
    acknowledged: Arc<AtomicU64>,
    next_value: Arc<AtomicU64>,
    id: usize,
}

impl Worker {
    async fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let key = key(self.rng.random_range(0..KEYS));
            let invoked = self.now();
            let (call, outcome) = if self.rng.random_bool(0.5) {
                let n = self.next_value.fetch_add(1, Ordering::Relaxed);
                let value = format!("c{}v{n}", self.id);
                let answer = self.client.propose(format!("put {key} {value}")).await;
                let outcome = match answer {
                    Ok(applied) => match applied.result {
                        Ok(_) => {
                            self.acknowledged.fetch_add(1, Ordering::Relaxed);
                            Outcome::Ok(None)
                        }
                        // Applied as a no-op: the store refused it.
                        Err(_) => Outcome::Failed,
                    },
                    Err(error) => write_failure(&error),
                };
                (Call::Put(value), outcome)
            } else {
                let answer = self
                    .client
                    .query(format!("get {key}"), Consistency::Linearizable)
                    .await;
                let outcome = match answer {
                    // A rejection is "no such key".
                    Ok(answer) => {
                        let at = (key.clone(), invoked);
                        self.read_at
                            .lock()
                            .unwrap()
                            .insert(at, answer.applied_index);
                        Outcome::Ok(answer.result.ok().map(text))
                    }
                    // A read that failed had no effect either way.
                    Err(_) => Outcome::Failed,
                };
                (Call::Get, outcome)
            };
            let completed = self.now();
            self.history.lock().unwrap().record(
                &key,
                Op {
                    call,
                    invoked,
                    completed,
                    outcome,
                },
            );
            let pause = self.rng.random_range(0..20);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// Whether a write that failed with `error` may still take effect.
fn write_failure(error: &ClientError) -> Outcome {
    match error {
        // Never reached a node, or refused before the log: nothing was applied.
        ClientError::NoNodeReachable { .. }
        | ClientError::Unavailable(_)
        | ClientError::Aborted(_)
        | ClientError::InvalidArgument(_)
        | ClientError::FailedPrecondition(_)
        | ClientError::ResourceExhausted(_)
        | ClientError::BadAddress(_)
        | ClientError::Tls(_) => Outcome::Failed,
        // Timed out, or the connection broke with the write in flight.
        _ => Outcome::Unknown,
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("the kv store answers in text")
}
