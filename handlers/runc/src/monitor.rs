//! The container monitor: conmon driving an OCI runtime.
//!
//! conmon stays with each container for its whole life: it holds the
//! container's stdio, writes the CRI log file, records the exit code in an
//! exit file and notes OOM kills. crius talks to it the way conmon expects
//! (measured on conmon 2.1.6):
//!
//! * two pipes passed by number in `_OCI_SYNCPIPE` and `_OCI_STARTPIPE`;
//! * conmon blocks until one byte arrives on the start pipe, forks into the
//!   background (its first process exits), runs `<runtime> create` and reports on the sync pipe: `{"pid": N}` on success,
//!   `{"pid": -1, "message": "..."}` on failure;
//! * errors before the fork go to conmon's own stderr, which is captured
//!   (there is no syslog on the machines crius targets).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Most output one ExecSync keeps (see [`crate::execsync`]).
pub use crate::execsync::EXEC_SYNC_OUTPUT_MAX_BYTES;

/// What the caller provides to create a container under the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// Container ID, also the runtime's container name.
    pub id: String,
    /// Human-readable name (conmon `-n`), used in conmon's own logs.
    pub name: String,
    /// OCI bundle directory (holds `config.json`); conmon also puts its
    /// `ctl`/`winsz` FIFOs, the pid files and runs in it.
    pub bundle: PathBuf,
    /// CRI log file (kubelet's `log_path`); `None` discards the output
    /// (conmon's `none` log driver).
    pub log_path: Option<PathBuf>,
    /// Directory where conmon writes `<id>` with the exit code.
    pub exit_dir: PathBuf,
    /// Per-container directory that survives conmon (the `oom` marker).
    pub persist_dir: PathBuf,
    /// Directory for the attach socket (`<socket_dir>/<id>/attach`).
    pub socket_dir: PathBuf,
    /// Log rotation limit in bytes passed to conmon, if any.
    pub log_size_max: Option<u64>,
    /// Allocate a pseudo-terminal (the spec's `process.terminal` must
    /// agree).
    pub terminal: bool,
    /// Keep a stdin pipe for attach clients.
    pub stdin: bool,
    /// Close stdin after the first attach client detaches (CRI
    /// `stdin_once`); otherwise it stays open for the next one.
    pub stdin_once: bool,
}

/// A container created (not yet started) under the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launched {
    /// PID of the container's init process (in the host PID namespace).
    pub container_pid: i32,
    /// PID of the conmon process watching it.
    pub monitor_pid: Option<i32>,
}

/// A command to run synchronously in a running container.
#[derive(Debug, Clone)]
pub struct ExecSyncSpec {
    pub id: String,
    /// The process to run (args, env, cwd, user), as the runtime's
    /// `exec --process` expects it.
    pub process: oci_spec::runtime::Process,
    /// Kill the command after this long; `None` waits for it.
    pub timeout: Option<Duration>,
    /// A directory on the same host for the exec's scratch files (process
    /// spec, log); a unique subdirectory is made and removed.
    pub scratch_dir: PathBuf,
}

/// Result of an exec-sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSyncOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit code (128+signal when killed); -1 when timed out.
    pub exit_code: i32,
    /// The timeout expired and the command was killed.
    pub timed_out: bool,
}

/// Errors of the container monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot create the conmon pipes: {0}")]
    Pipe(#[source] io::Error),
    #[error("cannot start conmon {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("conmon for {id} failed before reporting ({status}): {stderr}")]
    MonitorFailed {
        id: String,
        status: String,
        stderr: String,
    },
    #[error("runtime failed to {action} container {id}: {message}")]
    RuntimeFailed {
        id: String,
        action: &'static str,
        message: String,
    },
    #[error("conmon for {id} did not report within {timeout:?}")]
    Timeout { id: String, timeout: Duration },
    #[error("conmon for {id} sent an unreadable message {line:?}: {reason}")]
    Protocol {
        id: String,
        line: String,
        reason: String,
    },
}

/// Creates containers and runs exec-syncs under a monitor process.
#[async_trait]
pub trait ContainerMonitor: Send + Sync {
    /// Creates the container (runtime `create`) under a new monitor. The
    /// container is in the runtime's `created` state afterwards; starting it
    /// is the runtime's `start`. On error the runtime may still hold state
    /// for the ID; the caller's rollback deletes it (`OciRuntime::delete`).
    async fn create(&self, spec: &LaunchSpec) -> Result<Launched, MonitorError>;
    /// Runs a command in a running container and collects its output (for
    /// [`Conmon`], the runtime's `exec` run directly: see
    /// [`crate::execsync`]).
    async fn exec_sync(&self, spec: &ExecSyncSpec) -> Result<ExecSyncOutput, MonitorError>;
}

/// conmon, configured for one runtime.
#[derive(Debug, Clone)]
pub struct Conmon {
    pub conmon_path: PathBuf,
    pub runtime_path: PathBuf,
    pub runtime_root: PathBuf,
    /// conmon `--log-level` (its own diagnostics, not the container's).
    pub log_level: String,
    /// How long `create` waits for conmon to report the container pid.
    pub create_timeout: Duration,
    /// The runtime gets `--systemd-cgroup` (see `OciRuntime::with_systemd_cgroup`).
    pub systemd_cgroup: bool,
}

impl Conmon {
    pub fn new(
        conmon_path: impl Into<PathBuf>,
        runtime_path: impl Into<PathBuf>,
        runtime_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            conmon_path: conmon_path.into(),
            runtime_path: runtime_path.into(),
            runtime_root: runtime_root.into(),
            log_level: "info".to_string(),
            create_timeout: Duration::from_secs(60),
            systemd_cgroup: false,
        }
    }

    /// The conmon command line for creating `spec`'s container.
    pub fn create_args(&self, spec: &LaunchSpec) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("-b", spec.bundle.clone().into());
        push("-c", spec.id.clone().into());
        // The attach socket lives at <socket-dir>/<cuuid>/attach.
        push("-u", spec.id.clone().into());
        push("-n", spec.name.clone().into());
        push("--exit-dir", spec.exit_dir.clone().into());
        push("--persist-dir", spec.persist_dir.clone().into());
        match &spec.log_path {
            Some(path) => push("-l", prefixed("k8s-file:", path)),
            None => push("-l", "none:".into()),
        }
        push("--log-level", self.log_level.clone().into());
        push("-P", spec.bundle.join("conmon.pid").into());
        push("-p", spec.bundle.join("pidfile").into());
        push("-r", self.runtime_path.clone().into());
        push("--runtime-arg", prefixed("--root=", &self.runtime_root));
        if self.systemd_cgroup {
            push("--runtime-arg", "--systemd-cgroup".into());
        }
        push("--socket-dir-path", spec.socket_dir.clone().into());
        if let Some(max) = spec.log_size_max {
            push("--log-size-max", max.to_string().into());
        }
        if spec.terminal {
            args.push("-t".into());
        }
        if spec.stdin {
            args.push("-i".into());
            if !spec.stdin_once {
                args.push("--leave-stdin-open".into());
            }
        }
        args
    }

    /// Spawns conmon with the two pipes, releases it through the start pipe
    /// and returns the sync pipe's read end with conmon's pre-fork output.
    async fn spawn(
        &self,
        id: &str,
        cwd: &Path,
        args: &[OsString],
    ) -> Result<(tokio::net::unix::pipe::Receiver, String), MonitorError> {
        let (sync_read, sync_write) = cloexec_pipe()?;
        let (start_read, start_write) = cloexec_pipe()?;
        let child_fds = [sync_write.as_raw_fd(), start_read.as_raw_fd()];
        let mut command = tokio::process::Command::new(&self.conmon_path);
        command
            .args(args)
            .current_dir(cwd)
            .env("_OCI_SYNCPIPE", child_fds[0].to_string())
            .env("_OCI_STARTPIPE", child_fds[1].to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls fcntl, which is async-signal-safe; it touches no memory
        // shared with the parent beyond the copied array of fd numbers. The
        // pipe ends are made close-on-exec at creation so concurrent spawns
        // in other threads never inherit them; only this child gets them.
        unsafe {
            command.pre_exec(move || {
                for fd in child_fds {
                    clear_cloexec(fd)?;
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| MonitorError::Spawn {
            path: self.conmon_path.clone(),
            source,
        })?;
        // Our copies of the child's ends must go, or EOF never arrives.
        drop(sync_write);
        drop(start_read);

        let mut start = tokio::net::unix::pipe::Sender::from_owned_fd(start_write)
            .map_err(MonitorError::Pipe)?;
        // conmon may already have died (bad arguments); its stderr says why.
        let _ = start.write_all(&[0]).await;
        drop(start);

        let mut stderr_pipe = child.stderr.take();
        let mut stdout_pipe = child.stdout.take();
        let mut stderr = String::new();
        let mut stdout = String::new();
        // conmon's first process exits right after forking the monitor,
        // which points its own stdio at /dev/null: both reads end promptly.
        let collect = async {
            if let Some(p) = stderr_pipe.as_mut() {
                let _ = p.read_to_string(&mut stderr).await;
            }
            if let Some(p) = stdout_pipe.as_mut() {
                let _ = p.read_to_string(&mut stdout).await;
            }
            child.wait().await
        };
        let status = tokio::time::timeout(self.create_timeout, collect)
            .await
            .map_err(|_| MonitorError::Timeout {
                id: id.to_string(),
                timeout: self.create_timeout,
            })?
            .map_err(|source| MonitorError::Spawn {
                path: self.conmon_path.clone(),
                source,
            })?;
        let printed = format!("{}{}", stderr.trim(), stdout.trim());
        if !status.success() {
            return Err(MonitorError::MonitorFailed {
                id: id.to_string(),
                status: status.to_string(),
                stderr: if printed.is_empty() {
                    "no output".to_string()
                } else {
                    printed
                },
            });
        }
        if !printed.is_empty() {
            tracing::info!(container = id, conmon_output = %printed, "conmon printed before detaching");
        }
        let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(sync_read)
            .map_err(MonitorError::Pipe)?;
        Ok((receiver, printed))
    }
}

#[derive(Debug, Deserialize)]
struct SyncMessage {
    #[serde(alias = "exit_code", alias = "data")]
    pid: Option<i32>,
    #[serde(default)]
    message: Option<String>,
}

fn parse_sync_line(id: &str, line: &str) -> Result<SyncMessage, MonitorError> {
    serde_json::from_str::<SyncMessage>(line.trim())
        .map_err(|e| MonitorError::Protocol {
            id: id.to_string(),
            line: line.to_string(),
            reason: e.to_string(),
        })
        .and_then(|m| match m.pid {
            Some(_) => Ok(m),
            None => Err(MonitorError::Protocol {
                id: id.to_string(),
                line: line.to_string(),
                reason: "no pid/exit_code field".to_string(),
            }),
        })
}

#[async_trait]
impl ContainerMonitor for Conmon {
    async fn create(&self, spec: &LaunchSpec) -> Result<Launched, MonitorError> {
        for (dir, action) in [
            (&spec.exit_dir, "create exit dir"),
            (&spec.persist_dir, "create persist dir"),
            (&spec.socket_dir, "create socket dir"),
        ] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| MonitorError::Io {
                    action,
                    path: dir.clone(),
                    source,
                })?;
        }
        if let Some(parent) = spec.log_path.as_deref().and_then(Path::parent) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| MonitorError::Io {
                    action: "create log dir",
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        let args = self.create_args(spec);
        let started = std::time::Instant::now();
        let (receiver, _) = self.spawn(&spec.id, &spec.bundle, &args).await?;
        // The monitor keeps the sync pipe open while the container lives:
        // read exactly one message line, not to EOF.
        let mut line = String::new();
        let read = tokio::time::timeout(
            self.create_timeout,
            BufReader::new(receiver).read_line(&mut line),
        )
        .await
        .map_err(|_| MonitorError::Timeout {
            id: spec.id.clone(),
            timeout: self.create_timeout,
        })?
        .map_err(MonitorError::Pipe)?;
        if read == 0 {
            return Err(MonitorError::MonitorFailed {
                id: spec.id.clone(),
                status: "closed the sync pipe without a message".to_string(),
                stderr: "see the runtime's log; conmon reported nothing".to_string(),
            });
        }
        let msg = parse_sync_line(&spec.id, &line)?;
        let pid = msg.pid.unwrap_or(-1);
        if pid <= 0 {
            return Err(MonitorError::RuntimeFailed {
                id: spec.id.clone(),
                action: "create",
                message: msg
                    .message
                    .unwrap_or_else(|| format!("conmon reported pid {pid}"))
                    .trim()
                    .to_string(),
            });
        }
        let monitor_pid = tokio::fs::read_to_string(spec.bundle.join("conmon.pid"))
            .await
            .ok()
            .and_then(|s| s.trim().parse().ok());
        tracing::info!(
            container = %spec.id,
            container_pid = pid,
            monitor_pid,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "container created under conmon"
        );
        Ok(Launched {
            container_pid: pid,
            monitor_pid,
        })
    }

    async fn exec_sync(&self, spec: &ExecSyncSpec) -> Result<ExecSyncOutput, MonitorError> {
        // Not through conmon: its log-size limit would cut the output
        // silently (see `crate::execsync`).
        crate::execsync::run(
            &self.runtime_path,
            &self.runtime_root,
            spec,
            EXEC_SYNC_OUTPUT_MAX_BYTES,
        )
        .await
    }
}

/// How a container ended, from the files conmon leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    /// Exit code (128+signal when killed by a signal).
    pub exit_code: i32,
    /// When conmon recorded the exit (the exit file's mtime).
    pub finished_at: SystemTime,
    /// conmon saw an OOM kill in the container's cgroup.
    pub oom_killed: bool,
}

/// Reads `<exit_dir>/<id>` and the `<persist_dir>/oom` marker. `None`
/// while the container has not exited.
pub fn read_exit(
    exit_dir: &Path,
    persist_dir: &Path,
    id: &str,
) -> Result<Option<ContainerExit>, MonitorError> {
    let path = exit_dir.join(id);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MonitorError::Io {
                action: "read exit file",
                path,
                source,
            });
        }
    };
    // conmon writes the file atomically (rename), so it is complete here.
    let exit_code = text
        .trim()
        .parse::<i32>()
        .map_err(|e| MonitorError::Protocol {
            id: id.to_string(),
            line: text.clone(),
            reason: format!("exit file {} is not a number: {e}", path.display()),
        })?;
    let finished_at = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|source| MonitorError::Io {
            action: "stat exit file",
            path: path.clone(),
            source,
        })?;
    let oom_killed = persist_dir.join("oom").exists();
    Ok(Some(ContainerExit {
        exit_code,
        finished_at,
        oom_killed,
    }))
}

/// Waits up to `timeout` for the exit file to appear.
pub async fn wait_for_exit(
    exit_dir: &Path,
    persist_dir: &Path,
    id: &str,
    timeout: Duration,
) -> Result<Option<ContainerExit>, MonitorError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(exit) = read_exit(exit_dir, persist_dir, id)? {
            return Ok(Some(exit));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        // Polling keeps this free of inotify state; exits are rare events
        // and 20 ms is far below kubelet's resolution.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn prefixed(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), MonitorError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| MonitorError::Pipe(e.into()))
}

/// Clears FD_CLOEXEC so `fd` survives exec. Called between fork and exec.
fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_SETFD) on a plain integer fd has no memory-safety
    // preconditions; an invalid fd only yields EBADF.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conmon() -> Conmon {
        Conmon::new("/usr/bin/conmon", "/usr/sbin/runc", "/run/crius/runc")
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn create_args_match_what_conmon_expects() {
        let spec = LaunchSpec {
            id: "c1".into(),
            name: "pod_ctr".into(),
            bundle: "/b".into(),
            log_path: Some("/logs/ctr/0.log".into()),
            exit_dir: "/exits".into(),
            persist_dir: "/persist/c1".into(),
            socket_dir: "/sock".into(),
            log_size_max: Some(1024),
            terminal: false,
            stdin: false,
            stdin_once: false,
        };
        let args = strings(conmon().create_args(&spec));
        let expected = [
            "-b",
            "/b",
            "-c",
            "c1",
            "-u",
            "c1",
            "-n",
            "pod_ctr",
            "--exit-dir",
            "/exits",
            "--persist-dir",
            "/persist/c1",
            "-l",
            "k8s-file:/logs/ctr/0.log",
            "--log-level",
            "info",
            "-P",
            "/b/conmon.pid",
            "-p",
            "/b/pidfile",
            "-r",
            "/usr/sbin/runc",
            "--runtime-arg",
            "--root=/run/crius/runc",
            "--socket-dir-path",
            "/sock",
            "--log-size-max",
            "1024",
        ];
        assert_eq!(args, expected);

        let tty = LaunchSpec {
            log_path: None,
            log_size_max: None,
            terminal: true,
            stdin: true,
            ..spec
        };
        let args = strings(conmon().create_args(&tty));
        let l = args.iter().position(|a| a == "-l").unwrap();
        assert_eq!(args[l + 1], "none:");
        assert!(args.ends_with(&["-t".into(), "-i".into(), "--leave-stdin-open".into()]));
    }

    #[test]
    fn sync_messages() {
        assert_eq!(
            parse_sync_line("c", "{\"pid\": 42}\n").unwrap().pid,
            Some(42)
        );
        let failed =
            parse_sync_line("c", r#"{"pid": -1, "message": "runc create failed: x"}"#).unwrap();
        assert_eq!(
            (failed.pid, failed.message.as_deref()),
            (Some(-1), Some("runc create failed: x"))
        );
        let exec =
            parse_sync_line("c", r#"{"exit_code": -1, "message": "command timed out"}"#).unwrap();
        assert_eq!(exec.pid, Some(-1));
        assert!(parse_sync_line("c", "{}").is_err());
        assert!(parse_sync_line("c", "garbage").is_err());
    }

    #[test]
    fn exit_file_and_oom_marker() {
        let dir = tempfile::tempdir().unwrap();
        let exits = dir.path().join("exits");
        let persist = dir.path().join("persist");
        std::fs::create_dir_all(&exits).unwrap();
        std::fs::create_dir_all(&persist).unwrap();
        assert_eq!(read_exit(&exits, &persist, "c1").unwrap(), None);
        std::fs::write(exits.join("c1"), "137").unwrap();
        let exit = read_exit(&exits, &persist, "c1").unwrap().unwrap();
        assert_eq!((exit.exit_code, exit.oom_killed), (137, false));
        std::fs::write(persist.join("oom"), "").unwrap();
        assert!(
            read_exit(&exits, &persist, "c1")
                .unwrap()
                .unwrap()
                .oom_killed
        );
        std::fs::write(exits.join("c2"), "x").unwrap();
        assert!(read_exit(&exits, &persist, "c2").is_err());
    }
}
