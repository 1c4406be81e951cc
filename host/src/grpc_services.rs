//! The gRPC services a node serves: `Raft` for its peers and `Client` for everyone else.
//!
//! Any node accepts any client call. Calls that need the leader (propose, join, leave,
//! transfer) are forwarded to it once; linearizable reads are served locally after raft
//! confirms a read index, so they need no forwarding.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use riteraft_client::dial_lazy;
use riteraft_client::proto::client_client::ClientClient;
use riteraft_client::proto::client_server::Client;
use riteraft_client::proto::raft_client::RaftClient;
use riteraft_client::proto::raft_server::Raft;
use riteraft_client::proto::{
    DeployChunk, DeployResponse, IdentifyRequest, IdentifyResponse, JoinRequest, JoinResponse,
    LeaveRequest, LeaveResponse, Member, ProposeRequest, ProposeResponse, QueryRequest,
    QueryResponse, RaftBatch, SendAck, SnapshotChunk, StatusRequest, StatusResponse,
    TransferLeaderRequest, TransferLeaderResponse, Upgrade, propose_response, query_response,
};
use riteraft_client::tls::ClientTls;
use riteraft_client::tls::Role;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{self, Need};
use crate::replicated::SnapshotData;

use crate::node::{DeployOutcome, MAX_MODULE_BYTES, NodeError, NodeHandle, Request as NodeRequest};
use crate::plugin::PluginRuntime;
use crate::transport::{MAX_MESSAGE_BYTES, MAX_SNAPSHOT_BYTES, peer_dial_options};

/// Metadata key marking a call forwarded by another node, so it is never forwarded again.
const FORWARDED: &str = "riteraft-forwarded";
/// How long a forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving leader waits for a successor before giving up.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the chunks a forwarded deploy is re-sent in.
const DEPLOY_CHUNK_BYTES: usize = 1 << 20;
/// Deploy uploads held at once: each may hold a module of up to [`MAX_MODULE_BYTES`] in
/// memory, and deploys are rare, so two at a time is plenty and bounds that memory.
const MAX_UPLOADS: usize = 2;
/// How long an upload (a deploy or a snapshot) may wait for its next chunk before it is
/// dropped: a sender that holds a call open without sending would otherwise hold its memory.
const CHUNK_IDLE: Duration = Duration::from_secs(10);
/// How long the node that receives a `Join` waits for the joiner to confirm it is asking.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// How many times, a second apart, a removal notice is checked with the cluster's leader.
const REMOVAL_CHECKS: u32 = 3;

/// Both services, over one node.
#[derive(Clone)]
pub struct NodeService {
    node: NodeHandle,
    /// The wasm engine, to validate deployed modules off the consensus thread (none when the
    /// node runs a store built into the host).
    plugins: Option<Arc<PluginRuntime>>,
    /// Connections to leaders, by address, reused across forwarded calls.
    leaders: Arc<Mutex<HashMap<String, ClientClient<Channel>>>>,
    /// Where this node serves, and the token of the join it is making, if any (see
    /// `Raft.Identify`).
    address: String,
    join_token: Arc<Mutex<Option<Vec<u8>>>>,
    /// This node's TLS identity for calling other nodes (`None`: plain connections).
    tls: Option<Arc<ClientTls>>,
    /// One snapshot is received at a time: each is held in memory until raft takes it.
    snapshot_slot: Arc<Semaphore>,
    /// Deploy uploads in progress (at most [`MAX_UPLOADS`]).
    uploads: Arc<Semaphore>,
    /// Set while a removal notice is being checked, so a flood of notices costs one check.
    checking_removal: Arc<AtomicBool>,
}

impl NodeService {
    pub fn new(
        node: NodeHandle,
        plugins: Option<Arc<PluginRuntime>>,
        address: String,
        tls: Option<Arc<ClientTls>>,
    ) -> Self {
        Self {
            tls,
            node,
            plugins,
            leaders: Default::default(),
            address,
            join_token: Default::default(),
            snapshot_slot: Arc::new(Semaphore::new(1)),
            uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
            checking_removal: Default::default(),
        }
    }

    /// Starts a join: makes the token this node's `JoinRequest` carries and `Identify`
    /// confirms. [`NodeService::joined`] forgets it.
    pub fn start_join(&self) -> Vec<u8> {
        let token = rand::random::<[u8; 16]>().to_vec();
        *self.join_token.lock().expect("join token lock") = Some(token.clone());
        token
    }

    /// The join is over (or failed): `Identify` confirms nothing any more.
    pub fn joined(&self) {
        *self.join_token.lock().expect("join token lock") = None;
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

    /// Hands a peer's batch of raft messages to the consensus loop, which checks each (see
    /// [`crate::peer_messages`]).
    fn deliver(&self, batch: RaftBatch, sender: Option<Arc<str>>) -> Result<(), Status> {
        if batch.removed_at_index > 0 {
            self.confirm_removal(batch.removed_at_index);
        }
        for bytes in &batch.messages {
            let message = decode_message(bytes)?;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                // Its data is checked only on the way in through `InstallSnapshot`.
                return Err(Status::invalid_argument(
                    "a snapshot travels by InstallSnapshot, not in a batch",
                ));
            }
            // A full queue drops the message: raft retransmits.
            self.node
                .send(NodeRequest::Raft(Box::new(message), sender.clone()));
        }
        Ok(())
    }

    /// Acts on a notice that this node was removed only once the cluster's leader confirms it:
    /// a notice proves nothing by itself (anyone who can reach the port can send one), while a
    /// member's own word about its membership does. Checked in the background, once at a time.
    fn confirm_removal(&self, index: u64) {
        if self.checking_removal.swap(true, Ordering::SeqCst) {
            return;
        }
        let service = self.clone();
        tokio::spawn(async move {
            for _ in 0..REMOVAL_CHECKS {
                match service.leader_removed_us(index).await {
                    Ok(true) => {
                        service.node.send(NodeRequest::Removed(index));
                        break;
                    }
                    Ok(false) => tracing::warn!(
                        index,
                        "a removal notice that no leader confirms (yet): ignored"
                    ),
                    Err(e) => tracing::warn!(index, "cannot check a removal notice: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            service.checking_removal.store(false, Ordering::SeqCst);
        });
    }

    /// Whether a member that leads in this node's term or later has applied `index` and no
    /// longer counts this node as a member.
    async fn leader_removed_us(&self, index: u64) -> Result<bool, NodeError> {
        let me = self
            .node
            .call(|reply| NodeRequest::Status { reply })
            .await?;
        for (id, address) in &me.members {
            if *id == me.id {
                continue;
            }
            let Ok(mut client) = self.peer_client(address) else {
                continue;
            };
            let Ok(Ok(status)) =
                tokio::time::timeout(IDENTIFY_TIMEOUT, client.status(StatusRequest {})).await
            else {
                continue;
            };
            let status = status.into_inner();
            if status.id == *id
                && status.role == "leader"
                && status.term >= me.term
                && status.applied_index >= index
                && !status.members.iter().any(|m| m.id == me.id)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Calls the node at `address` back to check that it is the one asking to join.
    async fn confirm_joiner(&self, address: &str, join_token: Vec<u8>) -> Result<(), Status> {
        let refuse = |why: String| {
            Status::failed_precondition(format!(
                "cannot confirm that the node at {address} is asking to join: {why}"
            ))
        };
        let mut client = RaftClient::new(self.peer_channel(address).map_err(refuse)?);
        let request = IdentifyRequest {
            address: address.to_string(),
            join_token,
        };
        match tokio::time::timeout(IDENTIFY_TIMEOUT, client.identify(request)).await {
            Ok(Ok(answer)) if answer.get_ref().joining => Ok(()),
            Ok(Ok(_)) => Err(refuse("it says it is not".into())),
            Ok(Err(status)) => Err(refuse(status.message().to_string())),
            Err(_) => Err(refuse(format!("no answer within {IDENTIFY_TIMEOUT:?}"))),
        }
    }

    /// A lazily connected channel to another node.
    fn peer_channel(&self, address: &str) -> Result<Channel, String> {
        let options = peer_dial_options(address, &self.tls, Some(FORWARD_TIMEOUT));
        dial_lazy(address, &options).map_err(|e| e.to_string())
    }

    fn peer_client(&self, address: &str) -> Result<ClientClient<Channel>, String> {
        Ok(ClientClient::new(self.peer_channel(address)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn leader_client(&self, address: &str) -> Result<ClientClient<Channel>, Status> {
        let mut leaders = self.leaders.lock().expect("leaders lock");
        if let Some(client) = leaders.get(address) {
            return Ok(client.clone());
        }
        let client = self.peer_client(address).map_err(Status::internal)?;
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

/// Whether `request` was forwarded by another node. Only a node may say so: a forwarded call
/// is not forwarded again, and a forwarded join is not called back.
fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED) && access::is_node(&access::caller(request))
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

/// A joiner's address must be one that others can dial: `IP:PORT` with a real port and a
/// specific IP (`0.0.0.0` names no one).
fn check_join_address(address: &str) -> Result<(), Status> {
    let bad = |why: &str| {
        Status::invalid_argument(format!("the joining node's address {address:?} {why}"))
    };
    let parsed: std::net::SocketAddr = address.parse().map_err(|_| bad("is not IP:PORT"))?;
    if parsed.port() == 0 {
        return Err(bad("has port 0, which no one can dial"));
    }
    if parsed.ip().is_unspecified() {
        return Err(bad("has an unspecified IP, which names no node"));
    }
    Ok(())
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
        access::authorize(&request, Need::Role(Role::Write), "Propose")?;
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
        access::authorize(&request, Need::Role(Role::Read), "Query")?;
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
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        access::authorize(&request, Need::Role(Role::Read), "Status")?;
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
        let JoinRequest {
            address,
            join_token,
        } = request.get_ref().clone();
        let caller = access::authorize(&request, Need::Node, "Join")?;
        check_join_address(&address)?;
        if let Some(named) = access::node_address(&caller)
            && *named != *address
            && !forwarded(&request)
        {
            tracing::warn!(%address, certificate = %named, "refused a join for another address");
            return Err(Status::permission_denied(format!(
                "a node joins at the address its certificate names: {named}, not {address}"
            )));
        }
        // Every node that handles a join calls the joiner back, the leader too when the join
        // was forwarded to it: a mark saying "checked already" would be one more thing to
        // trust, and the call back is cheap next to the membership change it guards.
        self.confirm_joiner(&address, join_token).await?;
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
        access::authorize(&request, Need::Role(Role::Admin), "Leave")?;
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
        access::authorize(&request, Need::Role(Role::Admin), "Deploy")?;
        let was_forwarded = forwarded(&request);
        let _upload = self.uploads.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_UPLOADS} deploys are being uploaded already; retry once they are done"
            ))
        })?;
        let mut chunks = request.into_inner();
        let mut module = Vec::new();
        let mut dry_run = None;
        while let Some(chunk) = next_chunk(&mut chunks).await? {
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
        access::authorize(&request, Need::Role(Role::Admin), "TransferLeader")?;
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
            Ok(deployed) => deployed,
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
        let (info, unchanged) = match applied.outcome {
            DeployOutcome::Switched(info) => (info, false),
            DeployOutcome::Unchanged(info) => (info, true),
            DeployOutcome::Refused(reason) => {
                return Err(Status::failed_precondition(format!(
                    "deploy refused: {reason}"
                )));
            }
        };
        let sha256 = hex::encode(info.sha256);
        let message = if unchanged {
            format!("unchanged: {sha256} is already active")
        } else {
            format!("deployed {sha256} {}", info.version)
                .trim_end()
                .to_string()
        };
        Ok(DeployResponse {
            unchanged,
            message,
            sha256,
            version: info.version,
            index: applied.index,
        })
    }
}

/// The next chunk of an upload, waiting at most [`CHUNK_IDLE`] for it.
async fn next_chunk<T>(chunks: &mut Streaming<T>) -> Result<Option<T>, Status> {
    tokio::time::timeout(CHUNK_IDLE, chunks.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!("no data for {CHUNK_IDLE:?}: upload dropped"))
        })?
}

fn decode_message(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| Status::invalid_argument(format!("not a raft message: {e}")))
}

#[tonic::async_trait]
impl Raft for NodeService {
    async fn identify(
        &self,
        request: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        access::authorize(&request, Need::Node, "Raft.Identify")?;
        let IdentifyRequest {
            address,
            join_token,
        } = request.into_inner();
        let pending = self.join_token.lock().expect("join token lock").clone();
        let joining = address == self.address && pending.is_some_and(|token| token == join_token);
        Ok(Response::new(IdentifyResponse { joining }))
    }

    async fn send(&self, request: Request<RaftBatch>) -> Result<Response<SendAck>, Status> {
        let caller = access::authorize(&request, Need::Node, "Raft.Send")?;
        let sender = access::node_address(&caller);
        self.deliver(request.into_inner(), sender)?;
        Ok(Response::new(SendAck {}))
    }

    async fn stream(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let caller = access::authorize(&request, Need::Node, "Raft.Stream")?;
        let sender = access::node_address(&caller);
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            self.deliver(batch, sender.clone())?;
        }
        Ok(Response::new(SendAck {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        let caller = access::authorize(&request, Need::Node, "Raft.InstallSnapshot")?;
        let sender = access::node_address(&caller);
        let _slot = self
            .snapshot_slot
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::unavailable("another snapshot is being received; retry once it is taken")
            })?;
        let mut chunks = request.into_inner();
        let header = next_chunk(&mut chunks)
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let mut message = decode_message(&header.message)?;
        if message.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(format!(
                "InstallSnapshot carries a MsgSnapshot, not a {:?}",
                message.get_msg_type()
            )));
        }
        if header.data_len > MAX_SNAPSHOT_BYTES {
            return Err(Status::invalid_argument(format!(
                "a snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
                header.data_len
            )));
        }
        // Grown as the data arrives, never sized by the announced length: an announcement
        // costs nothing to make.
        let mut data = Vec::new();
        while let Some(chunk) = next_chunk(&mut chunks).await? {
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
        // Data that does not decode would stop the node once raft had taken it: refuse it
        // now, off the consensus thread.
        let data = tokio::task::spawn_blocking(move || {
            SnapshotData::decode(&data).map(|_| data).map_err(|e| {
                Status::invalid_argument(format!("the snapshot's data is unusable: {e}"))
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        message.mut_snapshot().data = data.into();
        // The snapshot is precious: wait (boundedly) for room in the queue rather than drop it.
        let mut request = Some(NodeRequest::Raft(Box::new(message), sender));
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
