//! `PortForward` into the VM: one vsock connection to the agent's
//! port-forward listener per forwarded TCP connection (see
//! handlers/kata/README.md, "Port-forward"). The agent connects to the
//! port on the guest's loopback, which is the pod's (containers share the
//! VM's network namespace), so the host side of the tap plays no part.
//! After the handshake both directions carry length-prefixed frames, an
//! empty frame being that direction's EOF (hybrid vsock cannot carry a
//! half-close by itself).

use std::os::fd::OwnedFd;
use std::time::Duration;

use crius_shim_api::types::PortForwardRequest;
use crius_shim_api::{HandlerError, HandlerResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::agent_client::connect_hybrid;
use crate::config::VsockMode;
use crate::shim::PodShim;

pub use crius_agent_proto::FORWARD_VSOCK_PORT;

/// How long the guest may take to connect to the port and answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer line accepted from the agent.
const MAX_ANSWER: usize = 512;

/// A kernel vsock connection to the guest (`vm.vsock: vhost`).
async fn connect_vsock(cid: u32, port: u32) -> std::io::Result<UnixStream> {
    let fd = tokio::task::spawn_blocking(move || -> std::io::Result<OwnedFd> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &VsockAddr::new(cid, port),
        )?;
        Ok(fd)
    })
    .await
    .map_err(std::io::Error::other)??;
    // A connected stream socket of another family: tokio's UnixStream only
    // does read/write/shutdown on it, which are family-neutral.
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    UnixStream::from_std(std_stream)
}

/// Sends the `PORT` line and reads the agent's answer (byte by byte: what
/// follows belongs to the forwarded connection).
async fn handshake(stream: &mut UnixStream, port: u32) -> Result<(), String> {
    stream
        .write_all(format!("PORT {port}\n").as_bytes())
        .await
        .map_err(|e| format!("writing to the guest: {e}"))?;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match stream.read(&mut b).await {
            Ok(0) => return Err("the guest closed the connection".into()),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(format!("reading from the guest: {e}")),
        }
        if line.len() > MAX_ANSWER {
            return Err("the guest's answer is too long".into());
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line == "OK" {
        Ok(())
    } else {
        Err(line.strip_prefix("ERR ").unwrap_or(&line).to_string())
    }
}

/// Largest data frame (the agent's limit too).
const MAX_FRAME: usize = 64 * 1024;

/// The client's bytes to the guest as frames; its EOF as the empty frame.
/// Returns the guest writer: the caller keeps it until the other direction
/// is done, because dropping it would shut the socket's write side down,
/// which hybrid vsock turns into a reset of the whole connection.
async fn client_to_guest<R, W>(mut from: R, mut to: W) -> W
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if to.write_all(&(n as u32).to_be_bytes()).await.is_err() || n == 0 {
            return to;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return to;
        }
    }
}

/// The guest's frames to the client until the empty frame (or the guest
/// went away); then the client's write side is shut down (half-close).
async fn guest_to_client<R, W>(mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME {
            break;
        }
        if from.read_exact(&mut buf[..len]).await.is_err()
            || to.write_all(&buf[..len]).await.is_err()
        {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl PodShim {
    pub(crate) async fn do_port_forward(&self, req: PortForwardRequest) -> HandlerResult<()> {
        if !(1..=65535).contains(&req.port) {
            return Err(HandlerError::invalid_argument(format!(
                "port-forward: port {} is outside 1-65535",
                req.port
            )));
        }
        self.check_pod(&req.sandbox_id)?;
        // The VM must be up.
        self.agent().await?;
        let what = format!(
            "port-forward to port {} of pod {}",
            req.port, req.sandbox_id
        );
        let connected = match self.config.vm.vsock {
            VsockMode::Hybrid => connect_hybrid(&self.layout().vsock_uds(), FORWARD_VSOCK_PORT)
                .await
                .map_err(|e| e.to_string()),
            VsockMode::Vhost => connect_vsock(self.guest_cid(), FORWARD_VSOCK_PORT)
                .await
                .map_err(|e| format!("vsock connect: {e}")),
        };
        let mut guest = connected.map_err(|e| {
            HandlerError::failed_precondition(format!(
                "{what}: cannot reach the guest's port-forward service (a guest image older than the shim? rebuild it with scripts/setup --with-kata): {e}"
            ))
        })?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut guest, req.port)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err(HandlerError::failed_precondition(format!(
                    "{what}: {reason}"
                )));
            }
            Err(_) => {
                return Err(HandlerError::deadline_exceeded(format!(
                    "{what}: the guest did not answer within {HANDSHAKE_TIMEOUT:?}"
                )));
            }
        }
        let client = UnixStream::connect(&req.socket).await.map_err(|e| {
            HandlerError::invalid_argument(format!(
                "{what}: cannot connect to the socket {}: {e}",
                req.socket
            ))
        })?;
        tracing::debug!(pod_id = %req.sandbox_id, port = req.port, "port-forward connected in the guest");
        let (guest_r, guest_w) = guest.into_split();
        let (client_r, client_w) = client.into_split();
        tokio::spawn(async move {
            let (guest_w, ()) = tokio::join!(
                client_to_guest(client_r, guest_w),
                guest_to_client(guest_r, client_w)
            );
            drop(guest_w);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half-close both ways: the client's EOF becomes the empty frame and
    /// the guest's empty frame shuts the client's write side down, while
    /// the other direction keeps flowing.
    #[tokio::test]
    async fn frames_carry_data_and_half_close() {
        let (client, client_peer) = UnixStream::pair().unwrap();
        let (guest, mut guest_peer) = UnixStream::pair().unwrap();
        let (client_r, client_w) = client_peer.into_split();
        let (guest_r, guest_w) = guest.into_split();
        let bridge = tokio::spawn(async move {
            let _ = tokio::join!(
                client_to_guest(client_r, guest_w),
                guest_to_client(guest_r, client_w)
            );
        });
        let (mut client_read, mut client_write) = client.into_split();
        client_write.write_all(b"hello").await.unwrap();
        client_write.shutdown().await.unwrap();
        let mut framed = vec![0u8; 4 + 5 + 4];
        guest_peer.read_exact(&mut framed).await.unwrap();
        assert_eq!(
            framed,
            [0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0, 0]
        );
        guest_peer
            .write_all(&[0, 0, 0, 2, b'o', b'k', 0, 0, 0, 0])
            .await
            .unwrap();
        let mut got = Vec::new();
        client_read.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
        tokio::time::timeout(Duration::from_secs(5), bridge)
            .await
            .unwrap()
            .unwrap();
    }
}
