//! A fake RiteRaft node for the client's and the CLI's tests: a real tonic server on 127.0.0.1
//! (port chosen by the OS), plain or with mutual TLS, implementing the `Client` service with
//! scripted failures, so failover, retries, TLS errors and the CLI can be tested without a
//! cluster.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use riteraft_proto::MAX_MESSAGE_BYTES;
use riteraft_proto::client_server::{Client as ClientService, ClientServer};
use riteraft_proto::tls::{TlsFiles, node_server_config};
use riteraft_proto::{
    JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, Member, PipelineFailure,
    PipelineRequest, PipelineResponse, ProposeRequest, ProposeResponse, QueryRequest,
    QueryResponse, StatusRequest, StatusResponse, TransferLeaderRequest, TransferLeaderResponse,
    Upgrade, pipeline_request, pipeline_response, propose_response, query_response,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpIncoming};
use tonic::{Code, Request, Response, Status};

/// Size of the answer to the query `big`: above tonic's default 4 MiB limit, below ours.
pub const BIG: usize = 5 * 1024 * 1024;

/// One fake node. Answers: `propose X` -> `ok X` (or the rejection `R` for `reject R`),
/// `query X` -> `X from node ID` (`(stale)` appended for stale reads; `big` -> [`BIG`] bytes).
pub struct Fake {
    pub id: u64,
    /// Failures for the next calls, in order, before answering normally.
    next_failures: Mutex<VecDeque<Status>>,
    /// Fail every call with this code.
    always: Mutex<Option<Code>>,
    /// Wait this long before answering a proposal.
    propose_delay: Mutex<Option<Duration>>,
    /// Wait this long before answering a query.
    query_delay: Mutex<Option<Duration>>,
    calls: AtomicUsize,
    /// Itself, for the tasks of its pipelines.
    me: std::sync::Weak<Fake>,
    /// Answer `Pipeline` with UNIMPLEMENTED, as a node from before it would.
    no_pipeline: AtomicBool,
    /// Pipeline streams opened.
    pipelines: AtomicUsize,
    /// What was asked, e.g. `propose put a 1`, `leave 3`.
    log: Mutex<Vec<String>>,
    index: AtomicU64,
}

impl Fake {
    pub fn new(id: u64) -> Arc<Fake> {
        Arc::new_cyclic(|me| Fake {
            me: me.clone(),
            id,
            next_failures: Mutex::default(),
            always: Mutex::default(),
            propose_delay: Mutex::default(),
            query_delay: Mutex::default(),
            calls: AtomicUsize::new(0),
            no_pipeline: AtomicBool::new(false),
            pipelines: AtomicUsize::new(0),
            log: Mutex::default(),
            index: AtomicU64::new(0),
        })
    }

    pub fn fail_next(&self, statuses: impl IntoIterator<Item = Status>) {
        self.next_failures.lock().unwrap().extend(statuses);
    }

    pub fn fail_always(&self, code: Code) {
        *self.always.lock().unwrap() = Some(code);
    }

    pub fn delay_proposals(&self, delay: Duration) {
        *self.propose_delay.lock().unwrap() = Some(delay);
    }

    /// Waits `delay` before answering each query (a node alive but stuck).
    pub fn delay_queries(&self, delay: Duration) {
        *self.query_delay.lock().unwrap() = Some(delay);
    }

    /// Answer `Pipeline` with UNIMPLEMENTED from now on, as a node from before it.
    pub fn without_pipeline(&self) {
        self.no_pipeline.store(true, Ordering::SeqCst);
    }

    /// `Pipeline` streams opened so far.
    pub fn pipelines(&self) -> usize {
        self.pipelines.load(Ordering::SeqCst)
    }

    /// Calls received, failed ones included.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The calls answered normally.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Counts a call and fails it if scripted to; otherwise logs `what`.
    fn enter(&self, what: String) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(code) = *self.always.lock().unwrap() {
            return Err(Status::new(
                code,
                format!("node {} is scripted to fail", self.id),
            ));
        }
        if let Some(status) = self.next_failures.lock().unwrap().pop_front() {
            return Err(status);
        }
        self.log.lock().unwrap().push(what);
        Ok(())
    }
}

#[tonic::async_trait]
impl ClientService for Fake {
    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let command = String::from_utf8_lossy(&request.into_inner().command).into_owned();
        let shown: String = command.chars().take(40).collect();
        self.enter(format!("propose {shown}"))?;
        let delay = *self.propose_delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        let result = match command.strip_prefix("reject ") {
            Some(why) => propose_response::Result::Rejection(why.to_string()),
            None if command.len() > 100 => {
                propose_response::Result::Output(format!("ok {} bytes", command.len()).into())
            }
            None => propose_response::Result::Output(format!("ok {command}").into()),
        };
        Ok(Response::new(ProposeResponse {
            index,
            result: Some(result),
        }))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let QueryRequest { request, stale } = request.into_inner();
        let text = String::from_utf8_lossy(&request).into_owned();
        self.enter(format!("query {text} stale={stale}"))?;
        let delay = *self.query_delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let result = if text == "big" {
            query_response::Result::Output(vec![b'x'; BIG])
        } else if let Some(why) = text.strip_prefix("reject ") {
            query_response::Result::Rejection(why.to_string())
        } else {
            let stale = if stale { " (stale)" } else { "" };
            query_response::Result::Output(format!("{text} from node {}{stale}", self.id).into())
        };
        Ok(Response::new(QueryResponse {
            applied_index: self.index.load(Ordering::SeqCst),
            result: Some(result),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.enter("status".into())?;
        Ok(Response::new(StatusResponse {
            id: self.id,
            role: if self.id == 1 { "leader" } else { "follower" }.into(),
            leader_id: 1,
            term: 3,
            commit_index: 12,
            applied_index: 11,
            members: vec![
                Member {
                    id: 1,
                    address: "127.0.0.1:7001".into(),
                    role: "voter".into(),
                    match_index: 12,
                    ..Member::default()
                },
                Member {
                    id: 2,
                    address: "127.0.0.1:7002".into(),
                    role: "learner".into(),
                    plan: "promote".into(),
                    match_index: 9,
                },
            ],
            plugin_sha256: "5ca1ab1e".into(),
            plugin_version: String::new(),
            snapshot_index: 10,
            alarm: String::new(),
            log_format: 2,
            upgrades: vec![Upgrade {
                index: 4,
                sha256: "5ca1ab1e".into(),
                timestamp_ms: 86_400_000,
                version: "2.0".into(),
            }],
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let address = request.into_inner().address;
        self.enter(format!("join {address}"))?;
        Ok(Response::new(JoinResponse {
            id: 9,
            members: vec![Member {
                id: 9,
                address,
                ..Member::default()
            }],
        }))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        self.enter(format!("leave {}", request.into_inner().node_id))?;
        Ok(Response::new(LeaveResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        self.enter(format!("transfer {}", request.into_inner().to))?;
        Ok(Response::new(TransferLeaderResponse {}))
    }

    async fn deploy(
        &self,
        request: Request<tonic::Streaming<riteraft_proto::DeployChunk>>,
    ) -> Result<Response<riteraft_proto::DeployResponse>, Status> {
        let mut chunks = request.into_inner();
        let mut bytes = 0;
        while let Some(chunk) = chunks.message().await? {
            bytes += chunk.data.len();
        }
        self.enter(format!("deploy {bytes}"))?;
        Ok(Response::new(riteraft_proto::DeployResponse {
            message: format!("received {bytes} bytes"),
            ..Default::default()
        }))
    }

    type PipelineStream = tonic::codegen::BoxStream<PipelineResponse>;

    /// Each request answered concurrently by the unary call's code, its failure carried in
    /// the answer, as a node does.
    async fn pipeline(
        &self,
        request: Request<tonic::Streaming<PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        if self.no_pipeline.load(Ordering::SeqCst) {
            return Err(Status::unimplemented("Pipeline"));
        }
        self.pipelines.fetch_add(1, Ordering::SeqCst);
        let fake = self.me.upgrade().expect("a fake node serving is alive");
        let mut requests = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            while let Ok(Some(PipelineRequest { id, request })) = requests.message().await {
                let (fake, sender) = (fake.clone(), sender.clone());
                tokio::spawn(async move {
                    let result = match request {
                        Some(pipeline_request::Request::Propose(propose)) => fake
                            .propose(Request::new(propose))
                            .await
                            .map(|r| pipeline_response::Result::Propose(r.into_inner())),
                        Some(pipeline_request::Request::Query(query)) => fake
                            .query(Request::new(query))
                            .await
                            .map(|r| pipeline_response::Result::Query(r.into_inner())),
                        None => Err(Status::invalid_argument("empty")),
                    };
                    let result = result.unwrap_or_else(|status| {
                        pipeline_response::Result::Failure(PipelineFailure {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        })
                    });
                    let _ = sender
                        .send(Ok(PipelineResponse {
                            id,
                            result: Some(result),
                        }))
                        .await;
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    type DeployWatchStream = tonic::codegen::BoxStream<riteraft_proto::DeployEvent>;

    /// A node from before `DeployWatch`: clients fall back to `Deploy`.
    async fn deploy_watch(
        &self,
        _request: Request<tonic::Streaming<riteraft_proto::DeployChunk>>,
    ) -> Result<Response<Self::DeployWatchStream>, Status> {
        Err(Status::unimplemented("DeployWatch"))
    }
}

/// Serves `fake` on 127.0.0.1 with a port the OS picks; returns `127.0.0.1:PORT`. The server
/// lives as long as the test's runtime.
pub async fn serve(fake: Arc<Fake>) -> String {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = incoming.local_addr().unwrap();
    let service = ClientServer::from_arc(fake)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    address.to_string()
}

/// Serves `fake` over mutual TLS on 127.0.0.1 as the node `node` whose certificate and key are
/// in `node_dir` (see `riteraft_proto::certs::node_files`), requiring client certificates of the
/// CA `ca`. Returns the address it really listens on, which need not be `node`.
pub async fn serve_tls(fake: Arc<Fake>, node_dir: &Path, node: &str, ca: &Path) -> String {
    let files = TlsFiles {
        ca: ca.to_path_buf(),
        ..riteraft_proto::certs::node_files(node_dir, node)
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(node_server_config(&files, node).unwrap());
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
        Server::builder()
            .add_service(ClientServer::from_arc(fake))
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(receiver)),
    );
    address.to_string()
}

/// A server-side TLS stream as tonic's server wants it.
struct Tls(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for Tls {
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

/// An address where nothing listens: a port the OS just gave us, closed again at once.
pub fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}
