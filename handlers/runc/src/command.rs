//! The one place the handler starts helper processes, behind a trait so the
//! logic around it (feature parsing, readiness) is unit-testable without the
//! real binaries.

use std::io;
use std::path::Path;
use std::process::{Output, Stdio};

use async_trait::async_trait;

/// Runs a program to completion and collects its output.
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs `program args...` with stdin closed and returns its exit status,
    /// stdout and stderr. An `Err` means the program could not be started.
    async fn output(&self, program: &Path, args: &[&str]) -> io::Result<Output>;
}

/// [`CommandRunner`] over `tokio::process`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioCommandRunner;

#[async_trait]
impl CommandRunner for TokioCommandRunner {
    async fn output(&self, program: &Path, args: &[&str]) -> io::Result<Output> {
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            // A caller that gives up (timeout) must not leave the child behind.
            .kill_on_drop(true)
            .output()
            .await
    }
}
