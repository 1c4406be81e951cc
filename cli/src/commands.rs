//! The `riteraft` command line: its arguments (clap), running one command with the library's
//! [`Client`], and the exit code. How answers look (text or `--json`) is in [`render`](crate::render).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use riteraft_client::certs::{self, CertError};
use riteraft_client::tls::{ClientTls, Role, TlsFiles};
use riteraft_client::{Client, Consistency, DeployStep, NodeStatus};

use crate::render::Report;
use crate::{bench, new_project, render};

/// Talk to a RiteRaft cluster: replicate commands, run queries, inspect and manage its nodes.
#[derive(Debug, Parser)]
#[command(name = "riteraft", version = env!("RITERAFT_BUILD_VERSION"))]
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
    /// included). A write that times out may still be applied. Default: 10, and 600 for
    /// `deploy`, which waits for the leader to compile and switch to the module.
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,

    /// This client's certificate (PEM), signed by the cluster's CA. With --tls-key and
    /// --tls-ca (all three or none), every connection uses mutual TLS; `riteraft certs` makes
    /// them.
    #[arg(long, global = true, env = "RITERAFT_TLS_CERT", value_name = "PATH")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "RITERAFT_TLS_KEY", value_name = "PATH")]
    tls_key: Option<PathBuf>,

    /// The cluster's CA certificate (PEM): the nodes' certificates must be signed by it.
    #[arg(long, global = true, env = "RITERAFT_TLS_CA", value_name = "PATH")]
    tls_ca: Option<PathBuf>,

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
    /// old code's snapshot; if it cannot, nothing changes and this exits non-zero. Each step is
    /// shown on stderr as it happens (upload, compile, forward, store on the voters, switch).
    Deploy {
        /// The new plugin: a WebAssembly component built for wasm32-wasip2.
        module: std::path::PathBuf,
        /// Only check that the module loads and can restore the current state; commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make TLS certificates for a cluster: a CA (unless DIR has one already, which is then
    /// used), a certificate per node and per client. Contacts no node.
    Certs(CertsArgs),
    /// Start a store: write a project in Rust, Python or JavaScript that builds a plugin, with
    /// a test and a README that says how to build, run and deploy it. Contacts no node.
    New {
        /// The store's name: lowercase letters, digits, - and _.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value_t = new_project::Lang::Rust)]
        lang: new_project::Lang,
        /// Where to write it (must be missing or empty). Default: ./NAME.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The arguments of `riteraft certs`.
#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// The directory to write to (made if missing): ca.pem and ca.key, node-HOST-PORT.pem and
    /// .key per node, client-NAME.pem and .key per client. Keys are readable by their owner only.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,

    /// A node to make a certificate for, at the address it serves (HOST:PORT); repeat for more.
    #[arg(long = "node", value_name = "HOST:PORT", value_parser = parse_address)]
    nodes: Vec<String>,

    /// A client to make a certificate for, with its role: read (queries, status), write (and
    /// proposals) or admin (everything); repeat for more. Default: admin:admin, unless DIR has
    /// that client already.
    #[arg(long = "client", value_name = "NAME:ROLE", value_parser = parse_client)]
    clients: Vec<(String, Role)>,

    /// Overwrite certificates and keys that exist already (the CA is kept either way).
    #[arg(long)]
    force: bool,
}

/// Checks one `--cluster` address, so that a typo is a usage error (exit 2) naming the flag.
fn parse_address(text: &str) -> Result<String, String> {
    riteraft_client::endpoint_uri(text)
        .map(|_| text.trim().to_string())
        .map_err(|error| error.to_string())
}

/// Parses one `--client NAME:ROLE`.
fn parse_client(text: &str) -> Result<(String, Role), String> {
    let (name, role) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not NAME:ROLE, e.g. ops:write"))?;
    let role = role.parse::<Role>().map_err(|error| error.to_string())?;
    Ok((name.to_string(), role))
}

/// The TLS files of the global flags: all three, or none (plain HTTP/2).
fn tls_files(cli: &Cli) -> anyhow::Result<Option<TlsFiles>> {
    match (&cli.tls_cert, &cli.tls_key, &cli.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        })),
        (None, None, None) => Ok(None),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                (cert.is_none(), "--tls-cert"),
                (key.is_none(), "--tls-key"),
                (ca.is_none(), "--tls-ca"),
            ]
            .into_iter()
            .filter_map(|(missing, flag)| missing.then_some(flag))
            .collect();
            anyhow::bail!(
                "--tls-cert, --tls-key and --tls-ca go together (or RITERAFT_TLS_CERT, RITERAFT_TLS_KEY and RITERAFT_TLS_CA); missing: {}",
                missing.join(", ")
            )
        }
    }
}

/// `--timeout`'s default.
const TIMEOUT: Duration = Duration::from_secs(10);
/// `--timeout`'s default for `deploy`: a large module takes the leader many seconds to compile
/// (30 s for a 12 MB JavaScript store on a debug build), and it is answered only once applied.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(600);

impl Cli {
    /// The timeout: `--timeout`, else the command's default.
    fn timeout(&self) -> Duration {
        let default = match self.command {
            Command::Deploy { .. } => DEPLOY_TIMEOUT,
            _ => TIMEOUT,
        };
        self.timeout.unwrap_or(default)
    }
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
    if let Command::Certs(args) = &cli.command {
        return make_certs(args);
    }
    if let Command::New { name, lang, dir } = &cli.command {
        return new_store(name, *lang, dir.as_deref());
    }
    let tls = tls_files(&cli)?;
    let timeout = cli.timeout();
    let mut builder = Client::builder().timeout(timeout);
    if let Some(files) = &tls {
        builder = builder.tls(ClientTls::load(files.clone())?);
    }
    let client = builder.connect(&cli.cluster)?;
    let json = cli.json;
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
        Command::Status => Report::Status(status_with_lag(&client).await?),
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
            let (steps, shown) = tokio::sync::mpsc::unbounded_channel();
            let (deployed, ()) = tokio::join!(
                client.deploy_watched(&bytes, dry_run, steps),
                show_deploy_steps(shown, !json)
            );
            let deployed = deployed?;
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
                // The bench's clients are plain; better say so than fail on every request.
                anyhow::ensure!(
                    tls.is_none(),
                    "riteraft bench does not use TLS yet; run it without --tls-cert, --tls-key and --tls-ca (and their RITERAFT_TLS_* variables)"
                );
                bench::Target::Cluster(cli.cluster.clone())
            } else {
                bench::Target::Local
            };
            let outcome = bench::run(args, target, timeout).await?;
            Report::Done {
                text: outcome.text(),
                json: outcome.json(),
            }
        }
        Command::Certs(_) | Command::New { .. } => {
            unreachable!("handled above: it contacts no node")
        }
    })
}

/// Writes a deploy's steps to stderr as they come (when `show`; `--json` keeps quiet). On a
/// terminal the upload's progress is one line rewritten in place; elsewhere only its end.
async fn show_deploy_steps(
    mut steps: tokio::sync::mpsc::UnboundedReceiver<DeployStep>,
    show: bool,
) {
    use std::io::{IsTerminal as _, Write as _};
    let terminal = std::io::stderr().is_terminal();
    while let Some(step) = steps.recv().await {
        if !show {
            continue;
        }
        let line = render::deploy_step(&step);
        let done = !matches!(step, DeployStep::Upload { sent, total } if sent < total);
        let mut stderr = std::io::stderr();
        let _ = match (done, terminal) {
            (true, true) => writeln!(stderr, "\r{line}\x1b[K"),
            (true, false) => writeln!(stderr, "{line}"),
            (false, true) => write!(stderr, "\r{line}\x1b[K"),
            (false, false) => Ok(()),
        };
        let _ = stderr.flush();
    }
}

/// The status of the node the client reaches, with each member's match index and lag as the
/// leader knows them (asked of the leader when that node is not it; left out if it cannot be).
async fn status_with_lag(client: &Client) -> anyhow::Result<NodeStatus> {
    let status = client.status().await?;
    let leader = status.leader_id.filter(|leader| *leader != status.id);
    let address = leader.and_then(|leader| {
        let member = status.members.iter().find(|member| member.id == leader)?;
        Some(member.address.clone())
    });
    let Some(address) = address else {
        return Ok(status);
    };
    Ok(match client.status_of(&address).await {
        Ok(leader) => status.with_members_of(leader),
        Err(_) => status,
    })
}

/// `riteraft new`: writes the project and says what to run in it next.
fn new_store(name: &str, lang: new_project::Lang, dir: Option<&Path>) -> anyhow::Result<Report> {
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    let project = new_project::write(name, lang, &dir)?;
    let files: Vec<String> = (project.files.iter())
        .map(|file| file.display().to_string())
        .collect();
    Ok(Report::Done {
        text: format!(
            "wrote {} ({} files); next, in it: {}",
            project.dir.display(),
            files.len(),
            project.next
        ),
        json: serde_json::json!({ "ok": true, "dir": project.dir.display().to_string(), "files": files }),
    })
}

/// `riteraft certs`: writes the certificates and says what was written and how to use them.
fn make_certs(args: &CertsArgs) -> anyhow::Result<Report> {
    let dir = args.dir.as_path();
    let default_client = ("admin".to_string(), Role::Admin);
    // Without --client, the default admin is made once: adding a node later to the same
    // directory must not trip over (or, with --force, replace) the admin's certificate.
    let (clients, kept) = if !args.clients.is_empty() {
        (args.clients.clone(), None)
    } else if !args.force && certs::client_files(dir, &default_client.0).cert.exists() {
        (
            Vec::new(),
            Some(certs::client_files(dir, &default_client.0)),
        )
    } else {
        (vec![default_client], None)
    };
    let pki =
        certs::write_pki(dir, &args.nodes, &clients, args.force).map_err(|error| match error {
            CertError::Exists { path } => anyhow::anyhow!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
            other => other.into(),
        })?;
    Ok(certs_report(dir, &pki, kept.as_ref()))
}

/// What `riteraft certs` prints: the files written, and the flags of the first client.
fn certs_report(dir: &Path, pki: &certs::Pki, kept: Option<&TlsFiles>) -> Report {
    let mut text = if pki.ca_created {
        format!(
            "made a new CA in {}
",
            dir.display()
        )
    } else {
        format!(
            "used the CA in {}
",
            dir.display()
        )
    };
    text.push_str(
        "wrote:
",
    );
    for path in &pki.written {
        text.push_str(&format!(
            "  {}
",
            path.display()
        ));
    }
    if let Some(files) = kept {
        text.push_str(&format!(
            "kept the existing client certificate {}
",
            files.cert.display()
        ));
    }
    let client = pki.clients.first().or(kept);
    if let Some(files) = client {
        text.push_str(&format!(
            "connect with: riteraft --tls-cert {} --tls-key {} --tls-ca {} ...",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        ));
    }
    let path = |path: &Path| path.display().to_string();
    let json = serde_json::json!({
        "dir": path(dir),
        "ca_created": pki.ca_created,
        "written": pki.written.iter().map(|p| path(p)).collect::<Vec<_>>(),
        "client_flags": client.map(|files| serde_json::json!({
            "tls_cert": path(&files.cert),
            "tls_key": path(&files.key),
            "tls_ca": path(&files.ca),
        })),
    });
    Report::Done {
        text: text.trim_end().to_string(),
        json,
    }
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
        assert_eq!(cli.timeout(), Duration::from_millis(500));
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
    fn tls_flags_go_together() {
        let parse = |args: &[&str]| {
            let mut all = vec!["riteraft"];
            all.extend_from_slice(args);
            all.push("status");
            tls_files(&Cli::try_parse_from(all).unwrap())
        };
        assert_eq!(parse(&[]).unwrap(), None);
        let files = parse(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "c.key",
            "--tls-ca",
            "ca.pem",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(files.cert, Path::new("c.pem"));
        assert_eq!(files.key, Path::new("c.key"));
        assert_eq!(files.ca, Path::new("ca.pem"));
        let error = parse(&["--tls-cert", "c.pem"]).unwrap_err().to_string();
        assert!(error.contains("go together"), "{error}");
        assert!(error.contains("missing: --tls-key, --tls-ca"), "{error}");
    }

    #[test]
    fn certs_takes_nodes_and_clients_with_roles() {
        let cli = Cli::try_parse_from([
            "riteraft",
            "certs",
            "--dir",
            "pki",
            "--node",
            "127.0.0.1:7001",
            "--node",
            "[::1]:7002",
            "--client",
            "ops:write",
            "--client",
            "me:admin",
        ])
        .unwrap();
        let Command::Certs(args) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(args.dir, Path::new("pki"));
        assert_eq!(args.nodes, ["127.0.0.1:7001", "[::1]:7002"]);
        assert_eq!(
            args.clients,
            [
                ("ops".to_string(), Role::Write),
                ("me".to_string(), Role::Admin)
            ]
        );
        assert!(!args.force);
        let error =
            Cli::try_parse_from(["riteraft", "certs", "--dir", "d", "--client", "ops:root"])
                .unwrap_err()
                .to_string();
        assert!(error.contains("expected read, write or admin"), "{error}");
        let error = Cli::try_parse_from(["riteraft", "certs", "--dir", "d", "--client", "ops"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("NAME:ROLE"), "{error}");
        let error = Cli::try_parse_from(["riteraft", "certs", "--dir", "d", "--node", "n1"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("port is missing"), "{error}");
        assert!(
            Cli::try_parse_from(["riteraft", "certs"]).is_err(),
            "--dir is required"
        );
    }

    #[test]
    fn certs_makes_the_admin_once_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let args = |extra: &[&str]| {
            let mut all = vec!["riteraft", "certs", "--dir", dir.path().to_str().unwrap()];
            all.extend_from_slice(extra);
            match Cli::try_parse_from(all).unwrap().command {
                Command::Certs(args) => args,
                other => panic!("{other:?}"),
            }
        };
        let Report::Done { text, json } = make_certs(&args(&["--node", "127.0.0.1:7001"])).unwrap()
        else {
            panic!("not done");
        };
        assert!(text.starts_with("made a new CA in"), "{text}");
        assert!(text.contains("client-admin.pem"), "{text}");
        assert!(text.contains("node-127.0.0.1-7001.key"), "{text}");
        assert!(
            text.contains("connect with: riteraft --tls-cert "),
            "{text}"
        );
        assert_eq!(json["ca_created"], true);
        assert_eq!(json["written"].as_array().unwrap().len(), 6);
        let admin = certs::client_files(dir.path(), "admin");
        assert_eq!(
            json["client_flags"]["tls_key"],
            admin.key.display().to_string()
        );
        ClientTls::load(admin.clone()).unwrap();

        // A second node later: the CA is reused and the admin kept.
        let Report::Done { text, json } = make_certs(&args(&["--node", "127.0.0.1:7002"])).unwrap()
        else {
            panic!("not done");
        };
        assert!(text.starts_with("used the CA in"), "{text}");
        assert!(
            text.contains("kept the existing client certificate"),
            "{text}"
        );
        assert_eq!(json["written"].as_array().unwrap().len(), 2);

        // The same node again: refused, with the way out.
        let error = make_certs(&args(&["--node", "127.0.0.1:7002"]))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("already exists"), "{error}");
        assert!(error.contains("pass --force"), "{error}");
        make_certs(&args(&["--node", "127.0.0.1:7002", "--force"])).unwrap();
    }

    #[test]
    fn a_deploy_waits_longer_by_default() {
        let cli = |args: &[&str]| Cli::try_parse_from(args.iter().copied()).unwrap();
        assert_eq!(cli(&["riteraft", "status"]).timeout(), TIMEOUT);
        assert_eq!(
            cli(&["riteraft", "deploy", "m.wasm"]).timeout(),
            DEPLOY_TIMEOUT
        );
        let given = cli(&["riteraft", "deploy", "--timeout", "5", "m.wasm"]);
        assert_eq!(given.timeout(), Duration::from_secs(5));
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
