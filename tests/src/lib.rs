//! Fixtures for crius's integration tests.
//!
//! - [`registry::Registry`]: a throw-away `docker-registry` on 127.0.0.1.
//! - [`image`]: OCI/Docker images built in Rust from `busybox-static` and
//!   pushed over the distribution HTTP API, plus corrupt and malicious ones.
//! - [`daemon::Daemon`]: the real `crius` binary on a temporary socket, with
//!   CRI clients ([`cri`]).
//!
//! Tests that need root or host tools call [`require_root`] /
//! [`require_tools`] first and return early (printing why) when those are
//! missing, so `cargo test` as an unprivileged user still passes the rest.

pub mod cri;
pub mod daemon;
pub mod host;
pub mod image;
pub mod registry;

use std::path::{Path, PathBuf};

pub use daemon::{Daemon, DaemonBuilder};
pub use registry::Registry;

/// Returns false (after printing why) when the test process is not root.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIP: this test needs root (run `sudo scripts/test`)");
        false
    }
}

/// Returns false (after printing which one is missing) unless every path in
/// `tools` exists. Absolute paths are checked as-is; bare names on `$PATH`.
pub fn require_tools(tools: &[&str]) -> bool {
    for tool in tools {
        if find_tool(tool).is_none() {
            eprintln!("SKIP: {tool} is not installed (run `sudo scripts/setup`)");
            return false;
        }
    }
    true
}

/// Root plus the tools: what every daemon-driving test checks first.
pub fn require_root_and_tools(tools: &[&str]) -> bool {
    require_root() && require_tools(tools)
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = Path::new(tool);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.exists())
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// A short random-ish token for unique file names (no RNG dependency needed:
/// pid, time and a counter are unique enough within one test run).
pub fn unique_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = sha2::Sha256::new();
    use sha2::Digest;
    hasher.update(format!("{}-{nanos}-{n}", std::process::id()));
    hex::encode(&hasher.finalize()[..6])
}

/// Every regular file, symlink or special file below `dir` (not directories),
/// as paths relative to `dir`. A missing `dir` counts as empty.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                _ => out.push(path.strip_prefix(dir).unwrap_or(&path).to_path_buf()),
            }
        }
    }
    out.sort();
    out
}

/// Every entry (files and directories) directly inside `dir`; empty if missing.
pub fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}
