//! The `riteraft` command line: its arguments (clap), running one command with the library's
//! [`Client`], and the exit code. How answers look (text or `--json`) is in [`render`].

#[path = "../bench/mod.rs"]
mod bench;
mod render;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use riteraft_client::{Client, Consistency};

use render::Report;

/// Talk to a RiteRaft cluster: replicate commands, run queries, inspect and manage its nodes.
#[derive(Debug, Parser)]
#[command(name = "riteraft", version)]
pub struct Cli {
    /// Addresses of some nodes of the cluster (HOST:PORT), separated by commas. Each command goes
    /// to the first one that answers.
    #[arg(
        long,
        global = true,
        env = "RITERAFT_CLUSTER",
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001",
        value_parser = parse_address
    )]
    cluster: Vec<String>,

    /// Print one JSON object on stdout instead of text (failures too, as {"error": "..."}).
    #[arg(long, global = true)]
    json: bool,

    /// Give up after this many seconds (waiting for an election and trying other nodes
    /// included). A write that times out may still be applied.
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value = "10",
        value_parser = parse_timeout
    )]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replicate a command through the log and print the store's answer.
    Propose {
        /// The command, sent to the store as its UTF-8 bytes (put `--` before it if it starts
        /// with a dash).
        command: String,
    },
    /// Run a read-only query and print the store's answer.
    Query {
        /// The query, sent to the store as its UTF-8 bytes (put `--` before it if it starts with
        /// a dash).
        request: String,
        /// Answer from the contacted node's own state without checking with the leader: faster,
        /// but it may miss the latest writes.
        #[arg(long)]
        stale: bool,
    },
    /// Show a node's view of the cluster: role, leader, indexes, store module and members.
    Status,
    /// Remove a node from the cluster (a leaving leader hands leadership over first).
    Leave {
        /// The id of the node to remove; 0 (the default) removes the node contacted, which is the
        /// first address of --cluster.
        #[arg(long, value_name = "ID", default_value_t = 0)]
        node: u64,
    },
    /// Ask the leader to hand leadership to another voter.
    TransferLeader {
        /// The id of the node that should become leader.
        #[arg(long, value_name = "ID")]
        to: u64,
    },
    /// Load the cluster with kv writes and reads; print throughput and latency. Without
    /// --cluster (flag or RITERAFT_CLUSTER) it starts a local 3-node cluster and stops it after.
    Bench(bench::BenchArgs),
    /// Replace the store's code in the running cluster: upload a plugin (.wasm), have the leader
    /// validate it, and switch every replica to it at one log entry. The new code restores the
    /// old code's snapshot; if it cannot, nothing changes and this exits non-zero.
    Deploy {
        /// The new plugin: a WebAssembly component built for wasm32-wasip2.
        module: std::path::PathBuf,
        /// Only check that the module loads and can restore the current state; commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Checks one `--cluster` address, so that a typo is a usage error (exit 2) naming the flag.
fn parse_address(text: &str) -> Result<String, String> {
    riteraft_client::endpoint_uri(text)
        .map(|_| text.trim().to_string())
        .map_err(|error| error.to_string())
}

/// Parses `--timeout`: positive seconds, fractions allowed (`0.5`).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err("the timeout must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} seconds is too long"))
}

/// Runs `riteraft` with the process's arguments; returns its exit status (0 ok, 1 failure or
/// rejection; clap exits with 2 on a usage error before we get here).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    render::render(&outcome, json).emit()
}

/// Runs one command against the cluster.
async fn run(cli: Cli) -> anyhow::Result<Report> {
    let client = Client::builder()
        .timeout(cli.timeout)
        .connect(&cli.cluster)?;
    Ok(match cli.command {
        Command::Propose { command } => Report::Applied(client.propose(command).await?),
        Command::Query { request, stale } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            Report::Answer(client.query(request, consistency).await?)
        }
        Command::Status => Report::Status(client.status().await?),
        Command::Leave { node } => {
            client.leave(node).await?;
            let who = match node {
                0 => format!(
                    "the node at {}",
                    client.addresses().next().unwrap_or_default()
                ),
                id => format!("node {id}"),
            };
            Report::Done {
                text: format!("{who} is leaving the cluster"),
                json: serde_json::json!({ "ok": true, "node": node }),
            }
        }
        Command::TransferLeader { to } => {
            client.transfer_leader(to).await?;
            Report::Done {
                text: format!("asked the leader to hand leadership to node {to}"),
                json: serde_json::json!({ "ok": true, "to": to }),
            }
        }
        Command::Deploy { module, dry_run } => {
            let bytes = std::fs::read(&module)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", module.display()))?;
            let deployed = client.deploy(&bytes, dry_run).await?;
            let version = deployed.version.as_deref().unwrap_or("no version");
            let text = if dry_run {
                format!(
                    "{} ({version}, sha256 {})",
                    deployed.message, deployed.sha256
                )
            } else if deployed.unchanged {
                format!(
                    "unchanged: {} ({version}) is already active",
                    deployed.sha256
                )
            } else {
                format!(
                    "deployed {} ({version}) at log index {}: every node now runs it",
                    deployed.sha256, deployed.index
                )
            };
            Report::Done {
                text,
                json: serde_json::to_value(&deployed)?,
            }
        }
        Command::Bench(args) => {
            // `--cluster` has a default; the bench starts a cluster of its own unless the user
            // named one.
            let target = if bench::cluster_was_given(Cli::command(), std::env::args_os()) {
                bench::Target::Cluster(cli.cluster.clone())
            } else {
                bench::Target::Local
            };
            let outcome = bench::run(args, target, cli.timeout).await?;
            Report::Done {
                text: outcome.text(),
                json: outcome.json(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_help() {
        fn check(command: &clap::Command) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} --{id} has no help",
                    command.get_name()
                );
            }
            for sub in command.get_subcommands() {
                assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
                check(sub);
            }
        }
        check(&Cli::command());
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = Cli::try_parse_from([
            "riteraft",
            "propose",
            "--cluster",
            "a:1,b:2",
            "--timeout",
            "0.5",
            "put a 1",
        ])
        .unwrap();
        assert_eq!(cli.cluster, ["a:1", "b:2"]);
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert!(matches!(cli.command, Command::Propose { ref command } if command == "put a 1"));

        let cli = Cli::try_parse_from(["riteraft", "--json", "query", "--stale", "get a"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Query { stale: true, .. }));
    }

    #[test]
    fn leave_defaults_to_the_contacted_node() {
        let cli = Cli::try_parse_from(["riteraft", "leave"]).unwrap();
        assert!(matches!(cli.command, Command::Leave { node: 0 }));
        let cli = Cli::try_parse_from(["riteraft", "leave", "--node", "3"]).unwrap();
        assert!(matches!(cli.command, Command::Leave { node: 3 }));
        let cli = Cli::try_parse_from(["riteraft", "transfer-leader", "--to", "2"]).unwrap();
        assert!(matches!(cli.command, Command::TransferLeader { to: 2 }));
        assert!(Cli::try_parse_from(["riteraft", "transfer-leader"]).is_err());
    }

    #[test]
    fn cluster_addresses_are_checked_while_parsing() {
        let error = Cli::try_parse_from(["riteraft", "--cluster", "a:1,nowhere", "status"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--cluster"), "{error}");
        assert!(error.contains("port is missing"), "{error}");
    }

    #[test]
    fn timeouts_must_be_positive_seconds() {
        assert_eq!(parse_timeout("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_timeout("0.25").unwrap(), Duration::from_millis(250));
        for bad in ["0", "-1", "NaN", "soon", "1e300"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
