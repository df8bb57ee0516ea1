//! Process stdio owned by the agent: pipes (or a pty master) whose output is
//! buffered until the host reads it with ReadStdout/ReadStderr.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Output kept per stream before the agent stops reading from the process
/// (which then blocks on write until the host catches up).
const BUFFER_CAP: usize = 1 << 20;

#[derive(Default)]
struct BufState {
    data: VecDeque<u8>,
    eof: bool,
}

/// A buffered output stream.
#[derive(Clone, Default)]
pub struct OutBuf {
    state: Arc<Mutex<BufState>>,
    readable: Arc<Notify>,
    writable: Arc<Notify>,
}

impl OutBuf {
    fn lock(&self) -> std::sync::MutexGuard<'_, BufState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream that is at EOF from the start (stderr of a tty process).
    pub fn closed() -> Self {
        let b = OutBuf::default();
        b.lock().eof = true;
        b
    }

    /// Copies `fd` into the buffer until EOF (or EIO, which is how a pty
    /// master reports that the last slave closed).
    pub fn spawn_pump(&self, fd: OwnedFd) {
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.pump(fd).await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "output stream ended with error");
            }
            this.lock().eof = true;
            this.readable.notify_waiters();
        });
    }

    async fn pump(&self, fd: OwnedFd) -> std::io::Result<()> {
        set_nonblocking(&fd)?;
        // SAFETY: an `OwnedFd` stays open and keeps returning the same raw
        // fd for as long as the `AsyncFd` owns it.
        let afd =
            unsafe { AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            loop {
                let writable = self.writable.notified();
                if self.lock().data.len() < BUFFER_CAP {
                    break;
                }
                writable.await;
            }
            let mut guard = afd.readable().await?;
            let res = guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref(), &mut chunk).map_err(std::io::Error::from)
            });
            let n = match res {
                Ok(Ok(n)) => n,
                // EIO: the pty's last slave fd closed.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => 0,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            };
            if n == 0 {
                return Ok(());
            }
            self.lock().data.extend(&chunk[..n]);
            self.readable.notify_waiters();
        }
    }

    /// Waits until the stream reached EOF and the host read all of it.
    pub async fn drained(&self) {
        loop {
            let readable = self.readable.notified();
            let writable = self.writable.notified();
            {
                let s = self.lock();
                if s.eof && s.data.is_empty() {
                    return;
                }
            }
            tokio::select! {
                _ = readable => {}
                _ = writable => {}
            }
        }
    }

    /// Waits for data; returns at most `max` bytes, or an empty vector at EOF.
    pub async fn read(&self, max: usize) -> Vec<u8> {
        let max = max.clamp(1, BUFFER_CAP);
        loop {
            let readable = self.readable.notified();
            {
                let mut s = self.lock();
                if !s.data.is_empty() {
                    let n = max.min(s.data.len());
                    let out: Vec<u8> = s.data.drain(..n).collect();
                    drop(s);
                    self.writable.notify_waiters();
                    return out;
                }
                if s.eof {
                    return Vec::new();
                }
            }
            readable.await;
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The stdin side of a process.
#[derive(Default)]
pub struct Stdin {
    file: tokio::sync::Mutex<Option<File>>,
}

impl Stdin {
    pub fn new(fd: Option<OwnedFd>) -> Self {
        Stdin {
            file: tokio::sync::Mutex::new(fd.map(File::from)),
        }
    }

    /// Writes all of `data` (blocking writes run off the async threads).
    pub async fn write(&self, data: Vec<u8>) -> std::io::Result<usize> {
        let guard = self.file.lock().await;
        let Some(file) = guard.as_ref() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin is closed",
            ));
        };
        let file = file.try_clone()?;
        let len = data.len();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            (&file).write_all(&data)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(len)
    }

    /// Closes stdin (the process sees EOF). For a pty, sends the EOF
    /// character instead, since the master stays open for output.
    pub async fn close(&self, tty: bool) -> std::io::Result<()> {
        let mut guard = self.file.lock().await;
        if tty {
            if let Some(f) = guard.as_ref() {
                use std::io::Write;
                (&*f).write_all(&[4])?;
            }
            return Ok(());
        }
        guard.take();
        Ok(())
    }
}

/// Sets the window size of a pty master.
pub fn resize_pty(master: &OwnedFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, which is valid for
    // the duration of the call; the fd is owned and open.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a close-on-exec pipe: (read end, write end).
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn buffered_output_is_read_in_chunks_then_eof() {
        let (r, w) = pipe().expect("pipe");
        let buf = OutBuf::default();
        buf.spawn_pump(r);
        let mut w = File::from(w);
        w.write_all(b"hello world").expect("write");
        let mut got = Vec::new();
        while got.len() < 11 {
            let chunk = buf.read(4).await;
            assert!(!chunk.is_empty() && chunk.len() <= 4, "{chunk:?}");
            got.extend(chunk);
        }
        assert_eq!(got, b"hello world");
        drop(w);
        assert!(buf.read(4).await.is_empty(), "EOF after the writer closed");
        assert!(OutBuf::closed().read(1).await.is_empty());
    }

    #[tokio::test]
    async fn drained_waits_for_eof_and_the_last_read() {
        let (r, w) = pipe().expect("pipe");
        let buf = OutBuf::default();
        buf.spawn_pump(r);
        File::from(w).write_all(b"xy").expect("write");
        let waiter = {
            let buf = buf.clone();
            tokio::spawn(async move { buf.drained().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "data is still buffered");
        assert_eq!(buf.read(8).await, b"xy");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("drained after EOF and the read")
            .expect("task");
    }

    #[tokio::test]
    async fn closed_stdin_refuses_writes() {
        let (r, w) = pipe().expect("pipe");
        let stdin = Stdin::new(Some(w));
        assert_eq!(stdin.write(b"abc".to_vec()).await.expect("write"), 3);
        stdin.close(false).await.expect("close");
        let err = stdin.write(b"x".to_vec()).await.expect_err("closed");
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut File::from(r), &mut s).expect("read");
        assert_eq!(s, "abc");
    }
}
