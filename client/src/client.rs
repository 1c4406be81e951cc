//! [`Client`]: one handle on a whole cluster. Each call goes to the node that answered last and
//! fails over to the other addresses as the policy in `failover` says, within a per-call timeout.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::failover::{self, Kind, MAX_PASSES, Verdict};
use crate::pipeline::{Ask, Pipeline};
use crate::proto::client_client::ClientClient;
use crate::proto::deploy_event::Event;
use crate::proto::pipeline_response;
use crate::{Answer, Applied, ClientError, Consistency, DeployStep, Joined, NodeStatus, proto};
use riteraft_proto::tls::ClientTls;
use riteraft_proto::{
    self as dial, CHUNK_BYTES, DEFAULT_CONNECT_TIMEOUT, DialOptions, MAX_MESSAGE_BYTES,
    endpoint_uri,
};

/// How long one call may take by default, retries and failovers included. Long enough for a raft
/// election or two (about a second each) to finish while the client waits, short enough that a
/// person at the CLI is not left wondering.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one node may take to answer a read (a query, a status) before the call tries the
/// next node. A node answers a read in milliseconds, or says at once that it cannot; one that
/// is alive but stuck (its consensus loop busy, its leader out of reach) would otherwise hold
/// the call until the node's own request timeout (5 s). Reads may be sent twice without harm;
/// writes wait for their answer (they may apply), within the call's timeout, and a node that
/// stopped answering altogether is found out by the connection's keep-alive (about 2 s).
pub const DEFAULT_READ_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The generated gRPC client on one node's channel.
type Grpc = ClientClient<Channel>;

/// A handle on a RiteRaft cluster. Cheap to clone; clones share connections and the memory of
/// which node answered last.
///
/// Connections are made lazily, on the first call that needs them, and remade when a node comes
/// back. Every call is bounded by [`Client::timeout`], retries included.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    timeout: Duration,
}

/// What clones of a [`Client`] share.
struct Shared {
    nodes: Vec<Node>,
    /// The index in `nodes` of the node that answered last: where the next call starts.
    preferred: AtomicUsize,
    /// How every node is dialed, also those of [`Client::status_of`].
    dial: DialOptions,
    /// See [`DEFAULT_READ_ATTEMPT_TIMEOUT`].
    read_attempt: Duration,
    /// Proposals and queries go on each node's `Pipeline` stream (see [`ClientBuilder::pipelined`]).
    pipelined: bool,
}

/// One address and its (lazily opened) connection.
struct Node {
    /// Its `Pipeline` stream, for proposals and queries (see [`crate::pipeline`]).
    pipeline: Arc<Pipeline>,
    /// The address as the user gave it (trimmed), for messages.
    address: String,
    endpoint: Endpoint,
    dial: DialOptions,
    /// Opened on first use: a tonic channel needs a running tokio runtime, which
    /// [`Client::connect`] does not require.
    channel: OnceLock<Channel>,
}

impl Node {
    fn new(address: &str, dial: &DialOptions) -> Result<Node, ClientError> {
        Ok(Node {
            address: address.trim().to_string(),
            endpoint: dial::endpoint(address, dial)?,
            dial: dial.clone(),
            channel: OnceLock::new(),
            pipeline: Arc::default(),
        })
    }

    /// Its ways in for one attempt of a call: the pipeline too, unless turned off.
    fn link(&self, pipelined: bool) -> Link {
        Link {
            grpc: self.grpc(),
            pipeline: (pipelined && !self.pipeline.unsupported()).then(|| self.pipeline.clone()),
        }
    }

    fn grpc(&self) -> Grpc {
        let channel = self
            .channel
            .get_or_init(|| dial::lazy_channel(&self.endpoint, &self.dial))
            .clone();
        ClientClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// One node's ways in, for one attempt of a call.
struct Link {
    grpc: Grpc,
    /// `None`: unary calls only (turned off, or the node has no pipeline).
    pipeline: Option<Arc<Pipeline>>,
}

impl Link {
    /// Sends `ask` on the node's pipeline, or as its unary call.
    async fn ask(mut self, ask: Ask) -> Result<pipeline_response::Result, Status> {
        let ask = match &self.pipeline {
            Some(pipeline) => match pipeline.call(self.grpc.clone(), ask).await {
                Ok(answer) => {
                    return match answer? {
                        pipeline_response::Result::Failure(failure) => {
                            Err(Status::new(Code::from(failure.code), failure.message))
                        }
                        answer => Ok(answer),
                    };
                }
                Err(ask) => ask,
            },
            None => ask,
        };
        match ask {
            Ask::Propose(request) => self
                .grpc
                .propose(request)
                .await
                .map(|r| pipeline_response::Result::Propose(r.into_inner())),
            Ask::Query(request) => self
                .grpc
                .query(request)
                .await
                .map(|r| pipeline_response::Result::Query(r.into_inner())),
        }
    }
}

/// The answer of the wrong kind (a query's answer to a proposal): a node that is not ours.
fn mismatched(asked: &str) -> Status {
    Status::internal(format!(
        "the node answered a {asked} with an answer of another kind"
    ))
}

/// Where a call may go.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// Any node of the list, with failover.
    Cluster,
    /// This node only (it may still be retried while it answers `UNAVAILABLE`).
    Only(&'a Node),
}

/// Settings for a [`Client`]; start from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    timeout: Duration,
    connect_timeout: Duration,
    read_attempt: Duration,
    tls: Option<Arc<ClientTls>>,
    pipelined: bool,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_attempt: DEFAULT_READ_ATTEMPT_TIMEOUT,
            tls: None,
            pipelined: true,
        }
    }
}

impl ClientBuilder {
    /// The longest one call may take, retries included (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest to wait for a connection to one node (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// The longest one node may take to answer a read before the next is tried (default
    /// [`DEFAULT_READ_ATTEMPT_TIMEOUT`]).
    pub fn read_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.read_attempt = timeout;
        self
    }

    /// Whether proposals and queries share one `Pipeline` stream per node (the default), or
    /// each is a unary call of its own. Both mean the same; the stream costs the client and
    /// the node far less per request, the unary calls are there for comparison and for nodes
    /// without `Pipeline` (which the client detects and uses unary calls with anyway).
    pub fn pipelined(mut self, pipelined: bool) -> Self {
        self.pipelined = pipelined;
        self
    }

    /// Mutual TLS for every connection, with these certificates (default: plain HTTP/2). A
    /// [`ClientTls::reload`] applies to the connections made after it. The nodes' certificates
    /// are checked against the host of each address, as any TLS client does.
    pub fn tls(mut self, tls: Arc<ClientTls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A client for the nodes at `addresses` (`HOST:PORT`, optionally `http://HOST:PORT`). Checks
    /// the addresses but connects to nothing yet.
    pub fn connect<I, S>(self, addresses: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let dial = DialOptions {
            connect_timeout: self.connect_timeout,
            tls: self.tls,
            ..DialOptions::default()
        };
        let nodes = addresses
            .into_iter()
            .map(|address| Node::new(address.as_ref(), &dial))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ClientError::BadAddress(
                "no node address given; pass at least one HOST:PORT, e.g. 127.0.0.1:7001".into(),
            ));
        }
        Ok(Client {
            shared: Arc::new(Shared {
                nodes,
                preferred: AtomicUsize::new(0),
                dial,
                read_attempt: self.read_attempt,
                pipelined: self.pipelined,
            }),
            timeout: self.timeout,
        })
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addresses", &self.addresses().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the nodes at `addresses` with default settings (see [`ClientBuilder`]).
    /// Checks the addresses but connects to nothing yet.
    pub fn connect<I, S>(addresses: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder::default().connect(addresses)
    }

    /// Settings for a new client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The same client, with calls bounded by `timeout` instead (retries included).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest one call may take, retries included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The node addresses, in the order given.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.shared.nodes.iter().map(|node| node.address.as_str())
    }

    /// Replicates `command` through the log and returns the store's answer to it.
    ///
    /// A command is never sent twice unless the cluster said it was not applied (`UNAVAILABLE`,
    /// `ABORTED`): after [`ClientError::Timeout`] or [`ClientError::ConnectionLost`] it may still
    /// be applied.
    pub async fn propose(&self, command: impl Into<Vec<u8>>) -> Result<Applied, ClientError> {
        let command = command.into();
        let response = self
            .call_link(Kind::Write, Route::Cluster, |link| {
                let ask = Ask::Propose(proto::ProposeRequest {
                    command: command.clone(),
                });
                async move {
                    match link.ask(ask).await? {
                        pipeline_response::Result::Propose(answer) => {
                            Ok(tonic::Response::new(answer))
                        }
                        _ => Err(mismatched("proposal")),
                    }
                }
            })
            .await?;
        Ok(Applied::from(response))
    }

    /// Runs a read-only query on the store.
    pub async fn query(
        &self,
        request: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Answer, ClientError> {
        let request = request.into();
        let stale = consistency == Consistency::Stale;
        let response = self
            .call_link(Kind::Read, Route::Cluster, |link| {
                let ask = Ask::Query(proto::QueryRequest {
                    request: request.clone(),
                    stale,
                });
                async move {
                    match link.ask(ask).await? {
                        pipeline_response::Result::Query(answer) => {
                            Ok(tonic::Response::new(answer))
                        }
                        _ => Err(mismatched("query")),
                    }
                }
            })
            .await?;
        Ok(Answer::from(response))
    }

    /// The view of the cluster of the first node that answers.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.status_via(Route::Cluster).await
    }

    /// The view of the cluster of the node at `address` (which need not be one of the client's
    /// addresses); no failover to other nodes.
    pub async fn status_of(&self, address: &str) -> Result<NodeStatus, ClientError> {
        let uri = endpoint_uri(address)?;
        let known = self
            .shared
            .nodes
            .iter()
            .find(|node| node.endpoint.uri().to_string().trim_end_matches('/') == uri);
        match known {
            Some(node) => self.status_via(Route::Only(node)).await,
            None => {
                let node = Node::new(address, &self.shared.dial)?;
                self.status_via(Route::Only(&node)).await
            }
        }
    }

    async fn status_via(&self, route: Route<'_>) -> Result<NodeStatus, ClientError> {
        let response = self
            .call(Kind::Read, route, |mut grpc| async move {
                grpc.status(proto::StatusRequest {}).await
            })
            .await?;
        Ok(NodeStatus::from(response))
    }

    /// Adds a new node, serving at `address`, to the cluster; returns the id it was given. This
    /// is what a starting node does with `--join`: the cluster calls the node at `address` back
    /// (`Raft.Identify`) and adds it only if it confirms `join_token`, and with TLS the caller
    /// must hold that node's certificate.
    pub async fn join(&self, address: &str, join_token: &[u8]) -> Result<Joined, ClientError> {
        let response = self
            .call(Kind::Write, Route::Cluster, |mut grpc| {
                let request = proto::JoinRequest {
                    address: address.to_string(),
                    join_token: join_token.to_vec(),
                    ..proto::JoinRequest::default()
                };
                async move { grpc.join(request).await }
            })
            .await?;
        Ok(Joined::from(response))
    }

    /// Removes node `node_id` from the cluster; a leaving leader hands leadership over first.
    ///
    /// `0` means "the node contacted", and then the request goes to the *first* address only,
    /// without failover: sending it on to another node would remove that node instead.
    pub async fn leave(&self, node_id: u64) -> Result<(), ClientError> {
        let route = match node_id {
            0 => Route::Only(&self.shared.nodes[0]),
            _ => Route::Cluster,
        };
        self.call(Kind::Write, route, |mut grpc| async move {
            grpc.leave(proto::LeaveRequest { node_id }).await
        })
        .await?;
        Ok(())
    }

    /// Uploads `module` (a store plugin) and switches the whole cluster to it at one log entry;
    /// with `dry_run`, only checks that it loads and can restore the current state. The
    /// upload goes in 1 MiB chunks; a refused module is [`ClientError::FailedPrecondition`]
    /// with the reason. Never re-sent after a timeout (it may still be applied).
    pub async fn deploy(
        &self,
        module: &[u8],
        dry_run: bool,
    ) -> Result<crate::Deployed, ClientError> {
        let (steps, _) = mpsc::unbounded_channel();
        self.deploy_watched(module, dry_run, steps).await
    }

    /// [`Client::deploy`], sending each step on `steps` as it happens: the upload's progress,
    /// then what the nodes report (received, compiled, forwarded to the leader, stored on each
    /// voter, proposed). A node too old to report steps is sent the plain deploy.
    pub async fn deploy_watched(
        &self,
        module: &[u8],
        dry_run: bool,
        steps: mpsc::UnboundedSender<DeployStep>,
    ) -> Result<crate::Deployed, ClientError> {
        let total = module.len() as u64;
        let response = self
            .call(Kind::Write, Route::Cluster, |mut grpc| {
                let chunks = move || {
                    module
                        .chunks(CHUNK_BYTES)
                        .map(move |data| proto::DeployChunk {
                            data: data.to_vec(),
                            dry_run,
                        })
                };
                // Reported as each chunk is taken by the connection.
                let mut sent = 0;
                let upload_steps = steps.clone();
                let watched = tokio_stream::iter(chunks().collect::<Vec<_>>()).map(move |chunk| {
                    sent += chunk.data.len() as u64;
                    let _ = upload_steps.send(DeployStep::Upload { sent, total });
                    chunk
                });
                let steps = steps.clone();
                async move {
                    let mut events = match grpc.deploy_watch(watched).await {
                        Ok(events) => events.into_inner(),
                        Err(status) if status.code() == tonic::Code::Unimplemented => {
                            // Copied again only for a node without `DeployWatch`.
                            let plain: Vec<_> = chunks().collect();
                            return grpc.deploy(tokio_stream::iter(plain)).await;
                        }
                        Err(status) => return Err(status),
                    };
                    while let Some(event) = events.message().await? {
                        match event.event {
                            Some(Event::Step(step)) => {
                                let _ = steps.send(DeployStep::Node {
                                    stage: step.stage,
                                    message: step.message,
                                    elapsed: Duration::from_millis(step.elapsed_ms),
                                });
                            }
                            Some(Event::Done(done)) => return Ok(tonic::Response::new(done)),
                            None => {}
                        }
                    }
                    Err(Status::unknown(
                        "the node ended the deploy without an answer; it may or may not be applied",
                    ))
                }
            })
            .await?;
        Ok(crate::Deployed {
            sha256: response.sha256,
            version: (!response.version.is_empty()).then_some(response.version),
            index: response.index,
            unchanged: response.unchanged,
            message: response.message,
        })
    }

    /// Asks the leader to hand leadership to voter `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ClientError> {
        self.call(Kind::Write, Route::Cluster, |mut grpc| async move {
            grpc.transfer_leader(proto::TransferLeaderRequest { to })
                .await
        })
        .await?;
        Ok(())
    }

    /// Sends one request with the retry policy of [`failover`]: `send` is called once per
    /// attempt with the client of the node to try.
    async fn call<T, F, Fut>(
        &self,
        kind: Kind,
        route: Route<'_>,
        mut send: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Grpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_link(kind, route, |link| send(link.grpc)).await
    }

    /// [`Client::call`], for a request that may also go on the node's pipeline.
    async fn call_link<T, F, Fut>(
        &self,
        kind: Kind,
        route: Route<'_>,
        mut send: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Link) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut run = Run::default();
        for pass in 0..MAX_PASSES {
            let order: Vec<(Option<usize>, &Node)> = match route {
                Route::Cluster => {
                    let nodes = &self.shared.nodes;
                    let start = self.shared.preferred.load(Ordering::Relaxed);
                    failover::pass_order(start, nodes.len())
                        .map(|index| (Some(index), &nodes[index]))
                        .collect()
                }
                Route::Only(node) => vec![(None, node)],
            };
            for (index, node) in order {
                let mut aborted_before = false;
                loop {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(run.out_of_time(self.timeout));
                    }
                    // A read gives each node its own deadline; a write waits (see
                    // DEFAULT_READ_ATTEMPT_TIMEOUT).
                    let limit = match kind {
                        Kind::Read => remaining.min(self.shared.read_attempt),
                        Kind::Write => remaining,
                    };
                    let status =
                        match tokio::time::timeout(limit, send(node.link(self.shared.pipelined)))
                            .await
                        {
                            Ok(Ok(response)) => {
                                if let Some(index) = index {
                                    self.shared.preferred.store(index, Ordering::Relaxed);
                                }
                                return Ok(response.into_inner());
                            }
                            Ok(Err(status)) => status,
                            Err(_elapsed) if limit < remaining => {
                                run.any_up = true;
                                run.last = format!("{}: no answer within {limit:?}", node.address);
                                break;
                            }
                            Err(_elapsed) => {
                                return Err(no_answer(kind, &node.address, self.timeout));
                            }
                        };
                    match failover::classify(status, kind, &node.address) {
                        Verdict::Unreachable(why) => {
                            if pass == 0 {
                                run.tried.push(node.address.clone());
                            }
                            run.last = why;
                        }
                        Verdict::NotNow(why) => {
                            run.any_up = true;
                            run.last = why;
                        }
                        Verdict::Refused(why) => run.refused = Some(why),
                        Verdict::Aborted(why) if aborted_before => {
                            return Err(ClientError::Aborted(why));
                        }
                        Verdict::Aborted(_) => {
                            // Once: the new leader is usually in place a moment later.
                            aborted_before = true;
                            tokio::time::sleep(failover::INITIAL_BACKOFF.min(remaining)).await;
                            continue;
                        }
                        Verdict::Fail(error) => {
                            // The connection broke with a write in flight (the node died, was
                            // paused or cut off; see the keep-alive in `dial`): the next call
                            // starts at the next node rather than waiting on this one again.
                            if let (ClientError::ConnectionLost { .. }, Some(index)) =
                                (&error, index)
                            {
                                let next = (index + 1) % self.shared.nodes.len();
                                let _ = self.shared.preferred.compare_exchange(
                                    index,
                                    next,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                );
                            }
                            return Err(error);
                        }
                    }
                    break;
                }
            }
            if !run.any_up {
                return Err(run.nobody_home());
            }
            let pause = failover::backoff(pass);
            if Instant::now() + pause >= deadline {
                return Err(run.out_of_time(self.timeout));
            }
            tokio::time::sleep(pause).await;
        }
        Err(ClientError::Unavailable(format!(
            "still no leader after {MAX_PASSES} tries of every node; last answer from {}",
            run.last
        )))
    }
}

/// What one call has seen so far, for its error message.
#[derive(Default)]
struct Run {
    /// Addresses that could not be reached in the first pass.
    tried: Vec<String>,
    /// Whether some node answered (with "not now").
    any_up: bool,
    /// The last failure, prefixed with its node's address.
    last: String,
    /// The last TLS failure, prefixed with its node's address.
    refused: Option<String>,
}

impl Run {
    /// The error when no node answered: a TLS failure if there was one, since it says what to
    /// fix (a node that is down as well is most likely down for the same reason, or not at
    /// all), else that nobody could be reached.
    fn nobody_home(self) -> ClientError {
        match self.refused {
            Some(why) => ClientError::Tls(why),
            None => ClientError::NoNodeReachable {
                tried: self.tried,
                last: self.last,
            },
        }
    }

    fn out_of_time(self, timeout: Duration) -> ClientError {
        if self.last.is_empty() && self.refused.is_none() {
            ClientError::Timeout(format!(
                "the call's {timeout:?} ran out before any node was tried; allow more time"
            ))
        } else if self.any_up {
            ClientError::Unavailable(format!(
                "no leader within {timeout:?}; last answer from {}",
                self.last
            ))
        } else {
            self.nobody_home()
        }
    }
}

/// The error for a node that did not answer before the call's deadline.
fn no_answer(kind: Kind, address: &str, timeout: Duration) -> ClientError {
    ClientError::Timeout(match kind {
        Kind::Write => format!(
            "no answer from {address} within {timeout:?}; the request may still be applied, so check with a query before sending it again"
        ),
        Kind::Read => {
            format!("no answer from {address} within {timeout:?}; try again or allow more time")
        }
    })
}
