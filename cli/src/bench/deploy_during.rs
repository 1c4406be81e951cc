//! `riteraft bench --deploy MODULE`: a deploy in the middle of the load, to measure what a
//! deploy costs the clients. The deploy starts when the measured window does; the window's
//! latencies then include any pause it causes (a closed-loop client waits out a pause in one
//! request, so the longest pause is at most the run's `max` latency), and the cluster's term
//! before and after tells whether it cost an election.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use riteraft_client::{Client, ClientBuilder};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long the deploy may take: a large module takes a node tens of seconds to compile on
/// a debug build (the default of `riteraft deploy` too).
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(600);

/// The module to deploy, read before the cluster starts so that a wrong path fails at once.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployModule {
    pub path: std::path::PathBuf,
    pub bytes: std::sync::Arc<Vec<u8>>,
}

impl DeployModule {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read --deploy {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes: std::sync::Arc::new(bytes),
        })
    }
}

/// What the deploy did to the run.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployFigures {
    pub path: std::path::PathBuf,
    pub bytes: u64,
    /// How long the deploy took until the leader applied it, or why it failed.
    pub took: Result<Duration, String>,
    /// The leader's term when the load started and after the deploy: a difference is an
    /// election during the deploy.
    pub term_before: u64,
    pub term_after: Option<u64>,
}

/// A deploy under way.
pub struct DeployRun {
    module: DeployModule,
    term_before: u64,
    client: Client,
    task: JoinHandle<Result<Duration, String>>,
}

impl DeployRun {
    /// Starts deploying `module` through `client`'s cluster at `at`.
    pub fn start(
        module: DeployModule,
        builder: ClientBuilder,
        addresses: &[String],
        term_before: u64,
        at: Instant,
    ) -> anyhow::Result<Self> {
        let client = builder.timeout(DEPLOY_TIMEOUT).connect(addresses)?;
        let task = tokio::spawn({
            let (client, bytes) = (client.clone(), module.bytes.clone());
            async move {
                tokio::time::sleep_until(at).await;
                let started = Instant::now();
                match client.deploy(&bytes, false).await {
                    Ok(_) => Ok(started.elapsed()),
                    Err(error) => Err(error.to_string()),
                }
            }
        });
        Ok(Self {
            module,
            term_before,
            client,
            task,
        })
    }

    /// Waits for the deploy to end (it may outlast the load) and gathers its figures.
    pub async fn finish(self) -> DeployFigures {
        let took = match self.task.await {
            Ok(took) => took,
            Err(error) => Err(format!("the deploy task failed: {error}")),
        };
        let term_after = self.client.status().await.ok().map(|status| status.term);
        DeployFigures {
            path: self.module.path,
            bytes: self.module.bytes.len() as u64,
            took,
            term_before: self.term_before,
            term_after,
        }
    }
}

impl DeployFigures {
    /// Elections during the deploy, if the term after is known.
    fn elections(&self) -> Option<u64> {
        self.term_after
            .map(|after| after.saturating_sub(self.term_before))
    }

    pub fn json(&self) -> Value {
        json!({
            "module": self.path.display().to_string(),
            "bytes": self.bytes,
            "seconds": self.took.as_ref().ok().map(|took| (took.as_secs_f64() * 1000.0).round() / 1000.0),
            "error": self.took.as_ref().err(),
            "term_before": self.term_before,
            "term_after": self.term_after,
            "elections": self.elections(),
        })
    }

    pub fn text(&self) -> String {
        let mib = self.bytes as f64 / (1 << 20) as f64;
        let took = match &self.took {
            Ok(took) => format!("applied on the leader after {:.2} s", took.as_secs_f64()),
            Err(why) => format!("failed: {why}"),
        };
        let elections = match self.elections() {
            Some(0) => "no election".to_string(),
            Some(n) => format!("{n} term change(s): an election happened"),
            None => "term after unknown".to_string(),
        };
        format!(
            "deploy:      {} ({mib:.1} MiB) at the start of the measured window: {took}; \
             {elections} (the longest pause a client saw is at most the max latency)",
            self.path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_say_whether_there_was_an_election() {
        let mut figures = DeployFigures {
            path: "kv_py.wasm".into(),
            bytes: 20 << 20,
            took: Ok(Duration::from_millis(4200)),
            term_before: 2,
            term_after: Some(2),
        };
        assert!(figures.text().contains("20.0 MiB"), "{}", figures.text());
        assert!(figures.text().contains("after 4.20 s; no election"));
        assert_eq!(figures.json()["elections"], 0);
        figures.term_after = Some(3);
        figures.took = Err("refused".into());
        assert!(figures.text().contains("failed: refused; 1 term change(s)"));
        assert_eq!(figures.json()["error"], "refused");
    }
}
