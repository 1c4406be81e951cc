//! Running the `riteraft` binary from a test, shared by the CLI's test binaries.

#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `riteraft` with `args`, and `RITERAFT_CLUSTER` set to `cluster_env` (unset without
/// it), off the async runtime, which keeps serving the fake nodes.
pub async fn riteraft(args: &[&str], cluster_env: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let cluster_env = cluster_env.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_riteraft"));
        command.args(&args).env_remove("RITERAFT_CLUSTER");
        if let Some(cluster) = cluster_env {
            command.env("RITERAFT_CLUSTER", cluster);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What the run printed, as JSON (`--json`).
pub fn json_out(output: &Output) -> Value {
    serde_json::from_str(&stdout(output)).unwrap_or_else(|e| panic!("{e}: {output:?}"))
}

/// The `riteraft-host` next to `riteraft` (`cargo test --workspace` builds both).
pub fn host_binary() -> PathBuf {
    let host = Path::new(env!("CARGO_BIN_EXE_riteraft"))
        .with_file_name(format!("riteraft-host{}", std::env::consts::EXE_SUFFIX));
    assert!(
        host.is_file(),
        "no riteraft-host at {}: build it first (`cargo build -p riteraft-host`, or run the whole \
         suite with scripts/test)",
        host.display()
    );
    host
}
