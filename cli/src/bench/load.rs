//! The load generator: `clients` tasks, each in a closed loop (one request in flight at a time),
//! issuing `put KEY VALUE` or `get KEY` to the `kv` store at random keys, recording each
//! request's latency in a per-task HDR histogram. The histograms are merged once at the end,
//! so the hot loop shares nothing but one relaxed counter (for the progress bar).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use riteraft_client::{Client, Consistency};
use tokio::time::Instant;

/// Lowest latency the histograms track: 1 µs (a loopback round trip is never faster).
const LOWEST_MICROS: u64 = 1;

/// Highest latency the histograms track: 60 s, far above any call's `--timeout` (10 s by
/// default); anything slower is recorded as 60 s rather than dropped.
const HIGHEST_MICROS: u64 = 60_000_000;

/// Significant decimal digits the histograms keep: 3 means every percentile is exact to 0.1 %
/// (e.g. ±1 µs at 1 ms), for about 200 KiB per histogram.
const SIGNIFICANT_DIGITS: u8 = 3;

/// How long a task pauses after a failed request before the next one. Without it a task facing
/// a dead node (which fails in microseconds) would spin, burning the CPU the nodes need and
/// counting errors by the million; 10 ms is short against a bench's seconds.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Distinct error messages kept for the report: enough to show what went wrong, few enough
/// that a run full of failures still prints a short report.
pub const MAX_ERROR_SAMPLES: usize = 5;

/// What the load is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Percentage of requests that are `get` queries (the rest are `put` commands).
    pub reads_pct: u8,
    /// How the queries are answered.
    pub consistency: Consistency,
    /// Size of each `put`'s value, in bytes.
    pub value_size: usize,
    /// Keys are `k0` .. `k{keys-1}`, chosen uniformly at random.
    pub keys: u64,
}

/// One closed-loop client: where its writes and reads go.
#[derive(Debug, Clone)]
pub struct Worker {
    /// For `put`: a client whose first address is the leader (see `mod.rs`).
    pub writer: Client,
    /// For `get`: the writer itself, or (stale reads) a client starting at another node.
    pub reader: Client,
}

/// When the phases of a run begin and end.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Requests completing before this are warmup: not counted.
    pub measure_from: Instant,
    /// No request starts after this, and none completing after it is counted.
    pub end: Instant,
}

impl Window {
    /// A window that starts measuring after `warmup` from now, for `duration`.
    pub fn starting_now(warmup: Duration, duration: Duration) -> Window {
        let measure_from = Instant::now() + warmup;
        Window {
            measure_from,
            end: measure_from + duration,
        }
    }
}

/// What the tasks (or one task) saw during the measured window.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency in microseconds of every answered request (rejections included).
    pub histogram: Histogram<u64>,
    /// Requests answered, the store's rejections included.
    pub ops: u64,
    /// Answers that were the store's rejection (e.g. `get` of a key never written).
    pub rejections: u64,
    /// Requests that failed (no answer: timeout, no leader, connection lost...).
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            histogram: new_histogram(),
            ops: 0,
            rejections: 0,
            errors: 0,
            error_samples: Vec::new(),
        }
    }
}

/// An empty latency histogram (microseconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

impl Tally {
    /// Adds another task's tally to this one.
    pub fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides, and values are clamped when recorded: cannot fail.
        self.histogram
            .add(&other.histogram)
            .expect("histograms with equal bounds merge");
        self.ops += other.ops;
        self.rejections += other.rejections;
        self.errors += other.errors;
        for sample in &other.error_samples {
            self.note_error(sample);
        }
    }

    /// Records one answered request.
    fn answered(&mut self, latency: Duration, rejected: bool) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(micros.clamp(LOWEST_MICROS, HIGHEST_MICROS));
        self.ops += 1;
        self.rejections += u64::from(rejected);
    }

    fn note_error(&mut self, message: &str) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES
            && !self.error_samples.iter().any(|known| known == message)
        {
            self.error_samples.push(message.to_string());
        }
    }

    /// The latency at `quantile` (0..=1), in milliseconds; 0 when nothing was recorded.
    pub fn percentile_ms(&self, quantile: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// The mean latency in milliseconds; 0 when nothing was recorded.
    pub fn mean_ms(&self) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.mean() / 1000.0
    }

    /// The slowest latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.histogram.max() as f64 / 1000.0
    }
}

/// Requests answered so far by all tasks, warmup included: read by the progress bar.
pub type Progress = Arc<AtomicU64>;

/// Runs `workers.len()` closed-loop tasks until `window.end`; returns their merged tally.
pub async fn run(workers: Vec<Worker>, mix: Arc<Mix>, window: Window, progress: Progress) -> Tally {
    let tasks: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(index, worker)| {
            let mix = mix.clone();
            let progress = progress.clone();
            tokio::spawn(
                async move { closed_loop(index as u64, worker, &mix, window, &progress).await },
            )
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok(tally) => total.merge(&tally),
            Err(error) => {
                total.errors += 1;
                total.note_error(&format!("a load task failed: {error}"));
            }
        }
    }
    total
}

/// One client: requests back to back until the window ends.
async fn closed_loop(
    seed: u64,
    worker: Worker,
    mix: &Mix,
    window: Window,
    progress: &AtomicU64,
) -> Tally {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xB5AD_4ECE);
    let mut values = ValueSource::new(&mut rng, mix.value_size);
    let mut tally = Tally::default();
    loop {
        let key = rng.random_range(0..mix.keys);
        let read = mix.reads_pct > 0 && rng.random_range(0..100u8) < mix.reads_pct;
        let started = Instant::now();
        let request = async {
            if read {
                worker
                    .reader
                    .query(format!("get k{key}"), mix.consistency)
                    .await
                    .map(|answer| answer.result.is_err())
            } else {
                worker
                    .writer
                    .propose(put_command(key, values.next(&mut rng)))
                    .await
                    .map(|applied| applied.result.is_err())
            }
        };
        // A request still in flight when the window ends is dropped: it would not count.
        let Ok(outcome) = tokio::time::timeout_at(window.end, request).await else {
            break;
        };
        let done = Instant::now();
        progress.fetch_add(1, Ordering::Relaxed);
        let measured = done >= window.measure_from;
        match outcome {
            Ok(rejected) if measured => tally.answered(done - started, rejected),
            Ok(_) => {}
            Err(error) => {
                if measured {
                    tally.errors += 1;
                    tally.note_error(&error.to_string());
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
        if Instant::now() >= window.end {
            break;
        }
    }
    tally
}

/// Writes `k{key}` for every key of `keys` with `value_size`-byte values, split over the
/// workers: run before a read-heavy bench so that `get` finds its key (a miss is the store's
/// rejection, a cheaper path than a hit). Returns the tally of those writes.
pub async fn prefill(workers: &[Worker], mix: &Mix, progress: Progress) -> Tally {
    let count = workers.len() as u64;
    let tasks: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(index, worker)| {
            let writer = worker.writer.clone();
            let value_size = mix.value_size;
            let keys = mix.keys;
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(index as u64);
                let mut values = ValueSource::new(&mut rng, value_size);
                let mut tally = Tally::default();
                let mut key = index as u64;
                while key < keys {
                    let started = Instant::now();
                    match writer
                        .propose(put_command(key, values.next(&mut rng)))
                        .await
                    {
                        Ok(applied) => tally.answered(started.elapsed(), applied.result.is_err()),
                        Err(error) => {
                            tally.errors += 1;
                            tally.note_error(&error.to_string());
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                    key += count;
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.merge(&tally);
        }
    }
    total
}

/// The `kv` command that sets `k{key}` to `value`.
pub fn put_command(key: u64, value: &[u8]) -> Vec<u8> {
    let mut command = Vec::with_capacity(value.len() + 24);
    command.extend_from_slice(format!("put k{key} ").as_bytes());
    command.extend_from_slice(value);
    command
}

/// Random printable values without generating every byte anew: a buffer of twice the value
/// size filled once, and a random window of it per request. Values differ from request to
/// request (so nothing downstream can dedupe them) at the cost of one `gen_range`.
struct ValueSource {
    buffer: Vec<u8>,
    size: usize,
}

/// Characters values are made of: letters and digits, since the `kv` store reads a command as
/// words (a value may hold spaces, but leading or trailing ones would be trimmed).
const VALUE_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl ValueSource {
    fn new(rng: &mut SmallRng, size: usize) -> ValueSource {
        let buffer = (0..size * 2)
            .map(|_| VALUE_ALPHABET[rng.random_range(0..VALUE_ALPHABET.len())])
            .collect();
        ValueSource { buffer, size }
    }

    fn next(&mut self, rng: &mut SmallRng) -> &[u8] {
        let start = rng.random_range(0..=self.size);
        &self.buffer[start..start + self.size]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally_of(latencies_us: &[u64]) -> Tally {
        let mut tally = Tally::default();
        for &micros in latencies_us {
            tally.answered(Duration::from_micros(micros), false);
        }
        tally
    }

    #[test]
    fn merged_tallies_report_the_percentiles_of_all_requests() {
        // Task A: 900 fast requests (1 ms); task B: 99 at 10 ms and 1 at 100 ms.
        let mut a = tally_of(&[1_000; 900]);
        let mut b = tally_of(&[10_000; 99]);
        b.answered(Duration::from_millis(100), true);
        b.errors = 2;
        b.note_error("boom");
        a.note_error("boom");
        a.note_error("bang");
        a.merge(&b);
        assert_eq!(a.ops, 1000);
        assert_eq!(a.rejections, 1);
        assert_eq!(a.errors, 2);
        assert_eq!(a.error_samples, ["boom", "bang"]);
        let close = |value: f64, expected: f64| (value - expected).abs() <= expected * 0.001;
        assert!(close(a.percentile_ms(0.5), 1.0), "{}", a.percentile_ms(0.5));
        assert!(
            close(a.percentile_ms(0.95), 10.0),
            "{}",
            a.percentile_ms(0.95)
        );
        assert!(
            close(a.percentile_ms(0.999), 10.0),
            "{}",
            a.percentile_ms(0.999)
        );
        assert!(close(a.max_ms(), 100.0), "{}", a.max_ms());
        assert!(close(a.mean_ms(), (900.0 + 990.0 + 100.0) / 1000.0));
    }

    #[test]
    fn extreme_latencies_are_clamped_not_lost() {
        let mut tally = Tally::default();
        tally.answered(Duration::ZERO, false);
        tally.answered(Duration::from_secs(3600), false);
        assert_eq!(tally.ops, 2);
        assert_eq!(tally.histogram.len(), 2);
        assert!(tally.max_ms() >= 59_000.0);
        assert_eq!(Tally::default().percentile_ms(0.99), 0.0);
        assert_eq!(Tally::default().mean_ms(), 0.0);
    }

    #[test]
    fn error_samples_are_few_and_distinct() {
        let mut tally = Tally::default();
        for n in 0..20 {
            tally.note_error(&format!("error {}", n % 7));
        }
        assert_eq!(tally.error_samples.len(), MAX_ERROR_SAMPLES);
        assert_eq!(tally.error_samples[0], "error 0");
    }

    #[test]
    fn values_have_the_requested_size_and_vary() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut source = ValueSource::new(&mut rng, 256);
        let first = source.next(&mut rng).to_vec();
        assert_eq!(first.len(), 256);
        assert!(first.iter().all(u8::is_ascii_alphanumeric));
        let differ = (0..10).any(|_| source.next(&mut rng) != first.as_slice());
        assert!(differ);
        let command = put_command(42, b"xyz");
        assert_eq!(command, b"put k42 xyz");
    }
}
