//! Interactive exec of the example handler (no terminal): how a handler
//! implements `Exec`, `Wait` and `KillProcess` of contract version 2.
//!
//! The core listens on one unix stream socket per stream and names them in
//! `ExecRequest.stdio`; the handler connects to each non-empty path
//! *before* answering, then copies bytes: stdin socket → the process's
//! stdin (EOF closes it), the process's stdout/stderr → their sockets
//! (closed when the output ends). The exit code waits in memory until
//! `Wait` has answered for the exec; then the exec is forgotten.
//!
//! `runc exec` forwards catchable signals to the process it started, but
//! SIGKILL would only kill runc and orphan the process; so `runc exec`
//! writes the process's pid to a file (`<state_dir>/execs/`) and
//! `KillProcess` signals that pid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use crius_shim_api::types::{
    ExecRequest, ExecResponse, KillProcessRequest, ProcessRef, WaitResponse,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerResult};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::{HelloHandler, now_nanos};

/// One running (or exited, not yet waited) exec.
pub(crate) struct Exec {
    /// The `runc exec` process.
    pid: u32,
    /// Where `runc exec` writes the pid of the process in the container.
    pid_file: PathBuf,
    exit: watch::Receiver<Option<(i32, i64)>>,
}

/// The execs of the handler, by (container id, exec id).
#[derive(Default)]
pub(crate) struct Execs(Mutex<HashMap<(String, String), Exec>>);

impl Execs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Exec>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(container_id: &str, exec_id: &str) -> (String, String) {
    (container_id.to_string(), exec_id.to_string())
}

async fn connect(path: &str) -> HandlerResult<Option<UnixStream>> {
    if path.is_empty() {
        return Ok(None);
    }
    UnixStream::connect(path)
        .await
        .map(Some)
        .map_err(|e| HandlerError::invalid_argument(format!("hello: connect {path}: {e}")))
}

impl HelloHandler {
    pub(crate) async fn do_exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        self.container(&req.container_id)?;
        let stdio = req.stdio.unwrap_or_default();
        if stdio.terminal {
            return Err(HandlerError::unimplemented(
                &self.name,
                "Exec with a terminal",
            ));
        }
        if req.cmd.is_empty() {
            return Err(HandlerError::invalid_argument(
                "hello: Exec with an empty command",
            ));
        }
        if self
            .execs
            .lock()
            .contains_key(&key(&req.container_id, &req.exec_id))
        {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!("hello: exec {} exists", req.exec_id),
            ));
        }
        // Connect to every socket before answering (the contract).
        let stdin = connect(&stdio.stdin).await?;
        let stdout = connect(&stdio.stdout).await?;
        let stderr = connect(&stdio.stderr).await?;
        let piped = |s: &Option<UnixStream>| {
            if s.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let pid_dir = self.root.with_file_name("execs");
        tokio::fs::create_dir_all(&pid_dir).await.map_err(|e| {
            HandlerError::internal(format!("hello: create {}: {e}", pid_dir.display()))
        })?;
        let pid_file = pid_dir.join(format!("{}.pid", req.exec_id));
        let mut child = self
            .runc()
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&req.container_id)
            .args(&req.cmd)
            .stdin(piped(&stdin))
            .stdout(piped(&stdout))
            .stderr(piped(&stderr))
            .spawn()
            .map_err(|e| HandlerError::internal(format!("hello: runc exec: {e}")))?;
        let pid = child.id().unwrap_or(0);
        let mut copies = Vec::new();
        if let (Some(mut sock), Some(mut pipe)) = (stdout, child.stdout.take()) {
            copies.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut pipe, &mut sock).await;
                let _ = sock.shutdown().await;
            }));
        }
        if let (Some(mut sock), Some(mut pipe)) = (stderr, child.stderr.take()) {
            copies.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut pipe, &mut sock).await;
                let _ = sock.shutdown().await;
            }));
        }
        let input = match (stdin, child.stdin.take()) {
            (Some(mut sock), Some(mut pipe)) => Some(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sock, &mut pipe).await;
                // Dropping the pipe closes the process's stdin.
            })),
            _ => None,
        };
        let (tx, rx) = watch::channel(None);
        let done_pid_file = pid_file.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    status
                        .code()
                        .or(status.signal().map(|s| 128 + s))
                        .unwrap_or(-1)
                }
                Err(_) => -1,
            };
            for copy in copies {
                let _ = copy.await;
            }
            if let Some(input) = input {
                input.abort();
            }
            let _ = tokio::fs::remove_file(&done_pid_file).await;
            let _ = tx.send(Some((code, now_nanos())));
        });
        self.execs.lock().insert(
            key(&req.container_id, &req.exec_id),
            Exec {
                pid,
                pid_file,
                exit: rx,
            },
        );
        Ok(ExecResponse { pid })
    }

    pub(crate) async fn do_wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        if req.exec_id.is_empty() {
            return Err(HandlerError::unimplemented(
                &self.name,
                "Wait on a container's main process",
            ));
        }
        let k = key(&req.container_id, &req.exec_id);
        let mut exit = self
            .execs
            .lock()
            .get(&k)
            .map(|e| e.exit.clone())
            .ok_or_else(|| {
                HandlerError::not_found(format!("hello: exec {} not found", req.exec_id))
            })?;
        let (code, at) = loop {
            if let Some(done) = *exit.borrow_and_update() {
                break done;
            }
            if exit.changed().await.is_err() {
                break (-1, now_nanos());
            }
        };
        self.execs.lock().remove(&k);
        Ok(WaitResponse {
            exit_code: code,
            exited_at: at,
            reason: String::new(),
        })
    }

    pub(crate) async fn do_kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        if req.exec_id.is_empty() {
            let _ = self
                .runc_ok(&["kill", &req.container_id, &req.signal.to_string()])
                .await;
            return Ok(());
        }
        let target = self
            .execs
            .lock()
            .get(&key(&req.container_id, &req.exec_id))
            .map(|e| (e.pid, e.pid_file.clone(), e.exit.borrow().is_some()));
        match target {
            None => Err(HandlerError::not_found(format!(
                "hello: exec {} not found",
                req.exec_id
            ))),
            Some((_, _, true)) => Ok(()),
            Some((runc_pid, pid_file, false)) => {
                // The process itself; `runc exec` (which forwards what it
                // can catch) only if it has not written the pid yet.
                let pid = process_pid(&pid_file).await.unwrap_or(runc_pid);
                // SAFETY: kill(2) takes two integers and touches no memory.
                let _ = unsafe { libc::kill(pid as i32, req.signal as i32) };
                Ok(())
            }
        }
    }
}

/// The pid `runc exec` wrote, waiting up to a second for the file (it is
/// written once the process has started).
async fn process_pid(pid_file: &Path) -> Option<u32> {
    for _ in 0..20 {
        if let Ok(text) = tokio::fs::read_to_string(pid_file).await
            && let Ok(pid) = text.trim().parse()
        {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
