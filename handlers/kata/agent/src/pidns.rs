//! The pod's shared PID namespace inside the VM.
//!
//! A pod whose PID mode is POD (`shareProcessNamespace: true`) gets one PID
//! namespace for all its containers, as on runc, where the host's pause
//! process is its PID 1. The VM has no pause container, so the agent starts
//! one on first use: itself, re-executed as `pause` in a new PID namespace.
//! Containers join `/proc/<pause>/ns/pid`; the pause process reaps the
//! orphans of that namespace, while container init processes stay the
//! agent's to reap (their parent, runc, runs in the VM's namespace, so the
//! kernel hands them to the agent, a subreaper).
//!
//! Containers of a pod in CONTAINER mode keep a PID namespace each; none
//! ever shares the VM's, where the agent itself runs.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::reaper::{self, ExitWatch, Reaper};

/// `argv[0]` of the re-executed agent, and what containers of a pod with a
/// shared PID namespace see as its PID 1.
pub const HOLDER_ARG0: &str = "pause";

/// Runs as the re-executed agent (`argv[0]` = [`HOLDER_ARG0`]). The parent
/// unshared the PID namespace before exec, so our first child is PID 1 of
/// the new namespace: fork it, print its pid (the agent reads stdout) and
/// exit; the child reaps the namespace's orphans until the VM goes away.
pub fn holder_main() -> ! {
    // SAFETY: called at the top of `main`, before any thread exists, so the
    // child may run arbitrary code after the fork.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => namespace_init(),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            println!("{child}");
            std::process::exit(0)
        }
        Err(err) => {
            eprintln!("pause: fork: {err}");
            std::process::exit(1)
        }
    }
}

// The pause process is single-threaded and has no executor.
#[allow(clippy::disallowed_methods)]
fn namespace_init() -> ! {
    // Let go of the agent's pipe so its read of our parent's output ends.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto this process's standard streams, which no
            // Rust object owns; `null` stays open across the call.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Err(nix::errno::Errno::ECHILD) => std::thread::sleep(std::time::Duration::from_secs(1)),
            _ => continue,
        }
    }
}

/// The pod PID namespace, started on first use and again if its pause
/// process died (which kills every process in it).
#[derive(Default)]
pub struct PodPidNamespace {
    holder: tokio::sync::Mutex<Option<(u32, ExitWatch)>>,
}

impl PodPidNamespace {
    /// The namespace path containers join (`/proc/<pause>/ns/pid`).
    pub async fn path(&self, reaper: &Reaper) -> std::io::Result<PathBuf> {
        let mut holder = self.holder.lock().await;
        if let Some((pid, exit)) = &*holder
            && exit.borrow().is_none()
        {
            return Ok(PathBuf::from(format!("/proc/{pid}/ns/pid")));
        }
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0(HOLDER_ARG0);
        // SAFETY: unshare(2) is a single system call, safe between fork and
        // exec; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                    .map_err(std::io::Error::from)
            });
        }
        let (code, out) = reaper::output(reaper, cmd).await?;
        let pid = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .filter(|_| code == 0)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "starting the pod's pause process failed (exit {code}): {}",
                    out.trim()
                ))
            })?;
        let exit = reaper.watch(pid);
        tracing::info!(pid, "pod PID namespace started");
        *holder = Some((pid, exit));
        Ok(PathBuf::from(format!("/proc/{pid}/ns/pid")))
    }
}
