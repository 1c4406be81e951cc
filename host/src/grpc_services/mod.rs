//! The gRPC services a node serves: `Raft` for its peers and `Client` for everyone else.
//!
//! Any node accepts any client call. Calls that need the leader (propose, join, leave,
//! transfer) are forwarded to it once; linearizable reads are served locally after raft
//! confirms a read index, so they need no forwarding.
//!
//! This file holds the service's state and what both share (forwarding, upload limits);
//! `client_service.rs` is the `Client` service (its deploys in `deploys.rs`), `raft_service.rs`
//! the `Raft` service (its module transfers in `module_transfer.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use riteraft_proto::client_client::ClientClient;
use riteraft_proto::client_server::Client;
use riteraft_proto::dial_lazy;
use riteraft_proto::raft_client::RaftClient;
use riteraft_proto::raft_server::Raft;
use riteraft_proto::tls::ClientTls;
use riteraft_proto::tls::Role;
use riteraft_proto::{
    DeployChunk, DeployResponse, IdentifyRequest, IdentifyResponse, JoinRequest, JoinResponse,
    LeaveRequest, LeaveResponse, Member, ModuleChunk, ModuleRequest, PipelineRequest,
    ProposeRequest, ProposeResponse, QueryRequest, QueryResponse, RaftBatch, SendAck,
    SnapshotChunk, StatusRequest, StatusResponse, TransferLeaderRequest, TransferLeaderResponse,
    Upgrade, propose_response, query_response,
};
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{self, Need};
use crate::module_store::ModuleStore;
use crate::replicated::{LOG_FORMAT, LearnerPlan, SnapshotData};

use crate::node::{DeployOutcome, MAX_MODULE_BYTES, NodeError, NodeHandle, Request as NodeRequest};
use crate::plugin::PluginRuntime;
use crate::transport::{MAX_MESSAGE_BYTES, MAX_SNAPSHOT_BYTES, peer_dial_options};

/// Metadata key marking a call forwarded by another node, so it is never forwarded again.
const FORWARDED: &str = "riteraft-forwarded";
/// How long a forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded deploy may take: the leader compiles the module and pushes it to the
/// voters before it proposes it (30 s for a 12 MB JavaScript store on a debug build), and
/// answers once it applied it.
const DEPLOY_FORWARD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a leaving leader waits for a successor before giving up.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Module uploads held at once (deploys, and modules the leader pushes): each may hold a
/// module of up to [`MAX_MODULE_BYTES`] in memory, and deploys are rare, so two at a time is
/// plenty and bounds that memory.
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
    /// The modules this node has, by sha256 (see [`crate::module_store`]).
    modules: Arc<ModuleStore>,
}

impl NodeService {
    pub fn new(
        node: NodeHandle,
        plugins: Option<Arc<PluginRuntime>>,
        address: String,
        tls: Option<Arc<ClientTls>>,
        modules: Arc<ModuleStore>,
    ) -> Self {
        Self {
            modules,
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

    /// A lazily connected channel to another node.
    fn peer_channel(&self, address: &str) -> Result<Channel, String> {
        let options = peer_dial_options(address, &self.tls, Some(FORWARD_TIMEOUT));
        dial_lazy(address, &options).map_err(|e| e.to_string())
    }

    /// A client for forwarding a deploy to the leader at `address`, which may take minutes
    /// (see [`DEPLOY_FORWARD_TIMEOUT`]); deploys are rare, so it is not kept.
    fn deploy_client(&self, address: &str) -> Result<ClientClient<Channel>, Status> {
        let options = peer_dial_options(address, &self.tls, Some(DEPLOY_FORWARD_TIMEOUT));
        let channel = dial_lazy(address, &options).map_err(|e| Status::internal(e.to_string()))?;
        Ok(ClientClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
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
        // Another replica can answer; this one's state cannot be trusted.
        NodeError::Diverged(_) => Status::data_loss(message),
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

/// A forwarded call's failure as the client should see it. What the leader answered keeps its
/// code (a status read off the wire has no source). A failure of the transport is one of two:
/// the leader could not be reached at all (the connection was never made: nothing was sent),
/// which is `UNAVAILABLE` and safe to retry elsewhere; or the connection broke once the request
/// was on its way (reset, keep-alive timeout, a partition), which is `DEADLINE_EXCEEDED`: the
/// write may be applied, even much later (bytes in a socket's buffer are delivered when a
/// partition heals), so a client must not send it again. The fault suite found the second
/// reported as `UNAVAILABLE`, which clients retried, and one write applied twice.
fn unreached_leader(status: Status, address: &str) -> Status {
    use std::error::Error as _;
    if status.source().is_none() {
        return status;
    }
    if riteraft_proto::never_sent(&status) {
        return Status::unavailable(format!(
            "cannot reach the leader at {address}: {}",
            status.message()
        ));
    }
    Status::deadline_exceeded(format!(
        "lost contact with the leader at {address} ({}); the write may or may not be applied, \
         so check with a query before sending it again",
        status.message()
    ))
}

/// The next chunk of an upload, waiting at most [`CHUNK_IDLE`] for it.
async fn next_chunk<T>(chunks: &mut Streaming<T>) -> Result<Option<T>, Status> {
    tokio::time::timeout(CHUNK_IDLE, chunks.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!("no data for {CHUNK_IDLE:?}: upload dropped"))
        })?
}

// After the macro above: the services use it.
mod client_service;
mod deploys;
mod member_formats;
mod module_transfer;
mod pipeline;
mod raft_service;

pub use module_transfer::GrpcModuleFetcher;

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn a_forwarded_write_lost_in_transit_is_unknown_not_unavailable() {
        let address = "10.0.0.1:7001";
        // The leader's own answer keeps its code.
        let answered = unreached_leader(Status::unavailable("no leader"), address);
        assert_eq!(answered.code(), Code::Unavailable);
        // Never connected: nothing was sent, another node may be tried.
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        let unreached = unreached_leader(status, address);
        assert_eq!(unreached.code(), Code::Unavailable);
        // Broke after sending (reset, keep-alive timeout): may be applied, even later.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let status = Status::from_error(Box::new(reset));
        assert_eq!(status.code(), Code::Unknown);
        let lost = unreached_leader(status, address);
        assert_eq!(lost.code(), Code::DeadlineExceeded);
        assert!(
            lost.message().contains("may or may not be applied"),
            "{lost:?}"
        );
    }
}
