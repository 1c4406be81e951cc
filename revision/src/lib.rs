//! The source revision of a build, for `--version`: called from the `build.rs` of each binary
//! crate (riteraft-host, riteraft-cli) so both print it the same way.
//!
//! [`emit`] sets `RITERAFT_BUILD_VERSION` for the crate being built, e.g.
//! `0.1.0 (rev 1a2b3c4d5e6f, 2026-12-02)` or `0.1.0 (rev 1a2b3c4d5e6f-dirty, 2026-12-02)`, read
//! with `env!("RITERAFT_BUILD_VERSION")`. The revision comes from, in order:
//! 1. the `RITERAFT_REVISION` environment variable, for builds from a source archive or a
//!    packager that knows better than the checkout (it is used as given);
//! 2. `git` (short commit hash, `-dirty` if tracked files differ from it, commit date);
//! 3. `unknown`: the build never fails for want of git or of a repository.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable a packager sets to name the revision when there is no git checkout.
pub const REVISION_ENV: &str = "RITERAFT_REVISION";

/// Prints the `cargo:` lines that set `RITERAFT_BUILD_VERSION` and say when to run again.
///
/// Cargo runs the build script again only when HEAD moves (a commit, a checkout: `.git/HEAD` and
/// the branch's ref file), when `RITERAFT_REVISION` changes, or when the crate's own `src/`
/// changes (which recompiles the crate anyway, so the git calls then cost nothing extra). So
/// `-dirty` means: tracked files differed from the commit when this crate was last compiled.
/// Watching the git index instead would catch more, but `git status` itself rewrites the index,
/// and every rewrite would relink the binaries on this two-core machine.
pub fn emit() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-env-changed={REVISION_ENV}");
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("src").display()
    );
    for path in git_files_naming_head(&manifest_dir) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let revision = std::env::var(REVISION_ENV)
        .ok()
        .filter(|revision| !revision.trim().is_empty())
        .map(|revision| revision.trim().to_string())
        .or_else(|| git_revision(&manifest_dir))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RITERAFT_BUILD_VERSION={version} (rev {revision})");
}

/// `1a2b3c4d5e6f[-dirty], 2026-12-02`, or None without git or outside a checkout.
fn git_revision(dir: &Path) -> Option<String> {
    let head = git(dir, &["log", "-1", "--format=%H %cs"])?;
    let (hash, date) = head.split_once(' ')?;
    let short = hash.get(..12).unwrap_or(hash);
    // --no-optional-locks: a status run from a build must not rewrite the index under a
    // concurrent git command (or trigger this script again).
    let dirty = git(
        dir,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_some_and(|status| !status.is_empty());
    Some(format!(
        "{short}{}, {date}",
        if dirty { "-dirty" } else { "" }
    ))
}

/// `HEAD` and, on a branch, the branch's ref file (absent once refs are packed: then
/// `packed-refs`). Only paths that exist: cargo reruns a script on every build for a missing one.
fn git_files_naming_head(dir: &Path) -> Vec<PathBuf> {
    let git_path = |name: &str| {
        git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", name],
        )
        .map(PathBuf::from)
    };
    let mut paths = vec![git_path("HEAD")];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        paths.push(git_path(&branch));
        paths.push(git_path("packed-refs"));
    }
    paths
        .into_iter()
        .flatten()
        .filter(|path| path.exists())
        .collect()
}

/// The trimmed stdout of a successful `git -C dir args...`, or None (no git, not a checkout).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}
