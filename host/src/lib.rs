//! RiteRaft's node: replicates a WebAssembly store plugin with raft.
//!
//! - [`plugin`]: the sandboxed wasm runtime (the only module that uses wasmtime).
//! - [`state_machine`]: the trait the node replicates, and a native implementation.
//! - [`wasm_state_machine`]: the plugin-backed implementation, rebuilt after traps.

#![deny(unsafe_code)]

pub mod config;
pub mod plugin;
pub mod state_machine;
pub mod wasm_state_machine;
