//! Dialing one node: the one place that turns an address and a few options (timeouts, TLS, the
//! node expected at the other end) into a tonic [`Channel`]. riteraft-client uses it for every
//! node, and the host for its peers.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::DEFAULT_CONNECT_TIMEOUT;
use crate::address::endpoint_uri;
use crate::tls::{self, ClientTls, TlsConnector};

/// How often an open connection pings the node, busy or idle, and how long a ping may go
/// unanswered before the connection counts as dead. A node that is paused, or cut off by the
/// network, holds a call for at most about the two together (2 s) instead of the call's whole
/// timeout, and a peer channel stuck behind a lost connection is replaced as soon: the answer
/// to a ping comes from the node's HTTP/2 layer, so a node busy committing still answers at
/// once. A ping is 17 bytes each way, negligible next to the traffic it guards; it also keeps
/// a healthy idle connection inside a node's idle limit (60 s, see its `listener.rs`).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a node could not be dialed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address is not `HOST:PORT` (or a URI with one).
    #[error("{0}")]
    BadAddress(String),
    /// The TLS handshake failed, or the certificates could not be used; the message says which
    /// side refused and why.
    #[error("{0}")]
    Tls(String),
    /// Nothing answered at the address (refused, timed out, reset).
    #[error("could not reach {address}: {reason}")]
    Unreachable {
        /// The address dialed.
        address: String,
        /// The connection error, with its causes.
        reason: String,
    },
}

/// How to dial a node.
#[derive(Debug, Clone)]
pub struct DialOptions {
    /// The longest to wait for the connection, TLS handshake included.
    pub connect_timeout: Duration,
    /// The longest one request may take on this channel, if any.
    pub timeout: Option<Duration>,
    /// Mutual TLS with these certificates; `None` is plain HTTP/2.
    pub tls: Option<Arc<ClientTls>>,
    /// With TLS, the node (`HOST:PORT`) the server's certificate must name (see
    /// [`TlsConnector`]). Ignored without TLS: a plain connection proves nothing.
    pub expect_node: Option<String>,
}

impl Default for DialOptions {
    /// Connect within [`DEFAULT_CONNECT_TIMEOUT`], no per-request timeout, no TLS, no
    /// expectation.
    fn default() -> Self {
        DialOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: None,
            tls: None,
            expect_node: None,
        }
    }
}

/// A channel to the node at `address` (`HOST:PORT`, see [`endpoint_uri`]) that connects on its
/// first request, and again after the connection breaks. Checks the address only; needs a
/// running tokio runtime.
pub fn dial_lazy(address: &str, options: &DialOptions) -> Result<Channel, DialError> {
    Ok(lazy_channel(&endpoint(address, options)?, options))
}

/// A channel to the node at `address`, connected now: a node that cannot be reached, or a TLS
/// handshake that fails, is an error here rather than at the first request.
pub async fn dial(address: &str, options: &DialOptions) -> Result<Channel, DialError> {
    let endpoint = endpoint(address, options)?;
    let connected = match &options.tls {
        Some(tls) => {
            let connector = TlsConnector::new(tls.clone(), options.expect_node.clone());
            endpoint.connect_with_connector(connector).await
        }
        None => endpoint.connect().await,
    };
    connected.map_err(|error| {
        if let Some(why) = tls::tls_failure(&error) {
            return DialError::Tls(why);
        }
        let mut last = error.to_string();
        let mut cause = error.source();
        while let Some(error) = cause {
            last.push_str(&format!(": {error}"));
            cause = error.source();
        }
        DialError::Unreachable {
            address: address.trim().to_string(),
            reason: last,
        }
    })
}

/// The endpoint of `address` with `options`' timeouts.
pub fn endpoint(address: &str, options: &DialOptions) -> Result<Endpoint, DialError> {
    let uri = endpoint_uri(address)?;
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|error| DialError::BadAddress(format!("bad node address {address:?}: {error}")))?
        .connect_timeout(options.connect_timeout)
        // Requests are small and latency-bound: do not let Nagle hold them back.
        .tcp_nodelay(true)
        // HTTP/2 pings, also while no call is open: a connection to a node that died or was cut
        // off is noticed within seconds instead of hanging until the kernel gives up, and a
        // healthy idle one is not dropped by the node's idle limit (see its `listener.rs`).
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(timeout) = options.timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(endpoint)
}

/// The lazy channel of `endpoint`, through TLS if `options` say so.
pub fn lazy_channel(endpoint: &Endpoint, options: &DialOptions) -> Channel {
    match &options.tls {
        Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector::new(
            tls.clone(),
            options.expect_node.clone(),
        )),
        None => endpoint.connect_lazy(),
    }
}

/// Whether a failed call's `status` comes from this side failing to connect, so that the
/// request was never sent and may go to another node. tonic reports that as `UNAVAILABLE` with
/// a `ConnectError` in the source chain; a status a node sent has no source at all, and a
/// connection that broke after the request left has another error there. Used by the client's
/// failover and by a node forwarding a call to its leader, which must agree.
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut cause = status.source();
    while let Some(error) = cause {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}
