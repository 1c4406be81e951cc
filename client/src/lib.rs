//! A small client for RiteRaft clusters, and the generated gRPC types both sides share.
//!
//! [`Client`] talks to any node of a cluster: it sends each call to the node that answered last,
//! moves on to the next address when a node is down or has no leader, and turns the gRPC status
//! codes of `proto/riteraft.proto` into a [`ClientError`] that says what to do next.
//!
//! ```no_run
//! # async fn demo() -> Result<(), riteraft_client::ClientError> {
//! use riteraft_client::{Client, Consistency};
//!
//! let client = Client::connect(["127.0.0.1:7001", "127.0.0.1:7002"])?;
//! let applied = client.propose("put a 1").await?;
//! match applied.result {
//!     Ok(output) => println!("applied at {}: {}", applied.index, String::from_utf8_lossy(&output)),
//!     Err(rejection) => println!("the store said no: {rejection}"),
//! }
//! let answer = client.query("get a", Consistency::Linearizable).await?;
//! # let _ = answer;
//! # Ok(())
//! # }
//! ```
//!
//! With mutual TLS, every connection presents a client certificate signed by the cluster's CA
//! and checks the node's ([`tls`]); with the `certs` feature, [`certs`] makes such a CA and its
//! certificates:
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use riteraft_client::{Client, tls::{ClientTls, TlsFiles}};
//!
//! let dir = std::path::Path::new("pki");
//! let tls = ClientTls::load(TlsFiles {
//!     cert: dir.join("client-admin.pem"),
//!     key: dir.join("client-admin.key"),
//!     ca: dir.join("ca.pem"),
//! })?;
//! let client = Client::builder().tls(tls).connect(["127.0.0.1:7001"])?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
//!
//! This crate stays light on purpose (no wasmtime, no command-line parsing: the `riteraft`
//! binary is the riteraft-cli crate's): applications can depend on it without compiling the
//! node. Besides tonic it brings riteraft-proto (the generated messages, the TLS stack with
//! rustls and the ring provider, so no C toolchain or cmake is needed) and serde.

mod client;
mod error;
mod failover;
mod pipeline;
mod types;

pub use client::{Client, ClientBuilder, DEFAULT_READ_ATTEMPT_TIMEOUT, DEFAULT_TIMEOUT};
pub use error::ClientError;
#[cfg(feature = "certs")]
pub use riteraft_proto::certs;
pub use riteraft_proto::{
    DEFAULT_CONNECT_TIMEOUT, DialOptions, MAX_MESSAGE_BYTES, authority, dial, dial_lazy,
    endpoint_uri, tls,
};
pub use types::{
    Answer, Applied, Consistency, DeployStep, Deployed, Joined, Member, NodeStatus, Upgrade,
};

/// The gRPC messages and services of `proto/riteraft.proto` (client stubs; the server stubs are
/// riteraft-proto's `server` feature).
pub use riteraft_proto as proto;
