//! The node's log on stderr: text for people or one JSON object per line for log collectors
//! (`--log-format`); RUST_LOG chooses which lines, `info` by default.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // The event's fields (message included) at the top level of each object, where log
        // collectors look for them, rather than under "fields".
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
