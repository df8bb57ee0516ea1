//! The listening side: the TCP listener, one HTTP/1.1 connection per
//! client (upgrades allowed), handed to [`super::routes`].
//!
//! A configuration reload changes `token_ttl_seconds` (URLs handed out
//! after it), `idle_timeout_seconds` (sessions started after it) and
//! `max_sessions` (admissions after it; running sessions are never closed
//! for it) through [`StreamingServer::reconfigure`]. `address`, `port` and
//! the TLS files stay as the daemon started: the listener would have to
//! be rebound, which fails on the same port while the old one holds it,
//! and URLs already handed to the kubelet name the old address and scheme.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::routes::route;
use super::session::{Inner, SessionSlots};
use super::tls;
use super::token::TokenStore;
use super::{StreamBackend, StreamError, StreamRequest};
use crate::config::StreamingConfig;

/// The streaming server: hands out URLs and serves them.
pub struct StreamingServer {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    /// `https` with TLS configured, else `http`.
    scheme: &'static str,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl StreamingServer {
    /// Binds the configured address and starts serving in the background
    /// (until the returned server is dropped).
    pub async fn start(
        config: &StreamingConfig,
        backend: Arc<dyn StreamBackend>,
    ) -> Result<Arc<Self>, StreamError> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(StreamError::Config(
                    "streaming.tls_cert and streaming.tls_key must be set together".into(),
                ));
            }
        };
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
            sessions: SessionSlots::new(config.max_sessions),
            idle_timeout_seconds: AtomicU64::new(config.idle_timeout_seconds),
            shutdown: shutdown.clone(),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(accept_loop(listener, tls, inner.clone()));
        tracing::info!(address = %local_addr, scheme, "streaming server listening");
        Ok(Arc::new(Self {
            inner,
            local_addr,
            scheme,
            shutdown,
        }))
    }

    /// A one-time URL for `request`.
    pub fn url(&self, request: StreamRequest) -> Result<String, StreamError> {
        let kind = request.kind();
        let token = self.inner.tokens.issue(request)?;
        Ok(format!(
            "{}://{}/{kind}/{token}",
            self.scheme, self.local_addr
        ))
    }

    /// Applies the settings of `config` that can change while the server
    /// runs (see the module docs); the others are ignored.
    pub fn reconfigure(&self, config: &StreamingConfig) {
        let inner = &self.inner;
        inner
            .tokens
            .set_ttl(Duration::from_secs(config.token_ttl_seconds.max(1)));
        inner
            .idle_timeout_seconds
            .store(config.idle_timeout_seconds, Ordering::Relaxed);
        inner.sessions.set_max(config.max_sessions);
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

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, inner: Arc<Inner>) {
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
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, peer, inner).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, inner).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "streaming TLS handshake: {e}"),
                        Err(_) => tracing::debug!(%peer, "streaming TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 (with upgrades) on one accepted connection.
async fn serve_connection<IO>(io: IO, peer: SocketAddr, inner: Arc<Inner>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        async move { Ok::<_, std::convert::Infallible>(route(inner, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, "streaming connection: {e}");
    }
}
