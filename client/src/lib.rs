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
//! This crate stays light on purpose (tonic and prost, no wasmtime): applications can depend on
//! it without compiling the node.

mod address;
mod client;
mod error;
mod failover;
mod types;

pub use address::endpoint_uri;
pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, MAX_MESSAGE_BYTES,
};
pub use error::ClientError;
pub use types::{Answer, Applied, Consistency, Deployed, Joined, Member, NodeStatus, Upgrade};

/// The gRPC messages and services of `proto/riteraft.proto` (client and server stubs).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("riteraft.v1");
}
