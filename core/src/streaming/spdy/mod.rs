//! SPDY/3.1 as the Kubernetes streaming protocols use it: an HTTP/1.1
//! upgrade (`Upgrade: SPDY/3.1`, the subprotocol negotiated with
//! `X-Stream-Protocol-Version`), then client-opened streams told apart by
//! their `streamtype` header.

use hyper::Request;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use super::session::{Activity, Session, upgraded};

pub mod conn;
pub mod frame;
pub(crate) mod handshake;
pub(crate) mod portforward;
pub(crate) mod remotecommand;

#[cfg(test)]
mod tests;

/// The request header carrying the subprotocols a client offers (one per
/// header line) and the response header carrying the chosen one.
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// The response header listing what the server supports, on refusal.
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";
/// The `Upgrade` token.
pub const UPGRADE_TOKEN: &str = "SPDY/3.1";

/// An upgraded SPDY session, as both subprotocols run it.
pub(crate) struct Served {
    pub(crate) conn: conn::Connection,
    /// Cancelled when the connection closes or the session idles out.
    pub(crate) gone: CancellationToken,
    watchdog: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Completes the upgrade of `req` and starts the connection and its
    /// idle watchdog; `None` when the upgrade failed.
    pub(crate) async fn start(session: &Session, req: Request<Incoming>) -> Option<Self> {
        let io = upgraded(req).await?;
        let activity = Activity::new();
        let conn = conn::Connection::serve(io, activity.clone());
        let gone = conn.closed();
        let watchdog = session.watch_idle(&activity, gone.clone());
        Some(Self {
            conn,
            gone,
            watchdog,
        })
    }

    pub(crate) async fn close(self) {
        self.watchdog.abort();
        self.conn.shutdown().await;
    }
}
