//! The local cluster `riteraft bench` starts when no `--cluster` is given: three
//! `riteraft-host` processes on free loopback ports, their data dirs in a temporary directory on
//! disk (fsync is part of what is measured, so never a RAM filesystem), their logs next to them.
//!
//! Every node is killed and reaped when the [`LocalCluster`] is dropped (the end of a run, an
//! error, or Ctrl-C), and on Linux each node is also told to die with the bench
//! (`PR_SET_PDEATHSIG`), for when the bench itself is killed and never runs its destructors.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use std::sync::Arc;

use riteraft_client::certs::{client_files, node_files, write_test_pki};
use riteraft_client::tls::{ClientTls, Role};
use riteraft_client::{Client, NodeStatus};
use tempfile::TempDir;
use tokio::time::Instant;

/// Nodes in the local cluster: the smallest cluster that tolerates a failure, and what the
/// performance targets are stated for.
pub const NODES: usize = 3;

/// How long a starting node may take to serve `Status` and know its leader. Generous: a node
/// compiles the plugin with Cranelift at start (seconds for a debug build), on a 2-core machine
/// that may be busy with other builds.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Pause between readiness polls: a node starts in well under a second once its plugin is
/// compiled, so 100 ms adds little to the start while keeping the polling cheap.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Lines of a node's log quoted when it fails to start: enough for the error and its context.
const LOG_TAIL_LINES: usize = 20;

/// How the local nodes run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `riteraft-host` binary.
    pub host: PathBuf,
    /// The store plugin.
    pub plugin: PathBuf,
    /// `--builtin-kv`: the kv store compiled into the host instead of the plugin.
    pub native: bool,
    /// More flags for every node (`--node-arg`).
    pub node_args: Vec<String>,
    /// Mutual TLS (`--tls`): a test CA and certificates in the cluster's directory.
    pub tls: bool,
    /// Where the temporary directory goes.
    pub data_root: PathBuf,
}

/// One node process; killed and reaped on drop.
pub struct LocalNode {
    pub id: u64,
    pub address: String,
    child: Child,
    log: PathBuf,
}

impl LocalNode {
    /// The operating system's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(error) => Some(format!("unknown state ({error})")),
        }
    }

    fn failure(&mut self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{what}; last lines of its log {}:\n{}",
            self.log.display(),
            log_tail(&self.log, LOG_TAIL_LINES)
        )
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        // SIGKILL: the data is thrown away, so there is nothing to shut down cleanly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running local cluster. Drop it to stop every node and remove its files.
pub struct LocalCluster {
    /// Declared before `dir` so that the processes die before their files are removed.
    pub nodes: Vec<LocalNode>,
    /// With `--tls`: the certificates' directory, and the bench's client identity.
    tls: Option<(PathBuf, Arc<ClientTls>)>,
    dir: TempDir,
}

impl LocalCluster {
    /// The temporary directory holding the nodes' data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bench's TLS identity (a `write` client), when the cluster runs TLS.
    pub fn client_tls(&self) -> Option<Arc<ClientTls>> {
        self.tls.as_ref().map(|(_, tls)| tls.clone())
    }

    /// The nodes' addresses, node 1 first.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.address.clone()).collect()
    }

    /// Which nodes have exited, each with its exit status and the end of its log; `None` if
    /// all still run. Said when a run fails, since a dead node is the likeliest reason (and its
    /// log goes with the temporary directory).
    pub fn casualties(&mut self) -> Option<String> {
        let reports: Vec<String> = self
            .nodes
            .iter_mut()
            .filter_map(|node| {
                let status = node.exited()?;
                Some(format!(
                    "node {} ({}) exited ({status}); last lines of its log:\n{}",
                    node.id,
                    node.address,
                    log_tail(&node.log, LOG_TAIL_LINES)
                ))
            })
            .collect();
        (!reports.is_empty()).then(|| reports.join("\n"))
    }

    /// Starts node 1 (which bootstraps and leads), then each other node with `--join` to it,
    /// one at a time, waiting until each knows the leader.
    ///
    /// Must be called from a thread that outlives the cluster: on Linux the nodes die when the
    /// thread that spawned them ends.
    pub async fn start(options: &LocalOptions) -> anyhow::Result<LocalCluster> {
        check_file(&options.host, "riteraft-host binary")?;
        check_file(&options.plugin, "plugin")?;
        std::fs::create_dir_all(&options.data_root)
            .with_context(|| format!("cannot create {}", options.data_root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("riteraft-bench-")
            .tempdir_in(&options.data_root)
            .with_context(|| {
                format!(
                    "cannot create a directory in {}",
                    options.data_root.display()
                )
            })?;
        let addresses = free_addresses(NODES)?;
        let tls = match options.tls {
            false => None,
            true => {
                let certs = dir.path().join("certs");
                write_test_pki(&certs, &addresses, &[("bench".into(), Role::Write)])
                    .context("cannot make the test certificates")?;
                let tls = ClientTls::load(client_files(&certs, "bench"))?;
                Some((certs, tls))
            }
        };
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            tls,
            dir,
        };
        let tls = cluster.client_tls();
        for (n, address) in addresses.iter().enumerate() {
            let join = (n > 0).then(|| addresses[0].as_str());
            let node = cluster.spawn(options, n + 1, address, join)?;
            cluster.nodes.push(node);
            let node = cluster.nodes.last_mut().expect("just pushed");
            node.id = wait_ready(node, join.is_none(), tls.clone()).await?;
        }
        // Node 1 must count every member before the load starts (a join is a conf change that
        // the leader may still be applying when the joiner already answers `Status`).
        let first = cluster.nodes[0].address.clone();
        wait_for(
            &mut cluster.nodes[0],
            "node 1 to count 3 members",
            async || {
                status_of(&first, tls.clone())
                    .await
                    .filter(|status| status.members.len() == NODES && status.leader_id.is_some())
            },
        )
        .await?;
        Ok(cluster)
    }

    fn spawn(
        &self,
        options: &LocalOptions,
        n: usize,
        address: &str,
        join: Option<&str>,
    ) -> anyhow::Result<LocalNode> {
        let log = self.dir().join(format!("node{n}.log"));
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(&options.host);
        command
            .arg("--plugin")
            .arg(&options.plugin)
            .args(["--listen", address])
            .arg("--data-dir")
            .arg(self.dir().join(format!("node{n}")));
        if let Some(join) = join {
            command.args(["--join", join]);
        }
        if options.native {
            command.arg("--builtin-kv");
        }
        if let Some((certs, _)) = &self.tls {
            command.args(node_files(certs, address).flags());
        }
        command.args(&options.node_args);
        // riteraft-host reads a RITERAFT_HOST_* variable for each of its flags: the nodes the
        // bench starts are configured by it alone, not by whatever the caller's shell exported.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RITERAFT_") {
                command.env_remove(name);
            }
        }
        // Warnings only, unless the user asked for more: a node logging every request at
        // `info` would measure its logging.
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", options.host.display()))?;
        Ok(LocalNode {
            id: 0,
            address: address.to_string(),
            child,
            log,
        })
    }
}

/// Waits until the node at `node.address` serves `Status`, is a member, knows a leader (and,
/// for the bootstrapping node, is that leader); returns its raft id.
async fn wait_ready(
    node: &mut LocalNode,
    bootstrap: bool,
    tls: Option<Arc<ClientTls>>,
) -> anyhow::Result<u64> {
    let address = node.address.clone();
    let what = if bootstrap {
        format!("the first node ({address}) to lead")
    } else {
        format!("the node at {address} to join and know the leader")
    };
    let status = wait_for(node, &what, async || {
        status_of(&address, tls.clone()).await.filter(|status| {
            status.leader_id.is_some()
                && status.members.iter().any(|member| member.id == status.id)
                && (!bootstrap || status.role == "leader")
        })
    })
    .await?;
    Ok(status.id)
}

/// Polls `check` until it gives a value, failing if the node exits or [`READY_TIMEOUT`] passes.
async fn wait_for<T>(
    node: &mut LocalNode,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = node.exited() {
            return Err(node.failure(&format!(
                "the node at {} exited ({status}) while waiting for {what}",
                node.address
            )));
        }
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(node.failure(&format!(
                "gave up waiting for {what} after {READY_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The status of the node at `address`, if it answers within a second.
async fn status_of(address: &str, tls: Option<Arc<ClientTls>>) -> Option<NodeStatus> {
    let builder = Client::builder()
        .timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1));
    let builder = match tls {
        Some(tls) => builder.tls(tls),
        None => builder,
    };
    let client = builder.connect([address]).ok()?;
    client.status_of(address).await.ok()
}

fn check_file(path: &Path, what: &str) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!("no {what} at {}", path.display());
    }
    Ok(())
}

/// `count` distinct loopback addresses with nothing listening on them right now: the kernel
/// picks free ports, all bound at once so they differ, then released for the nodes to bind. (In
/// the moment between, another program could take one; the node would then fail to start,
/// saying so, and the bench with it.)
fn free_addresses(count: usize) -> anyhow::Result<Vec<String>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free loopback ports")?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.to_string()))
        .collect()
}

/// The last `lines` lines of the file at `path` (its last 64 KiB at most).
fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let text = strip_ansi(&text);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read it: {error})"),
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`): the nodes colour their logs even
/// into a file, and quoted in an error message the codes are noise.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Asks the kernel to SIGKILL the node when the thread that spawned it ends (on Linux; the
/// "parent" is the spawning thread, hence the rule in [`LocalCluster::start`]).
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl is a plain
    // system call that allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// Where the temporary directory goes by default: the system's temporary directory, unless it
/// is held in memory (tmpfs: fsync would cost nothing there and the figures would flatter the
/// cluster), in which case the current directory.
pub fn default_data_root() -> PathBuf {
    let temp = std::env::temp_dir();
    if is_in_memory(&temp) {
        PathBuf::from(".")
    } else {
        temp
    }
}

/// Whether `path` is on a filesystem held in memory (tmpfs, ramfs), where fsync is free.
#[cfg(target_os = "linux")]
pub fn is_in_memory(path: &Path) -> bool {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    /// `TMPFS_MAGIC` and `RAMFS_MAGIC` of `linux/magic.h`.
    const MEMORY_FILESYSTEMS: [i64; 2] = [0x0102_1994, 0x8584_58f6];
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` writes into the zeroed struct we own; the path is NUL-terminated.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut info) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between libcs
    MEMORY_FILESYSTEMS.contains(&(info.f_type as i64))
}

#[cfg(not(target_os = "linux"))]
pub fn is_in_memory(_path: &Path) -> bool {
    false
}

/// Resident memory of process `pid`: (current, peak) in KiB, from `/proc/PID/status`
/// (`VmRSS`, `VmHWM`). `None` where there is no procfs.
pub fn resident_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        status_field_kib(&status, "VmRSS:")?,
        status_field_kib(&status, "VmHWM:")?,
    ))
}

fn status_field_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// CPU time (user + system, all threads) process `pid` (or this process, for `None`) has used,
/// from `/proc/PID/stat`. `None` where there is no procfs.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    Some(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

/// utime + stime, fields 14 and 15 of `/proc/PID/stat`, counted after the command name (field
/// 2, in parentheses, which may itself hold spaces and parentheses).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(target_os = "linux")]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(not(target_os = "linux"))]
fn clock_ticks_per_second() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_parsed() {
        let status = "Name:\triteraft-host\nVmHWM:\t  120340 kB\nVmRSS:\t   98304 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(98304));
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(120340));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
        let stat = "4242 (odd (name) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measurable() {
        let (rss, peak) = resident_kib(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss);
        assert!(cpu_time(None).is_some());
        // A path that cannot be examined is taken to be on disk.
        assert!(!is_in_memory(Path::new("/no/such/dir")));
    }

    #[test]
    fn log_tails_lose_their_colours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        std::fs::write(
            &path,
            "one\n\u{1b}[2mtime\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m two\nthree\n",
        )
        .unwrap();
        assert_eq!(log_tail(&path, 2), "time  WARN two\nthree");
        assert!(log_tail(&dir.path().join("absent"), 2).contains("cannot read"));
    }

    #[test]
    fn free_addresses_differ() {
        let addresses = free_addresses(3).unwrap();
        assert_eq!(addresses.len(), 3);
        assert_ne!(addresses[0], addresses[1]);
        assert_ne!(addresses[1], addresses[2]);
        assert!(addresses.iter().all(|a| a.starts_with("127.0.0.1:")));
    }
}
