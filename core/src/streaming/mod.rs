//! The streaming server behind the CRI `Exec`, `Attach` and `PortForward`
//! RPCs.
//!
//! The RPCs validate the request and hand out a one-time URL on this
//! server (`http(s)://ADDR:PORT/exec/<token>`, `/attach/<token>`,
//! `/portforward/<token>`); the kubelet (or the API server through it) then
//! connects to that URL and upgrades the connection to one of the
//! Kubernetes streaming protocols:
//!
//! - SPDY/3.1 ([`spdy`]) with the remote-command subprotocols
//!   `v4.channel.k8s.io` … `channel.k8s.io` (v1) or `portforward.k8s.io`;
//! - WebSocket ([`websocket`]) with the channel protocols
//!   `v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io` and their
//!   base64 variants, for remote commands and port-forward.
//!
//! Layers: the types here and `session` (shared state, idle tracking,
//! HTTP helpers) at the bottom; `remotecommand` (transport-neutral session
//! logic) and `status` on them; the protocol modules [`spdy`] and
//! [`websocket`] on those; `routes` and `server` at the top. No module
//! imports one above it.
//!
//! With `streaming.tls_cert` and `tls_key` the server speaks HTTPS only
//! (rustls, `tls` module) and hands out `https://` URLs.
//!
//! What actually runs the process or opens the connection in the pod is a
//! [`StreamBackend`]; this module only speaks the protocols. Every session
//! is bounded (`max_sessions`), has an idle timeout, and on the client going
//! away calls the backend's `cancel` so no process or socket is left behind.

use std::fmt;
use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

mod backend;
mod remotecommand;
mod routes;
mod server;
mod session;
pub mod spdy;
mod status;
mod tls;
pub mod token;
pub mod websocket;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

pub use backend::PodStreamBackend;
pub use server::StreamingServer;

/// A terminal size as the Kubernetes protocols carry it (`{"Width":..,"Height":..}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// What `Exec` and `Attach` URLs run are the pod manager's own requests:
/// the backend hands them on unchanged.
pub use crate::pod::{AttachSpec, ExecSpec};

/// A request waiting behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec(ExecSpec),
    Attach(AttachSpec),
    /// `ports` is the CRI request's list; empty means any port the client
    /// asks for on the connection (SPDY clients name ports per stream).
    PortForward {
        pod_id: String,
        ports: Vec<u16>,
    },
}

impl StreamRequest {
    /// The URL path segment of this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) => "exec",
            StreamRequest::Attach(_) => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        }
    }
}

/// A byte stream in both directions (one TCP connection into the pod).
pub trait Duplex: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Duplex for T {}

/// A boxed [`Duplex`].
pub type BoxedDuplex = Pin<Box<dyn Duplex>>;

/// The stdio of a process the backend started or attached to.
pub struct ProcessStreams {
    /// Dropping it (or `shutdown`) closes the process's stdin.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// `None` with a tty (the terminal merges stderr into stdout).
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Terminal size changes; tty only.
    pub resize: Option<mpsc::Sender<TerminalSize>>,
    /// Resolves to the exit code of the process.
    pub exit: BoxFuture<'static, Result<i32, StreamError>>,
    /// The client went away before the process exited: kill the exec
    /// process, or detach from the container.
    pub cancel: Box<dyn FnOnce() + Send>,
}

impl fmt::Debug for ProcessStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessStreams")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish_non_exhaustive()
    }
}

/// A failure of the streaming server or its backend.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    #[error("{0}")]
    Failed(String),
    #[error("streaming configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StreamError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> StreamError {
        let context = context.into();
        move |source| StreamError::Io { context, source }
    }
}

/// What the streaming server asks of the runtime: processes and
/// connections in pods. Implemented on top of the handler contract.
#[async_trait]
pub trait StreamBackend: Send + Sync {
    /// Starts a process in the container with the requested stdio; with a
    /// terminal, of `initial_size` when the client sent one up front.
    async fn exec(
        &self,
        req: ExecSpec,
        initial_size: Option<TerminalSize>,
    ) -> Result<ProcessStreams, StreamError>;
    /// Connects to the stdio of the container's main process.
    async fn attach(&self, req: AttachSpec) -> Result<ProcessStreams, StreamError>;
    /// Opens one TCP connection to `port` inside the pod's network
    /// namespace (or VM).
    async fn port_forward(&self, pod_id: &str, port: u16) -> Result<BoxedDuplex, StreamError>;
}
