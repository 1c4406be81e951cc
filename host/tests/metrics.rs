//! `--metrics-listen`: a 3-node cluster serves, on every node, every metric the Grafana
//! dashboard (`ops/grafana/riteraft.json`) queries; the counters move under load; other paths
//! are 404; and a node without the flag listens on its gRPC port only.

use std::collections::BTreeSet;
use std::time::Duration;

use riteraft_test_support::metrics::{Scrape, http_get, listening_ports, metric_names, scrape};
use riteraft_test_support::{Cluster, ClusterOptions, wait_until, within, workspace_root};

const TEST_LIMIT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);
const WRITES: usize = 300;
const READS: usize = 100;
/// Shown only by the leader (the others know no match indexes).
const LEADER_ONLY: &str = "riteraft_peer_lag_entries";

fn options() -> ClusterOptions {
    ClusterOptions::new(env!("CARGO_BIN_EXE_riteraft-host"))
}

/// Every metric name the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = workspace_root().join("ops/grafana/riteraft.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard exists");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(exprs.len() > 20, "the dashboard has queries: {exprs:?}");
    let names = metric_names(&exprs.join("\n"), "riteraft_");
    assert!(
        names.len() > 20,
        "the dashboard names its metrics: {names:?}"
    );
    names
}

fn collect_exprs(value: &serde_json::Value, exprs: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => exprs.push(expr.clone()),
                    _ => collect_exprs(value, exprs),
                }
            }
        }
        serde_json::Value::Array(values) => values.iter().for_each(|v| collect_exprs(v, exprs)),
        _ => {}
    }
}

async fn scrape_node(cluster: &Cluster, id: u64) -> Scrape {
    let addr = cluster
        .metrics_addr(id)
        .expect("started with --metrics-listen");
    scrape(addr).await
}

/// `name` on node `id` grew by at least `by` from `before` to `after`.
fn grew(id: u64, name: &str, before: &Scrape, after: &Scrape, by: f64) {
    let (was, is) = (before.sum(name), after.sum(name));
    assert!(
        is - was >= by,
        "node {id}: {name} went from {was} to {is}, expected a rise of at least {by}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_the_dashboards_metrics_and_counts_the_load() {
    within(TEST_LIMIT, async {
        let wanted = dashboard_metrics();
        let cluster = Cluster::start(3, options().with_metrics()).await;
        let leader = cluster.wait_for_leader(WAIT).await;
        let ids = cluster.ids();

        // Gauges are sampled once per tick: wait for the leader to show both peers' lag.
        wait_until("the leader to show its peers' lag", WAIT, async || {
            let scrape = scrape_node(&cluster, leader).await;
            (scrape.samples.get(LEADER_ONLY)?.len() == 2).then_some(())
        })
        .await;
        let mut before = Vec::new();
        for &id in &ids {
            // The last joiner became a voter just now; each node samples that on its next tick.
            let scrape = wait_until("the voters gauge to show 3", WAIT, async || {
                let scrape = scrape_node(&cluster, id).await;
                (scrape.value("riteraft_voters", "") == Some(3.0)).then_some(scrape)
            })
            .await;
            for name in &wanted {
                if name == LEADER_ONLY && id != leader {
                    continue;
                }
                assert!(scrape.has(name), "node {id} does not serve {name}");
            }
            before.push(scrape);
        }

        for i in 0..WRITES {
            let via = ids[i % ids.len()];
            let answer = cluster.propose(via, &format!("put k{i} v{i}")).await;
            assert!(
                matches!(answer, Ok(Ok(_))),
                "write {i} via {via}: {answer:?}"
            );
        }
        let rejected = cluster.propose(leader, "put lonely-key").await;
        assert!(matches!(rejected, Ok(Err(_))), "{rejected:?}");
        for i in 0..READS {
            let via = ids[i % ids.len()];
            let stale = i % 2 == 0;
            let answer = cluster.query(via, &format!("get k{i}"), stale).await;
            assert!(
                matches!(answer, Ok(Ok(_))),
                "read {i} via {via}: {answer:?}"
            );
        }
        let commit = cluster.wait_caught_up(WAIT).await;

        for (&id, before) in ids.iter().zip(&before) {
            // The applied index gauge is sampled per tick: wait for it to show the last write.
            let after = wait_until("the applied index gauge to catch up", WAIT, async || {
                let scrape = scrape_node(&cluster, id).await;
                (scrape.sum("riteraft_applied_index") >= commit as f64).then_some(scrape)
            })
            .await;
            let writes = WRITES as f64;
            grew(id, "riteraft_apply_seconds_count", before, &after, writes);
            grew(
                id,
                "riteraft_plugin_fuel_per_entry_count",
                before,
                &after,
                writes,
            );
            grew(
                id,
                "riteraft_log_persist_seconds_count",
                before,
                &after,
                1.0,
            );
            grew(
                id,
                "riteraft_reads_total",
                before,
                &after,
                (READS / ids.len()) as f64,
            );
            if id == leader {
                grew(id, "riteraft_proposals_total", before, &after, writes + 1.0);
                grew(
                    id,
                    "riteraft_propose_seconds_count",
                    before,
                    &after,
                    writes + 1.0,
                );
                grew(id, "riteraft_proposals_rejected_total", before, &after, 1.0);
            }
            assert_eq!(after.sum("riteraft_plugin_traps_total"), 0.0, "node {id}");
        }
        let linearizable = |scrapes: &[Scrape]| -> f64 {
            scrapes
                .iter()
                .map(|s| {
                    s.value("riteraft_reads_total", "{kind=\"linearizable\"}")
                        .unwrap_or(0.0)
                })
                .sum()
        };
        let mut after = Vec::new();
        for &id in &ids {
            after.push(scrape_node(&cluster, id).await);
        }
        assert!(linearizable(&after) - linearizable(&before) >= (READS / 2) as f64);
        let read_seconds: f64 = after
            .iter()
            .map(|s| s.sum("riteraft_read_seconds_count"))
            .sum();
        assert!(read_seconds >= (READS / 2) as f64, "{read_seconds}");

        let addr = cluster.metrics_addr(leader).unwrap();
        let (status, _) = http_get(addr, "/other").await.expect("the server answers");
        assert_eq!(status, 404);
        let listening = listening_ports(cluster.pid(leader));
        assert!(
            listening.contains(&addr.port()) && listening.contains(&cluster.addr(leader).port()),
            "{listening:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_flag_serves_no_metrics() {
    within(TEST_LIMIT, async {
        let cluster = Cluster::start(1, options()).await;
        assert_eq!(cluster.metrics_addr(1), None);
        let listening = listening_ports(cluster.pid(1));
        assert_eq!(listening, BTreeSet::from([cluster.addr(1).port()]));
    })
    .await;
}
