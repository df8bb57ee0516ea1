//! The core's side of interactive processes and port-forward: the byte
//! transport between the streaming server and a handler.
//!
//! For every session the core makes a private directory
//! `<state_dir>/io/<random>/` (0700, short so unix socket paths stay far
//! below their 107-byte limit), listens on one unix stream socket per
//! wanted stream, names them in the handler request (`Stdio`,
//! `PortForwardRequest.socket`), and accepts the handler's connections
//! once it has answered (the contract has the handler connect before
//! answering). The directory goes as soon as the connections are made;
//! the returned streams are all that is left.
//!
//! What the streaming server gets back is transport-neutral: tokio
//! [`UnixStream`]s (write = to the process's stdin; read = from its
//! stdout/stderr; shutting the stdin stream's write side down is the
//! client's EOF) and a [`ProcessControl`] for resize, kill and the exit
//! code. An exec session must end with [`ProcessControl::wait`] (or
//! [`ProcessControl::cancel`], which kills and waits) so the handler frees
//! the exec.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crius_shim_api::RuntimeHandler;
use crius_shim_api::types;
use futures::future::BoxFuture;
use tokio::net::{UnixListener, UnixStream};

use super::PodManager;
use super::error::{PodError, PodResult};
use super::store::{PodState, new_id};

/// How long the core waits for the handler's connection to a socket
/// after the handler answered (it connects before answering, so this only
/// catches a handler that breaks the contract).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest unix socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// An interactive exec, as an `Exec` streaming URL asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An attach to a container's main process, as an `Attach` streaming URL
/// asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachSpec {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Resize, signal and exit code of one process (an exec, or a container's
/// main process for attach).
#[derive(Clone)]
pub struct ProcessControl {
    handler: Arc<dyn RuntimeHandler>,
    sandbox_id: String,
    container_id: String,
    /// Empty = the container's main process.
    exec_id: String,
}

impl std::fmt::Debug for ProcessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessControl")
            .field("handler", &self.handler.name())
            .field("sandbox_id", &self.sandbox_id)
            .field("container_id", &self.container_id)
            .field("exec_id", &self.exec_id)
            .finish()
    }
}

impl ProcessControl {
    /// The exec's id (empty for attach).
    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }

    /// Resizes the process's terminal.
    pub async fn resize(&self, width: u32, height: u32) -> PodResult<()> {
        self.handler
            .resize_pty(types::ResizePtyRequest {
                sandbox_id: self.sandbox_id.clone(),
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                width,
                height,
            })
            .await
            .map_err(|e| PodError::handler(format!("resizing {}", self.what()), e))
    }

    /// Signals the process; one that already exited is not an error.
    pub async fn kill(&self, signal: u32) -> PodResult<()> {
        self.handler
            .kill_process(types::KillProcessRequest {
                sandbox_id: self.sandbox_id.clone(),
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                signal,
            })
            .await
            .map_err(|e| PodError::handler(format!("signalling {}", self.what()), e))
    }

    /// Waits for the process to exit and returns its exit code. For an
    /// exec this also frees the handler's record of it.
    pub async fn wait(&self) -> PodResult<i32> {
        self.handler
            .wait(types::ProcessRef {
                sandbox_id: self.sandbox_id.clone(),
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            })
            .await
            .map(|r| r.exit_code)
            .map_err(|e| PodError::handler(format!("waiting for {}", self.what()), e))
    }

    /// [`Self::wait`] as an owned future (the streaming server's `exit`).
    pub fn exit_future(&self) -> BoxFuture<'static, PodResult<i32>> {
        let this = self.clone();
        Box::pin(async move { this.wait().await })
    }

    /// Ends an exec whose client went away: SIGKILL, then wait in the
    /// background so the handler frees it. For attach it does nothing (the
    /// container's main process is not the session's to kill).
    pub fn cancel(&self) {
        if self.exec_id.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.kill(libc::SIGKILL as u32).await {
                tracing::warn!(container_id = %this.container_id, exec_id = %this.exec_id, error = %e, "cannot kill exec of a closed session");
            }
            let _ = this.wait().await;
        });
    }

    fn what(&self) -> String {
        if self.exec_id.is_empty() {
            format!("container {}", self.container_id)
        } else {
            format!("exec {} of container {}", self.exec_id, self.container_id)
        }
    }
}

/// The streams of an exec or attach session. Absent streams were not asked
/// for.
#[derive(Debug)]
pub struct ProcessStreams {
    /// To the process's stdin; `shutdown()` is the client's EOF.
    pub stdin: Option<UnixStream>,
    /// The process's stdout (the terminal's output with a tty).
    pub stdout: Option<UnixStream>,
    /// The process's stderr (always empty with a tty).
    pub stderr: Option<UnixStream>,
    pub control: ProcessControl,
}

/// A private directory of session sockets, removed on drop.
struct SocketDir {
    dir: PathBuf,
}

impl SocketDir {
    fn new(state_dir: &Path) -> PodResult<SocketDir> {
        let base = state_dir.join("io");
        crate::perms::ensure_private_dir(&base)
            .map_err(|e| PodError::io(format!("creating {}", base.display()), e))?;
        let name = new_id()?;
        let dir = base.join(&name[..12]);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| PodError::io(format!("creating {}", dir.display()), e))?;
        Ok(SocketDir { dir })
    }

    /// Binds `<dir>/<name>` if `wanted`; the path goes in the request.
    fn listen(&self, name: &str, wanted: bool) -> PodResult<Option<(UnixListener, String)>> {
        if !wanted {
            return Ok(None);
        }
        let path = self.dir.join(name);
        let shown = path.display().to_string();
        if shown.len() > MAX_SOCKET_PATH {
            return Err(PodError::FailedPrecondition(format!(
                "session socket path {shown} is longer than {MAX_SOCKET_PATH} bytes; use a shorter state_dir"
            )));
        }
        let listener =
            UnixListener::bind(&path).map_err(|e| PodError::io(format!("binding {shown}"), e))?;
        Ok(Some((listener, shown)))
    }

    /// Binds a socket for each wanted stream of a session. A terminal
    /// merges stderr into stdout, so with `tty` there is no stderr socket.
    fn listen_stdio(
        &self,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> PodResult<StdioSockets> {
        Ok(StdioSockets {
            stdin: self.listen("i", stdin)?,
            stdout: self.listen("o", stdout)?,
            stderr: self.listen("e", stderr && !tty)?,
            terminal: tty,
        })
    }
}

/// A bound socket and its path, when the stream is wanted.
type Listener = Option<(UnixListener, String)>;

/// The sockets of one session's streams, waiting for the handler.
struct StdioSockets {
    stdin: Listener,
    stdout: Listener,
    stderr: Listener,
    terminal: bool,
}

impl StdioSockets {
    /// The streams as the handler request names them.
    fn stdio(&self) -> types::Stdio {
        types::Stdio {
            stdin: path_of(&self.stdin),
            stdout: path_of(&self.stdout),
            stderr: path_of(&self.stderr),
            terminal: self.terminal,
        }
    }

    /// The handler's connections: stdin, stdout, stderr.
    async fn accept(
        self,
    ) -> PodResult<(Option<UnixStream>, Option<UnixStream>, Option<UnixStream>)> {
        Ok((
            accept(self.stdin, "stdin").await?,
            accept(self.stdout, "stdout").await?,
            accept(self.stderr, "stderr").await?,
        ))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove session socket dir");
        }
    }
}

fn path_of(l: &Listener) -> String {
    l.as_ref().map(|(_, p)| p.clone()).unwrap_or_default()
}

async fn accept(l: Listener, what: &str) -> PodResult<Option<UnixStream>> {
    let Some((listener, path)) = l else {
        return Ok(None);
    };
    match tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await {
        Ok(Ok((stream, _))) => Ok(Some(stream)),
        Ok(Err(e)) => Err(PodError::io(format!("accepting on {path}"), e)),
        Err(_) => Err(PodError::DeadlineExceeded(format!(
            "the handler answered but did not connect to the {what} socket within {ACCEPT_TIMEOUT:?}"
        ))),
    }
}

impl PodManager {
    /// The running container's pod and handler (NotFound / FailedPrecondition
    /// otherwise).
    async fn interactive_target(
        &self,
        container_id: &str,
        what: &str,
    ) -> PodResult<(super::ContainerRecord, Arc<dyn RuntimeHandler>)> {
        let c = self.container_record(container_id)?;
        let pod = self
            .store
            .pod(&c.pod_id)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {} not found", c.pod_id)))?;
        let handler = self.handler(&pod.id, &pod.handler)?;
        let status = handler
            .container_status(types::ContainerRef {
                sandbox_id: c.pod_id.clone(),
                container_id: c.id.clone(),
            })
            .await
            .map_err(|e| PodError::handler(format!("{what}: status of container {}", c.id), e))?;
        if status.state != types::ContainerState::Running as i32 {
            return Err(PodError::FailedPrecondition(format!(
                "{what}: container {} is not running",
                c.id
            )));
        }
        Ok((c, handler))
    }

    /// Attach with stdin needs a container created with `stdin: true`
    /// (checked by the Attach RPC before it hands out a URL, and again
    /// when the session starts).
    pub fn check_attach_stdin(&self, container_id: &str, stdin: bool) -> PodResult<()> {
        let c = self.container_record(container_id)?;
        if stdin && !c.config.stdin {
            return Err(PodError::FailedPrecondition(format!(
                "Attach: container {} was not created with stdin: true",
                c.id
            )));
        }
        Ok(())
    }

    /// Starts an interactive exec and returns its streams. `width` and
    /// `height` are the initial terminal size (0 = the handler's default).
    pub async fn exec_interactive(
        &self,
        spec: ExecSpec,
        width: u32,
        height: u32,
    ) -> PodResult<ProcessStreams> {
        if spec.cmd.is_empty() {
            return Err(PodError::InvalidArgument("Exec: cmd is required".into()));
        }
        if !(spec.stdin || spec.stdout || spec.stderr) {
            return Err(PodError::InvalidArgument(
                "Exec: one of stdin, stdout and stderr must be set".into(),
            ));
        }
        let (c, handler) = self.interactive_target(&spec.container_id, "Exec").await?;
        let exec_id = new_id()?[..16].to_string();
        let dir = SocketDir::new(&self.config.state_dir)?;
        let sockets = dir.listen_stdio(spec.stdin, spec.stdout, spec.stderr, spec.tty)?;
        let resp = handler
            .exec(types::ExecRequest {
                sandbox_id: c.pod_id.clone(),
                container_id: c.id.clone(),
                exec_id: exec_id.clone(),
                cmd: spec.cmd.clone(),
                stdio: Some(sockets.stdio()),
                width,
                height,
            })
            .await
            .map_err(|e| PodError::handler(format!("exec in container {}", c.id), e))?;
        let control = ProcessControl {
            handler,
            sandbox_id: c.pod_id.clone(),
            container_id: c.id.clone(),
            exec_id,
        };
        let streams = sockets.accept().await;
        drop(dir);
        match streams {
            Ok((stdin, stdout, stderr)) => {
                tracing::info!(container_id = %c.id, exec_id = %control.exec_id, pid = resp.pid, tty = spec.tty, "interactive exec started");
                Ok(ProcessStreams {
                    stdin,
                    stdout,
                    stderr,
                    control,
                })
            }
            Err(e) => {
                control.cancel();
                Err(e)
            }
        }
    }

    /// Attaches to a running container's main process.
    pub async fn attach(&self, spec: AttachSpec) -> PodResult<ProcessStreams> {
        if !(spec.stdin || spec.stdout || spec.stderr) {
            return Err(PodError::InvalidArgument(
                "Attach: one of stdin, stdout and stderr must be set".into(),
            ));
        }
        let (c, handler) = self
            .interactive_target(&spec.container_id, "Attach")
            .await?;
        self.check_attach_stdin(&c.id, spec.stdin)?;
        let dir = SocketDir::new(&self.config.state_dir)?;
        let sockets = dir.listen_stdio(spec.stdin, spec.stdout, spec.stderr, spec.tty)?;
        handler
            .attach(types::AttachRequest {
                sandbox_id: c.pod_id.clone(),
                container_id: c.id.clone(),
                stdio: Some(sockets.stdio()),
            })
            .await
            .map_err(|e| PodError::handler(format!("attach to container {}", c.id), e))?;
        let (stdin, stdout, stderr) = sockets.accept().await?;
        drop(dir);
        Ok(ProcessStreams {
            stdin,
            stdout,
            stderr,
            control: ProcessControl {
                handler,
                sandbox_id: c.pod_id.clone(),
                container_id: c.id.clone(),
                exec_id: String::new(),
            },
        })
    }

    /// One connection to `port` inside the pod; the stream carries its
    /// bytes both ways (shut down the write side to half-close).
    pub async fn port_forward(&self, pod_id: &str, port: i32) -> PodResult<UnixStream> {
        if !(1..=65535).contains(&port) {
            return Err(PodError::InvalidArgument(format!(
                "PortForward: port {port} is outside 1-65535"
            )));
        }
        let pod = self.known_pod(pod_id)?;
        let pod_id = pod.id.clone();
        if pod.state != PodState::Ready {
            return Err(PodError::FailedPrecondition(format!(
                "PortForward: pod sandbox {pod_id} is not ready"
            )));
        }
        let handler = self.handler(&pod.id, &pod.handler)?;
        let dir = SocketDir::new(&self.config.state_dir)?;
        let listener = dir.listen("p", true)?;
        handler
            .port_forward(types::PortForwardRequest {
                sandbox_id: pod.id.clone(),
                port: port as u32,
                socket: path_of(&listener),
            })
            .await
            .map_err(|e| {
                PodError::handler(format!("port-forward to port {port} of pod {}", pod.id), e)
            })?;
        let stream = accept(listener, "port-forward").await?;
        drop(dir);
        stream.ok_or_else(|| PodError::FailedPrecondition("no port-forward stream".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn socket_dir_is_private_short_and_removed() {
        let state = tempfile::tempdir().unwrap();
        let dir = SocketDir::new(state.path()).unwrap();
        let path = dir.dir.clone();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let io_mode = std::fs::metadata(state.path().join("io"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(io_mode, 0o700);
        assert!(dir.listen("x", false).unwrap().is_none());
        let listener = dir.listen("o", true).unwrap();
        let sock_path = path_of(&listener);
        assert!(sock_path.len() <= MAX_SOCKET_PATH);
        let client = tokio::spawn(async move { UnixStream::connect(sock_path).await.unwrap() });
        let accepted = accept(listener, "stdout").await.unwrap();
        assert!(accepted.is_some());
        client.await.unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_handler_that_never_connects_times_out() {
        let state = tempfile::tempdir().unwrap();
        let dir = SocketDir::new(state.path()).unwrap();
        let listener = dir.listen("i", true).unwrap();
        let err = accept(listener, "stdin").await.unwrap_err();
        assert!(matches!(err, PodError::DeadlineExceeded(_)), "{err}");
    }

    #[test]
    fn long_state_dirs_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let long = state.path().join("d".repeat(100));
        let dir = SocketDir::new(&long).unwrap();
        let err = dir.listen("o", true).unwrap_err();
        assert!(matches!(err, PodError::FailedPrecondition(_)), "{err}");
    }
}
