//! Reading a node's metrics in tests: a bounded HTTP/1.1 GET over a plain tokio socket (no
//! HTTP client dependency), a parser of the Prometheus text format, the metric names a Grafana
//! dashboard's queries use, and the TCP ports a process listens on (Linux).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A scrape is a few tens of KiB; more is a runaway answer.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// A node answers a scrape in milliseconds; a debug build on a busy machine gets more.
const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(GET_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    let text = String::from_utf8_lossy(&response);
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((status, body.to_string()))
}

/// One scrape: every sample's value by name and label set (`{a="b"}`, or empty).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Scrape {
    /// Parses Prometheus text format (comments skipped; labels kept as written).
    pub fn parse(text: &str) -> Scrape {
        let mut samples: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            let (name, labels) = match series.find('{') {
                Some(at) => (&series[..at], &series[at..]),
                None => (series, ""),
            };
            samples
                .entry(name.to_string())
                .or_default()
                .insert(labels.to_string(), value);
        }
        Scrape { samples }
    }

    /// Whether a sample of metric `name` is present (a histogram by its `_count`).
    pub fn has(&self, name: &str) -> bool {
        self.samples.contains_key(name) || self.samples.contains_key(&format!("{name}_count"))
    }

    /// The sum of `name` over its label sets (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples.get(name).map_or(0.0, |s| s.values().sum())
    }

    /// `name` with exactly `labels` (`{a="b"}`, or "" for none).
    pub fn value(&self, name: &str, labels: &str) -> Option<f64> {
        self.samples.get(name)?.get(labels).copied()
    }
}

/// Scrapes `http://addr/metrics`, panicking with the reason if that fails.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_get(addr, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("cannot scrape {addr}: {e}"));
    assert_eq!(status, 200, "scraping {addr}: {body}");
    Scrape::parse(&body)
}

/// Every `prefix…` metric name in `text` (e.g. a dashboard's JSON), with histograms' `_bucket`,
/// `_sum` and `_count` taken off: what a scrape must hold for the dashboard's queries to work.
pub fn metric_names(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

/// The TCP ports process `pid` listens on (its sockets, matched against the kernel's table of
/// listening ones): empty where there is no `/proc`.
pub fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    let inodes: BTreeSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, state 0A is LISTEN, the inode is field 9.
            let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if inodes.contains(*inode)
                && let Some(port) = local
                    .rsplit_once(':')
                    .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_histogram_suffixes() {
        let json = r#"{"expr": "histogram_quantile(0.99, rate(riteraft_apply_seconds_bucket[1m])) + riteraft_term"}"#;
        let names: Vec<String> = metric_names(json, "riteraft_").into_iter().collect();
        assert_eq!(names, ["riteraft_apply_seconds", "riteraft_term"]);
    }

    #[test]
    fn parses_samples_with_and_without_labels() {
        let scrape = Scrape::parse(
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{kind=\"a\"} 2\nx_total{kind=\"b\"} 3\ny 1.5\n",
        );
        assert_eq!(scrape.sum("x_total"), 5.0);
        assert_eq!(scrape.value("y", ""), Some(1.5));
        assert!(scrape.has("y") && !scrape.has("z"));
    }
}
