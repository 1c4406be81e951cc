//! RiteRaft's node: replicates a WebAssembly store plugin with raft.
//!
//! - [`plugin`]: the sandboxed wasm runtime (the only module that uses wasmtime).
//! - [`state_machine`]: the trait the node replicates, and a native implementation.
//! - [`wasm_state_machine`]: the plugin-backed implementation, rebuilt after traps.
//! - [`node`]: the consensus loop that owns raft, the log store and the state machine;
//!   [`peer_messages`]: what a peer's raft message must be before raft sees it.
//! - [`storage`]: the raft log store; [`module_store`]: store modules kept by sha256; [`replicated`]: the formats of what the node puts in log
//!   entries and snapshots (frozen: every replica must read them alike).
//! - [`transport`] (to peers) and [`grpc_services`] (the gRPC servers); [`startup`] wires a
//!   node together and runs it.
//! - [`listener`] accepts connections (mutual TLS, caps); [`access`] says who may call what;
//!   [`log_limit`] keeps what others can make us log to a line a second.
//! - [`config`]: the settings, from flags, `RITERAFT_HOST_*` variables and a TOML file; [`logging`]
//!   sets up the log (text or JSON); [`metrics`]: Prometheus metrics and their HTTP server
//!   (`--metrics-listen`).

// Denied everywhere but one place: loading compiled plugins from the data dir
// (`plugin::CompiledCache::get`), which says why it is sound.
#![deny(unsafe_code)]

pub mod access;
pub mod config;
pub mod data_dir;
pub mod grpc_services;
pub mod health;
pub mod listener;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod module_store;
pub mod node;
pub mod peer_messages;
pub mod plugin;
mod raft_logger;
pub mod replay_log;
pub mod replicated;
pub mod startup;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod wasm_state_machine;
