//! Interactive processes of [`OciHandler`]: `Exec`, `Attach`, `ResizePty`,
//! `KillProcess` and `Wait`.
//!
//! **Exec** runs `<runtime> exec --process <json> <id>` in the foreground
//! as a child of the handler (the way CRI-O streams execs), not under
//! conmon: the handler holds the child and reaps its exit code itself.
//! - Without a terminal the child's stdin/stdout/stderr are pipes copied
//!   to and from the core's sockets; the runtime hands them through to the
//!   process. EOF on the stdin socket closes the process's stdin.
//! - With a terminal the handler allocates a pty and gives its slave to the
//!   runtime as stdio (a new session with the slave as controlling
//!   terminal). The runtime, seeing a host terminal, makes the container's
//!   own console and copies between the two; resizing the handler's pty
//!   raises SIGWINCH in the runtime, which resizes the container console.
//!   EOF on the stdin socket sends the terminal's EOF character (^D).
//! - A command the runtime cannot start (no such binary) exits 127, other
//!   start failures 126, as `ExecSync` reports them; the runtime's reason
//!   is on the process's stderr (the terminal with a tty). The runtime's
//!   own log (`--log`, JSON) tells a start failure from a process that
//!   exited non-zero.
//! - The exec's files (process spec, pid file, runtime log) live in
//!   `containers/<id>/exec/i-<exec_id>/` and go when the process ends; its
//!   exit code stays in memory until `Wait` has answered for it.
//!
//! **Attach** connects to conmon's attach socket (`SOCK_SEQPACKET`; each
//! packet read is one stream-tagged frame, `\x02` stdout, `\x03` stderr;
//! stdin is written untagged) and resizes through conmon's control FIFO
//! (`1 <height> <width>\n`). conmon was started with `-i` when the
//! container's config asked for stdin, and without `--leave-stdin-open`
//! under `stdin_once`, so conmon itself closes the container's stdin when
//! the first attach session ends (the handler half-closes the socket when
//! the client's stdin ends).
//!
//! **Wait** on the main process watches conmon's exit file on a 100 ms
//! timer tick (no thread blocked, no hot loop).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crius_shim_api::types::{
    AttachRequest, ExecRequest, ExecResponse, KillProcessRequest, ProcessRef, ResizePtyRequest,
    WaitResponse,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerResult, checks};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::OciHandler;
use crate::execsync::{exit_code, runtime_error, runtime_exec};
use crate::fdio::{FdStream, connect_seqpacket, set_winsize};
use crate::ops::{Observed, exec_failure_code, exec_process, exit_reason};
use crate::pidfd::ConmonExit;
use crate::state::{Container, now_ns};

mod attach;

use attach::{attach_session, write_ctl};

/// How often `Wait` on a main process looks at the exit file when it
/// cannot sleep on conmon's exit.
const EXIT_TICK: Duration = Duration::from_millis(100);
/// How often it looks anyway while it sleeps on conmon's exit (a safety net
/// for an exit that conmon's own exit does not follow).
const EXIT_WATCH_TICK: Duration = Duration::from_secs(5);
/// How long after an exec's process exited its output may still drain
/// (a background child can hold the pipes open for ever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long `Exec` waits for the runtime's pid file before answering
/// without a pid.
const PID_FILE_WAIT: Duration = Duration::from_secs(5);
/// The terminal's end-of-file character (VEOF, ^D).
const EOF_CHAR: u8 = 0x04;

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExecExit {
    pub code: i32,
    pub at: i64,
}

/// One interactive exec.
#[derive(Debug)]
pub(crate) struct ExecSession {
    dir: PathBuf,
    /// The runtime's foreground process (`runc exec`).
    runtime_pid: u32,
    /// The pty master, when the exec has a terminal.
    pty: Option<FdStream>,
    exit: watch::Receiver<Option<ExecExit>>,
}

impl ExecSession {
    fn exited(&self) -> Option<ExecExit> {
        *self.exit.borrow()
    }

    /// The exec'd process's host pid, once the runtime wrote it.
    fn process_pid(&self) -> Option<i32> {
        read_pid(&self.dir.join("pid"))
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|p| *p > 1)
}

/// The live (and exited, not yet waited) execs of one handler.
#[derive(Debug, Default)]
pub(crate) struct Execs {
    map: Mutex<HashMap<(String, String), Arc<ExecSession>>>,
}

impl Execs {
    fn get(&self, container_id: &str, exec_id: &str) -> Option<Arc<ExecSession>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(container_id.to_string(), exec_id.to_string()))
            .cloned()
    }
    /// The session, or NotFound for an exec that was never started here
    /// or was already waited for.
    fn known(&self, container_id: &str, exec_id: &str) -> HandlerResult<Arc<ExecSession>> {
        self.get(container_id, exec_id).ok_or_else(|| {
            HandlerError::not_found(format!(
                "exec {exec_id} of container {container_id} not found"
            ))
        })
    }
    fn insert(&self, container_id: &str, exec_id: &str, session: Arc<ExecSession>) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (container_id.to_string(), exec_id.to_string());
        if map.contains_key(&key) {
            return false;
        }
        map.insert(key, session);
        true
    }
    fn remove(&self, container_id: &str, exec_id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(container_id.to_string(), exec_id.to_string()));
    }
    fn contains(&self, container_id: &str, exec_id: &str) -> bool {
        self.get(container_id, exec_id).is_some()
    }
}

/// Connects to one of the core's stdio sockets (empty path = not wanted).
async fn connect_stdio(what: &str, path: &str) -> HandlerResult<Option<UnixStream>> {
    if path.is_empty() {
        return Ok(None);
    }
    UnixStream::connect(path).await.map(Some).map_err(|e| {
        HandlerError::invalid_argument(format!("cannot connect to the {what} socket {path}: {e}"))
    })
}

/// Copies `from` into `to` until EOF or an error on either side.
async fn pump<R, W>(mut from: R, mut to: W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::io::copy(&mut from, &mut to).await
}

impl OciHandler {
    fn not_running(&self, ctr: &Container, what: &str) -> HandlerError {
        HandlerError::failed_precondition(format!(
            "handler {}: cannot {what} container {}: it is not running",
            self.config.name, ctr.id
        ))
    }

    async fn running_container(
        &self,
        sandbox_id: &str,
        container_id: &str,
        what: &str,
    ) -> HandlerResult<Arc<Container>> {
        let (_, ctr) = self.container(sandbox_id, container_id)?;
        if self.observe(&ctr).await? != Observed::Running {
            return Err(self.not_running(&ctr, what));
        }
        Ok(ctr)
    }

    pub(crate) async fn do_exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        let size = checks::exec_request(&req)?;
        let stdio = req.stdio.clone().unwrap_or_default();
        let ctr = self
            .running_container(&req.sandbox_id, &req.container_id, "exec in")
            .await?;
        if self.execs.contains(&ctr.id, &req.exec_id) {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "exec {} of container {} already exists",
                    req.exec_id, ctr.id
                ),
            ));
        }
        let process = exec_process(&ctr, &req.cmd, stdio.terminal, size)?;

        let dir = ctr.exec_dir().join(format!("i-{}", req.exec_id));
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .await
            .map_err(|e| self.err(format!("create {}", dir.display()), e))?;
        let cleanup = |e: HandlerError| {
            // blocking-ok: error paths only, removing the dir just made
            // (a process.json and at most a log).
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let process_path = dir.join("process.json");
        let written = async {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&process_path)
                .await?;
            f.write_all(&serde_json::to_vec(&process).unwrap_or_default())
                .await?;
            f.flush().await
        };
        written
            .await
            .map_err(|e| cleanup(self.err(format!("write {}", process_path.display()), e)))?;

        let stdin_sock = connect_stdio("stdin", &stdio.stdin)
            .await
            .map_err(cleanup)?;
        let stdout_sock = connect_stdio("stdout", &stdio.stdout)
            .await
            .map_err(cleanup)?;
        let stderr_sock = connect_stdio("stderr", &stdio.stderr)
            .await
            .map_err(cleanup)?;

        let log_path = dir.join("runtime.log");
        let mut command = runtime_exec(
            &self.config.runtime_path,
            &self.config.runtime_root,
            &log_path,
            &process_path,
            &dir.join("pid"),
            &ctr.id,
        );
        command.kill_on_drop(false);
        let mut pty_master = None;
        if stdio.terminal {
            let (w, h) = size.unwrap_or((80, 24));
            let winsize = nix::pty::Winsize {
                ws_row: h,
                ws_col: w,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(Some(&winsize), None)
                .map_err(|e| cleanup(self.err("allocate a pty", e)))?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| self.err("dup pty", e));
            let (s0, s1) = (
                dup(&pty.slave).map_err(cleanup)?,
                dup(&pty.slave).map_err(cleanup)?,
            );
            command
                .stdin(Stdio::from(s0))
                .stdout(Stdio::from(s1))
                .stderr(Stdio::from(pty.slave));
            // SAFETY: runs in the forked child before exec; setsid and
            // ioctl(TIOCSCTTY) are async-signal-safe and touch no memory of
            // the parent. stdin is the pty slave set up above.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            pty_master =
                Some(FdStream::new(pty.master).map_err(|e| cleanup(self.err("pty master", e)))?);
        } else {
            let piped = |wanted: bool| {
                if wanted {
                    Stdio::piped()
                } else {
                    Stdio::null()
                }
            };
            command
                .stdin(piped(stdin_sock.is_some()))
                .stdout(piped(stdout_sock.is_some()))
                .stderr(piped(stderr_sock.is_some()));
        }
        let mut child = command.spawn().map_err(|e| {
            cleanup(self.err(
                format!("run {} exec", self.config.runtime_path.display()),
                e,
            ))
        })?;
        // The parent's copies of the pty slave must close, or the master
        // never reads EOF.
        drop(command);
        let runtime_pid = child.id().unwrap_or(0);

        let (exit_tx, exit_rx) = watch::channel(None);
        let session = Arc::new(ExecSession {
            dir: dir.clone(),
            runtime_pid,
            pty: pty_master.clone(),
            exit: exit_rx,
        });
        if !self.execs.insert(&ctr.id, &req.exec_id, session.clone()) {
            let _ = child.start_kill();
            return Err(cleanup(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "exec {} of container {} already exists",
                    req.exec_id, ctr.id
                ),
            )));
        }

        // Output: pty master or the child's pipes, into the core's sockets.
        let mut outputs = tokio::task::JoinSet::new();
        let mut stdin_task = None;
        match &pty_master {
            Some(master) => {
                if let Some(mut out) = stdout_sock {
                    let master = master.clone();
                    outputs.spawn(async move {
                        let _ = pump(master, &mut out).await;
                        let _ = out.shutdown().await;
                    });
                }
                if let Some(mut err) = stderr_sock {
                    // A terminal has one output stream: stderr stays empty.
                    outputs.spawn(async move {
                        let _ = err.shutdown().await;
                    });
                }
                if let Some(mut input) = stdin_sock {
                    let mut master = master.clone();
                    stdin_task = Some(tokio::spawn(async move {
                        if pump(&mut input, &mut master).await.is_ok() {
                            let _ = master.write_all(&[EOF_CHAR]).await;
                        }
                    }));
                }
            }
            None => {
                if let (Some(mut out), Some(pipe)) = (stdout_sock, child.stdout.take()) {
                    outputs.spawn(async move {
                        let _ = pump(pipe, &mut out).await;
                        let _ = out.shutdown().await;
                    });
                }
                if let (Some(mut err), Some(pipe)) = (stderr_sock, child.stderr.take()) {
                    outputs.spawn(async move {
                        let _ = pump(pipe, &mut err).await;
                        let _ = err.shutdown().await;
                    });
                }
                if let (Some(mut input), Some(mut pipe)) = (stdin_sock, child.stdin.take()) {
                    stdin_task = Some(tokio::spawn(async move {
                        let _ = pump(&mut input, &mut pipe).await;
                        // Dropping the pipe closes the process's stdin.
                        let _ = pipe.shutdown().await;
                    }));
                }
            }
        }

        let container_id = ctr.id.clone();
        let exec_id = req.exec_id.clone();
        let handler = self.config.name.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let mut code = status.map(exit_code).unwrap_or(255);
            let log = log_path.clone();
            let failure = tokio::task::spawn_blocking(move || runtime_error(&log))
                .await
                .ok()
                .flatten();
            if let Some(message) = &failure
                && code != 0
            {
                code = exec_failure_code(message);
            }
            let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
                while outputs.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                outputs.abort_all();
            }
            if let Some(task) = stdin_task {
                task.abort();
            }
            tracing::info!(handler = %handler, container_id = %container_id, exec_id = %exec_id, exit_code = code, runtime_error = ?failure, "exec finished");
            let _ = exit_tx.send(Some(ExecExit { code, at: now_ns() }));
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
        });

        // Answer with the process's pid once the runtime wrote it (or the
        // runtime gave up).
        let deadline = tokio::time::Instant::now() + PID_FILE_WAIT;
        let mut exit = session.exit.clone();
        let pid = loop {
            if let Some(pid) = session.process_pid() {
                break pid as u32;
            }
            if session.exited().is_some() || tokio::time::Instant::now() >= deadline {
                break 0;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), exit.changed()).await;
        };
        tracing::info!(handler = %self.config.name, container_id = %ctr.id, exec_id = %req.exec_id, pid, runtime_pid, tty = stdio.terminal, "exec started");
        Ok(ExecResponse { pid })
    }

    pub(crate) async fn do_wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        if !req.exec_id.is_empty() {
            let session = self.execs.known(&req.container_id, &req.exec_id)?;
            let mut exit = session.exit.clone();
            let done = loop {
                if let Some(done) = *exit.borrow_and_update() {
                    break done;
                }
                if exit.changed().await.is_err() {
                    // The supervisor is gone without a result: a panic.
                    break ExecExit {
                        code: 255,
                        at: now_ns(),
                    };
                }
            };
            self.execs.remove(&req.container_id, &req.exec_id);
            return Ok(WaitResponse {
                exit_code: done.code,
                exited_at: done.at,
                reason: String::new(),
            });
        }
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        // Woken by conmon's exit rather than by a tick; once it has fired
        // (conmon gone, the runtime still says running) or without a pidfd,
        // the tick again.
        let mut conmon_exit = ConmonExit::watch(ctr.conmon_pid);
        loop {
            match self.observe(&ctr).await? {
                Observed::Exited {
                    exit_code,
                    finished_at,
                    oom_killed,
                    reason,
                    ..
                } => {
                    return Ok(WaitResponse {
                        exit_code,
                        exited_at: finished_at.max(ctr.started_at()),
                        reason: exit_reason(&reason, oom_killed, exit_code).to_string(),
                    });
                }
                Observed::Unknown(message) => {
                    return Err(HandlerError::failed_precondition(format!(
                        "handler {}: cannot wait for container {}: {message}",
                        self.config.name, ctr.id
                    )));
                }
                Observed::Created | Observed::Running => match conmon_exit.take() {
                    Some(exit) => {
                        if tokio::time::timeout(EXIT_WATCH_TICK, exit.exited())
                            .await
                            .is_err()
                        {
                            conmon_exit = Some(exit);
                        }
                    }
                    None => tokio::time::sleep(EXIT_TICK).await,
                },
            }
        }
    }

    pub(crate) async fn do_kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        let signal = checks::signal(req.signal)?;
        if !req.exec_id.is_empty() {
            let session = self.execs.known(&req.container_id, &req.exec_id)?;
            if session.exited().is_some() {
                return Ok(());
            }
            // Before the runtime wrote the pid file the runtime itself
            // takes the signal (it forwards signals to the process).
            let pid = session.process_pid().unwrap_or(session.runtime_pid as i32);
            if pid <= 1 {
                return Ok(());
            }
            let sig = nix::sys::signal::Signal::try_from(signal)
                .map_err(|e| HandlerError::invalid_argument(format!("signal {signal}: {e}")))?;
            return match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(e) => Err(self.err(
                    format!(
                        "signal exec {} of container {}",
                        req.exec_id, req.container_id
                    ),
                    e,
                )),
            };
        }
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        match self.observe(&ctr).await? {
            Observed::Exited { .. } | Observed::Unknown(_) => Ok(()),
            _ => self.signal(&ctr, signal, false).await,
        }
    }

    pub(crate) async fn do_resize_pty(&self, req: ResizePtyRequest) -> HandlerResult<()> {
        let (width, height) = checks::terminal_size(req.width, req.height)?;
        if !req.exec_id.is_empty() {
            let session = self.execs.known(&req.container_id, &req.exec_id)?;
            let Some(pty) = &session.pty else {
                return Err(HandlerError::failed_precondition(format!(
                    "exec {} of container {} has no terminal",
                    req.exec_id, req.container_id
                )));
            };
            if session.exited().is_some() {
                return Ok(());
            }
            set_winsize(pty.as_fd(), width, height)
                .map_err(|e| self.err(format!("resize the terminal of exec {}", req.exec_id), e))?;
            // runc passes the new size on to the container's console on
            // SIGWINCH; crun does not. Setting it on the process's own
            // terminal as well serves both.
            if let Some(pid) = session.process_pid() {
                let _ = tokio::task::spawn_blocking(move || {
                    resize_process_terminal(pid, width, height)
                })
                .await;
            }
            return Ok(());
        }
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        if !ctr.terminal {
            return Err(HandlerError::failed_precondition(format!(
                "container {} has no terminal (its config has tty: false)",
                ctr.id
            )));
        }
        if self.observe(&ctr).await? != Observed::Running {
            return Ok(());
        }
        let fifo = ctr.ctl_fifo();
        let line = format!("1 {height} {width}\n");
        tokio::task::spawn_blocking(move || write_ctl(&fifo, line.as_bytes()))
            .await
            .map_err(|e| self.err("resize task", e))?
            .map_err(|e| self.err(format!("write conmon's control FIFO of {}", ctr.id), e))
    }

    pub(crate) async fn do_attach(&self, req: AttachRequest) -> HandlerResult<()> {
        let stdio = req.stdio.clone().unwrap_or_default();
        let ctr = self
            .running_container(&req.sandbox_id, &req.container_id, "attach to")
            .await?;
        if !stdio.stdin.is_empty() && !ctr.stdin {
            return Err(HandlerError::failed_precondition(format!(
                "container {} was not created with stdin: true; cannot attach its stdin",
                ctr.id
            )));
        }
        if stdio.terminal != ctr.terminal {
            return Err(HandlerError::invalid_argument(format!(
                "attach to container {}: tty {} does not match the container's tty {}",
                ctr.id, stdio.terminal, ctr.terminal
            )));
        }
        let link = ctr.attach_link();
        let sock = tokio::task::spawn_blocking(move || connect_seqpacket(&link, "attach"))
            .await
            .map_err(|e| self.err("attach task", e))?
            .map_err(|e| {
                self.err(
                    format!("connect to conmon's attach socket of {}", ctr.id),
                    e,
                )
            })?;
        let conmon = FdStream::new(sock).map_err(|e| self.err("attach socket", e))?;
        let stdin_sock = connect_stdio("stdin", &stdio.stdin).await?;
        let stdout_sock = connect_stdio("stdout", &stdio.stdout).await?;
        let stderr_sock = connect_stdio("stderr", &stdio.stderr).await?;

        let id = ctr.id.clone();
        let handler = self.config.name.clone();
        tokio::spawn(async move {
            attach_session(conmon, stdin_sock, stdout_sock, stderr_sock).await;
            tracing::info!(handler = %handler, container_id = %id, "attach session ended");
        });
        Ok(())
    }
}

/// Sets the size of the terminal on the first of fds 0-2 of `pid` that is
/// one (reached through `/proc/<pid>/fd`, opened without becoming our
/// controlling terminal).
fn resize_process_terminal(pid: i32, width: u16, height: u16) {
    for fd in 0..3 {
        let path = format!("/proc/{pid}/fd/{fd}");
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&path)
        else {
            continue;
        };
        if nix::unistd::isatty(&file).unwrap_or(false) {
            if let Err(e) = set_winsize(file.as_fd(), width, height) {
                tracing::debug!(%path, error = %e, "cannot resize the exec's terminal");
            }
            return;
        }
    }
}
