//! [`AtomicHistogram`]: a Prometheus histogram updated with atomic adds only, for the events
//! the consensus loop records per entry (prometheus-client's own `Histogram` takes a mutex per
//! observation).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram of whole-number observations (nanoseconds, fuel units) shown in a unit of
/// `per_unit` raw units (seconds: `1e9` nanoseconds): whole numbers add up exactly in an
/// `AtomicU64`.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// The buckets' upper bounds (inclusive), in raw units, increasing.
    bounds: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    /// Raw units per shown unit: dividing by it (not multiplying by its inverse) shows
    /// 1,000 ns as `1e-06` rather than `1.0000000000000002e-06`.
    per_unit: f64,
}

impl AtomicHistogram {
    /// A histogram with these bucket bounds (raw units, increasing).
    pub fn new(bounds: impl IntoIterator<Item = u64>, per_unit: f64) -> Self {
        let bounds: Box<[u64]> = bounds.into_iter().collect();
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Inner {
            bounds,
            counts,
            sum: AtomicU64::new(0),
            per_unit,
        }))
    }

    /// Bounds in seconds given in `1 2.5 5` steps from `low` up to `high` (nanoseconds).
    pub fn seconds(low_ns: u64, high_ns: u64) -> Self {
        Self::new(steps(low_ns, high_ns), 1e9)
    }

    /// Records one observation of `raw` units.
    pub fn observe(&self, raw: u64) {
        let bucket = self.0.bounds.partition_point(|bound| *bound < raw);
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum.fetch_add(raw, Ordering::Relaxed);
    }

    /// Records a duration (for histograms made by [`AtomicHistogram::seconds`]).
    pub fn observe_duration(&self, duration: std::time::Duration) {
        self.observe(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// `low`, then 1, 2.5 and 5 times each power of ten up to `high`: a dozen buckets cover
/// 10 µs to 10 s.
fn steps(low: u64, high: u64) -> Vec<u64> {
    let mut bounds = Vec::new();
    let mut decade = 1u64;
    while decade <= high {
        for step in [decade, decade * 5 / 2, decade * 5] {
            if (low..=high).contains(&step) && bounds.last() != Some(&step) {
                bounds.push(step);
            }
        }
        decade = decade.saturating_mul(10);
    }
    bounds
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Each bucket is read once and the count is their sum, so a scrape during an
        // observation never shows a count the buckets disagree with.
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .map(|bound| *bound as f64 / self.0.per_unit)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum.load(Ordering::Relaxed) as f64 / self.0.per_unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let histogram = AtomicHistogram::new([10, 20], 1.0);
        for value in [0, 10, 11, 20, 21, 1000] {
            histogram.observe(value);
        }
        let counts: Vec<u64> = histogram
            .0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [2, 2, 2]);
        assert_eq!(histogram.count(), 6);
        assert_eq!(histogram.0.sum.load(Ordering::Relaxed), 1062);
    }

    #[test]
    fn steps_go_one_two_and_a_half_five() {
        assert_eq!(
            steps(10_000, 1_000_000),
            [10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000]
        );
    }
}
