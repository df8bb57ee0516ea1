//! Bounds on the CRI socket's connections: how many may be open at once,
//! and how long a client may take to start speaking HTTP/2.
//!
//! Without them a client that opens connections and never sends the
//! HTTP/2 preface holds one file descriptor each, forever: enough of them
//! and the daemon cannot open files, sockets or pipes for real work.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// Connections served at once; more are closed as soon as they are
/// accepted. The kubelet uses one or two, each `crictl` call one.
pub const MAX_CONNECTIONS: usize = 256;
/// Time from accept until the client has sent the HTTP/2 preface and the
/// header of its first frame (SETTINGS).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The preface (24 bytes) plus one frame header (9).
const HANDSHAKE_BYTES: usize = 24 + 9;

/// Hands out connection slots.
#[derive(Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
}

impl ConnectionLimit {
    pub fn new(max_connections: usize, handshake_timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_connections)),
            handshake_timeout,
        }
    }

    /// `stream` with a slot, or `None` (the stream is dropped, i.e. closed)
    /// when every slot is taken.
    pub fn admit<S>(&self, stream: S) -> Option<Bounded<S>> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Bounded {
                inner: stream,
                _permit: permit,
                handshake: Some(Box::pin(tokio::time::sleep(self.handshake_timeout))),
                received: 0,
            }),
            Err(_) => None,
        }
    }
}

/// A connection holding a slot until it is dropped, and failing its reads
/// if the handshake does not arrive in time.
pub struct Bounded<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    /// Until the handshake bytes are in.
    handshake: Option<Pin<Box<tokio::time::Sleep>>>,
    received: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.received += buf.filled().len() - before;
            if this.received >= HANDSHAKE_BYTES {
                this.handshake = None;
            }
        }
        if result.is_pending()
            && let Some(deadline) = this.handshake.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not start HTTP/2 in time",
            )));
        }
        result
    }
}

super::delegate_write_and_connect_info!(Bounded);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn slots_are_limited_and_given_back() {
        let limit = ConnectionLimit::new(2, HANDSHAKE_TIMEOUT);
        let a = limit.admit(tokio::io::empty()).expect("first");
        let _b = limit.admit(tokio::io::empty()).expect("second");
        assert!(
            limit.admit(tokio::io::empty()).is_none(),
            "third is refused"
        );
        drop(a);
        assert!(
            limit.admit(tokio::io::empty()).is_some(),
            "a slot came back"
        );
    }

    #[tokio::test]
    async fn a_silent_client_times_out_and_a_talking_one_does_not() {
        let limit = ConnectionLimit::new(4, Duration::from_millis(200));
        let (_silent_client, silent) = tokio::io::duplex(64);
        let mut silent = limit.admit(silent).unwrap();
        let mut buf = [0u8; 64];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (mut client, talking) = tokio::io::duplex(64);
        let mut talking = limit.admit(talking).unwrap();
        client.write_all(&[0u8; HANDSHAKE_BYTES]).await.unwrap();
        let mut got = 0;
        while got < HANDSHAKE_BYTES {
            got += talking.read(&mut buf).await.unwrap();
        }
        // Past the handshake, waiting for data is not limited.
        let read = tokio::time::timeout(Duration::from_millis(600), talking.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "still waiting after the handshake deadline: {read:?}"
        );
    }
}
