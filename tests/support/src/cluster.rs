//! [`Cluster`]: a local RiteRaft cluster of real `riteraft-host` processes on loopback.
//!
//! Tests drive the nodes exactly as users do, through the gRPC `Client` service, using the raw
//! generated types of `riteraft_proto` (so a test sees every status code and field the
//! node sends, not an interpretation of them).
//!
//! Nodes are named by their raft id, as the nodes themselves name each other: the first node
//! bootstraps as id 1 and the cluster gives joiners 2, 3, ... The harness learns each id from
//! the node's own `Status`, so it never assumes the numbering.
//!
//! Every call is bounded in time: a gRPC call that gets no answer within the call timeout
//! fails with code `CANCELLED` and a message starting with `harness:`, a code the node itself
//! never uses for that, so a test asserting the node's own error codes catches a hang.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use riteraft_proto::certs::{client_files, write_test_pki};
use riteraft_proto::client_client::ClientClient;
use riteraft_proto::tls::{ClientTls, Role};
use riteraft_proto::{DialOptions, dial_lazy};
use riteraft_proto::{
    LeaveRequest, ProposeRequest, ProposeResponse, QueryRequest, QueryResponse, StatusRequest,
    StatusResponse, TransferLeaderRequest, propose_response, query_response,
};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::netns::Host;
use crate::ports::{free_addr, free_port};
use crate::process::NodeProcess;
use crate::wait::wait_until;

/// The node's default `--proposal-timeout-ms`, used to size call timeouts when a test does not
/// set one.
const NODE_DEFAULT_PROPOSAL_TIMEOUT: Duration = Duration::from_millis(5000);
/// A `Status` is answered locally, so it gets a short leash: polling a stopped node must not
/// stall a wait for the others.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How a [`Cluster`] starts its nodes.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `riteraft-host` binary: `env!("CARGO_BIN_EXE_riteraft-host")` in the host's tests.
    pub binary: PathBuf,
    /// The store plugin every node runs (default: the `kv` example).
    pub plugin: PathBuf,
    /// `--snapshot-entries`, if set.
    pub snapshot_entries: Option<u64>,
    /// `--proposal-timeout-ms`, if set.
    pub proposal_timeout: Option<Duration>,
    /// More flags for every node.
    pub extra_args: Vec<OsString>,
    /// Where the nodes' data dirs go (`DATA_ROOT/nodeN`), if not in the cluster's temporary
    /// directory (e.g. a small filesystem); node logs stay in the temporary directory.
    pub data_root: Option<PathBuf>,
    /// `RUST_LOG` for the nodes (default `info`, or `$RITERAFT_TEST_LOG` when set).
    pub rust_log: String,
    /// How long a starting node may take to serve `Status` and know a leader. Generous: a
    /// debug-build node compiles the plugin at start, on a machine busy with other tests.
    pub ready_timeout: Duration,
    /// Mutual TLS between the nodes and for the harness's calls (the default, as the README
    /// sets a cluster up): a test CA, a certificate per node and an admin client certificate
    /// in the cluster's directory.
    pub tls: bool,
    /// Where the nodes run: the k-th node started gets the k-th host (its network namespace
    /// and address, see [`crate::netns::Lab`]). Empty: every node on 127.0.0.1, in the test's
    /// own namespace.
    pub hosts: Vec<Host>,
    /// Give every node `--metrics-listen` on a free port of its own (see
    /// [`Cluster::metrics_addr`]).
    pub metrics: bool,
}

impl ClusterOptions {
    /// Options for nodes running `binary`, with the `kv` plugin and the node's defaults.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            plugin: crate::plugin("kv"),
            snapshot_entries: None,
            proposal_timeout: None,
            extra_args: Vec::new(),
            data_root: None,
            rust_log: std::env::var("RITERAFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ready_timeout: Duration::from_secs(30),
            tls: true,
            hosts: Vec::new(),
            metrics: false,
        }
    }

    /// Serves each node's metrics (`--metrics-listen`) on a free port of its own.
    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Runs the k-th node started on the k-th of `hosts` (see [`ClusterOptions::hosts`]).
    pub fn on_hosts(mut self, hosts: &[Host]) -> Self {
        self.hosts = hosts.to_vec();
        self
    }

    /// Runs the nodes without TLS (on loopback, which a node allows).
    pub fn plaintext(mut self) -> Self {
        self.tls = false;
        self
    }

    /// Sets `--snapshot-entries N`.
    pub fn snapshot_entries(mut self, entries: u64) -> Self {
        self.snapshot_entries = Some(entries);
        self
    }

    /// Sets `--proposal-timeout-ms MS`.
    pub fn proposal_timeout_ms(mut self, ms: u64) -> Self {
        self.proposal_timeout = Some(Duration::from_millis(ms));
        self
    }

    /// Runs `plugin` instead of `kv`.
    pub fn plugin(mut self, plugin: impl Into<PathBuf>) -> Self {
        self.plugin = plugin.into();
        self
    }

    /// Adds a flag (or flag value) for every node.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Keeps every node's compiled plugins in one directory shared by the whole test run
    /// (`--compiled-dir target/plugins/compiled`): a large Python or JavaScript module takes a
    /// debug-build node tens of seconds to compile, and is then compiled once for all the
    /// nodes and tests that run it. Only for tests that do not measure compiling.
    pub fn share_compiled_plugins(self) -> Self {
        let dir = crate::workspace_root().join("target/plugins/compiled");
        self.arg("--compiled-dir").arg(dir)
    }

    /// Puts each node's `--data-dir` under `root` (as `root/nodeN`) instead of the cluster's
    /// temporary directory. The harness does not remove them: `root` is the caller's.
    pub fn data_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.data_root = Some(root.into());
        self
    }

    /// How long the harness waits for the answer to a `Propose`, `Query`, `Leave` or
    /// `TransferLeader`: the node's own proposal timeout plus a margin, so that the node's
    /// error (not the harness's) is what a test sees.
    pub fn call_timeout(&self) -> Duration {
        self.proposal_timeout
            .unwrap_or(NODE_DEFAULT_PROPOSAL_TIMEOUT)
            + Duration::from_secs(5)
    }
}

/// One node: its process, address and files.
struct Node {
    addr: SocketAddr,
    /// Behind a mutex so that `kill` and liveness checks work through `&Cluster`, which lets
    /// tests call them from inside [`Cluster::wait_for`] conditions.
    process: Mutex<NodeProcess>,
    client: ClientClient<Channel>,
    /// `node.log` (and `data/`, unless [`ClusterOptions::data_root`] is set); under the
    /// cluster's temporary directory.
    dir: PathBuf,
    /// The node's `--data-dir`.
    data_dir: PathBuf,
    /// The network namespace it runs in, if not the test's.
    netns: Option<String>,
    /// Its `--metrics-listen` address, if any.
    metrics: Option<SocketAddr>,
}

/// Where a node to spawn listens, and whom it joins.
struct Spawn {
    addr: SocketAddr,
    join: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

/// A running cluster. Dropping it kills every node; if a test panics, the nodes' logs are
/// printed and the cluster's directory is kept for inspection (set `RITERAFT_KEEP_TEST_DIRS=1`
/// to keep it always).
pub struct Cluster {
    options: ClusterOptions,
    /// By raft id. Declared before `root` so that the processes die before their files go.
    nodes: BTreeMap<u64, Node>,
    /// Counts nodes ever started, to name their directories before their ids are known.
    started: usize,
    /// How the harness dials the nodes (with the admin certificate when TLS is on).
    connector: Connector,
    root: TempDir,
}

/// Dials the cluster's nodes as the harness does: with TLS and the admin client certificate
/// when the cluster runs TLS. Cheap to clone, for tests whose tasks keep their own channels.
#[derive(Clone)]
pub struct Connector {
    tls: Option<Arc<ClientTls>>,
}

impl Connector {
    /// A lazily connecting channel to `addr`: nodes come and go, and tonic reconnects on the
    /// next call. The connect timeout keeps a call to a dead address short.
    pub fn connect(&self, addr: SocketAddr) -> ClientClient<Channel> {
        ClientClient::new(self.channel(addr))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// The channel under [`Connector::connect`], for the other gRPC services.
    pub fn channel(&self, addr: SocketAddr) -> Channel {
        let options = DialOptions {
            connect_timeout: Duration::from_secs(1),
            tls: self.tls.clone(),
            ..DialOptions::default()
        };
        dial_lazy(&addr.to_string(), &options).expect("a socket address is a valid node address")
    }
}

impl Cluster {
    /// Starts node 1, waits until it leads, then starts nodes 2..=n one at a time, each
    /// joining through the leader and awaited until it is a member.
    pub async fn start(n: usize, options: ClusterOptions) -> Cluster {
        assert!(n >= 1, "a cluster has at least one node");
        let root = tempfile::Builder::new()
            .prefix("riteraft-cluster-")
            .tempdir()
            .expect("cannot create a temporary directory");
        if std::env::var_os("RITERAFT_KEEP_TEST_DIRS").is_some() {
            eprintln!("cluster files kept in {}", root.path().display());
        }
        let tls = options.tls.then(|| {
            let dir = root.path().join("certs");
            write_test_pki(&dir, &[], &[("admin".into(), Role::Admin)])
                .expect("cannot make the test certificates");
            ClientTls::load(client_files(&dir, "admin")).expect("cannot load the admin certificate")
        });
        let mut cluster = Cluster {
            options,
            nodes: BTreeMap::new(),
            started: 0,
            connector: Connector { tls },
            root,
        };
        cluster.start_node(None, &[], "voter").await;
        for _ in 1..n {
            cluster.add_node().await;
        }
        cluster
    }

    /// The options the nodes were started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The cluster's temporary directory (one subdirectory per node).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Where the test CA and the certificates are (when TLS is on): `riteraft_proto::certs`
    /// can issue more there.
    pub fn certs_dir(&self) -> PathBuf {
        self.root.path().join("certs")
    }

    /// How the harness dials nodes.
    pub fn connector(&self) -> Connector {
        self.connector.clone()
    }

    /// Every node ever started, running or not, by raft id.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The nodes whose process is running.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, node)| lock(&node.process).is_running())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Node `id`'s gRPC address.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.node(id).addr
    }

    /// Node `id`'s metrics address (`http://ADDR/metrics`), if started
    /// [`ClusterOptions::with_metrics`].
    pub fn metrics_addr(&self, id: u64) -> Option<SocketAddr> {
        self.node(id).metrics
    }

    /// Node `id`'s process id.
    pub fn pid(&self, id: u64) -> u32 {
        lock(&self.node(id).process).pid()
    }

    /// Every node's address, in id order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.values().map(|node| node.addr).collect()
    }

    /// Where node `id`'s output goes.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.node(id).dir.join("node.log")
    }

    /// Node `id`'s output so far (empty if there is none yet).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Waits until node `id`'s output contains `needle` (at most `limit`).
    pub async fn wait_for_log(&self, id: u64, needle: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.log(id).contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} never logged {needle:?} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `id`'s `--data-dir` (kept across restarts).
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    /// A gRPC client of node `id` (cheap to clone; for calls the helpers do not cover, or
    /// many concurrent ones). Calls through it are not bounded by the harness.
    pub fn client(&self, id: u64) -> ClientClient<Channel> {
        self.node(id).client.clone()
    }

    /// Node `id`'s view of the cluster.
    pub async fn status(&self, id: u64) -> Result<StatusResponse, Status> {
        let mut client = self.client(id);
        bounded(id, "Status", STATUS_TIMEOUT, async move {
            client.status(StatusRequest {}).await
        })
        .await
    }

    /// Proposes `text` (a command in the plugin's text encoding) through node `id`: the
    /// store's answer (`Ok`) or rejection (`Err`), or the gRPC error.
    pub async fn propose(&self, id: u64, text: &str) -> Result<Result<String, String>, Status> {
        self.propose_raw(id, text.as_bytes().to_vec())
            .await
            .map(|response| match response.result {
                Some(propose_response::Result::Output(bytes)) => Ok(utf8(bytes)),
                Some(propose_response::Result::Rejection(reason)) => Err(reason),
                None => Err("harness: the response has no result".into()),
            })
    }

    /// Proposes `command` through node `id` and returns the whole response (with its index).
    pub async fn propose_raw(&self, id: u64, command: Vec<u8>) -> Result<ProposeResponse, Status> {
        let mut client = self.client(id);
        bounded(id, "Propose", self.options.call_timeout(), async move {
            client.propose(ProposeRequest { command }).await
        })
        .await
    }

    /// Runs query `text` on node `id` (served locally if `stale`, else linearizable).
    pub async fn query(
        &self,
        id: u64,
        text: &str,
        stale: bool,
    ) -> Result<Result<String, String>, Status> {
        self.query_raw(id, text.as_bytes().to_vec(), stale)
            .await
            .map(|response| match response.result {
                Some(query_response::Result::Output(bytes)) => Ok(utf8(bytes)),
                Some(query_response::Result::Rejection(reason)) => Err(reason),
                None => Err("harness: the response has no result".into()),
            })
    }

    /// Runs `request` on node `id` and returns the whole response (with its applied index).
    pub async fn query_raw(
        &self,
        id: u64,
        request: Vec<u8>,
        stale: bool,
    ) -> Result<QueryResponse, Status> {
        let mut client = self.client(id);
        bounded(id, "Query", self.options.call_timeout(), async move {
            client.query(QueryRequest { request, stale }).await
        })
        .await
    }

    /// Asks node `via` to remove node `node_id` (0: `via` itself).
    pub async fn leave(&self, via: u64, node_id: u64) -> Result<(), Status> {
        let mut client = self.client(via);
        bounded(via, "Leave", self.options.call_timeout(), async move {
            client.leave(LeaveRequest { node_id }).await
        })
        .await
        .map(drop)
    }

    /// Asks node `via` to have leadership handed to node `to`.
    pub async fn transfer_leader(&self, via: u64, to: u64) -> Result<(), Status> {
        let mut client = self.client(via);
        bounded(
            via,
            "TransferLeader",
            self.options.call_timeout(),
            async move { client.transfer_leader(TransferLeaderRequest { to }).await },
        )
        .await
        .map(drop)
    }

    /// The node that says it leads, asking every running node (if two claim it, as can happen
    /// for a moment after an election, the one with the higher term).
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None; // (term, id)
        for id in self.live_ids() {
            if let Ok(status) = self.status(id).await
                && status.role == "leader"
                && best.is_none_or(|(term, _)| status.term > term)
            {
                best = Some((status.term, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until some running node leads, and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        wait_until("a leader", timeout, async || self.leader().await).await
    }

    /// Calls `check` until it returns `Some` (every 50 ms), then returns the value; panics
    /// after `timeout` naming `what`. `check` may use the cluster (e.g. `cluster.status(2)`).
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        wait_until(what, timeout, check).await
    }

    /// Waits until every running node has applied everything the leader has committed (as of
    /// the first check), and returns that commit index.
    pub async fn wait_caught_up(&self, timeout: Duration) -> u64 {
        let leader = self.wait_for_leader(timeout).await;
        let commit = self
            .status(leader)
            .await
            .expect("the leader answers Status")
            .commit_index;
        self.wait_applied(commit, timeout).await;
        commit
    }

    /// Waits until every running node's applied index is at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        let what = format!("every running node to apply index {index}");
        self.wait_for(&what, timeout, async || {
            for id in self.live_ids() {
                if self.status(id).await.ok()?.applied_index < index {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// Proposes every command of `commands` through node `id` with up to `in_flight` of them
    /// outstanding at once, retrying each on errors that say it did not (or may not have)
    /// applied: UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED; so use commands that are harmless to
    /// apply twice. Returns each command's answer, in order, or the first failure.
    pub async fn propose_many(
        &self,
        id: u64,
        commands: Vec<String>,
        in_flight: usize,
    ) -> Result<Vec<Result<String, String>>, String> {
        const ATTEMPTS: usize = 20;
        let commands: Arc<[String]> = commands.into();
        let next = Arc::new(AtomicUsize::new(0));
        let call_timeout = self.options.call_timeout();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..in_flight.max(1) {
            let (commands, next, mut client) = (commands.clone(), next.clone(), self.client(id));
            workers.spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(command) = commands.get(i) else {
                        return Ok(answers);
                    };
                    let mut attempt = 0;
                    let response = loop {
                        attempt += 1;
                        let request = ProposeRequest {
                            command: command.as_bytes().to_vec(),
                        };
                        let call = client.propose(request);
                        match bounded(id, "Propose", call_timeout, call).await {
                            Ok(response) => break response,
                            Err(status)
                                if attempt < ATTEMPTS
                                    && matches!(
                                        status.code(),
                                        Code::Unavailable | Code::Aborted | Code::DeadlineExceeded
                                    ) =>
                            {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(status) => {
                                return Err(format!(
                                    "proposing {command:?} (attempt {attempt}): {status}"
                                ));
                            }
                        }
                    };
                    let answer = match response.result {
                        Some(propose_response::Result::Output(bytes)) => Ok(utf8(bytes)),
                        Some(propose_response::Result::Rejection(reason)) => Err(reason),
                        None => Err("harness: the response has no result".into()),
                    };
                    answers.push((i, answer));
                }
            });
        }
        let mut answers: Vec<Option<Result<String, String>>> = vec![None; commands.len()];
        while let Some(joined) = workers.join_next().await {
            for (i, answer) in joined.map_err(|e| format!("a proposer task failed: {e}"))?? {
                answers[i] = Some(answer);
            }
        }
        Ok(answers
            .into_iter()
            .map(|answer| answer.expect("every command was proposed"))
            .collect())
    }

    /// Kills node `id` with SIGKILL (a crash: no goodbye to the others) and reaps it.
    pub fn kill(&self, id: u64) {
        lock(&self.node(id).process).kill();
    }

    /// Freezes node `id` (SIGSTOP) until [`resume`](Self::resume): it neither crashes nor
    /// answers, like a paused VM.
    pub fn pause(&self, id: u64) {
        lock(&self.node(id).process).pause();
    }

    /// Sends node `id` SIGHUP: it reloads its TLS certificates.
    pub fn hangup(&self, id: u64) {
        lock(&self.node(id).process).hangup();
    }

    /// Lets a frozen node go on (SIGCONT).
    pub fn resume(&self, id: u64) {
        lock(&self.node(id).process).resume();
    }

    /// Whether node `id`'s process is running.
    pub fn is_running(&self, id: u64) -> bool {
        lock(&self.node(id).process).is_running()
    }

    /// Waits up to `timeout` for node `id` to exit by itself; its status, or `None` if it is
    /// still running.
    pub async fn wait_exit(&self, id: u64, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = lock(&self.node(id).process).try_exit() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts node `id` (killing it first if it runs) on the same address and data dir,
    /// without `--join`: a node restarted on its data dir resumes as the same member. Waits
    /// until it answers `Status` as node `id`; whether it then knows a leader depends on the
    /// rest of the cluster, so wait for that separately.
    pub async fn restart(&mut self, id: u64) {
        self.kill(id);
        let (addr, dir, data_dir, netns, metrics) = {
            let node = self.node(id);
            (
                node.addr,
                node.dir.clone(),
                node.data_dir.clone(),
                node.netns.clone(),
                node.metrics,
            )
        };
        let spawned = Spawn {
            addr,
            join: None,
            metrics,
        };
        let process = self.spawn(&dir, &data_dir, spawned, netns.as_deref(), &[]);
        // A new channel: the old one may be backing off from the dead process.
        let client = self.connector.connect(addr);
        let node = self.nodes.get_mut(&id).expect("the node exists");
        *node.process.get_mut().unwrap_or_else(|e| e.into_inner()) = process;
        node.client = client;
        let what = format!("node {id} to answer Status again after a restart");
        let timeout = self.options.ready_timeout;
        self.wait_for(&what, timeout, async || {
            assert!(
                self.is_running(id),
                "node {id} exited after a restart: see its log above"
            );
            self.status(id).await.ok().filter(|s| s.id == id)
        })
        .await;
    }

    /// Starts a new node joining the cluster through its leader, waits until it is a voter
    /// (its `Status` shows itself as one, with a leader known: it joined as a learner, caught
    /// up and was promoted), and returns its id.
    pub async fn add_node(&mut self) -> u64 {
        self.add_node_with(&[], "voter").await
    }

    /// Like [`Cluster::add_node`], with `args` added to the node's command line (e.g.
    /// `--learner`), waiting until the node shows itself in `role` ("voter" or "learner").
    pub async fn add_node_with(&mut self, args: &[&str], role: &str) -> u64 {
        let leader = self.wait_for_leader(self.options.ready_timeout).await;
        let join = self.addr(leader);
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        self.start_node(Some(join), &args, role).await
    }

    /// Starts a node (bootstrapping if `join` is `None`) with `args` added, waits until it is
    /// ready (the leader, for the first node; a member in `role`, for a joiner), records it.
    async fn start_node(&mut self, join: Option<SocketAddr>, args: &[OsString], role: &str) -> u64 {
        self.started += 1;
        let dir = self.root.path().join(format!("node{}", self.started));
        std::fs::create_dir_all(&dir).expect("cannot create a node directory");
        let data_dir = match &self.options.data_root {
            Some(root) => root.join(format!("node{}", self.started)),
            None => dir.join("data"),
        };
        let host = match self.options.hosts.as_slice() {
            [] => None,
            hosts => Some(hosts.get(self.started - 1).cloned().unwrap_or_else(|| {
                panic!(
                    "node {} started, but only {} hosts given",
                    self.started,
                    hosts.len()
                )
            })),
        };
        // A port free here is free in a fresh namespace too.
        let addr = match &host {
            None => free_addr(),
            Some(host) => SocketAddr::new(host.ip, free_port()),
        };
        let metrics = self
            .options
            .metrics
            .then(|| SocketAddr::new(addr.ip(), free_port()));
        let netns = host.map(|host| host.netns);
        let spawned = Spawn {
            addr,
            join,
            metrics,
        };
        let mut process = self.spawn(&dir, &data_dir, spawned, netns.as_deref(), args);
        let client = self.connector.connect(addr);
        let bootstrap = join.is_none();
        let what = if bootstrap {
            format!("the first node ({addr}) to lead")
        } else {
            format!("the node at {addr} to join, know a leader and be a {role}")
        };
        // A joiner must also catch up and be promoted (a snapshot to install, on a machine busy
        // with other tests): twice the time.
        let limit = match bootstrap {
            true => self.options.ready_timeout,
            false => self.options.ready_timeout * 2,
        };
        let id = wait_until(&what, limit, async || {
            if let Some(status) = process.try_exit() {
                panic!(
                    "{} exited with {status} before it was ready",
                    process.name()
                );
            }
            let mut client = client.clone();
            let status = bounded(0, "Status", STATUS_TIMEOUT, async move {
                client.status(StatusRequest {}).await
            })
            .await
            .ok()?;
            let ready = status.id != 0
                && status.leader_id != 0
                && status
                    .members
                    .iter()
                    .any(|m| m.id == status.id && (bootstrap || m.role == role))
                && (!bootstrap || status.role == "leader");
            ready.then_some(status.id)
        })
        .await;
        assert!(
            !self.nodes.contains_key(&id),
            "the node at {addr} got id {id}, which another node has"
        );
        process.set_name(format!("node {id} ({addr})"));
        self.nodes.insert(
            id,
            Node {
                addr,
                process: Mutex::new(process),
                client,
                dir,
                data_dir,
                netns,
                metrics,
            },
        );
        id
    }

    /// Spawns `riteraft-host` for a node logging to `dir` and keeping its state in `data_dir`.
    fn spawn(
        &self,
        dir: &Path,
        data_dir: &Path,
        spawned: Spawn,
        netns: Option<&str>,
        args: &[OsString],
    ) -> NodeProcess {
        let Spawn {
            addr,
            join,
            metrics,
        } = spawned;
        let options = &self.options;
        // `ip netns exec` enters the namespace and then execs the node: the process is the
        // node's, so killing and pausing it work as on loopback.
        let mut command = match netns {
            None => Command::new(&options.binary),
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&options.binary);
                command
            }
        };
        command
            .arg("--plugin")
            .arg(&options.plugin)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir);
        if let Some(join) = join {
            command.arg("--join").arg(join.to_string());
        }
        if let Some(metrics) = metrics {
            command.arg("--metrics-listen").arg(metrics.to_string());
        }
        if self.options.tls {
            let certs = self.certs_dir();
            let pki = write_test_pki(&certs, &[addr.to_string()], &[])
                .expect("cannot make a node certificate");
            command.args(pki.nodes[0].flags());
        }
        if let Some(entries) = options.snapshot_entries {
            command.arg("--snapshot-entries").arg(entries.to_string());
        }
        if let Some(timeout) = options.proposal_timeout {
            command
                .arg("--proposal-timeout-ms")
                .arg(timeout.as_millis().to_string());
        }
        command
            .args(&options.extra_args)
            .args(args)
            .env("RUST_LOG", &options.rust_log)
            .env("RUST_BACKTRACE", "1");
        // A node reads a RITERAFT_HOST_* variable for each flag: the tests' nodes run with the
        // flags above alone, whatever the developer's shell exported.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RITERAFT_HOST_") {
                command.env_remove(name);
            }
        }
        NodeProcess::spawn(format!("node at {addr}"), command, dir.join("node.log"))
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", options.binary.display()))
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster (nodes: {:?})", self.ids()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes (killed by their own guards, printing their logs on a panic) go first.
        self.nodes.clear();
        if std::thread::panicking() || std::env::var_os("RITERAFT_KEEP_TEST_DIRS").is_some() {
            self.root.disable_cleanup(true);
            eprintln!(
                "cluster files (data and node.log of each node) kept in {}",
                self.root.path().display()
            );
        }
    }
}

/// Awaits a gRPC call for at most `timeout`; a call that takes longer fails with `CANCELLED`
/// and a `harness:` message naming the node and the call.
async fn bounded<T>(
    id: u64,
    call: &str,
    timeout: Duration,
    future: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::cancelled(format!(
            "harness: node {id} did not answer {call} within {timeout:?}"
        ))),
    }
}

fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Locks a node's process guard, even if a panicking test poisoned it (the guard must still
/// kill the process).
fn lock(process: &Mutex<NodeProcess>) -> MutexGuard<'_, NodeProcess> {
    process.lock().unwrap_or_else(|e| e.into_inner())
}
