//! Fixtures for crius's integration tests.
//!
//! - [`registry::Registry`]: a throw-away `docker-registry` on 127.0.0.1.
//! - [`image`]: OCI/Docker images built in Rust from `busybox-static` and
//!   pushed over the distribution HTTP API, plus corrupt and malicious ones.
//! - [`daemon::Daemon`]: the real `crius` binary on a temporary socket, with
//!   CRI clients ([`cri`]).
//!
//! Tests that need root or host tools call [`require_root`] /
//! [`require_tools`] (from `crius-testkit`) first and return early when
//! they say so: under `CI=true` a missing prerequisite fails the test,
//! elsewhere the test prints `SKIP <test>: <reason>` and passes, so
//! `cargo test` as an unprivileged user still runs the rest.

pub mod cri;
pub mod daemon;
pub mod host;
pub mod image;
pub mod kata;
pub mod pods;
pub mod registry;
pub mod systemd;

use std::path::{Path, PathBuf};

pub use crius_testkit::{require, require_root, require_root_and_tools, require_tools, skip};
pub use daemon::{Daemon, DaemonBuilder};
pub use registry::Registry;

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
