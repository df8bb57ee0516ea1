//! The HTTP side: listening, routing `/<kind>/<token>`, the session bound,
//! protocol negotiation and the upgrade; then a task per session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::token::TokenStore;
use super::{StreamBackend, StreamError, StreamRequest, portforward, remotecommand, spdy};
use crate::config::StreamingConfig;

/// How long a SPDY client may take to open the streams of a session
/// (the kubelet's default stream creation timeout).
pub(crate) const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The streaming server: hands out URLs and serves them.
pub struct StreamingServer {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn StreamBackend>,
    pub(crate) tokens: TokenStore,
    pub(crate) sessions: Arc<Semaphore>,
    pub(crate) idle_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
}

impl StreamingServer {
    /// Binds the configured address and starts serving in the background
    /// (until the returned server is dropped).
    pub async fn start(
        config: &StreamingConfig,
        backend: Arc<dyn StreamBackend>,
    ) -> Result<Arc<Self>, StreamError> {
        if config.tls_cert.is_some() || config.tls_key.is_some() {
            return Err(StreamError::Config(
                "TLS for the streaming server is not implemented yet".into(),
            ));
        }
        let listener = TcpListener::bind((config.address, config.port))
            .await
            .map_err(StreamError::io(format!(
                "binding the streaming server to {}:{}",
                config.address, config.port
            )))?;
        let local_addr = listener
            .local_addr()
            .map_err(StreamError::io("streaming server address"))?;
        let shutdown = CancellationToken::new();
        let inner = Arc::new(Inner {
            backend,
            tokens: TokenStore::new(Duration::from_secs(config.token_ttl_seconds.max(1))),
            sessions: Arc::new(Semaphore::new(config.max_sessions.max(1))),
            idle_timeout: Duration::from_secs(config.idle_timeout_seconds.max(1)),
            shutdown: shutdown.clone(),
        });
        tokio::spawn(accept_loop(listener, inner.clone()));
        tracing::info!(address = %local_addr, "streaming server listening");
        Ok(Arc::new(Self {
            inner,
            local_addr,
            shutdown,
        }))
    }

    /// A one-time URL for `request`.
    pub fn url(&self, request: StreamRequest) -> Result<String, StreamError> {
        let kind = request.kind();
        let token = self.inner.tokens.issue(request)?;
        Ok(format!("http://{}/{kind}/{token}", self.local_addr))
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = inner.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("streaming server accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, std::convert::Infallible>(route(inner, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "streaming connection: {e}");
            }
        });
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

async fn route(inner: Arc<Inner>, req: Request<Incoming>) -> HttpResponse {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    let path = req.uri().path().trim_start_matches('/');
    let Some((kind, token)) = path.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let kind = kind.to_string();
    let token = token.to_string();
    if !["exec", "attach", "portforward"].contains(&kind.as_str()) {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    // The bound is checked before the token is spent, so a refused client
    // can retry with the same URL.
    let Ok(permit) = inner.sessions.clone().try_acquire_owned() else {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many streaming sessions; retry later",
        );
    };
    let Some(request) = inner.tokens.take(&token).filter(|r| r.kind() == kind) else {
        return text(StatusCode::NOT_FOUND, "unknown or expired streaming URL");
    };
    let session = Session {
        inner: inner.clone(),
        _permit: permit,
    };
    match request {
        StreamRequest::Exec(_) | StreamRequest::Attach(_) => {
            remotecommand::serve(session, request, req).await
        }
        StreamRequest::PortForward { pod_id, ports } => {
            portforward::serve(session, pod_id, ports, req).await
        }
    }
}

/// One admitted session: holds its slot of `max_sessions` until dropped.
pub(crate) struct Session {
    pub(crate) inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

/// Which upgrade a request asks for.
pub(crate) enum Upgrade {
    WebSocket,
    Spdy,
}

pub(crate) fn upgrade_kind(headers: &HeaderMap) -> Option<Upgrade> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has(header::CONNECTION, "upgrade") {
        return None;
    }
    if has(header::UPGRADE, "websocket") {
        Some(Upgrade::WebSocket)
    } else if has(header::UPGRADE, spdy::UPGRADE_TOKEN) {
        Some(Upgrade::Spdy)
    } else {
        None
    }
}

/// The subprotocols a SPDY client offers, in its order of preference.
pub(crate) fn offered_spdy_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(spdy::PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The SPDY subprotocol to use: the client's first that we support; `""`
/// when the client offered none (legacy clients). `Err` is the refusal.
// The refusal is the response itself, returned as is by the caller.
#[allow(clippy::result_large_err)]
pub(crate) fn negotiate_spdy(
    headers: &HeaderMap,
    supported: &[&str],
) -> Result<String, HttpResponse> {
    let offered = offered_spdy_protocols(headers);
    if offered.is_empty() {
        return Ok(String::new());
    }
    match offered.iter().find(|p| supported.contains(&p.as_str())) {
        Some(p) => Ok(p.clone()),
        None => {
            let mut response = text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: none of the offered protocols {offered:?} is supported; \
                     supported: {supported:?}"
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&supported.join(", ")) {
                response
                    .headers_mut()
                    .insert(spdy::ACCEPTED_PROTOCOLS_HEADER, value);
            }
            Err(response)
        }
    }
}

/// The 101 answer to a SPDY upgrade.
pub(crate) fn spdy_switching(protocol: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::UPGRADE,
        HeaderValue::from_static(spdy::UPGRADE_TOKEN),
    );
    if let Ok(value) = HeaderValue::from_str(protocol)
        && !protocol.is_empty()
    {
        headers.insert(spdy::PROTOCOL_HEADER, value);
    }
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
