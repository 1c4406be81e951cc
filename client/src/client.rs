//! [`Client`]: one handle on a whole cluster. Each call goes to the node that answered last and
//! fails over to the other addresses as the policy in `failover` says, within a per-call timeout.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::address::endpoint_uri;
use crate::dial::{self, DialOptions};
use crate::failover::{self, Kind, MAX_PASSES, Verdict};
use crate::proto::client_client::ClientClient;
use crate::tls::ClientTls;
use crate::{Answer, Applied, ClientError, Consistency, Joined, NodeStatus, proto};

/// How long one call may take by default, retries and failovers included. Long enough for a raft
/// election or two (about a second each) to finish while the client waits, short enough that a
/// person at the CLI is not left wondering.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for a TCP connection to one node. A node on a reachable network accepts in
/// milliseconds; after 2 s it is more useful to try the next address than to keep waiting (a
/// black-holed address would otherwise eat the whole call's timeout).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest gRPC message the client sends or accepts: 16 MiB. tonic's default of 4 MiB for
/// incoming messages is too small for stores that answer a query with a big value or a range;
/// 16 MiB is large enough for any reasonable command or answer while a runaway answer still
/// cannot make the client allocate without bound. Nodes use the same limit (it is exported for
/// them) so a message one side accepts is never refused by the other.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

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
}

/// One address and its (lazily opened) connection.
struct Node {
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
        })
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
    tls: Option<Arc<ClientTls>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
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
            .call(Kind::Write, Route::Cluster, |mut grpc| {
                let request = proto::ProposeRequest {
                    command: command.clone(),
                };
                async move { grpc.propose(request).await }
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
            .call(Kind::Read, Route::Cluster, |mut grpc| {
                let request = proto::QueryRequest {
                    request: request.clone(),
                    stale,
                };
                async move { grpc.query(request).await }
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
        /// Chunk size: well under the gRPC message limit.
        const CHUNK: usize = 1 << 20;
        let response = self
            .call(Kind::Write, Route::Cluster, |mut grpc| {
                let chunks: Vec<proto::DeployChunk> = module
                    .chunks(CHUNK)
                    .map(|data| proto::DeployChunk {
                        data: data.to_vec(),
                        dry_run,
                    })
                    .collect();
                async move { grpc.deploy(tokio_stream::iter(chunks)).await }
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
                    let status = match tokio::time::timeout(remaining, send(node.grpc())).await {
                        Ok(Ok(response)) => {
                            if let Some(index) = index {
                                self.shared.preferred.store(index, Ordering::Relaxed);
                            }
                            return Ok(response.into_inner());
                        }
                        Ok(Err(status)) => status,
                        Err(_elapsed) => return Err(no_answer(kind, &node.address, self.timeout)),
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
                        Verdict::Fail(error) => return Err(error),
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};
    use tonic::{Request, Response, Streaming};

    use super::*;
    use crate::certs;
    use crate::proto::client_server::{Client as ClientService, ClientServer};
    use crate::tls::{Role, TlsFiles, tests::server_config};

    /// A node that answers `status` and `propose`, nothing else.
    struct FakeNode;

    #[tonic::async_trait]
    impl ClientService for FakeNode {
        async fn propose(
            &self,
            _: Request<proto::ProposeRequest>,
        ) -> Result<Response<proto::ProposeResponse>, Status> {
            Ok(Response::new(proto::ProposeResponse {
                index: 5,
                ..Default::default()
            }))
        }
        async fn query(
            &self,
            _: Request<proto::QueryRequest>,
        ) -> Result<Response<proto::QueryResponse>, Status> {
            Err(Status::unimplemented("query"))
        }
        async fn status(
            &self,
            _: Request<proto::StatusRequest>,
        ) -> Result<Response<proto::StatusResponse>, Status> {
            Ok(Response::new(proto::StatusResponse {
                id: 7,
                role: "leader".into(),
                ..Default::default()
            }))
        }
        async fn join(
            &self,
            _: Request<proto::JoinRequest>,
        ) -> Result<Response<proto::JoinResponse>, Status> {
            Err(Status::unimplemented("join"))
        }
        async fn leave(
            &self,
            _: Request<proto::LeaveRequest>,
        ) -> Result<Response<proto::LeaveResponse>, Status> {
            Err(Status::unimplemented("leave"))
        }
        async fn transfer_leader(
            &self,
            _: Request<proto::TransferLeaderRequest>,
        ) -> Result<Response<proto::TransferLeaderResponse>, Status> {
            Err(Status::unimplemented("transfer_leader"))
        }
        async fn deploy(
            &self,
            _: Request<Streaming<proto::DeployChunk>>,
        ) -> Result<Response<proto::DeployResponse>, Status> {
            Err(Status::unimplemented("deploy"))
        }
    }

    /// A server-side TLS stream as tonic's server wants it.
    struct Tls(tokio_rustls::server::TlsStream<TcpStream>);

    impl tonic::transport::server::Connected for Tls {
        type ConnectInfo = ();
        fn connect_info(&self) {}
    }

    impl AsyncRead for Tls {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Tls {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    /// Serves [`FakeNode`] over mutual TLS on 127.0.0.1 as the node 127.0.0.1:7001 of `dir`.
    async fn tls_node(dir: &std::path::Path, ca: &std::path::Path) -> SocketAddr {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(dir, "127.0.0.1:7001", ca));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (sender, receiver) = tokio::sync::mpsc::channel::<io::Result<Tls>>(4);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    // A refused handshake is dropped here, as a node would.
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = sender.send(Ok(Tls(stream))).await;
                    }
                });
            }
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ClientServer::new(FakeNode))
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        );
        address
    }

    fn client(files: TlsFiles, addresses: &[String]) -> Client {
        Client::builder()
            .timeout(Duration::from_secs(5))
            .tls(ClientTls::load(files).unwrap())
            .connect(addresses)
            .unwrap()
    }

    /// An address where nothing listens (a port just released).
    async fn nobody() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_tls_client_talks_to_a_tls_node() {
        let dir = tempfile::tempdir().unwrap();
        let pki = certs::write_test_pki(
            dir.path(),
            &["127.0.0.1:7001".into()],
            &[("alice".into(), Role::Write)],
        )
        .unwrap();
        let node = tls_node(dir.path(), &pki.ca).await;
        let client = client(pki.clients[0].clone(), &[node.to_string()]);
        assert_eq!(client.status().await.unwrap().id, 7);
        assert_eq!(client.propose("put a 1").await.unwrap().index, 5);
        // The https:// alias dials the same way.
        let status = client.status_of(&format!("https://{node}")).await.unwrap();
        assert_eq!(status.id, 7);
    }

    #[tokio::test]
    async fn a_refused_client_certificate_is_a_tls_error_not_a_lost_write() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let pki = certs::write_test_pki(ours.path(), &["127.0.0.1:7001".into()], &[]).unwrap();
        let stranger =
            certs::write_test_pki(theirs.path(), &[], &[("eve".into(), Role::Admin)]).unwrap();
        let node = tls_node(ours.path(), &pki.ca).await;
        // Eve trusts the node's CA, but her certificate is from another one.
        let eve = TlsFiles {
            ca: pki.ca.clone(),
            ..stranger.clients[0].clone()
        };
        // A node that is down as well does not hide the TLS error.
        let client = client(eve, &[nobody().await, node.to_string()]);
        let started = Instant::now();
        for error in [
            client.propose("put a 1").await.unwrap_err(),
            client.status().await.unwrap_err(),
        ] {
            let message = error.to_string();
            assert!(matches!(error, ClientError::Tls(_)), "{error:?}");
            assert!(message.contains(&node.to_string()), "{message}");
            assert!(
                message.contains("refused this side's certificate"),
                "{message}"
            );
        }
        // Given up after one pass, not retried until the timeout.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_node_from_another_ca_is_a_tls_error() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let pki = certs::write_test_pki(ours.path(), &[], &[("alice".into(), Role::Read)]).unwrap();
        let other = certs::write_test_pki(theirs.path(), &["127.0.0.1:7001".into()], &[]).unwrap();
        let node = tls_node(theirs.path(), &other.ca).await;
        let client = client(pki.clients[0].clone(), &[node.to_string()]);
        let error = client.status().await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ClientError::Tls(_)), "{error:?}");
        assert!(
            message.contains("not signed by the CA this side trusts"),
            "{message}"
        );

        // The eager dial says the same.
        let options = DialOptions {
            tls: Some(ClientTls::load(pki.clients[0].clone()).unwrap()),
            ..DialOptions::default()
        };
        let error = dial::dial(&node.to_string(), &options).await.unwrap_err();
        assert!(matches!(error, ClientError::Tls(_)), "{error:?}");
        // And a node that is down is still just down.
        let error = dial::dial(&nobody().await, &options).await.unwrap_err();
        assert!(
            matches!(error, ClientError::NoNodeReachable { .. }),
            "{error:?}"
        );
    }
}
