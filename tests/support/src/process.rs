//! [`NodeProcess`]: a child process that cannot outlive its test.
//!
//! Cluster tests start real `riteraft-host` processes. A test that fails (or times out, or is
//! itself killed) must not leave nodes running: they would hold ports and burn the CI's two
//! cores. So a `NodeProcess` is killed and reaped when dropped, including while a panic unwinds,
//! and on Linux it is also told to die with its parent (`PR_SET_PDEATHSIG`) for the case where
//! the test process is killed and never runs its destructors.
//!
//! Its output goes to a log file rather than the terminal: a dozen nodes interleaving their logs
//! would be unreadable, and cargo's capture does not see a child's output anyway. When a test
//! fails, dropping the process prints where the log is and its last lines, which is usually
//! enough to see why.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many lines of a node's log to print when a test fails.
const TAIL_LINES_ON_FAILURE: usize = 40;

/// A running (or finished) child process whose stdout and stderr go to a log file.
pub struct NodeProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    /// Set once the process has been reaped, so it is never waited for (or killed) twice.
    exit: Option<ExitStatus>,
}

impl NodeProcess {
    /// Starts `command` with its stdout and stderr appended to `log_path` (created if missing;
    /// appended so that a restarted node's log follows its previous life). `name` labels the
    /// process in messages, e.g. `node 2 (127.0.0.1:40123)`.
    pub fn spawn(
        name: impl Into<String>,
        mut command: Command,
        log_path: impl Into<PathBuf>,
    ) -> io::Result<Self> {
        let log_path = log_path.into();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut command);
        let child = command.spawn()?;
        Ok(Self {
            name: name.into(),
            child,
            log_path,
            exit: None,
        })
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the process in messages (e.g. once a node's raft id is known).
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// The operating system's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the process's output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status if the process has ended (reaping it), `None` while it runs.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("cannot poll a child process");
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Freezes the process with SIGSTOP (like a VM paused or a process stuck on a dead disk),
    /// until [`resume`](Self::resume). A frozen process can still be killed.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen process go on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends SIGHUP (a node reloads its TLS certificates on it).
    pub fn hangup(&mut self) {
        self.signal(libc::SIGHUP);
    }

    fn signal(&mut self, signal: libc::c_int) {
        if self.is_running() {
            let pid = libc::pid_t::try_from(self.child.id()).expect("pids fit in pid_t");
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
            // not yet reaped, so it cannot name another process.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up, like a crash or power loss) and
    /// reaps it. Does nothing if it already ended.
    pub fn kill(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        // An error here means it exited between the poll and the kill: reaping covers both.
        let _ = self.child.kill();
        self.exit = Some(
            self.child
                .wait()
                .expect("cannot reap a killed child process"),
        );
    }

    /// Waits up to `timeout` for the process to exit by itself; `None` if it is still running.
    /// Blocks the calling thread (polling every 10 ms), so from async code prefer polling
    /// [`try_exit`](Self::try_exit) between async sleeps.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `lines` lines of the log (at most the last 256 KiB of it are read).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) exited with {:?}; log: {} ; last lines:\n{}\n---- end of {}",
                self.name,
                self.pid(),
                self.exit,
                self.log_path.display(),
                self.log_tail(TAIL_LINES_ON_FAILURE),
                self.name,
            );
        }
    }
}

/// The last `lines` lines of the file at `path`, or a note saying why it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 256 * 1024;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it dies, so nodes do not
/// outlive a test process killed by a timeout. Note that "parent" means the spawning *thread*:
/// spawn nodes from the test's own thread or a runtime worker (which live as long as the test),
/// never from a short-lived thread such as tokio's blocking pool.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl is a plain
    // system call that allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // Signal 0 checks existence; a reaped process is gone (a zombie would still answer).
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    fn sleeper(dir: &Path) -> NodeProcess {
        let mut command = Command::new("sh");
        command.args(["-c", "echo started; echo oops >&2; exec sleep 100"]);
        NodeProcess::spawn("sleeper", command, dir.join("sleeper.log")).unwrap()
    }

    #[test]
    fn drop_kills_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let process = sleeper(dir.path());
        let pid = process.pid();
        assert!(alive(pid));
        drop(process);
        assert!(!alive(pid), "the process survived its guard");
    }

    #[test]
    fn kill_is_real_and_idempotent_and_output_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = sleeper(dir.path());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.log_tail(10).contains("oops") {
            assert!(Instant::now() < deadline, "no output in the log");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(process.log_tail(10).contains("started"));
        assert!(process.is_running());
        assert_eq!(process.wait_exit(Duration::from_millis(50)), None);
        process.kill();
        let status = process.try_exit().expect("killed means exited");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        process.kill();
        assert!(!process.is_running());
    }

    #[test]
    fn wait_exit_reports_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "exit 3"]);
        let mut process = NodeProcess::spawn("short", command, dir.path().join("log")).unwrap();
        let status = process
            .wait_exit(Duration::from_secs(10))
            .expect("it exits");
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&path, 2), "3\n4");
        assert!(log_tail(&dir.path().join("absent"), 2).contains("cannot read"));
    }
}
