//! One pod's shim process: how it is reached, watched and ended, and the
//! state the daemon keeps about it.

use super::*;

/// What the core persists for a pod of this handler (its handler_state).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ShimState {
    pub(super) socket: PathBuf,
    pub(super) pid: u32,
    pub(super) log: PathBuf,
    /// The shim's own handler_state, base64.
    pub(super) state: String,
}

/// A running (or dead) shim of one pod.
pub(super) struct Shim {
    pub(super) sandbox_id: String,
    pub(super) socket: PathBuf,
    pub(super) pid: u32,
    pub(super) log: PathBuf,
    pub(super) client: Option<ShimClient>,
    /// How the shim ended, once known (set by the reaper of shims this daemon
    /// started, or when a restored shim turns out to be gone).
    pub(super) exited: Arc<Mutex<Option<String>>>,
    /// This daemon started it, so its exit is reaped and reported.
    pub(super) ours: bool,
    /// The pod's state dir (RunSandbox/RestoreSandbox `state_dir`).
    pub(super) state_dir: String,
    /// The shim's own handler_state of the pod, and the containers it holds:
    /// what a fresh shim gets in RestoreSandbox when this one died.
    pub(super) handler_state: Mutex<Vec<u8>>,
    pub(super) containers: Mutex<BTreeMap<String, RestoreContainer>>,
}

impl Shim {
    pub(super) fn exit_status(&self) -> Option<String> {
        self.exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn dead_error(&self, how: &str) -> HandlerError {
        HandlerError::internal(format!(
            "shim for pod {} {how}{}",
            self.sandbox_id,
            log_tail(&self.log)
                .map(|t| format!("; its log {} ends with: {t}", self.log.display()))
                .unwrap_or_default()
        ))
    }

    /// One call bounded by [`CALL_TIMEOUT`] (`Wait`: unbounded).
    pub(super) async fn call(&self, name: &str, payload: Vec<u8>) -> HandlerResult<Vec<u8>> {
        let timeout = if name == method::WAIT {
            WAIT_TIMEOUT
        } else {
            CALL_TIMEOUT
        };
        self.call_within(name, payload, timeout).await
    }

    /// One call; a broken connection is reported as the shim's death.
    pub(super) async fn call_within(
        &self,
        name: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> HandlerResult<Vec<u8>> {
        if let Some(status) = self.exit_status() {
            return Err(self.dead_error(&format!("exited ({status})")));
        }
        let Some(client) = &self.client else {
            return Err(self.dead_error("is not reachable"));
        };
        match client.call(name, payload, timeout).await {
            Ok(bytes) => Ok(bytes),
            Err(CallError::Handler(err)) => Err(err),
            Err(CallError::Transport(err)) => {
                // The reaper usually learns the exit status a moment after the
                // connection breaks.
                if self.ours {
                    for _ in 0..20 {
                        if let Some(status) = self.exit_status() {
                            return Err(
                                self.dead_error(&format!("exited ({status}) during {name}"))
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                } else if !process_alive(self.pid) {
                    self.mark_exited("gone");
                    return Err(self.dead_error(&format!("(pid {}) is gone", self.pid)));
                }
                Err(self.dead_error(&format!("did not answer {name}: {err}")))
            }
        }
    }

    /// What a fresh shim needs to take over (or clean up) this pod.
    pub(super) fn restore_request(&self) -> RestoreSandboxRequest {
        RestoreSandboxRequest {
            sandbox_id: self.sandbox_id.clone(),
            state_dir: self.state_dir.clone(),
            handler_state: lock(&self.handler_state).clone(),
            containers: lock(&self.containers).values().cloned().collect(),
            config: None,
        }
    }

    pub(super) fn mark_exited(&self, status: &str) {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        exited.get_or_insert_with(|| status.to_string());
    }

    pub(super) fn is_dead(&self) -> bool {
        self.exit_status().is_some() || (!self.ours && !process_alive(self.pid))
    }

    /// Ends the shim process (its whole process group) if it still runs.
    pub(super) async fn terminate(&self) {
        for _ in 0..40 {
            if self.is_dead() {
                return;
            }
            if !self.ours {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.is_dead() || !self.is_our_shim_process() {
            return;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        if let Err(err) = killpg(Pid::from_raw(pid), Signal::SIGKILL) {
            warn!(pod = %self.sandbox_id, pid, "killing the shim: {err}");
        }
    }

    /// Guards against pid reuse before signalling a shim this daemon did not
    /// start: its command line must name its socket.
    pub(super) fn is_our_shim_process(&self) -> bool {
        if self.ours {
            return true;
        }
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|cmdline| {
                let socket = self.socket.as_os_str().as_encoded_bytes();
                cmdline.split(|b| *b == 0).any(|arg| arg == socket)
            })
            .unwrap_or(false)
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn process_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok())
}

pub(super) fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => {
                let name = Signal::try_from(signal)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                format!("killed by signal {signal} {name}")
                    .trim_end()
                    .to_string()
            }
            _ => status.to_string(),
        },
        Err(err) => format!("unknown status: {err}"),
    }
}

/// The last few non-empty lines of a shim's log, for error messages.
pub(super) fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return None;
    }
    let tail: Vec<char> = lines[lines.len().saturating_sub(3)..]
        .join(" | ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let start = tail.len().saturating_sub(600);
    Some(format!(
        "{}{}",
        if start > 0 { "..." } else { "" },
        tail[start..].iter().collect::<String>()
    ))
}

impl Shim {
    pub(super) fn terminate_now(&self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

pub(super) fn wrap_state(shim: &Shim, state: &[u8]) -> Vec<u8> {
    let wrapped = ShimState {
        socket: shim.socket.clone(),
        pid: shim.pid,
        log: shim.log.clone(),
        state: base64::engine::general_purpose::STANDARD.encode(state),
    };
    serde_json::to_vec(&wrapped).unwrap_or_default()
}
