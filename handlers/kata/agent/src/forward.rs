//! Port-forward into the pod: a crius extension beside the Kata agent API
//! (`grpc.AgentService` has no port-forward).
//!
//! The agent listens on vsock port [`FORWARD_VSOCK_PORT`]. Each connection
//! is one forwarded TCP connection:
//! 1. the host writes `PORT <n>\n` (decimal, 1-65535);
//! 2. the agent connects to `127.0.0.1:<n>` (then `[::1]:<n>`) in its own
//!    network namespace, which is the pod's (containers share it), and
//!    answers `OK\n`, or `ERR <reason>\n` and closes;
//! 3. then each direction carries frames: a 4-byte big-endian length and
//!    that many bytes (at most [`MAX_FRAME`]); an empty frame is that
//!    direction's EOF, which the agent turns into a TCP half-close (and a
//!    TCP EOF from the pod into an empty frame). The connection closes when
//!    both directions ended.
//!
//! Framing, not vsock's own shutdown: hybrid vsock (vhost-device-vsock)
//! does not carry a half-close across (a guest `SHUT_WR` is dropped, a
//! host one resets the whole connection), and port-forward must keep the
//! other direction open.
//!
//! Connections run on plain threads with blocking I/O: they are few, and
//! this keeps the async runtime (which serves ttrpc) out of it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

use anyhow::Context;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept4, bind, listen, socket,
};

pub use crius_agent_proto::FORWARD_VSOCK_PORT;

/// How long connecting to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest header line accepted (`PORT 65535` plus slack).
const MAX_HEADER: usize = 32;
/// Largest data frame either side sends.
pub const MAX_FRAME: usize = 64 * 1024;

/// Binds the vsock listener and serves it on a thread of its own.
pub fn serve(port: u32) -> anyhow::Result<()> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("vsock socket")?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(libc::VMADDR_CID_ANY, port),
    )
    .with_context(|| format!("bind vsock port {port}"))?;
    listen(&fd, Backlog::new(64).context("backlog")?).context("listen")?;
    std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || accept_loop(fd))
        .context("port-forward thread")?;
    tracing::info!(port, "port-forward listener ready");
    Ok(())
}

fn accept_loop(listener: OwnedFd) {
    loop {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&listener);
        match accept4(raw, SockFlag::SOCK_CLOEXEC) {
            Ok(conn) => {
                // SAFETY: accept4 returned a new descriptor that nothing
                // else owns.
                let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(conn) };
                let spawned = std::thread::Builder::new()
                    .name("port-forward-conn".into())
                    .spawn(move || {
                        if let Err(e) = forward(conn) {
                            tracing::debug!(error = %e, "port-forward connection ended");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start a port-forward thread");
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "port-forward accept failed");
                std::thread::park_timeout(Duration::from_millis(100));
            }
        }
    }
}

/// Reads the `PORT <n>` line byte by byte (what follows is payload).
fn read_header(conn: &mut std::fs::File) -> anyhow::Result<u16> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if conn.read(&mut b)? == 0 {
            anyhow::bail!("closed before the header");
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_HEADER {
            anyhow::bail!("header too long");
        }
    }
    parse_header(&String::from_utf8_lossy(&line))
}

fn parse_header(line: &str) -> anyhow::Result<u16> {
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p > 0);
    port.with_context(|| format!("bad header {line:?}"))
}

fn connect_local(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
        }
    }
}

fn forward(conn: OwnedFd) -> anyhow::Result<()> {
    let mut vsock = std::fs::File::from(conn.try_clone()?);
    let port = match read_header(&mut vsock) {
        Ok(port) => port,
        Err(e) => {
            let _ = writeln!(vsock, "ERR {e}");
            return Err(e);
        }
    };
    let tcp = match connect_local(port) {
        Ok(tcp) => tcp,
        Err(e) => {
            let _ = writeln!(vsock, "ERR connect to port {port} in the pod: {e}");
            anyhow::bail!("connect to port {port}: {e}");
        }
    };
    vsock.write_all(b"OK\n")?;
    tracing::debug!(port, "port-forward connected");
    let mut tcp_read = tcp.try_clone()?;
    let mut tcp_write = tcp;
    let mut vsock_read = vsock.try_clone()?;
    let to_pod = std::thread::Builder::new()
        .name("port-forward-in".into())
        .spawn(move || {
            let _ = copy_frames_out(&mut vsock_read, &mut tcp_write);
            let _ = tcp_write.shutdown(Shutdown::Write);
        })?;
    let _ = copy_into_frames(&mut tcp_read, &mut vsock);
    let _ = to_pod.join();
    drop(conn);
    Ok(())
}

/// Copies `from` into `to` as frames, ending with the empty frame.
fn copy_into_frames(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        to.write_all(&(n as u32).to_be_bytes())?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

/// Copies frames from `from` into `to` until the empty frame (or an error,
/// which counts as the end).
fn copy_frames_out(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            return Ok(());
        }
        if len > MAX_FRAME {
            return Err(std::io::Error::other(format!("frame of {len} bytes")));
        }
        from.read_exact(&mut buf[..len])?;
        to.write_all(&buf[..len])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_an_empty_frame_as_eof() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut framed = Vec::new();
        copy_into_frames(&mut &data[..], &mut framed).unwrap();
        assert!(framed.ends_with(&[0, 0, 0, 0]));
        let mut out = Vec::new();
        copy_frames_out(&mut &framed[..], &mut out).unwrap();
        assert_eq!(out, data);
        let oversized = [0u8, 1, 0, 1];
        assert!(copy_frames_out(&mut &oversized[..], &mut Vec::new()).is_err());
    }

    #[test]
    fn headers_are_parsed_strictly() {
        assert_eq!(parse_header("PORT 8080").unwrap(), 8080);
        for bad in ["PORT 0", "PORT 70000", "port 80", "PORT", "PORT x", ""] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
    }
}
