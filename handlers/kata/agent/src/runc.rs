//! Drives the in-guest OCI runtime (runc, or crun: same CLI for what we use).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::reaper::{self, Reaper};

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("spawn {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("{bin} {cmd} failed (exit {code}): {output}")]
    Failed {
        bin: String,
        cmd: String,
        code: i32,
        output: String,
    },
    #[error("{bin} {cmd}: console socket: {reason}")]
    Console {
        bin: String,
        cmd: String,
        reason: String,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Stdio handed to a container process.
pub enum ProcStdio {
    /// Pipes: (stdin read end, stdout write end, stderr write end).
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A pty; runc sends the master over this console socket path (the
    /// caller puts `--console-socket PATH` in the arguments).
    Tty { console_socket: PathBuf },
}

#[derive(Clone)]
pub struct Runc {
    pub bin: PathBuf,
    pub root: PathBuf,
    pub reaper: Reaper,
}

impl Runc {
    fn command(&self, log: Option<&Path>) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        if let Some(log) = log {
            c.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        c
    }

    fn name(&self) -> String {
        self.bin.display().to_string()
    }

    /// Runs a short command to completion, capturing stdout+stderr.
    pub async fn run(&self, args: &[&str]) -> Result<String, RuncError> {
        let mut cmd = self.command(None);
        cmd.args(args);
        let (code, output) =
            reaper::output(&self.reaper, cmd)
                .await
                .map_err(|source| RuncError::Spawn {
                    bin: self.name(),
                    source,
                })?;
        if code != 0 {
            return Err(RuncError::Failed {
                bin: self.name(),
                cmd: args.first().copied().unwrap_or_default().into(),
                code,
                output: output.trim().to_string(),
            });
        }
        Ok(output)
    }

    /// `runc create` or `runc exec -d`: starts a process with the given stdio
    /// and returns the pty master when `stdio` is a tty. Errors come from the
    /// `--log` file since runc's own stderr is the container's.
    pub async fn spawn_detached(
        &self,
        args: &[String],
        stdio: ProcStdio,
        log: &Path,
    ) -> Result<Option<OwnedFd>, RuncError> {
        let cmd_name = args.first().cloned().unwrap_or_default();
        let _ = tokio::fs::remove_file(log).await;
        let mut console_listener = None;
        let exit = {
            let mut cmd = self.command(Some(log));
            cmd.args(args);
            match stdio {
                ProcStdio::Pipes {
                    stdin,
                    stdout,
                    stderr,
                } => {
                    cmd.stdin(Stdio::from(stdin))
                        .stdout(Stdio::from(stdout))
                        .stderr(Stdio::from(stderr));
                }
                ProcStdio::Tty { console_socket } => {
                    let _ = tokio::fs::remove_file(&console_socket).await;
                    let l = std::os::unix::net::UnixListener::bind(&console_socket)?;
                    l.set_nonblocking(true)?;
                    console_listener = Some((
                        tokio::net::UnixListener::from_std(l)?,
                        console_socket.clone(),
                    ));
                    cmd.stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                }
            }
            let (_pid, exit) = self
                .reaper
                .spawn(&mut cmd)
                .map_err(|source| RuncError::Spawn {
                    bin: self.name(),
                    source,
                })?;
            exit
        };
        let failed = |code: i32| RuncError::Failed {
            bin: self.name(),
            cmd: cmd_name.clone(),
            code,
            output: read_runc_log(log),
        };
        let mut master = None;
        if let Some((listener, path)) = console_listener {
            let mut exit_wait = exit.clone();
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    let stream = stream.into_std()?;
                    stream.set_nonblocking(false)?;
                    match recv_fd(&stream) {
                        Ok(fd) => master = Some(fd),
                        Err(reason) => {
                            // runc hung up without a pty: its log says why.
                            let code = reaper::wait(exit.clone()).await;
                            let _ = tokio::fs::remove_file(&path).await;
                            if code != 0 {
                                return Err(failed(code));
                            }
                            return Err(RuncError::Console { bin: self.name(), cmd: cmd_name.clone(), reason });
                        }
                    }
                }
                code = async { loop {
                    if let Some(c) = *exit_wait.borrow_and_update() { break c; }
                    if exit_wait.changed().await.is_err() { break 255; }
                } } => {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(failed(code));
                }
            }
            let _ = tokio::fs::remove_file(&path).await;
        }
        let code = reaper::wait(exit).await;
        if code != 0 {
            return Err(failed(code));
        }
        Ok(master)
    }
}

/// The last error message in a runc JSON log.
fn read_runc_log(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect();
    if msgs.is_empty() {
        text.trim().chars().take(2000).collect()
    } else {
        msgs.join("; ")
    }
}

/// Receives one fd sent with SCM_RIGHTS (runc's console socket protocol).
fn recv_fd(stream: &std::os::unix::net::UnixStream) -> Result<OwnedFd, String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("recvmsg: {e}"))?;
    for cmsg in msg.cmsgs().map_err(|e| format!("cmsgs: {e}"))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd in our table for
            // us (SCM_RIGHTS); nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(format!(
        "no fd received ({} bytes, flags {:?})",
        msg.bytes, msg.flags
    ))
}
