//! Waiting for a conmon to exit without polling: a pidfd (Linux 5.3+)
//! becomes readable when its process exits, and conmon exits right after
//! it has written its container's exit file. `Wait` sleeps on it instead of
//! looking at the exit file every tick, which costs nothing while the
//! container runs (a node with hundreds of containers would otherwise spend
//! a steady share of a core on those looks).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::state::conmon_alive;

/// The exit of one conmon process.
pub(crate) struct ConmonExit {
    fd: AsyncFd<OwnedFd>,
}

impl ConmonExit {
    /// A watch on conmon `pid`; `None` when it is not a live conmon (gone,
    /// or the pid is someone else's now) or pidfds are not available (the
    /// caller then polls).
    pub(crate) fn watch(pid: Option<i32>) -> Option<Self> {
        let pid = pid.filter(|p| *p > 0)?;
        let fd = pidfd_open(pid).ok()?;
        // Checked after the pidfd pins the process: a pid reused between
        // the record and here is not watched.
        if !conmon_alive(Some(pid)) {
            return None;
        }
        Some(Self {
            fd: register(fd).ok()?,
        })
    }

    /// Returns once the process has exited (at once if it already has).
    pub(crate) async fn exited(&self) {
        // A readable pidfd stays readable: nothing to clear.
        let _ = self
            .fd
            .readable()
            .await
            .map(|mut guard| guard.retain_ready());
    }
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the descriptor, so it stays open for as long
    // as it is registered and is deregistered before it is closed.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word (0: a blocking pidfd,
    // close-on-exec as every pidfd is) and returns a new file descriptor or
    // -1; no memory is passed to the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_a_conmon_is_not_watched() {
        assert!(ConmonExit::watch(None).is_none());
        assert!(ConmonExit::watch(Some(0)).is_none());
        // This test process is alive but is no conmon.
        assert!(ConmonExit::watch(Some(std::process::id() as i32)).is_none());
    }

    #[tokio::test]
    async fn a_pidfd_turns_readable_when_its_process_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let fd = register(pidfd_open(child.id() as i32).unwrap()).unwrap();
        let watch = ConmonExit { fd };
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.exited())
            .await
            .expect("readable once the process exited");
        child.wait().unwrap();
        // And it stays so.
        tokio::time::timeout(std::time::Duration::from_millis(100), watch.exited())
            .await
            .expect("still readable");
    }
}
