//! ExecSync: `<runtime> exec --process <json> --pid-file <file> <id>` run
//! in the foreground as a child of the handler, its stdout and stderr read
//! from pipes into memory.
//!
//! Not under conmon: conmon's exec mode writes the output to a CRI log file
//! and its `--log-size-max` *truncates that file from the start* when the
//! limit is reached, so a large output came back as its last few kilobytes
//! with exit code 0 and no sign of the loss. Reading the pipes here lets
//! the handler know exactly how much the command wrote.
//!
//! The output is kept up to [`EXEC_SYNC_OUTPUT_MAX_BYTES`] (stdout and stderr
//! together, in the order they arrive). Beyond it the rest is read and
//! discarded (the command runs to its end, so its exit code is the real
//! one), and the truncation is said explicitly: a line
//! `crius: ExecSync output truncated: ...` is appended to stderr and a
//! warning is logged. Output is never silently shortened.
//!
//! The runtime's own log (`--log`, JSON) tells a command the runtime could
//! not start (no such binary) from one that exited non-zero.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::monitor::{ExecSyncOutput, ExecSyncSpec, MonitorError};

/// Most output (stdout + stderr) one ExecSync returns. The CRI response
/// carries it in one gRPC message: the daemon's encoding limit is above it
/// (`crius` serves messages up to this plus 1 MiB); clients must accept
/// messages that large to get it all (the kubelet's limit is 16 MiB; its
/// probes read only the first 10 KiB anyway).
pub const EXEC_SYNC_OUTPUT_MAX_BYTES: u64 = 32 << 20;

/// How long the output pipes may stay open after the runtime exited (a
/// background process of the command holding them): then reading stops.
const PIPE_DRAIN_WAIT: Duration = Duration::from_secs(2);
/// Guard against a runtime that does not exit after its process was killed.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Runs `spec` in its container through the runtime at `runtime_path`
/// (state root `runtime_root`), keeping at most `cap` bytes of output.
pub async fn run(
    runtime_path: &Path,
    runtime_root: &Path,
    spec: &ExecSyncSpec,
    cap: u64,
) -> Result<ExecSyncOutput, MonitorError> {
    tokio::fs::create_dir_all(&spec.scratch_dir)
        .await
        .map_err(|source| MonitorError::Io {
            action: "create exec scratch dir",
            path: spec.scratch_dir.clone(),
            source,
        })?;
    let dir = tempfile::Builder::new()
        .prefix("exec-")
        .tempdir_in(&spec.scratch_dir)
        .map_err(|source| MonitorError::Io {
            action: "create exec dir in",
            path: spec.scratch_dir.clone(),
            source,
        })?;
    let process_path = dir.path().join("process.json");
    let process_json = serde_json::to_vec(&spec.process).map_err(|e| MonitorError::Io {
        action: "serialize exec process spec",
        path: process_path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_private(&process_path, &process_json)
        .await
        .map_err(|source| MonitorError::Io {
            action: "write",
            path: process_path.clone(),
            source,
        })?;
    let pid_file = dir.path().join("pid");
    let log_path = dir.path().join("runtime.log");

    let mut child = runtime_exec(
        runtime_path,
        runtime_root,
        &log_path,
        &process_path,
        &pid_file,
        &spec.id,
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .map_err(|source| MonitorError::Spawn {
        path: runtime_path.to_path_buf(),
        source,
    })?;
    let budget = Arc::new(Budget::new(cap));
    let stdout = tokio::spawn(collect(child.stdout.take(), budget.clone()));
    let stderr = tokio::spawn(collect(child.stderr.take(), budget.clone()));

    let mut timed_out = false;
    let status = match spec.timeout {
        None => child.wait().await,
        Some(timeout) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                timed_out = true;
                kill_exec_process(&pid_file);
                match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                }
            }
        },
    }
    .map_err(|source| MonitorError::Spawn {
        path: runtime_path.to_path_buf(),
        source,
    })?;
    let mut stdout = finish(stdout).await;
    let mut stderr = finish(stderr).await;

    if !timed_out && let Some(message) = runtime_error(&log_path) {
        // The runtime could not run the command at all.
        return Err(MonitorError::RuntimeFailed {
            id: spec.id.clone(),
            action: "exec in",
            message,
        });
    }
    let dropped = budget.dropped();
    if dropped > 0 {
        tracing::warn!(
            container_id = %spec.id,
            kept = cap,
            dropped,
            "ExecSync output above the cap was discarded; the response says so on stderr"
        );
        stderr.extend_from_slice(
            format!(
                "\ncrius: ExecSync output truncated: {dropped} bytes beyond the limit of {cap} bytes (stdout and stderr together) were discarded\n"
            )
            .as_bytes(),
        );
    }
    stdout.shrink_to_fit();
    Ok(ExecSyncOutput {
        stdout,
        stderr,
        exit_code: if timed_out { -1 } else { exit_code(status) },
        timed_out,
    })
}

async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path: PathBuf = path.to_path_buf();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?
            .write_all(&bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The bytes still allowed into memory, shared by both streams, and how
/// many were discarded.
struct Budget {
    left: AtomicU64,
    dropped: AtomicU64,
}

impl Budget {
    fn new(cap: u64) -> Self {
        Self {
            left: AtomicU64::new(cap),
            dropped: AtomicU64::new(0),
        }
    }

    /// How many of `n` bytes may be kept; the rest count as dropped.
    fn take(&self, n: u64) -> u64 {
        let mut kept = 0;
        let _ = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                kept = left.min(n);
                Some(left - kept)
            });
        if kept < n {
            self.dropped.fetch_add(n - kept, Ordering::SeqCst);
        }
        kept
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Reads `pipe` to EOF, keeping what the budget allows.
async fn collect<R: AsyncRead + Unpin>(pipe: Option<R>, budget: Arc<Budget>) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut pipe) = pipe else {
        return out;
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let kept = budget.take(n as u64) as usize;
                out.extend_from_slice(&buf[..kept]);
            }
        }
    }
}

/// The collected output once the pipe closed, or what arrived until
/// [`PIPE_DRAIN_WAIT`] after the runtime exited.
async fn finish(task: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = task.abort_handle();
    match tokio::time::timeout(PIPE_DRAIN_WAIT, task).await {
        Ok(Ok(out)) => out,
        Ok(Err(_)) => Vec::new(),
        Err(_) => {
            // A process left behind by the command still holds the pipe.
            abort.abort();
            Vec::new()
        }
    }
}

/// `<runtime> exec` of the process spec at `process_path` in container
/// `id`. The runtime writes the process's pid to `pid_file` (for killing
/// it) and its own errors as JSON lines to `log_path` (read back by
/// [`runtime_error`]).
pub(crate) fn runtime_exec(
    runtime_path: &Path,
    runtime_root: &Path,
    log_path: &Path,
    process_path: &Path,
    pid_file: &Path,
    id: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(runtime_path);
    command
        .arg(format!("--root={}", runtime_root.display()))
        .arg(format!("--log={}", log_path.display()))
        .arg("--log-format=json")
        .arg("exec")
        .arg("--process")
        .arg(process_path)
        .arg("--pid-file")
        .arg(pid_file)
        .arg(id);
    command
}

/// The first error the runtime logged (`--log-format json`), if any.
pub(crate) fn runtime_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        let level = v.get("level")?.as_str()?;
        matches!(level, "error" | "fatal").then(|| {
            v.get("msg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_string()
        })
    })
}

/// A shell-style exit code: the signal number plus 128 for a killed process.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// SIGKILLs the exec'd process (and its process group when it leads one).
/// `false` when no process was found.
pub(crate) fn kill_exec_process(pidfile: &Path) -> bool {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::{Pid, getpgid};
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return false;
    };
    let pid = Pid::from_raw(pid);
    // The group kill can take the process with it before the direct kill:
    // either success counts.
    let group =
        getpgid(Some(pid)).is_ok_and(|pg| pg == pid) && killpg(pid, Signal::SIGKILL).is_ok();
    kill(pid, Signal::SIGKILL).is_ok() || group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_counts_what_it_drops() {
        let b = Budget::new(10);
        assert_eq!(b.take(4), 4);
        assert_eq!(b.take(4), 4);
        assert_eq!(b.take(4), 2);
        assert_eq!(b.take(5), 0);
        assert_eq!(b.dropped(), 7);
    }

    #[tokio::test]
    async fn collect_keeps_up_to_the_budget() {
        let data = vec![b'a'; 200_000];
        let budget = Arc::new(Budget::new(150_000));
        let out = collect(Some(&data[..]), budget.clone()).await;
        assert_eq!(out.len(), 150_000);
        assert_eq!(budget.dropped(), 50_000);
    }

    #[test]
    fn runtime_errors_come_from_the_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"exec failed: not found \"}\n",
        )
        .unwrap();
        assert_eq!(
            runtime_error(&log).as_deref(),
            Some("exec failed: not found")
        );
        assert_eq!(runtime_error(&dir.path().join("none")), None);
    }
}
