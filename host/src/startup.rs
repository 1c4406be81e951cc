//! Starts a node: plugin, log store, consensus thread, gRPC server; then waits for the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use riteraft_proto::JoinRequest;
use riteraft_proto::client_client::ClientClient;
use riteraft_proto::client_server::ClientServer;
use riteraft_proto::raft_server::RaftServer;
use riteraft_proto::tls::ClientTls;
use riteraft_proto::{DialError, dial};

use crate::config::NodeConfig;
use crate::data_dir::{DataDir, DataDirError, write_identity};
use crate::grpc_services::{GrpcModuleFetcher, NodeService};
use crate::health;
use crate::listener::{ServerTls, incoming, watch_certificates};
use crate::metrics::{self, Metrics};
use crate::module_store::{MODULES_DIR, ModuleStore, ModuleStoreError};
use crate::node::{self, Node, NodeExit, NodeFatal, NodeHandle, NodeOptions};
use crate::plugin::{LoadError, PluginModule, PluginRuntime, RuntimeError};
use crate::replicated::{ClusterState, LearnerPlan, SnapshotData};
use crate::state_machine::{NativeStateMachine, StateMachine, StateMachineError};
use crate::storage::{DiskLogStore, LogStore, StorageError};
use crate::transport::{MAX_MESSAGE_BYTES, Transport, peer_dial_options};
use crate::wasm_state_machine::{ReplayLimits, WasmStateMachine};
use riteraft_plugin_sdk::Typed;

/// How long a joining node keeps asking the cluster to add it.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a node could not start, or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plugin file is unusable.
    #[error("cannot load plugin {path}: {source}")]
    Plugin { path: String, source: LoadError },
    /// The wasm engine could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The server reflection service could not read the protocol's descriptors (a build bug).
    #[error("cannot set up server reflection: {0}")]
    Reflection(String),
    /// The plugin could not be started.
    #[error("cannot start the plugin: {0}")]
    StateMachine(#[from] StateMachineError),
    /// The listen address is unusable (in use, or not local).
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    /// Joining the cluster failed.
    #[error("cannot join the cluster at {address}: {reason}")]
    Join { address: String, reason: String },
    /// The log store failed at start.
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Modules(#[from] ModuleStoreError),
    /// The data dir cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The consensus loop stopped on a fatal error.
    #[error("the node stopped: {0}")]
    Fatal(#[from] NodeFatal),
    /// The consensus thread panicked (e.g. the log store could not sync: a full disk).
    #[error(
        "the consensus thread crashed; see the log above. The data dir is intact: restart the node"
    )]
    Crashed,
    /// The TLS files are unusable, or name another node.
    #[error("TLS: {0}")]
    Tls(String),
    /// No TLS on an address others can reach, without `--insecure`.
    #[error(
        "refusing to serve {address} without TLS: anyone who can reach it could read and write \
         the store, deploy code and change the membership. Give --tls-cert, --tls-key and \
         --tls-ca (`riteraft certs` makes them), listen on loopback, or pass --insecure"
    )]
    Insecure { address: String },
    /// Settings that contradict each other.
    #[error("{0}")]
    Settings(String),
    /// Threads or the async runtime could not be started.
    #[error("cannot start: {0}")]
    Start(#[from] std::io::Error),
}

/// Threads for gRPC and the network: every core but one, which the consensus thread (the busiest
/// single thread) keeps for itself; at least one. On the 2-core machine the README measures,
/// one network thread instead of two wrote 6 % more a second at 64 clients with 13 % less CPU
/// per write (fewer wakeups between two threads that mostly hand work to each other).
fn network_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.saturating_sub(1).max(1)
}

/// Disk space the state machine's recovery data leaves free beyond `--min-free-disk-mib`: up
/// to twice the replay limit can be written there before a checkpoint empties it.
const RECOVERY_DISK_RESERVE: u64 = 128 << 20;

/// Runs a node until it is removed, shut down by a signal, or fails.
///
/// `release_memory` is called once, after the node restored its state and before it serves:
/// the start-up copies of a large snapshot are freed by then, and the binary, which chooses the
/// allocator, can have it hand them back to the system.
pub fn run(config: NodeConfig, release_memory: fn()) -> Result<NodeExit, RunError> {
    if config.learner && config.replaces.is_some() {
        return Err(RunError::Settings(
            "--learner and --replaces do not go together: a read replica never votes, a \
             replacement becomes a voter"
                .into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(network_threads())
        .enable_all()
        .build()?;
    let plugins = Arc::new(PluginRuntime::new(config.plugin_limits())?);
    // A restart loads the plugin compiled (see `plugin::CompiledCache`). A first start keeps
    // it in the data dir only once the data dir is this node's (`run_with`): a start refused
    // before that leaves no data dir behind. A directory of its own is used at once.
    let compiled = config.compiled_dir();
    if config.compiled_dir.is_some() || compiled.is_dir() {
        plugins.use_compiled_cache(compiled);
    }
    let module = plugins
        .load_file(&config.plugin)
        .map_err(|source| RunError::Plugin {
            path: config.plugin.display().to_string(),
            source,
        })?;
    tracing::info!(plugin = %config.plugin.display(), sha256 = %module.sha256_hex(), "plugin loaded");
    if config.builtin_kv {
        tracing::warn!(
            "running the kv store compiled into the host (--builtin-kv), not the plugin"
        );
        let state_machine = NativeStateMachine::<Typed<kv::KvStore>>::new();
        return run_with(config, runtime, state_machine, None, release_memory);
    }
    let loaded = module.clone();
    let state_machine = WasmStateMachine::new(plugins.clone(), module, ReplayLimits::default())?;
    run_with(
        config,
        runtime,
        state_machine,
        Some((plugins, loaded)),
        release_memory,
    )
}

/// Runs a node around `state_machine` (see [`run`]).
fn run_with<S: StateMachine + 'static>(
    config: NodeConfig,
    runtime: tokio::runtime::Runtime,
    mut state_machine: S,
    plugins: Option<(Arc<PluginRuntime>, PluginModule)>,
    release_memory: fn(),
) -> Result<NodeExit, RunError> {
    let (plugins, loaded) = plugins.unzip();
    let (server_tls, client_tls) = tls_setup(&config)?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .map_err(|source| RunError::Listen {
            address: config.listen.to_string(),
            source,
        })?;
    let address = config.listen.to_string();
    let metrics = Arc::new(Metrics::new());
    if let Some(address) = config.metrics_listen {
        serve_metrics(&runtime, address, metrics.clone())?;
    }
    // The server starts before the node exists: a joiner must answer the cluster's call back
    // (`Raft.Identify`) while it joins, and peers' messages wait in the node's queue meanwhile.
    let (handle, requests) = node::counted_channel(metrics.node().queue_depth());
    let modules = Arc::new(ModuleStore::on_disk(config.data_dir().join(MODULES_DIR)));
    let service = NodeService::new(
        handle.clone(),
        plugins.clone(),
        address.clone(),
        client_tls.clone(),
        modules.clone(),
    );
    if let (Some(server), Some(client)) = (&server_tls, &client_tls) {
        let client = client.clone();
        runtime.spawn(watch_certificates(server.clone(), move || {
            if let Err(e) = client.reload() {
                tracing::error!("cannot reload the client side's TLS certificates: {e}");
            }
        }));
    }
    let node = handle.clone();
    runtime.block_on(async { serve(listener, server_tls, service.clone(), node) })?;
    service.watch_member_log_formats(runtime.handle());

    let joiner = Joiner {
        runtime: &runtime,
        service: &service,
        tls: &client_tls,
        address: &address,
        learner: config.learner,
        replaces: config.replaces.unwrap_or(0),
    };
    let (id, store, cluster) = open_data_dir(&config, &joiner, &mut state_machine, &modules)?;
    // What the state machine keeps to recover from a trap goes to the data dir, not to
    // memory, while the disk has room for it besides the writes' own reserve.
    let keep_free = (config.min_free_disk_mib << 20).saturating_add(RECOVERY_DISK_RESERVE);
    if let Err(e) = state_machine.keep_recovery_data_in(&config.data_dir(), keep_free) {
        tracing::warn!("what the store needs to recover from a trap is kept in memory: {e}");
    }
    if let (Some(plugins), Some(loaded)) = (&plugins, &loaded) {
        plugins.use_compiled_cache(config.compiled_dir());
        plugins.keep_compiled(loaded);
        // Snapshots name the module by hash: this node's must be here for them to be read.
        modules.put_hashed(loaded.sha256(), loaded.bytes().clone())?;
    }
    let fetcher = GrpcModuleFetcher::new(runtime.handle().clone(), client_tls.clone());

    let transport = Transport::new(
        id,
        handle.clone(),
        runtime.handle().clone(),
        client_tls,
        store.snapshot_opener(),
    );
    let options = NodeOptions {
        snapshot_entries: config.snapshot_entries,
        request_timeout: Duration::from_millis(config.proposal_timeout_ms),
        data_dir: Some(config.data_dir()),
        min_free_disk_bytes: config.min_free_disk_mib << 20,
        read_lease: config.read_lease,
        check_member_log_formats: true,
        joiner_timeout: Duration::from_secs(config.joiner_timeout_secs),
        digest_interval: config.divergence_check_entries,
        metrics: metrics.node().clone(),
        modules,
        module_fetcher: Some(Arc::new(fetcher)),
        ..NodeOptions::default()
    };
    let mut node = Node::new(
        id,
        store,
        state_machine,
        cluster,
        transport,
        options,
        Instant::now(),
    )?;
    if config.join.is_none() {
        node.campaign()?;
    }
    release_memory();

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let _ = done_tx.send(node.run(requests));
        })?;

    runtime.block_on(async {
        tokio::select! {
            result = done_rx => match result {
                Ok(Ok(NodeExit::Removed)) => {
                    // Let the answer to whoever asked us to leave go out.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    tracing::info!("removed from the cluster; exiting");
                    Ok(NodeExit::Removed)
                }
                Ok(Ok(exit)) => Ok(exit),
                Ok(Err(fatal)) => Err(RunError::Fatal(fatal)),
                // The thread ended without a word: it panicked (its message is in the log).
                Err(_) => Err(RunError::Crashed),
            },
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                Ok(NodeExit::Shutdown)
            }
        }
    })
}

/// How a node asks a cluster to add it (see [`join`]).
struct Joiner<'a> {
    runtime: &'a tokio::runtime::Runtime,
    service: &'a NodeService,
    tls: &'a Option<Arc<ClientTls>>,
    /// This node's address.
    address: &'a str,
    /// What the node asks to become (see `JoinRequest`): a read replica, a replacement.
    learner: bool,
    replaces: u64,
}

impl Joiner<'_> {
    fn join(&self, target: std::net::SocketAddr) -> Result<(u64, ClusterState), RunError> {
        let request = JoinRequest {
            address: self.address.to_string(),
            learner: self.learner,
            replaces: self.replaces,
            join_token: Vec::new(),
            log_format: crate::replicated::LOG_FORMAT,
        };
        self.runtime
            .block_on(join(self.service, target.to_string(), request, self.tls))
    }
}

/// Opens the data dir as this node's: resumes the member it holds (restoring the state
/// machine from its snapshot), or for an empty one, bootstraps a new cluster or joins one.
/// Returns the node's id, its log store and the cluster as of the store's snapshot.
fn open_data_dir<S: StateMachine>(
    config: &NodeConfig,
    joiner: &Joiner,
    state_machine: &mut S,
    modules: &ModuleStore,
) -> Result<(u64, DiskLogStore, ClusterState), RunError> {
    let data_dir = DataDir::inspect(&config.data_dir())?;
    data_dir.check_address(joiner.address)?;
    match data_dir {
        DataDir::Member(path, identity) => {
            let store = DiskLogStore::open(&path)?;
            let snapshot = store.read_snapshot()?;
            if snapshot.get_metadata().index == 0 {
                // A node that joined but stopped before the leader's snapshot reached it.
                let Some(target) = config.join.filter(|_| identity.node_id != 1) else {
                    return Err(RunError::Storage(StorageError::Inconsistent(format!(
                        "data dir {} holds node {} but none of the cluster's state; restart it \
                         with --join ADDR, or start over with an empty data dir",
                        path.display(),
                        identity.node_id
                    ))));
                };
                let (id, cluster) = joiner.join(target)?;
                if id != identity.node_id {
                    return Err(RunError::Join {
                        address: target.to_string(),
                        reason: format!(
                            "the cluster knows this address as node {id}, not {}",
                            identity.node_id
                        ),
                    });
                }
                Ok((id, store, cluster))
            } else {
                let data = SnapshotData::decode(&snapshot.data).map_err(NodeFatal::from)?;
                node::restore_snapshot_data(state_machine, &data, modules)?;
                if config.join.is_some() {
                    tracing::info!("already a member: --join is ignored on restart");
                }
                tracing::info!(
                    id = identity.node_id,
                    snapshot = snapshot.get_metadata().index,
                    "resuming from the data dir; replaying the log through the plugin"
                );
                Ok((identity.node_id, store, data.cluster))
            }
        }
        DataDir::Empty(path) => {
            let (id, cluster, snapshot) = match config.join {
                None => {
                    let (snapshot, cluster) =
                        node::bootstrap_snapshot(joiner.address.to_string(), state_machine)?;
                    tracing::info!(address = joiner.address, "starting a new cluster as node 1");
                    (1, cluster, Some(snapshot))
                }
                Some(target) => {
                    let (id, cluster) = joiner.join(target)?;
                    tracing::info!(id, %target, "joined the cluster");
                    (id, cluster, None)
                }
            };
            std::fs::create_dir_all(&path).map_err(StorageError::from)?;
            // A joiner records who it is at once (a restart re-joins if the leader's snapshot
            // has not arrived yet); the first node only once its cluster exists on disk.
            if snapshot.is_none() {
                write_identity(&path, id, joiner.address)?;
            }
            let mut store = DiskLogStore::open(&path)?;
            if let Some(snapshot) = snapshot {
                store.install_snapshot(snapshot)?;
                write_identity(&path, id, joiner.address)?;
            }
            Ok((id, store, cluster))
        }
    }
}

/// The node's TLS identity, for its server and for dialing others, checked to name this node;
/// or none, where that is safe (see [`RunError::Insecure`]).
#[allow(clippy::type_complexity)]
fn tls_setup(
    config: &NodeConfig,
) -> Result<(Option<Arc<ServerTls>>, Option<Arc<ClientTls>>), RunError> {
    let Some(files) = config.tls_files() else {
        if !config.listen.ip().is_loopback() && !config.insecure {
            return Err(RunError::Insecure {
                address: config.listen.to_string(),
            });
        }
        if config.insecure {
            tracing::warn!("serving without TLS (--insecure): every caller is trusted");
        }
        return Ok((None, None));
    };
    let tls = |e: &dyn std::fmt::Display| RunError::Tls(e.to_string());
    let server = ServerTls::load(files.clone(), &config.listen.to_string()).map_err(|e| tls(&e))?;
    let client = ClientTls::load(files).map_err(|e| tls(&e))?;
    tracing::info!("mutual TLS on: callers are checked against their certificates");
    Ok((Some(server), Some(client)))
}

/// Serves both services, health and reflection on `listener` until the runtime stops (call it
/// inside the runtime).
fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
    service: NodeService,
    node: NodeHandle,
) -> Result<(), RunError> {
    let reflection =
        health::reflection_service().map_err(|e| RunError::Reflection(e.to_string()))?;
    let server = tonic::transport::Server::builder()
        .add_service(health::health_service(node))
        .add_service(reflection)
        .add_service(
            RaftServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ClientServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming(incoming(listener, tls));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("the gRPC server stopped: {e}");
        }
    });
    Ok(())
}

/// Serves `metrics` at `http://address/metrics` (`--metrics-listen`) on `runtime`.
fn serve_metrics(
    runtime: &tokio::runtime::Runtime,
    address: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<(), RunError> {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(address))
        .map_err(|source| RunError::Listen {
            address: address.to_string(),
            source,
        })?;
    if address.ip().is_loopback() {
        tracing::info!(%address, "serving metrics at http://{address}/metrics");
    } else {
        tracing::warn!(
            %address,
            "serving metrics at http://{address}/metrics without TLS or authentication: anyone \
             who can reach it can read them (--metrics-listen)"
        );
    }
    runtime.spawn(metrics::http::serve(listener, metrics));
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Asks the cluster at `target` to add this node, retrying while it is busy or electing.
async fn join(
    service: &NodeService,
    target: String,
    mut request: JoinRequest,
    tls: &Option<Arc<ClientTls>>,
) -> Result<(u64, ClusterState), RunError> {
    request.join_token = service.start_join();
    let joined = ask_to_join(target, request, tls).await;
    service.joined();
    joined
}

async fn ask_to_join(
    target: String,
    request: JoinRequest,
    tls: &Option<Arc<ClientTls>>,
) -> Result<(u64, ClusterState), RunError> {
    let fail = |reason: String| RunError::Join {
        address: target.clone(),
        reason,
    };
    let options = peer_dial_options(&target, tls, Some(Duration::from_secs(15)));
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let channel = match dial(&target, &options).await {
                Ok(channel) => channel,
                // A certificate problem does not go away by retrying.
                Err(DialError::Tls(why)) => return Err(tonic::Status::unauthenticated(why)),
                Err(e) => return Err(tonic::Status::unavailable(format!("cannot connect: {e}"))),
            };
            let mut client = ClientClient::new(channel);
            client.join(request.clone()).await
        };
        match attempt.await {
            Ok(response) => {
                let response = response.into_inner();
                let cluster = ClusterState {
                    // Until the leader's snapshot arrives, this node knows only whether it is
                    // a learner itself: its status must not show it as a voter before it is one.
                    learners: response
                        .members
                        .iter()
                        .filter(|m| m.id == response.id && m.role != "voter")
                        .map(|_| {
                            // `run` refused --learner with --replaces already.
                            let plan = LearnerPlan::for_join(request.learner, request.replaces);
                            (response.id, plan.unwrap_or(LearnerPlan::Stay))
                        })
                        .collect(),
                    members: response
                        .members
                        .into_iter()
                        .map(|m| (m.id, m.address))
                        .collect(),
                    next_node_id: response.id + 1,
                    ..ClusterState::default()
                };
                return Ok((response.id, cluster));
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
                ) && Instant::now() + backoff < deadline =>
            {
                tracing::info!("join not accepted yet ({}); retrying", status.message());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(status) => return Err(fail(status.message().to_string())),
        }
    }
}
