//! RiteRaft's wire protocol, shared by nodes, the client library and the CLI: the gRPC code
//! generated from `riteraft.proto` (messages, client stubs, and the server stubs with the
//! `server` feature), the limits both ends agree on, how a certificate names a node or a client
//! ([`tls`]), and the one way to dial a node ([`dial()`]).
//!
//! `store.wit`, the contract between a node and its store plugin, lives in this directory too
//! but is compiled by the host and the plugin SDK, not here.

mod address;
#[cfg(any(test, feature = "certs"))]
pub mod certs;
mod dial;
pub mod tls;

use std::time::Duration;

pub use address::{authority, endpoint_uri};
pub use dial::{DialError, DialOptions, dial, dial_lazy, endpoint, lazy_channel, never_sent};

/// The messages and services of `riteraft.proto` (package `riteraft.v1`).
mod generated {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("riteraft.v1");
}
pub use generated::*;

/// The encoded `FileDescriptorSet` of `riteraft.proto`: what a node's server reflection tells
/// tools such as grpcurl.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/riteraft_descriptor.bin"));

/// Largest gRPC message either end sends or accepts: 16 MiB. tonic's default of 4 MiB for
/// incoming messages is too small for stores that answer a query with a big value or a range;
/// 16 MiB is large enough for any reasonable command or answer while a runaway answer still
/// cannot make anyone allocate without bound. One constant, so that a message one side accepts
/// is never refused by the other.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The size of one chunk of a streamed upload (a deploy's module, a snapshot between nodes):
/// 1 MiB, far below [`MAX_MESSAGE_BYTES`], large enough that per-message costs vanish.
pub const CHUNK_BYTES: usize = 1 << 20;

/// How long to wait for a TCP connection (and TLS handshake) to one node. A node on a reachable
/// network accepts in milliseconds; after 2 s it is more useful to try the next address than to
/// keep waiting (a black-holed address would otherwise eat a whole call's timeout).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
