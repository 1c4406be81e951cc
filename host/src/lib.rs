//! RiteRaft's node: replicates a WebAssembly store plugin with raft.
//!
//! - [`plugin`]: the sandboxed wasm runtime (the only module that uses wasmtime).
//! - [`state_machine`]: the trait the node replicates, and a native implementation.
//! - [`wasm_state_machine`]: the plugin-backed implementation, rebuilt after traps.
//! - [`node`]: the consensus loop that owns raft, the log store and the state machine;
//!   [`peer_messages`]: what a peer's raft message must be before raft sees it.
//! - [`storage`]: the raft log store; [`log_format`]: what the node puts in entries and snapshots.
//! - [`transport`] (peers) and [`service`] (gRPC servers); [`server`] wires a node together.
//! - [`listener`] accepts connections (mutual TLS, caps); [`access`] says who may call what.

#![deny(unsafe_code)]

pub mod access;
pub mod config;
pub mod data_dir;
pub mod listener;
pub mod log_format;
pub mod log_limit;
pub mod node;
pub mod peer_messages;
pub mod plugin;
mod raft_log;
pub mod server;
pub mod service;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod wasm_state_machine;
