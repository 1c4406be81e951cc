//! A small filesystem of its own for a test (a tmpfs), and filling it up: how the suites give
//! a node a disk that runs full without touching the machine's.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;
use std::process::Command;

/// A tmpfs mounted on a fresh temporary directory, unmounted when dropped (also on a panic).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot (typically: not root).
    pub fn mount(mib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("riteraft-tmpfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    /// [`Tmpfs::mount`], or `None` after saying on stderr why the calling test is skipped.
    pub fn mount_or_skip(mib: u64) -> Option<Tmpfs> {
        Self::mount(mib)
            .inspect_err(|why| {
                eprintln!("SKIPPED: the full-disk tests need to mount a tmpfs (root): {why}")
            })
            .ok()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it now, the kernel frees it later.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// Fills `dir`'s filesystem with a file of random bytes until about `leave` bytes are free.
pub fn fill_until_free(dir: &Path, filler: &Path, leave: u64) {
    let to_fill = free_bytes(dir).saturating_sub(leave);
    let mut urandom = File::open("/dev/urandom").unwrap().take(to_fill);
    std::io::copy(&mut urandom, &mut File::create(filler).unwrap()).unwrap();
}

/// Bytes free for unprivileged writes on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `stat` is written by the call; `path` is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    assert_eq!(rc, 0, "statvfs failed: {}", std::io::Error::last_os_error());
    stat.f_bavail as u64 * stat.f_frsize as u64
}
