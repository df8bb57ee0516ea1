//! Starting the VM's host processes (QEMU, vhost-device-vsock, virtiofsd)
//! behind a trait, so the boot logic can be tested with fakes.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// One process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Short name for logs and errors (`qemu`, `vhost-device-vsock`).
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    /// Network namespace to enter before exec (QEMU opens the pod's tap).
    pub netns: Option<PathBuf>,
    /// `cgroup.procs` files (one per hierarchy) the process joins before
    /// exec, so it is charged to the pod from its first allocation.
    pub cgroup_procs: Vec<PathBuf>,
}

/// A started process.
#[async_trait]
pub trait ChildProcess: Send {
    fn pid(&self) -> u32;
    /// `Some(status)` once it exited (and was reaped).
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>>;
    async fn wait(&mut self) -> io::Result<ExitStatus>;
    /// SIGKILL (no-op if it already exited).
    fn kill(&mut self) -> io::Result<()>;
}

/// Starts processes.
pub trait ProcessSpawner: Send + Sync {
    fn spawn(&self, spec: &ProcessSpec) -> io::Result<Box<dyn ChildProcess>>;
}

/// Real processes. Each dies with the thread that started it
/// (`PR_SET_PDEATHSIG`), so a crashed shim leaves no VM behind; the shim
/// runs a single-threaded runtime so that thread lives as long as it does.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSpawner;

impl ProcessSpawner for RealSpawner {
    fn spawn(&self, spec: &ProcessSpec) -> io::Result<Box<dyn ChildProcess>> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)?;
        let netns = match &spec.netns {
            Some(path) => Some(std::fs::File::open(path).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot open netns {}: {err}", path.display()),
                )
            })?),
            None => None,
        };
        let cgroups = spec
            .cgroup_procs
            .iter()
            .map(|path| {
                OpenOptions::new().write(true).open(path).map_err(|err| {
                    io::Error::new(err.kind(), format!("cannot open {}: {err}", path.display()))
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut command = std::process::Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls (prctl, write, setns) on values
        // prepared before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                for procs in &cgroups {
                    use std::os::fd::AsRawFd;
                    // "0" is the writing process: the child itself.
                    if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(ns) = &netns {
                    use std::os::fd::AsRawFd;
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = tokio::process::Command::from(command)
            .kill_on_drop(false)
            .spawn()
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!(
                        "cannot start {} ({}): {err}",
                        spec.name,
                        spec.program.display()
                    ),
                )
            })?;
        Ok(Box::new(RealChild {
            pid: child.id().unwrap_or_default(),
            child,
        }))
    }
}

struct RealChild {
    pid: u32,
    child: tokio::process::Child,
}

#[async_trait]
impl ChildProcess for RealChild {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }
    fn kill(&mut self) -> io::Result<()> {
        match self.child.start_kill() {
            Ok(()) => Ok(()),
            // Already reaped.
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// Kills `child` and waits (bounded) until it is gone.
pub async fn kill_and_reap(child: &mut dyn ChildProcess) {
    if let Err(err) = child.kill() {
        tracing::warn!(pid = child.pid(), error = %err, "kill failed");
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        tracing::warn!(pid = child.pid(), "process did not exit 5 s after SIGKILL");
    }
}

/// SIGKILLs a process we no longer have a handle for (after a daemon or
/// shim restart), if `pid` still runs `expected` (guards against pid reuse).
pub fn kill_stale(pid: u32, expected: &str) -> bool {
    if pid == 0 {
        return false;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !comm.contains(expected) {
        return false;
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    let tail = String::from_utf8_lossy(&data[start..]);
    tail.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn real_spawner_logs_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let spec = ProcessSpec {
            name: "sh".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hello; echo oops >&2; exit 3".into()],
            log: log.clone(),
            netns: None,
            cgroup_procs: Vec::new(),
        };
        let mut child = RealSpawner.spawn(&spec).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(log_tail(&log, 100), "hello\noops");
        assert_eq!(log_tail(&log, 5), "oops");
    }

    #[tokio::test]
    async fn missing_program_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            name: "qemu".into(),
            program: "/nonexistent/qemu".into(),
            args: vec![],
            log: dir.path().join("log"),
            netns: None,
            cgroup_procs: Vec::new(),
        };
        let err = RealSpawner.spawn(&spec).err().unwrap();
        assert!(
            err.to_string()
                .contains("cannot start qemu (/nonexistent/qemu)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn kill_and_reap_stops_a_sleeper() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ProcessSpec {
            name: "sleep".into(),
            program: "/bin/sleep".into(),
            args: vec!["100".into()],
            log: dir.path().join("log"),
            netns: None,
            cgroup_procs: Vec::new(),
        };
        let mut child = RealSpawner.spawn(&spec).unwrap();
        let pid = child.pid();
        assert!(!kill_stale(pid, "nonmatching-name"));
        kill_and_reap(child.as_mut()).await;
        assert!(child.try_wait().unwrap().is_some());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
