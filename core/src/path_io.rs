//! An I/O error that says what was being done to which path, for the
//! modules whose errors report failed file operations.

use std::io;
use std::path::{Path, PathBuf};

/// `op` ("read", "remove", ...) on `path` failed with `source`.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct PathIoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathIoError {
    /// For `map_err`: turns the I/O error of `op` on `path` into a
    /// `PathIoError` (or any error made from one).
    pub fn of<E: From<PathIoError>>(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> E {
        let path = path.to_path_buf();
        move |source| PathIoError { op, path, source }.into()
    }
}
