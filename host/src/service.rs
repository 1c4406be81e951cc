//! The gRPC services a node serves: `Raft` for its peers and `Client` for everyone else.
//!
//! Any node accepts any client call. Calls that need the leader (propose, join, leave,
//! transfer) are forwarded to it once; linearizable reads are served locally after raft
//! confirms a read index, so they need no forwarding.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::Message;
use riteraft_client::proto::client_client::ClientClient;
use riteraft_client::proto::client_server::Client;
use riteraft_client::proto::raft_server::Raft;
use riteraft_client::proto::{
    DeployChunk, DeployResponse, JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, Member,
    ProposeRequest, ProposeResponse, QueryRequest, QueryResponse, RaftBatch, SendAck,
    SnapshotChunk, StatusRequest, StatusResponse, TransferLeaderRequest, TransferLeaderResponse,
    Upgrade, propose_response, query_response,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::node::{MAX_MODULE_BYTES, NodeError, NodeHandle, Request as NodeRequest};
use crate::plugin::PluginRuntime;
use crate::transport::{MAX_MESSAGE_BYTES, MAX_SNAPSHOT_BYTES};

/// Metadata key marking a call forwarded by another node, so it is never forwarded again.
const FORWARDED: &str = "riteraft-forwarded";
/// How long a forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving leader waits for a successor before giving up.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the chunks a forwarded deploy is re-sent in.
const DEPLOY_CHUNK_BYTES: usize = 1 << 20;

/// Both services, over one node.
#[derive(Clone)]
pub struct NodeService {
    node: NodeHandle,
    /// The wasm engine, to validate deployed modules off the consensus thread (none when the
    /// node runs a store built into the host).
    plugins: Option<std::sync::Arc<PluginRuntime>>,
    /// Connections to leaders, by address, reused across forwarded calls.
    leaders: std::sync::Arc<Mutex<HashMap<String, ClientClient<Channel>>>>,
}

impl NodeService {
    pub fn new(node: NodeHandle, plugins: Option<std::sync::Arc<PluginRuntime>>) -> Self {
        Self {
            node,
            plugins,
            leaders: Default::default(),
        }
    }

    /// Checks that `module` is a usable store (compiling it: about a second, so on a blocking
    /// thread), and with `dry_run` that it restores this node's current state.
    async fn validate(&self, module: &[u8], dry_run: bool) -> Result<DeployResponse, Status> {
        let plugins = self.plugins.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node runs a store built into the host (--builtin-kv); it cannot be replaced",
            )
        })?;
        let bytes = module.to_vec();
        let loaded = tokio::task::spawn_blocking({
            let plugins = plugins.clone();
            move || plugins.load_cached(&bytes)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let module = loaded.map_err(|e| {
            Status::failed_precondition(format!("the module is not a usable store: {e}"))
        })?;
        let sha256 = module.sha256_hex();
        if !dry_run {
            return Ok(DeployResponse {
                sha256,
                ..Default::default()
            });
        }
        let (snapshot, active) = self
            .node
            .call(|reply| NodeRequest::Snapshot { reply })
            .await
            .map_err(status_of)?;
        let tried = tokio::task::spawn_blocking(move || {
            let mut instance = plugins
                .instantiate(&module)
                .map_err(|e| format!("the module does not start: {e}"))?;
            instance
                .restore(&snapshot)
                .map_err(|e| format!("the module cannot restore the current state: {e}"))?;
            Ok::<_, String>((
                instance.version().unwrap_or_default().to_string(),
                snapshot.len(),
            ))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (version, state_bytes) = tried.map_err(Status::failed_precondition)?;
        let unchanged = hex::encode(active.sha256) == sha256;
        Ok(DeployResponse {
            message: format!(
                "dry run: the module loads and restores the current state ({state_bytes} bytes); \
                 nothing was committed"
            ),
            sha256,
            version,
            index: 0,
            unchanged,
        })
    }

    /// Hands a peer's batch of raft messages to the consensus loop.
    fn deliver(&self, batch: RaftBatch) -> Result<(), Status> {
        if batch.removed_at_index > 0 {
            self.node.send(NodeRequest::Removed(batch.removed_at_index));
        }
        for bytes in &batch.messages {
            let message = decode_message(bytes)?;
            // A full queue drops the message: raft retransmits.
            self.node.send(NodeRequest::Raft(Box::new(message)));
        }
        Ok(())
    }

    fn leader_client(&self, address: &str) -> Result<ClientClient<Channel>, Status> {
        let mut leaders = self.leaders.lock().expect("leaders lock");
        if let Some(client) = leaders.get(address) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Status::internal(format!("bad leader address {address}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(FORWARD_TIMEOUT)
            .tcp_nodelay(true);
        let client = ClientClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        leaders.insert(address.to_string(), client.clone());
        Ok(client)
    }
}

/// The gRPC status for a node error.
pub fn status_of(error: NodeError) -> Status {
    let message = error.to_string();
    match error {
        NodeError::NotLeader { .. }
        | NodeError::NoLeader
        | NodeError::Busy(_)
        | NodeError::Stopped => Status::unavailable(message),
        NodeError::Timeout(_) => Status::deadline_exceeded(message),
        NodeError::Aborted(_) => Status::aborted(message),
        NodeError::Invalid(_) => Status::invalid_argument(message),
        NodeError::Precondition(_) => Status::failed_precondition(message),
        NodeError::DiskFull(_) => Status::resource_exhausted(message),
    }
}

fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

fn mark_forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, "1".parse().expect("valid metadata"));
    request
}

/// Calls the leader with `call` when `result` says another node leads (and this call was not
/// itself forwarded); otherwise maps the result.
macro_rules! or_forward {
    ($self:ident, $request:ident, $result:expr, |$client:ident, $forwarded:ident| $call:expr) => {
        match $result {
            Err(NodeError::NotLeader { address, .. }) if !forwarded(&$request) => {
                let mut $client = $self.leader_client(&address)?;
                let $forwarded = mark_forwarded($request.into_inner());
                $call
                    .await
                    .map_err(|status| unreached_leader(status, &address))
            }
            Err(error) => Err(status_of(error)),
            Ok(value) => Ok(value),
        }
    };
}

/// A forwarded call's failure as the client should see it. The leader's own answers keep their
/// code; a failure to reach it at all (tonic reports `Unknown`/`Cancelled`/`Internal` "transport
/// error") becomes `UNAVAILABLE` — but a write that was in flight may already be applied, so
/// for that case the message says so and the code is `DEADLINE_EXCEEDED`, which clients do not
/// retry blindly.
fn unreached_leader(status: Status, address: &str) -> Status {
    use tonic::Code;
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::Ok => status,
        _ if status.message().contains("connect") => Status::unavailable(format!(
            "cannot reach the leader at {address}: {}",
            status.message()
        )),
        _ => Status::deadline_exceeded(format!(
            "lost contact with the leader at {address} ({}); a write in flight may or may not \
             have been applied",
            status.message()
        )),
    }
}

fn members(map: &BTreeMap<u64, String>) -> Vec<Member> {
    map.iter()
        .map(|(id, address)| Member {
            id: *id,
            address: address.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl Client for NodeService {
    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let command = request.get_ref().command.clone();
        let result = self
            .node
            .call(|reply| NodeRequest::Propose { command, reply })
            .await
            .map(|applied| {
                let result = match applied.outcome {
                    Ok(output) => propose_response::Result::Output(output),
                    Err(rejection) => propose_response::Result::Rejection(rejection.to_string()),
                };
                Response::new(ProposeResponse {
                    result: Some(result),
                    index: applied.index,
                })
            });
        or_forward!(self, request, result, |client, forwarded| client
            .propose(forwarded))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let QueryRequest { request, stale } = request.into_inner();
        let answered = self
            .node
            .call(|reply| NodeRequest::Query {
                request,
                stale,
                reply,
            })
            .await
            .map_err(status_of)?;
        let result = match answered.outcome {
            Ok(output) => query_response::Result::Output(output),
            Err(rejection) => query_response::Result::Rejection(rejection.to_string()),
        };
        Ok(Response::new(QueryResponse {
            result: Some(result),
            applied_index: answered.applied_index,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let status = self
            .node
            .call(|reply| NodeRequest::Status { reply })
            .await
            .map_err(status_of)?;
        Ok(Response::new(StatusResponse {
            id: status.id,
            role: status.role.to_string(),
            leader_id: status.leader_id,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            members: members(&status.members),
            plugin_sha256: hex::encode(status.module.sha256),
            plugin_version: status.module.version,
            snapshot_index: status.snapshot_index,
            upgrades: status
                .upgrades
                .into_iter()
                .map(|u| Upgrade {
                    index: u.index,
                    sha256: hex::encode(u.sha256),
                    timestamp_ms: u.timestamp_ms,
                    version: u.version,
                })
                .collect(),
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let address = request.get_ref().address.clone();
        if address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "the joining node's address {address:?} is not HOST:PORT"
            )));
        }
        let result = self
            .node
            .call(|reply| NodeRequest::AddNode { address, reply })
            .await
            .map(|joined| {
                Response::new(JoinResponse {
                    id: joined.id,
                    members: members(&joined.members),
                })
            });
        or_forward!(self, request, result, |client, forwarded| client
            .join(forwarded))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        let mut id = request.get_ref().node_id;
        if id == 0 {
            id = self
                .node
                .call(|reply| NodeRequest::Status { reply })
                .await
                .map_err(status_of)?
                .id;
        }
        // A leaving leader first hands leadership over (the node answers Busy meanwhile), then
        // the request goes to the new leader: retry until then, within a bound.
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        loop {
            let result = self
                .node
                .call(|reply| NodeRequest::RemoveNode { id, reply })
                .await;
            match result {
                Ok(()) => return Ok(Response::new(LeaveResponse {})),
                Err(NodeError::NotLeader { address, .. }) if !forwarded(&request) => {
                    let mut client = self.leader_client(&address)?;
                    return client
                        .leave(mark_forwarded(LeaveRequest { node_id: id }))
                        .await;
                }
                Err(NodeError::Busy(_) | NodeError::NoLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(status_of(error)),
            }
        }
    }

    async fn deploy(
        &self,
        request: Request<Streaming<DeployChunk>>,
    ) -> Result<Response<DeployResponse>, Status> {
        let was_forwarded = forwarded(&request);
        let mut chunks = request.into_inner();
        let mut module = Vec::new();
        let mut dry_run = None;
        while let Some(chunk) = chunks.message().await? {
            dry_run.get_or_insert(chunk.dry_run);
            if module.len() + chunk.data.len() > MAX_MODULE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "the module is larger than the limit of {MAX_MODULE_BYTES} bytes"
                )));
            }
            module.extend_from_slice(&chunk.data);
        }
        if module.is_empty() {
            return Err(Status::invalid_argument("the module is empty"));
        }
        self.deploy_module(module, dry_run.unwrap_or(false), was_forwarded)
            .await
            .map(Response::new)
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let to = request.get_ref().to;
        let result = self
            .node
            .call(|reply| NodeRequest::TransferLeader { to, reply })
            .await
            .map(|()| Response::new(TransferLeaderResponse {}));
        or_forward!(self, request, result, |client, forwarded| client
            .transfer_leader(forwarded))
    }
}

impl NodeService {
    /// The `Deploy` call, after the upload: validate, then replicate (or forward to the leader).
    async fn deploy_module(
        &self,
        module: Vec<u8>,
        dry_run: bool,
        was_forwarded: bool,
    ) -> Result<DeployResponse, Status> {
        let validated = self.validate(&module, dry_run).await?;
        if dry_run {
            return Ok(validated);
        }
        let result = self
            .node
            .call(|reply| NodeRequest::Deploy {
                module: module.clone(),
                reply,
            })
            .await;
        let applied = match result {
            Ok(applied) => applied,
            Err(NodeError::NotLeader { address, .. }) if !was_forwarded => {
                let mut client = self.leader_client(&address)?;
                let chunks: Vec<DeployChunk> = module
                    .chunks(DEPLOY_CHUNK_BYTES)
                    .map(|data| DeployChunk {
                        data: data.to_vec(),
                        dry_run: false,
                    })
                    .collect();
                return client
                    .deploy(mark_forwarded(tokio_stream::iter(chunks)))
                    .await
                    .map(Response::into_inner)
                    .map_err(|status| unreached_leader(status, &address));
            }
            Err(error) => return Err(status_of(error)),
        };
        let message = match applied.outcome {
            Ok(message) => String::from_utf8_lossy(&message).into_owned(),
            Err(rejection) => return Err(Status::failed_precondition(rejection.to_string())),
        };
        let status = self
            .node
            .call(|reply| NodeRequest::Status { reply })
            .await
            .map_err(status_of)?;
        Ok(DeployResponse {
            unchanged: message.starts_with("unchanged"),
            message,
            sha256: validated.sha256,
            version: status.module.version,
            index: applied.index,
        })
    }
}

fn decode_message(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| Status::invalid_argument(format!("not a raft message: {e}")))
}

#[tonic::async_trait]
impl Raft for NodeService {
    async fn send(&self, request: Request<RaftBatch>) -> Result<Response<SendAck>, Status> {
        self.deliver(request.into_inner())?;
        Ok(Response::new(SendAck {}))
    }

    async fn stream(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            self.deliver(batch)?;
        }
        Ok(Response::new(SendAck {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut chunks = request.into_inner();
        let header = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let mut message = decode_message(&header.message)?;
        if header.data_len > MAX_SNAPSHOT_BYTES {
            return Err(Status::invalid_argument(format!(
                "a snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
                header.data_len
            )));
        }
        let mut data = Vec::with_capacity(header.data_len as usize);
        while let Some(chunk) = chunks.message().await? {
            if data.len() as u64 + chunk.data.len() as u64 > header.data_len {
                return Err(Status::invalid_argument("snapshot longer than announced"));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() as u64 != header.data_len {
            return Err(Status::invalid_argument(format!(
                "snapshot truncated: {} of {} bytes",
                data.len(),
                header.data_len
            )));
        }
        message.mut_snapshot().data = data.into();
        // The snapshot is precious: wait (boundedly) for room in the queue rather than drop it.
        let mut request = Some(NodeRequest::Raft(Box::new(message)));
        for _ in 0..50 {
            match self.node.try_send(request.take().expect("set")) {
                Ok(()) => return Ok(Response::new(SendAck {})),
                Err(back) => {
                    request = Some(back);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(Status::unavailable(
            "the node is overloaded; snapshot not taken",
        ))
    }
}
