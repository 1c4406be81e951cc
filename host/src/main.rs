//! `riteraft-host`: parse flags, set up logging, run a node. The logic lives in the library.

use std::process::ExitCode;

use clap::Parser;
use riteraft_host::config::NodeConfig;
use riteraft_host::node::NodeExit;

/// mimalloc rather than glibc malloc: the gRPC and raft paths allocate many small buffers on
/// one thread and free them on another, where glibc's arenas cost several percent of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = NodeConfig::parse();
    match riteraft_host::server::run(config) {
        Ok(NodeExit::Shutdown | NodeExit::Removed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("riteraft-host: error: {e}");
            ExitCode::FAILURE
        }
    }
}
