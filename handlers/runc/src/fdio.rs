//! Async byte streams over raw descriptors tokio has no type for: a pty
//! master and a `SOCK_SEQPACKET` unix socket (conmon's attach socket).
//!
//! Both are driven through [`AsyncFd`] on a non-blocking descriptor, so no
//! executor thread ever blocks on them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sets `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

/// One end of a shared non-blocking descriptor; reads and writes go
/// straight to `read(2)`/`write(2)`, so on a seqpacket socket one read is
/// one packet. `EIO` (a pty whose slave side is closed) reads as EOF.
#[derive(Debug, Clone)]
pub(crate) struct FdStream {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl FdStream {
    /// Wraps `fd`, making it non-blocking.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<FdStream> {
        set_nonblocking(&fd)?;
        // SAFETY: an OwnedFd is a valid open descriptor that stays open and
        // refers to the same file until the AsyncFd (which owns it) drops.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(FdStream { fd: Arc::new(fd) })
    }

    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// `shutdown(SHUT_WR)` for sockets (the peer reads EOF).
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        nix::sys::socket::shutdown(
            self.fd.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Write,
        )
        .map_err(io::Error::from)
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Connects a `SOCK_SEQPACKET` socket to `dir/name`. The directory is
/// reached through `/proc/self/fd/<dirfd>` so a long state path cannot
/// exceed the 107-byte limit of unix socket addresses.
pub(crate) fn connect_seqpacket(dir: &Path, name: &str) -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let dir_fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", dir.display())))?;
    let short = format!("/proc/self/fd/{}/{name}", dir_fd.as_raw_fd());
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let addr = UnixAddr::new(short.as_str()).map_err(io::Error::from)?;
    // A unix-socket connect completes at once (or fails); done while the
    // socket is still blocking, it needs no readiness dance.
    connect(sock.as_raw_fd(), &addr).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("connect {}/{name}: {e}", dir.display()),
        )
    })?;
    Ok(sock)
}

/// Sets the window size of the terminal behind `fd`.
pub(crate) fn set_winsize(
    fd: std::os::fd::BorrowedFd<'_>,
    width: u16,
    height: u16,
) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points
    // at a live, initialised local for the duration of the call; the fd is
    // borrowed, so it stays open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
