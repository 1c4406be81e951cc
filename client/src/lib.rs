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
//! and checks the node's ([`tls`]); [`certs`] makes such a CA and its certificates:
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use riteraft_client::{Client, certs};
//!
//! let dir = std::path::Path::new("pki");
//! let tls = riteraft_client::tls::ClientTls::load(certs::client_files(dir, "admin"))?;
//! let client = Client::builder().tls(tls).connect(["127.0.0.1:7001"])?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```
//!
//! This crate stays light on purpose (no wasmtime): applications can depend on it without
//! compiling the node. Besides tonic and prost it brings the TLS stack: rustls with the ring
//! provider (no C toolchain or cmake needed), tokio-rustls, x509-parser to read certificates and
//! rcgen to make them.

mod address;
pub mod certs;
mod client;
mod dial;
mod error;
mod failover;
pub mod tls;
mod types;

pub use address::{authority, endpoint_uri};
pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, MAX_MESSAGE_BYTES,
};
pub use dial::{DialOptions, dial, dial_lazy};
pub use error::ClientError;
pub use types::{Answer, Applied, Consistency, Deployed, Joined, Member, NodeStatus, Upgrade};

/// The gRPC messages and services of `proto/riteraft.proto` (client and server stubs).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("riteraft.v1");
}
