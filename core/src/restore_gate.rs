//! Holds the RuntimeService calls that touch pods while the pods of the
//! previous run are still being restored.
//!
//! The CRI socket is bound before the restore starts, so a restarted daemon
//! answers within a moment however many pods it has to restore. Until the
//! restore is done, `Version` and `Status` are answered at once; every other
//! RuntimeService call waits for it (a pod that is not restored yet would
//! otherwise be reported not ready, or its containers unknown) and gets
//! `Unavailable` if the restore takes longer than [`RESTORE_WAIT`]. The
//! ImageService is never held: it does not depend on the pods.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

/// How long a call waits for the restore before `Unavailable`.
pub const RESTORE_WAIT: Duration = Duration::from_secs(60);

/// RuntimeService methods that never wait (they do not look at pods).
const UNGATED: &[&str] = &[
    "/runtime.v1.RuntimeService/Version",
    "/runtime.v1.RuntimeService/Status",
];

/// Opened once the restore is done.
#[derive(Debug, Clone)]
pub struct RestoreGate {
    open: watch::Receiver<bool>,
}

/// Opens the gate (dropping it opens it too, so a failed restore never
/// leaves the daemon answering `Unavailable` forever).
#[derive(Debug)]
pub struct GateOpener(watch::Sender<bool>);

impl GateOpener {
    pub fn open(self) {
        // Dropped right after: `Drop` sends.
    }
}

impl Drop for GateOpener {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

impl RestoreGate {
    /// A closed gate and what opens it.
    pub fn closed() -> (RestoreGate, GateOpener) {
        let (tx, rx) = watch::channel(false);
        (RestoreGate { open: rx }, GateOpener(tx))
    }

    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Waits until the gate opens; `false` after `timeout`.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let mut rx = self.open.clone();
        let opened = rx.wait_for(|open| *open);
        match tokio::time::timeout(timeout, opened).await {
            Ok(Ok(_)) => true,
            // The opener is gone: it opened the gate as it went.
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }

    /// `service` behind this gate.
    pub fn guard<S>(&self, service: S) -> Gated<S> {
        Gated {
            inner: service,
            gate: self.clone(),
        }
    }
}

/// A gRPC service whose pod-touching calls wait for the restore.
#[derive(Debug, Clone)]
pub struct Gated<S> {
    inner: S,
    gate: RestoreGate,
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.gate.is_open() || UNGATED.contains(&req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The clone that was made ready goes with this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            if !gate.wait(RESTORE_WAIT).await {
                let status = tonic::Status::unavailable(format!(
                    "crius is still restoring the pods of its previous run (waited {}s); retry",
                    RESTORE_WAIT.as_secs()
                ));
                return Ok(status.into_http());
            }
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_opens_when_told_or_when_the_opener_goes() {
        let (gate, opener) = RestoreGate::closed();
        assert!(!gate.is_open());
        assert!(!gate.wait(Duration::from_millis(20)).await);
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait(Duration::from_secs(5)).await })
        };
        opener.open();
        assert!(waiter.await.unwrap());
        assert!(gate.is_open());

        let (gate, opener) = RestoreGate::closed();
        drop(opener);
        assert!(gate.wait(Duration::from_millis(20)).await);
    }
}
