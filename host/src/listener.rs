//! Accepting connections: mutual TLS when configured (certificates reloadable without a
//! restart), a cap on open connections, a deadline for the handshake, and a pause instead of a
//! spin when the process runs out of file descriptors. Each connection carries who is calling
//! ([`Caller`]), read once from its certificate, to every request on it (see `access.rs`).

use std::future::Future as _;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use riteraft_proto::tls::{CertName, Role, TlsError, TlsFiles, cert_name, node_server_config};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::log_limit::LogLimiter;

/// Most connections open at once. Peers use one or two each and clients share theirs, so a
/// thousand is far beyond a healthy cluster's need, while each costs a descriptor and buffers:
/// without a cap, a flood of idle connections exhausts the process's descriptors and memory.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a TLS handshake may take: a peer that connects and says nothing holds a slot of
/// [`MAX_CONNECTIONS`] until then.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept fails for lack of descriptors or memory: retrying at once would spin
/// on the same error (a core at ~80 % was seen) while nothing frees any.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A connection on which nothing arrives for this long is closed: a peer that died without a
/// goodbye, was paused, or holds connections open to use up [`MAX_CONNECTIONS`]. Our own
/// clients and peers ping every second (see riteraft-proto's `dial.rs`), so they stay.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the certificate files are checked for changes (they are also reloaded on SIGHUP).
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No TLS: everyone who can connect is trusted (loopback only, unless `--insecure`).
    Anyone,
    /// A member (or joiner) whose certificate names this address.
    Node { address: String },
    /// A client whose certificate grants `role`.
    Client { name: String, role: Role },
    /// A certificate of the cluster's CA that names neither a node nor a role.
    Unnamed { why: String },
}

/// The TLS settings of a node's server: the current config, rebuilt from the files on reload.
pub struct ServerTls {
    files: TlsFiles,
    /// The node's own address, which its certificate must name (checked on every load).
    address: String,
    config: RwLock<Arc<ServerConfig>>,
    /// The files' modification times when last loaded, to notice changes.
    loaded: RwLock<Vec<Option<SystemTime>>>,
}

impl ServerTls {
    /// Loads the certificate, key and CA bundle of the node at `address`.
    pub fn load(files: TlsFiles, address: &str) -> Result<Arc<ServerTls>, TlsError> {
        let config = node_server_config(&files, address)?;
        Ok(Arc::new(ServerTls {
            loaded: RwLock::new(mtimes(&files)),
            files,
            address: address.to_string(),
            config: RwLock::new(config),
        }))
    }

    /// Reloads the files; on an error (a certificate naming another node too) the config in
    /// force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = mtimes(&self.files);
        let config = node_server_config(&self.files, &self.address)?;
        *self.config.write().expect("tls config lock") = config;
        *self.loaded.write().expect("tls mtimes lock") = stamps;
        Ok(())
    }

    /// Whether a file changed since it was last loaded.
    pub fn changed(&self) -> bool {
        *self.loaded.read().expect("tls mtimes lock") != mtimes(&self.files)
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config.read().expect("tls config lock").clone()
    }
}

fn mtimes(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.cert, &files.key, &files.ca]
        .into_iter()
        .map(|path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads the certificates whenever one of `reload` is called for (SIGHUP) or the files
/// change; `on_reload` then runs (e.g. to reload the client side too).
pub async fn watch_certificates(tls: Arc<ServerTls>, on_reload: impl Fn() + Send + 'static) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<bool>();
        let asked = tokio::select! {
            asked = hup => asked,
            _ = tokio::time::sleep(RELOAD_CHECK) => false,
        };
        if !asked && !tls.changed() {
            continue;
        }
        match tls.reload() {
            Ok(()) => {
                tracing::info!("TLS certificates reloaded");
                on_reload();
            }
            Err(e) => tracing::error!("cannot reload the TLS certificates, keeping the old: {e}"),
        }
    }
}

/// Failed handshakes: anyone can cause them, so they are logged at most once a second.
static HANDSHAKE_LOG: LazyLock<LogLimiter> = LazyLock::new(LogLimiter::new);

/// One accepted connection.
pub struct Conn {
    io: ConnIo,
    caller: Arc<Caller>,
    /// Fires [`IDLE_TIMEOUT`] after the last byte read: the connection is then closed.
    idle: Pin<Box<tokio::time::Sleep>>,
    /// Held while the connection is open: its slot of [`MAX_CONNECTIONS`].
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(io: ConnIo, caller: Arc<Caller>, slot: OwnedSemaphorePermit) -> Conn {
        Conn {
            io,
            caller,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            _slot: slot,
        }
    }
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = Arc<Caller>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.caller.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let conn = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut conn.io {
            ConnIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
                conn.idle.as_mut().reset(deadline);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if conn.idle.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "idle connection closed"),
            )),
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(io) => io.is_write_vectored(),
            ConnIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io).poll_flush(cx),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener`, authenticated with `tls` when given, as the stream
/// tonic serves. Never yields an error: a failed accept or handshake is logged and skipped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Conn, io::Error>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, sender));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    sender: mpsc::Sender<Result<Conn, io::Error>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut last_warning: Option<Instant> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("cannot accept a connection: {e}; pausing accepts briefly");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // No Nagle: raft messages and replies are small and latency-bound; with Nagle and
        // delayed ACKs every round trip can stall ~40 ms.
        let _ = tcp.set_nodelay(true);
        let sender = sender.clone();
        match &tls {
            None => {
                let conn = Conn::new(ConnIo::Plain(tcp), Arc::new(Caller::Anyone), slot);
                if sender.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let acceptor = TlsAcceptor::from(tls.current());
                // The handshake runs on its own task, so a slow one holds up no other.
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let caller = Arc::new(caller_of(&stream));
                            let conn = Conn::new(ConnIo::Tls(Box::new(stream)), caller, slot);
                            let _ = sender.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) => {
                            if let Some(held_back) = HANDSHAKE_LOG.admit() {
                                tracing::info!(%remote, more_since_last = held_back, "TLS handshake refused: {e}");
                            }
                        }
                        Err(_) => {
                            if let Some(held_back) = HANDSHAKE_LOG.admit() {
                                tracing::info!(%remote, more_since_last = held_back, "TLS handshake timed out");
                            }
                        }
                    }
                });
            }
        }
    }
}

/// Who the verified client certificate of `stream` names.
fn caller_of(stream: &TlsStream<TcpStream>) -> Caller {
    let (_, session) = stream.get_ref();
    let Some(cert) = session.peer_certificates().and_then(|chain| chain.first()) else {
        return Caller::Unnamed {
            why: "no client certificate".into(),
        };
    };
    match cert_name(cert.as_ref()) {
        Ok(CertName::Node { address }) => Caller::Node { address },
        Ok(CertName::Client { name, role }) => Caller::Client { name, role },
        Err(e) => Caller::Unnamed { why: e.to_string() },
    }
}
