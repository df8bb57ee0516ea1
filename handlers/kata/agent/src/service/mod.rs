//! The ttrpc services: `grpc.AgentService` and `grpc.Health`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crius_agent_proto::agent::{self, *};
use crius_agent_proto::agent_ttrpc::AgentService;
use crius_agent_proto::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse, health_check_response,
};
use crius_agent_proto::health_ttrpc::Health;
use crius_agent_proto::oci_json;
use crius_agent_proto::types;
use protobuf::well_known_types::empty::Empty;
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::{Code, get_status};

use crate::reaper::{self, Reaper};
use crate::runc::{ProcStdio, Runc};
use crate::state::{Container, Process, Sandbox, bundle_dir};
use crate::stdio::{self, OutBuf, Stdin};
use crate::{cgroup, mount, network, spec};

mod lifecycle;
mod rpc;

pub use rpc::services;

/// Errors of the agent's operations, mapped to ttrpc status codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Internal(_) => Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(get_status(code, e.to_string()))
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

type Result<T> = std::result::Result<T, Error>;

/// The file `pid` runs (device and inode of `/proc/PID/exe`), None once
/// it is gone. Read through the magic link, so it works for a binary the
/// process cannot see by path any more (the runtime's, after pivot_root)
/// and for runc's memfd copy of itself alike.
async fn exe_identity(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    tokio::fs::metadata(format!("/proc/{pid}/exe"))
        .await
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Waits (at most 2 s) until `pid` no longer runs `before`, the runtime's
/// init (`runc init`, crun's child waiting on `exec.fifo`): `runc start` /
/// `crun start` return before the init process execs the container's
/// command, and a signal in between reaches the runtime (runc's Go runtime
/// exits 2, crun's child dies of it) instead of the command (a
/// StopContainer right after start saw exit 2, not the command's SIGTERM
/// handling).
async fn exec_done(pid: u32, before: Option<(u64, u64)>) {
    let Some(before) = before else { return };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if exe_identity(pid).await != Some(before) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes a file only root may read (a spec carries the container's env).
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| internal(format!("{}: {e}", path.display())))
}

/// How long a waited-for exec is kept for the host to read the rest of its
/// output (a background child may hold the pipes open for ever).
const EXEC_DRAIN: Duration = Duration::from_secs(10);

pub struct Agent {
    runc: Runc,
    reaper: Reaper,
    pod_pid_namespace: crate::pidns::PodPidNamespace,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    sandbox: tokio::sync::Mutex<Sandbox>,
    oom_tx: tokio::sync::mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl Agent {
    pub fn new(runc: Runc, reaper: Reaper) -> Arc<Self> {
        let (oom_tx, oom_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Agent {
            runc,
            reaper,
            pod_pid_namespace: Default::default(),
            containers: Mutex::new(HashMap::new()),
            sandbox: tokio::sync::Mutex::new(Sandbox::default()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container(&self, cid: &str) -> Result<Arc<Container>> {
        self.table()
            .get(cid)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {cid:?} not found")))
    }

    fn process(&self, cid: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(cid)?.process(exec_id).ok_or_else(|| {
            Error::NotFound(format!(
                "process {exec_id:?} of container {cid:?} not found"
            ))
        })
    }

    /// Polls every container's cgroup for new OOM kills.
    pub async fn watch_oom(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let containers: Vec<Arc<Container>> = self.table().values().cloned().collect();
            for c in containers {
                let kills = cgroup::oom_kills(&c.id);
                if kills > c.oom_seen.swap(kills, Ordering::SeqCst) {
                    tracing::info!(container = %c.id, kills, "OOM kill in container");
                    let _ = self.oom_tx.send(c.id.clone());
                }
            }
        }
    }

    /// Starts a process through `runc create` / `runc exec -d` with stdio the
    /// agent owns. `args` is the runc command line up to (not including)
    /// the container id.
    async fn spawn_process(
        &self,
        mut args: Vec<String>,
        cid: &str,
        dir: &Path,
        name: &str,
        terminal: bool,
    ) -> Result<Process> {
        let pid_file = dir.join(format!("{name}.pid"));
        let _ = tokio::fs::remove_file(&pid_file).await;
        args.extend(["--pid-file".into(), pid_file.display().to_string()]);
        let log = dir.join(format!("{name}.runc.log"));
        let stdout = OutBuf::default();
        let (stdio, stdin_w, stderr) = if terminal {
            // Not in the bundle: `/run/crius/containers/<64-char id>/exec-<id>`
            // is too long for a unix socket path. runc's connection is
            // accepted (and the socket removed) before the spawn returns.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let sock = Path::new(crate::state::STATE_DIR)
                .join("console")
                .join(format!("{n}.sock"));
            args.extend(["--console-socket".into(), sock.display().to_string()]);
            (
                ProcStdio::Tty {
                    console_socket: sock,
                },
                None,
                OutBuf::closed(),
            )
        } else {
            let (in_r, in_w) = stdio::pipe().map_err(internal)?;
            let (out_r, out_w) = stdio::pipe().map_err(internal)?;
            let (err_r, err_w) = stdio::pipe().map_err(internal)?;
            stdout.spawn_pump(out_r);
            let stderr = OutBuf::default();
            stderr.spawn_pump(err_r);
            (
                ProcStdio::Pipes {
                    stdin: in_r,
                    stdout: out_w,
                    stderr: err_w,
                },
                Some(in_w),
                stderr,
            )
        };
        args.push(cid.into());
        let master = self
            .runc
            .spawn_detached(&args, stdio, &log)
            .await
            .map_err(internal)?;
        let pid: u32 = tokio::fs::read_to_string(&pid_file)
            .await
            .map_err(|e| internal(format!("read {}: {e}", pid_file.display())))?
            .trim()
            .parse()
            .map_err(|e| internal(format!("pid file {}: {e}", pid_file.display())))?;
        let exit = self.reaper.watch(pid);
        let (stdin, tty) = match master {
            Some(m) => {
                let out = m.try_clone().map_err(internal)?;
                let input = m.try_clone().map_err(internal)?;
                stdout.spawn_pump(out);
                (Stdin::new(Some(input)), Some(m))
            }
            None => (Stdin::new(stdin_w), None),
        };
        Ok(Process {
            pid,
            exit,
            stdin,
            stdout,
            stderr,
            tty,
        })
    }
}
