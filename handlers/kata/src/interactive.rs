//! Processes in the VM the core drives: `Exec` (interactive), `ExecSync`,
//! `Wait`, `KillProcess` and `ResizePty`, all through the guest agent.
//!
//! An interactive exec is `ExecProcess` plus one task per stream: the
//! agent's `ReadStdout`/`ReadStderr` of the exec are copied into the core's
//! stdout/stderr sockets (and drained even when the client did not ask for
//! a stream, so the process never blocks on a full pipe), the stdin socket
//! into `WriteStdin`, its EOF into `CloseStdin` (^D with a terminal).
//! `WaitProcess` gives the exit code; the exec's exit is published once its
//! output was copied (bounded by [`DRAIN_AFTER_EXIT`]). The core sends
//! `KillProcess` (SIGKILL) when the client goes away and always ends with
//! `Wait`, after which the shim forgets the exec; the agent forgets it
//! once its exit was waited for and its output read.
//!
//! A command the guest runtime cannot start (no such binary) is reported as
//! the shell would: exit code 127 (126 for other start failures) with the
//! runtime's reason on stderr, for `Exec` and `ExecSync` alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crius_agent_proto::oci_spec;
use crius_agent_proto::oci_spec::runtime::Process;
use crius_shim_api::types::{
    ContainerState, ExecRequest, ExecResponse, ExecSyncRequest, ExecSyncResponse,
    KillProcessRequest, ProcessRef, ResizePtyRequest, WaitResponse,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerResult, checks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::agent_client::{AgentClient, AgentError};
use crate::container::{Container, now_nanos};
use crate::shim::{PodShim, SIGKILL_EXIT, agent_err};

/// How long an exec's output may still drain after it exited (a background
/// child can hold the pipes open for ever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Bytes read from the agent per call.
const READ_CHUNK: u32 = 64 * 1024;
/// Output ExecSync keeps per stream (as kubelet bounds probe output).
const EXEC_SYNC_MAX_OUTPUT: usize = 16 << 20;

/// Bytes of stdin sent to the agent per `WriteStdin`.
pub(crate) fn stdin_chunk_size() -> usize {
    32 * 1024
}

/// How an exec ended: exit code and when (unix ns).
type Exit = Option<(i32, i64)>;

/// One interactive exec, until `Wait` answered for it.
#[derive(Debug)]
pub(crate) struct ExecSession {
    terminal: bool,
    exit: watch::Receiver<Exit>,
}

impl ExecSession {
    fn exited(&self) -> Exit {
        *self.exit.borrow()
    }
}

/// The pod's live (and exited, not yet waited) execs.
#[derive(Debug, Default)]
pub(crate) struct Execs {
    map: Mutex<HashMap<(String, String), Arc<ExecSession>>>,
}

impl Execs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<ExecSession>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn get(&self, cid: &str, exec_id: &str) -> Option<Arc<ExecSession>> {
        self.lock()
            .get(&(cid.to_string(), exec_id.to_string()))
            .cloned()
    }
    /// The session, or NotFound naming it.
    fn find(&self, cid: &str, exec_id: &str) -> HandlerResult<Arc<ExecSession>> {
        self.get(cid, exec_id).ok_or_else(|| {
            HandlerError::not_found(format!("exec {exec_id} of container {cid} not found"))
        })
    }
    fn remove(&self, cid: &str, exec_id: &str) {
        self.lock().remove(&(cid.to_string(), exec_id.to_string()));
    }
}

/// Connects to one of the core's stdio sockets (empty path = not wanted).
pub(crate) async fn connect_stdio(what: &str, path: &str) -> HandlerResult<Option<UnixStream>> {
    if path.is_empty() {
        return Ok(None);
    }
    UnixStream::connect(path).await.map(Some).map_err(|e| {
        HandlerError::invalid_argument(format!("cannot connect to the {what} socket {path}: {e}"))
    })
}

/// The agent's answer as a handler error of the same kind.
pub(crate) fn agent_status(what: &str, err: AgentError) -> HandlerError {
    let kind = match err.code() {
        Some(ttrpc::Code::NOT_FOUND) => ErrorKind::NotFound,
        Some(ttrpc::Code::ALREADY_EXISTS) => ErrorKind::AlreadyExists,
        Some(ttrpc::Code::INVALID_ARGUMENT) => ErrorKind::InvalidArgument,
        Some(ttrpc::Code::FAILED_PRECONDITION) => ErrorKind::FailedPrecondition,
        _ => return agent_err(what, err),
    };
    HandlerError::new(kind, format!("{what}: {err}"))
}

/// The result of an agent call on a process: NOT_FOUND means it exited
/// meanwhile, which is no error to the caller; anything else is
/// [`agent_status`] of `what`.
fn unless_exited(
    result: Result<(), AgentError>,
    what: impl FnOnce() -> String,
) -> HandlerResult<()> {
    match result {
        Ok(()) => Ok(()),
        Err(err) if err.code() == Some(ttrpc::Code::NOT_FOUND) => Ok(()),
        Err(err) => Err(agent_status(&what(), err)),
    }
}

/// `ExecProcess` failed because the guest runtime could not start the
/// command (the agent reports `runc exec` failing): the reason, if so.
fn start_failure(err: &AgentError) -> Option<String> {
    if err.code() != Some(ttrpc::Code::INTERNAL) {
        return None;
    }
    let message = err.to_string();
    message.contains(" exec failed").then_some(message)
}

/// Exit code for a command that could not be started: 127 when it was not
/// found (as shells report), 126 otherwise.
fn exec_failure_code(message: &str) -> i32 {
    let m = message.to_ascii_lowercase();
    if m.contains("not found") || m.contains("no such file") {
        127
    } else {
        126
    }
}

/// The container's process spec with another command (and terminal): the
/// exec gets the container's user, env, cwd and limits.
fn exec_process(
    c: &Container,
    cmd: &[String],
    terminal: bool,
    size: Option<(u32, u32)>,
) -> Process {
    let mut process = c.spec.process().clone().unwrap_or_else(|| {
        // Not `Default`: oci-spec's default process is an example `sh`.
        serde_json::from_value(serde_json::json!({"cwd": "/", "user": {"uid": 0, "gid": 0}}))
            .unwrap_or_default()
    });
    process.set_args(Some(cmd.to_vec()));
    process.set_terminal(Some(terminal));
    process.set_console_size(size.and_then(|(w, h)| {
        oci_spec::runtime::BoxBuilder::default()
            .width(u64::from(w))
            .height(u64::from(h))
            .build()
            .ok()
    }));
    process
}

/// Copies one output stream of an exec into `sock` (if any) until EOF;
/// keeps draining when the client went away.
async fn pump_output(
    agent: AgentClient,
    cid: String,
    exec_id: String,
    stdout: bool,
    mut sock: Option<UnixStream>,
) {
    loop {
        let read = if stdout {
            agent.read_stdout(&cid, &exec_id, READ_CHUNK).await
        } else {
            agent.read_stderr(&cid, &exec_id, READ_CHUNK).await
        };
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) | Err(_) => break,
        };
        if let Some(s) = &mut sock
            && s.write_all(&chunk).await.is_err()
        {
            sock = None;
        }
    }
    if let Some(mut s) = sock {
        let _ = s.shutdown().await;
    }
}

/// Copies the client's stdin into the exec; its EOF closes the exec's
/// stdin (the agent sends ^D with a terminal).
async fn pump_stdin(agent: AgentClient, cid: String, exec_id: String, mut sock: UnixStream) {
    let mut buf = vec![0u8; stdin_chunk_size()];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if agent.write_stdin(&cid, &exec_id, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = agent.close_stdin(&cid, &exec_id).await;
}

/// All of an exec's stdout or stderr, appended to `out` as it comes (so a
/// timed-out ExecSync still has what arrived), bounded.
async fn collect(
    agent: AgentClient,
    cid: String,
    exec_id: String,
    stdout: bool,
    out: Arc<Mutex<Vec<u8>>>,
) {
    loop {
        let read = if stdout {
            agent.read_stdout(&cid, &exec_id, READ_CHUNK).await
        } else {
            agent.read_stderr(&cid, &exec_id, READ_CHUNK).await
        };
        match read {
            Ok(Some(chunk)) => {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                let room = EXEC_SYNC_MAX_OUTPUT.saturating_sub(out.len());
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fn take(out: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()))
}

impl PodShim {
    fn new_exec_id(&self) -> String {
        let n = self
            .exec_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("exec-{}-{n}", std::process::id())
    }

    fn running(
        &self,
        sandbox_id: &str,
        container_id: &str,
        what: &str,
    ) -> HandlerResult<Arc<Container>> {
        let c = self.container(sandbox_id, container_id)?;
        if !c.status().is(ContainerState::Running) {
            return Err(HandlerError::failed_precondition(format!(
                "cannot {what} container {}: it is not running",
                c.id
            )));
        }
        Ok(c)
    }

    pub(crate) async fn do_exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        let size = checks::exec_request(&req)?.map(|(w, h)| (u32::from(w), u32::from(h)));
        let stdio = req.stdio.clone().unwrap_or_default();
        let c = self.running(&req.sandbox_id, &req.container_id, "exec in")?;
        let key = (c.id.clone(), req.exec_id.clone());
        if self.execs.get(&key.0, &key.1).is_some() {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!("exec {} of container {} already exists", req.exec_id, c.id),
            ));
        }
        let agent = self.agent().await?;
        let stdin = connect_stdio("stdin", &stdio.stdin).await?;
        let mut stdout = connect_stdio("stdout", &stdio.stdout).await?;
        let mut stderr = connect_stdio("stderr", &stdio.stderr).await?;

        let process = exec_process(&c, &req.cmd, stdio.terminal, size);
        let started = std::time::Instant::now();
        let (exit_tx, exit_rx) = watch::channel(None);
        let session = Arc::new(ExecSession {
            terminal: stdio.terminal,
            exit: exit_rx,
        });
        match agent.exec_process(&c.id, &req.exec_id, &process).await {
            Ok(()) => {}
            Err(err) => {
                let Some(message) = start_failure(&err) else {
                    return Err(agent_status(
                        &format!("exec in container {}: guest agent ExecProcess", c.id),
                        err,
                    ));
                };
                // As a shell reports it: the reason on stderr (the
                // terminal with a tty), exit 127/126 through Wait.
                let code = exec_failure_code(&message);
                tracing::info!(container_id = %c.id, exec_id = %req.exec_id, exit_code = code, "exec could not start");
                if let Some(s) = stderr.as_mut().or(stdout.as_mut()) {
                    let _ = s.write_all(format!("{message}\n").as_bytes()).await;
                }
                for s in [stdout, stderr].into_iter().flatten() {
                    let mut s = s;
                    let _ = s.shutdown().await;
                }
                drop(stdin);
                exit_tx.send_replace(Some((code, now_nanos())));
                self.execs.lock().insert(key, session);
                return Ok(ExecResponse { pid: 0 });
            }
        }
        if let Some((w, h)) = size
            && let Err(err) = agent.tty_win_resize(&c.id, &req.exec_id, h, w).await
        {
            tracing::debug!(container_id = %c.id, exec_id = %req.exec_id, error = %err, "initial terminal size");
        }
        let (cid, eid) = (c.id.clone(), req.exec_id.clone());
        let out = tokio::spawn(pump_output(
            agent.clone(),
            cid.clone(),
            eid.clone(),
            true,
            stdout,
        ));
        let err = (!stdio.terminal).then(|| {
            tokio::spawn(pump_output(
                agent.clone(),
                cid.clone(),
                eid.clone(),
                false,
                stderr,
            ))
        });
        let stdin_task = match stdin {
            Some(sock) => Some(tokio::spawn(pump_stdin(
                agent.clone(),
                cid.clone(),
                eid.clone(),
                sock,
            ))),
            None => {
                // No client stdin: the process reads EOF, as with /dev/null
                // (a terminal keeps its input open).
                if !stdio.terminal {
                    let _ = agent.close_stdin(&cid, &eid).await;
                }
                None
            }
        };
        tokio::spawn(async move {
            let code = match agent.wait_process(&cid, &eid).await {
                Ok(code) => code,
                Err(err) => {
                    tracing::warn!(container_id = %cid, exec_id = %eid, error = %err, "lost the exec");
                    SIGKILL_EXIT
                }
            };
            let exited_at = now_nanos();
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
                let _ = out.await;
                if let Some(err) = err {
                    let _ = err.await;
                }
            })
            .await;
            if let Some(task) = stdin_task {
                task.abort();
            }
            tracing::info!(container_id = %cid, exec_id = %eid, exit_code = code, "exec exited");
            exit_tx.send_replace(Some((code, exited_at)));
        });
        self.execs.lock().insert(key, session);
        tracing::info!(
            container_id = %c.id,
            exec_id = %req.exec_id,
            tty = stdio.terminal,
            start_ms = started.elapsed().as_millis() as u64,
            "exec started in the VM"
        );
        Ok(ExecResponse { pid: 0 })
    }

    pub(crate) async fn do_wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        if req.exec_id.is_empty() {
            let mut exited = c.exited.subscribe();
            let _ = exited.wait_for(|e| *e).await;
            let status = c.status();
            return Ok(WaitResponse {
                exit_code: status.exit_code,
                exited_at: status.finished_at,
                reason: status.reason,
            });
        }
        let session = self.execs.find(&c.id, &req.exec_id)?;
        let mut exit = session.exit.clone();
        let (code, at) = match exit.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or((SIGKILL_EXIT, now_nanos())),
            Err(_) => (SIGKILL_EXIT, now_nanos()),
        };
        self.execs.remove(&c.id, &req.exec_id);
        Ok(WaitResponse {
            exit_code: code,
            exited_at: at,
            reason: String::new(),
        })
    }

    pub(crate) async fn do_kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        let signal = checks::signal(req.signal)? as u32;
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        let target = if req.exec_id.is_empty() {
            if !c.status().is(ContainerState::Running) {
                return Ok(());
            }
            // The main process only (the agent's init), not every process.
            c.id.clone()
        } else {
            let session = self.execs.find(&c.id, &req.exec_id)?;
            if session.exited().is_some() {
                return Ok(());
            }
            req.exec_id.clone()
        };
        let agent = self.agent().await?;
        unless_exited(agent.signal_process(&c.id, &target, signal).await, || {
            format!("signalling {target} of container {}", c.id)
        })
    }

    pub(crate) async fn do_resize_pty(&self, req: ResizePtyRequest) -> HandlerResult<()> {
        let (width, height) = checks::terminal_size(req.width, req.height)?;
        let (width, height) = (u32::from(width), u32::from(height));
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        if req.exec_id.is_empty() {
            if !c.stdio.tty {
                return Err(HandlerError::failed_precondition(format!(
                    "container {} has no terminal",
                    c.id
                )));
            }
            if !c.status().is(ContainerState::Running) {
                return Ok(());
            }
        } else {
            let session = self.execs.find(&c.id, &req.exec_id)?;
            if !session.terminal {
                return Err(HandlerError::failed_precondition(format!(
                    "exec {} of container {} has no terminal",
                    req.exec_id, c.id
                )));
            }
            if session.exited().is_some() {
                return Ok(());
            }
        }
        let agent = self.agent().await?;
        unless_exited(
            agent
                .tty_win_resize(&c.id, &req.exec_id, height, width)
                .await,
            || format!("resizing the terminal in container {}", c.id),
        )
    }

    pub(crate) async fn do_exec_sync(
        &self,
        req: ExecSyncRequest,
    ) -> HandlerResult<ExecSyncResponse> {
        if req.cmd.is_empty() {
            return Err(HandlerError::invalid_argument("ExecSync needs a command"));
        }
        if req.timeout_seconds < 0 {
            return Err(HandlerError::invalid_argument(format!(
                "ExecSync: negative timeout {}",
                req.timeout_seconds
            )));
        }
        let c = self.running(&req.sandbox_id, &req.container_id, "exec in")?;
        let agent = self.agent().await?;
        let exec_id = self.new_exec_id();
        let process = exec_process(&c, &req.cmd, false, None);
        if let Err(err) = agent.exec_process(&c.id, &exec_id, &process).await {
            let Some(message) = start_failure(&err) else {
                return Err(agent_status(
                    &format!("container {}: guest agent ExecProcess", c.id),
                    err,
                ));
            };
            return Ok(ExecSyncResponse {
                stdout: Vec::new(),
                stderr: format!("{message}\n").into_bytes(),
                exit_code: exec_failure_code(&message),
                timed_out: false,
            });
        }
        // ExecSync has no stdin: the command reads EOF.
        let _ = agent.close_stdin(&c.id, &exec_id).await;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let run = async {
            let output = |stdout: bool, into: &Arc<Mutex<Vec<u8>>>| {
                collect(
                    agent.clone(),
                    c.id.clone(),
                    exec_id.clone(),
                    stdout,
                    into.clone(),
                )
            };
            let (_, _, code) = tokio::join!(
                output(true, &stdout),
                output(false, &stderr),
                agent.wait_process(&c.id, &exec_id)
            );
            code
        };
        let result = if req.timeout_seconds > 0 {
            tokio::time::timeout(Duration::from_secs(req.timeout_seconds as u64), run)
                .await
                .ok()
        } else {
            Some(run.await)
        };
        match result {
            Some(code) => Ok(ExecSyncResponse {
                stdout: take(&stdout),
                stderr: take(&stderr),
                exit_code: code.map_err(|err| {
                    agent_err(&format!("container {}: guest agent WaitProcess", c.id), err)
                })?,
                timed_out: false,
            }),
            None => {
                // Timed out: kill it, reap it (so the agent forgets it) in
                // the background, and answer with what it printed so far.
                let _ = agent
                    .signal_process(&c.id, &exec_id, libc::SIGKILL as u32)
                    .await;
                let (cid, eid) = (c.id.clone(), exec_id.clone());
                tokio::spawn(async move {
                    let _ = agent.wait_process(&cid, &eid).await;
                });
                Ok(ExecSyncResponse {
                    stdout: take(&stdout),
                    stderr: take(&stderr),
                    exit_code: -1,
                    timed_out: true,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_failures_are_reported_as_shells_do() {
        assert_eq!(
            exec_failure_code(
                "runc exec failed (exit 1): exec: \"/nonexistent\": stat /nonexistent: no such file or directory"
            ),
            127
        );
        assert_eq!(
            exec_failure_code("exec: \"nope\": executable file not found in $PATH"),
            127
        );
        assert_eq!(exec_failure_code("permission denied"), 126);
    }

    #[test]
    fn the_exec_inherits_the_container_process() {
        let spec = serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2",
            "process": {"args": ["sleep"], "cwd": "/w", "env": ["A=1"], "user": {"uid": 7, "gid": 7},
                        "consoleSize": {"width": 1, "height": 1}}}))
        .unwrap();
        let c = Container::new(
            "c".into(),
            spec,
            None,
            Default::default(),
            Default::default(),
        );
        let p = exec_process(&c, &["id".to_string()], true, Some((100, 30)));
        let p = serde_json::to_value(&p).unwrap();
        assert_eq!(p["args"], serde_json::json!(["id"]));
        assert_eq!(
            (
                p["cwd"].as_str(),
                p["terminal"].as_bool(),
                &p["user"]["uid"]
            ),
            (Some("/w"), Some(true), &serde_json::json!(7))
        );
        assert_eq!(
            p["consoleSize"],
            serde_json::json!({"width": 100, "height": 30})
        );
        let p = exec_process(&c, &["id".to_string()], false, None);
        assert!(
            serde_json::to_value(&p)
                .unwrap()
                .get("consoleSize")
                .is_none()
        );
    }
}
