//! The daemon's [`StreamBackend`]: interactive sessions through the handler
//! contract, via the pod manager's byte transport ([`crate::pod::interactive`]).

use std::sync::Arc;

use async_trait::async_trait;
use crius_shim_api::ErrorKind;
use futures::FutureExt;
use tokio::sync::mpsc;

use super::{AttachSpec, BoxedDuplex, ExecSpec, ProcessStreams, StreamBackend, StreamError};
use crate::pod::{self, PodError, PodManager};

/// Runs every session through the handler of the container's pod.
pub struct PodStreamBackend {
    pods: Arc<PodManager>,
}

impl PodStreamBackend {
    pub fn new(pods: Arc<PodManager>) -> Self {
        Self { pods }
    }
}

/// Resize messages queued per session before the client is slowed down.
const RESIZE_QUEUE: usize = 8;

fn stream_error(err: PodError) -> StreamError {
    match err {
        PodError::NotFound(m) => StreamError::NotFound(m),
        PodError::InvalidArgument(m) => StreamError::InvalidArgument(m),
        PodError::Handler { ref source, .. } if source.kind == ErrorKind::Unimplemented => {
            StreamError::Unimplemented(err.to_string())
        }
        PodError::Handler { ref source, .. } if source.kind == ErrorKind::NotFound => {
            StreamError::NotFound(err.to_string())
        }
        other => StreamError::Failed(other.to_string()),
    }
}

/// The streaming server's view of a session the pod manager set up.
fn into_streams(streams: pod::ProcessStreams, tty: bool) -> ProcessStreams {
    let control = streams.control;
    let resize = tty.then(|| {
        let (tx, mut rx) = mpsc::channel::<super::TerminalSize>(RESIZE_QUEUE);
        let control = control.clone();
        tokio::spawn(async move {
            while let Some(size) = rx.recv().await {
                let (w, h) = (u32::from(size.width), u32::from(size.height));
                if let Err(e) = control.resize(w, h).await {
                    tracing::debug!(error = %e, "terminal resize failed");
                }
            }
        });
        tx
    });
    let exit = control
        .exit_future()
        .map(|r| r.map_err(stream_error))
        .boxed();
    let cancel_control = control.clone();
    ProcessStreams {
        stdin: streams.stdin.map(|s| Box::pin(s) as _),
        stdout: streams.stdout.map(|s| Box::pin(s) as _),
        stderr: streams.stderr.map(|s| Box::pin(s) as _),
        resize,
        exit,
        cancel: Box::new(move || cancel_control.cancel()),
    }
}

#[async_trait]
impl StreamBackend for PodStreamBackend {
    async fn exec(
        &self,
        req: ExecSpec,
        initial_size: Option<super::TerminalSize>,
    ) -> Result<ProcessStreams, StreamError> {
        let tty = req.tty;
        let (width, height) = initial_size
            .map(|s| (u32::from(s.width), u32::from(s.height)))
            .unwrap_or_default();
        let streams = self
            .pods
            .exec_interactive(req, width, height)
            .await
            .map_err(stream_error)?;
        Ok(into_streams(streams, tty))
    }

    async fn attach(&self, req: AttachSpec) -> Result<ProcessStreams, StreamError> {
        let tty = req.tty;
        let streams = self.pods.attach(req).await.map_err(stream_error)?;
        Ok(into_streams(streams, tty))
    }

    async fn port_forward(&self, pod_id: &str, port: u16) -> Result<BoxedDuplex, StreamError> {
        let stream = self
            .pods
            .port_forward(pod_id, i32::from(port))
            .await
            .map_err(stream_error)?;
        Ok(Box::pin(stream))
    }
}
