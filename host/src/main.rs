//! `riteraft-host`: parse flags, set up logging, run a node. The logic lives in the library.

use std::process::ExitCode;

use clap::Parser;
use riteraft_host::config::NodeConfig;
use riteraft_host::plugin::PluginRuntime;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = NodeConfig::parse();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("riteraft-host: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: NodeConfig) -> anyhow::Result<()> {
    let runtime = PluginRuntime::new(config.plugin_limits())?;
    let module = runtime
        .load_file(&config.plugin)
        .map_err(|e| anyhow::anyhow!("cannot load plugin {}: {e}", config.plugin.display()))?;
    runtime
        .instantiate(&module)
        .map_err(|e| anyhow::anyhow!("cannot start plugin {}: {e}", config.plugin.display()))?;
    tracing::info!(plugin = %config.plugin.display(), sha256 = %module.sha256_hex(), "plugin loaded");
    anyhow::bail!("the raft node is not built yet: only plugin validation is available")
}
