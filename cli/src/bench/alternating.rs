//! Alternating runs of two setups, A, B, A, B ... for `--rounds` rounds, each on a fresh local
//! cluster, and the medians and ratios of the two: `riteraft bench --against HOST_B` (two
//! `riteraft-host` binaries) and `--compare` (the store compiled into the host, then the wasm
//! plugin). Alternating, because this kind of machine drifts: two runs of one setup minutes
//! apart differ by more than most changes, and runs side by side share the drift.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::report::RunReport;

/// Most `--rounds`: each round is two clusters started, loaded and stopped.
pub const MAX_ROUNDS: u32 = 20;

/// The runs of both setups, in the order they ran (A then B in each round).
#[derive(Debug, Clone)]
pub struct Alternating {
    /// What A and B are, for people (a host binary's path, or "native" and "wasm plugin").
    pub a: String,
    pub b: String,
    /// Set for `--compare`: A is native, B the wasm plugin, and the JSON says so.
    pub compare: bool,
    pub rounds: Vec<(RunReport, RunReport)>,
}

/// One figure of a run, with its name and how it reads.
struct Figure {
    name: &'static str,
    unit: &'static str,
    /// Decimals shown.
    digits: usize,
    of: fn(&RunReport) -> Option<f64>,
}

const FIGURES: [Figure; 4] = [
    Figure {
        name: "throughput",
        digits: 0,
        unit: "ops/s",
        of: |run| Some(run.ops_per_sec()),
    },
    Figure {
        name: "p50",
        digits: 3,
        unit: "ms",
        of: |run| Some(run.tally.percentile_ms(0.5)),
    },
    Figure {
        name: "p99",
        digits: 3,
        unit: "ms",
        of: |run| Some(run.tally.percentile_ms(0.99)),
    },
    Figure {
        name: "CPU per request",
        digits: 1,
        unit: "µs",
        of: RunReport::cpu_us_per_op,
    },
];

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

impl Alternating {
    fn medians(&self, figure: &Figure) -> (Option<f64>, Option<f64>, Option<f64>) {
        let a = median(
            self.rounds
                .iter()
                .filter_map(|(a, _)| (figure.of)(a))
                .collect(),
        );
        let b = median(
            self.rounds
                .iter()
                .filter_map(|(_, b)| (figure.of)(b))
                .collect(),
        );
        // Pair by pair: each round's two runs shared the machine's state of the moment.
        let ratio = median(
            self.rounds
                .iter()
                .filter_map(|(a, b)| Some((figure.of)(b)? / (figure.of)(a)?))
                .filter(|ratio| ratio.is_finite())
                .collect(),
        );
        (a, b, ratio)
    }

    /// The median of the rounds' throughput ratios B / A (for `--compare`: wasm / native).
    pub fn throughput_ratio(&self) -> Option<f64> {
        self.medians(&FIGURES[0]).2
    }

    pub fn text(&self, out: &mut String) {
        let _ = writeln!(out, "A:           {}", self.a);
        let _ = writeln!(out, "B:           {}", self.b);
        for (round, (a, b)) in self.rounds.iter().enumerate() {
            for (name, run) in [("A", a), ("B", b)] {
                let cpu = run
                    .cpu_us_per_op()
                    .map(|us| format!(", {us:.1} µs CPU/request"))
                    .unwrap_or_default();
                let terms = match run.terms {
                    (before, Some(after)) => format!(", {} leader changes", after - before),
                    (_, None) => String::new(),
                };
                let peak = (run.nodes.iter().filter_map(|node| node.rss_peak_kib).max())
                    .map(|kib| format!(", largest node peak {:.0} MiB", kib as f64 / 1024.0))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "round {} {name}:   {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms, max {:.0} ms, \
                     {} errors{terms}{cpu}{peak}",
                    round + 1,
                    run.ops_per_sec(),
                    run.tally.percentile_ms(0.5),
                    run.tally.percentile_ms(0.99),
                    run.tally.max_ms(),
                    run.tally.errors
                );
            }
        }
        let _ = writeln!(
            out,
            "medians of {} rounds; B / A is the median of the rounds' ratios:",
            self.rounds.len()
        );
        for figure in &FIGURES {
            let shown =
                |value: Option<f64>| value.map_or("?".into(), |v| format!("{v:.*}", figure.digits));
            let (a, b, ratio) = self.medians(figure);
            let _ = writeln!(
                out,
                "  {:<16} A {} {unit}, B {} {unit}, B / A {}",
                figure.name,
                shown(a),
                shown(b),
                ratio.map_or("?".into(), |r| format!("{r:.3}")),
                unit = figure.unit
            );
        }
        if self.compare {
            let rounds: Vec<String> = (self.rounds.iter())
                .map(|(native, wasm)| format!("{:.3}", wasm.ops_per_sec() / native.ops_per_sec()))
                .collect();
            let _ = writeln!(
                out,
                "wasm / native throughput: {} (rounds: {})",
                self.throughput_ratio()
                    .map_or("unknown".into(), |r| format!("{r:.3}")),
                rounds.join(" / ")
            );
        }
    }

    pub fn json_into(&self, object: &mut Map<String, Value>) {
        let mut medians = Map::new();
        for figure in &FIGURES {
            let (a, b, ratio) = self.medians(figure);
            medians.insert(
                figure.name.replace(' ', "_"),
                json!({ "a": a, "b": b, "b_over_a": ratio }),
            );
        }
        if self.compare {
            object.insert("compare".into(), json!(true));
            // What scripts read: wasm / native, the median of the rounds' ratios.
            object.insert(
                "ratio".into(),
                json!(
                    self.throughput_ratio()
                        .map(|r| (r * 1000.0).round() / 1000.0)
                ),
            );
        }
        object.insert(
            "alternating".into(),
            json!({
                "a_setup": self.a,
                "b_setup": self.b,
                "a": self.rounds.iter().map(|(a, _)| a.json()).collect::<Vec<_>>(),
                "b": self.rounds.iter().map(|(_, b)| b.json()).collect::<Vec<_>>(),
                "medians": medians,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
