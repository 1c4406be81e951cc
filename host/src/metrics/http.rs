//! The `--metrics-listen` server: plain HTTP/1.1, `GET /metrics` only (Prometheus text), 404
//! for any other path, 405 for another method on it; every connection bounded.
//!
//! No TLS and no authentication: the metrics show no stored data, only counts, timings and
//! the cluster's shape, and Prometheus scrapes plain HTTP; an address other than loopback is
//! the operator's choice (see `--metrics-listen`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Metrics;
use crate::log_limit::LogLimiter;

/// Connections served at once: a Prometheus or two and a person with curl need a handful;
/// beyond it new ones are closed at once, so a flood costs sockets, not memory.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection's request head must arrive within this (a slow client holds a slot no longer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, however busy: Prometheus reconnects for its next scrape,
/// and no slot is held forever by a client that keeps it alive.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The most a request head may take (hyper's smallest buffer): a scrape's is a few hundred
/// bytes, and no body is read.
pub const MAX_REQUEST_BYTES: usize = 8 << 10;
/// How long accepting pauses after an error (e.g. out of file descriptors) instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `metrics` on `listener` until the runtime stops (spawn it).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refusals = LogLimiter::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(held_back) = refusals.admit() {
                    tracing::warn!(more_since_last = held_back, "metrics server: accept: {e}");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(held_back) = refusals.admit() {
                tracing::warn!(
                    more_since_last = held_back,
                    "metrics server: {MAX_CONNECTIONS} connections open; closed a new one"
                );
            }
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            // An error is the client's (it went away, sent garbage): nothing to log.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

/// The answer to one request.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
    );
    response
}
