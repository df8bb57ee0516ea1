//! What every protocol module shares: the admitted session and its server
//! state, traffic/idle tracking, plain-text HTTP answers and the upgraded
//! connection. It depends on no protocol module; the protocol modules
//! (`remotecommand`, `spdy`, `websocket`) depend on it, and the server
//! (`server`) on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::StreamBackend;
use super::token::TokenStore;

/// How long a SPDY client may take to open the streams of a session
/// (the kubelet's default stream creation timeout).
pub(crate) const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn StreamBackend>,
    pub(crate) tokens: TokenStore,
    pub(crate) sessions: SessionSlots,
    /// `idle_timeout_seconds`; a reload may change it (sessions started
    /// after it use the new value).
    pub(crate) idle_timeout_seconds: AtomicU64,
    pub(crate) shutdown: CancellationToken,
}

impl Inner {
    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds.load(Ordering::Relaxed).max(1))
    }
}

/// The `max_sessions` bound: admitted sessions counted against a limit a
/// reload may change. A lower limit closes no running session; new ones are
/// refused until enough have ended.
pub(crate) struct SessionSlots {
    max: AtomicUsize,
    active: Arc<AtomicUsize>,
}

impl SessionSlots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max.max(1)),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Relaxed);
    }

    /// A slot, unless `max_sessions` sessions are running.
    pub(crate) fn try_admit(&self) -> Option<SessionSlot> {
        let max = self.max.load(Ordering::Relaxed);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(SessionSlot(self.active.clone()))
    }
}

/// One of the `max_sessions` slots, given back when dropped.
pub(crate) struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted session: holds its slot of `max_sessions` until dropped.
pub(crate) struct Session {
    pub(crate) inner: Arc<Inner>,
    _slot: SessionSlot,
}

impl Session {
    pub(crate) fn new(inner: Arc<Inner>, slot: SessionSlot) -> Self {
        Self { inner, _slot: slot }
    }

    /// Starts the watchdog that cancels `gone` once `activity` has been
    /// idle for the configured timeout, or when the server shuts down.
    pub(crate) fn watch_idle(
        &self,
        activity: &Activity,
        gone: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        activity.watch(self.inner.idle_timeout(), gone, self.inner.shutdown.clone())
    }
}

pub(crate) type HttpResponse = Response<Full<Bytes>>;

pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(message.into() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Time of the last traffic of a session, in either direction.
#[derive(Clone)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Cancels `gone` once the session has been idle for `limit`, or when
    /// the server shuts down.
    pub(crate) fn watch(
        &self,
        limit: Duration,
        gone: CancellationToken,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let activity = self.clone();
        tokio::spawn(async move {
            loop {
                let idle = activity.idle_for();
                if idle >= limit {
                    tracing::info!(
                        idle_seconds = idle.as_secs(),
                        "streaming session idle, closing"
                    );
                    gone.cancel();
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(limit - idle) => {}
                    _ = gone.cancelled() => return,
                    _ = shutdown.cancelled() => {
                        gone.cancel();
                        return;
                    }
                }
            }
        })
    }
}

/// Lets a connection's writer send what is queued (up to 5 s), then gives
/// its reader a moment (2 s) to see the peer close before aborting it, so
/// that a client gets a clean close rather than a reset.
pub(crate) async fn drain_connection(
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
) {
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let abort = reader.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// Waits for the HTTP upgrade of `req` to complete (after our 101 went out).
pub(crate) async fn upgraded(req: Request<Incoming>) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match hyper::upgrade::on(req).await {
        Ok(upgraded) => Some(TokioIo::new(upgraded)),
        Err(e) => {
            tracing::debug!("streaming upgrade failed: {e}");
            None
        }
    }
}

/// When a forwarded connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForwardEnd {
    /// When both sides are done: SPDY streams half-close, so the client
    /// may still send after the pod stopped sending.
    BothSides,
    /// When the pod side is done: a WebSocket channel cannot be
    /// half-closed by the client.
    PodSide,
}

/// Copies one port-forward connection both ways: the client's data
/// (`from_client`) to the pod, the pod's data to the client through
/// `to_client` (false when the client is gone).
pub(crate) async fn forward_connection<F, Fut>(
    conn: super::BoxedDuplex,
    mut from_client: tokio::sync::mpsc::Receiver<Bytes>,
    mut to_client: F,
    end: ForwardEnd,
) where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (mut pod_read, mut pod_write) = tokio::io::split(conn);
    let upstream = async move {
        while let Some(chunk) = from_client.recv().await {
            if pod_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // The client half-closed (or reset) its side.
        let _ = pod_write.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pod_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !to_client(Bytes::copy_from_slice(&buf[..n])).await {
                        return;
                    }
                }
            }
        }
    };
    match end {
        ForwardEnd::BothSides => {
            tokio::join!(upstream, downstream);
        }
        ForwardEnd::PodSide => {
            tokio::select! {
                _ = downstream => {}
                _ = async { upstream.await; std::future::pending::<()>().await } => {}
            }
        }
    }
}
