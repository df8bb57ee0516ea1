//! Out-of-process handlers (`kind: plugin`, `plugin.mode: process`): one
//! shim process per pod speaking the handler contract over ttrpc on a unix
//! socket (see `crius_shim_api::shim` for the command line).
//!
//! The shim is started by RunSandbox in its own process group, so it outlives
//! a daemon crash or restart; its socket path and pid are kept in the pod's
//! handler_state (wrapped around the shim's own state), and RestoreSandbox
//! reconnects. A shim that dies only fails its own pod's calls, with an error
//! naming the pod and how the shim ended; stop and remove of such a pod still
//! succeed so the core can clean up: they go to a fresh shim for the pod
//! (also when the shim dies during the call: it is retried once there),
//! which first gets `RestoreSandbox` with the pod's state dir, the dead
//! shim's handler_state and the containers it knew, so the handler can clean
//! up from what it keeps on disk. `Info` and `CheckReady` run the executable
//! as one-shot commands (`info`, `check-ready`). The handler's params reach
//! every command as a 0600 file (`--params-file`), never on the command line.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use crius_shim_api::prost::Message;
use crius_shim_api::shim::{CallError, EXIT_HANDLER_ERROR, ShimClient};
use crius_shim_api::types::{
    AttachRequest, Capabilities, ContainerRef, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, Empty, ExecRequest, ExecResponse,
    ExecSyncRequest, ExecSyncResponse, InfoResponse, KillProcessRequest, PortForwardRequest,
    ProcessRef, ResizePtyRequest, RestoreContainer, RestoreSandboxRequest, RestoreSandboxResponse,
    RunSandboxRequest, RunSandboxResponse, SandboxRef, SandboxStatsResponse, SandboxStatusResponse,
    StopContainerRequest, UpdateContainerResourcesRequest, UpdateSandboxResourcesRequest,
    WaitResponse,
};
use crius_shim_api::wire::{self, method};
use crius_shim_api::{HandlerError, HandlerParams, HandlerResult, RuntimeHandler};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How long one-shot commands (`info`, `check-ready`) may take.
const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new shim has to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on one call into a shim (RunSandbox: see
/// [`RemoteHandler::with_run_sandbox_timeout`]; StopContainer and ExecSync
/// get their own timeout on top).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// `Wait` answers when a process exits, however long that takes.
const WAIT_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// How long a CheckReady answer is reused (the kubelet polls Status often).
const READY_CACHE: Duration = Duration::from_secs(5);
/// Longest unix socket path (sun_path minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why an out-of-process handler could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("shim executable {path}: {message}")]
    Exe { path: PathBuf, message: String },
    #[error(
        "shim executable {path} of handler {name} speaks handler contract version {found} \
         (0 = version 1, before versions were reported), but this crius speaks contract version \
         {expected}: rebuild the shim against a crius-shim-api with CONTRACT_VERSION {expected}"
    )]
    Contract {
        path: PathBuf,
        name: String,
        found: u32,
        expected: u32,
    },
    #[error("shim executable {path} failed to describe handler {name} (info): {error}")]
    Info {
        path: PathBuf,
        name: String,
        error: HandlerError,
    },
    #[error("handler {name}: cannot write its params file {path}: {message}")]
    Params {
        name: String,
        path: PathBuf,
        message: String,
    },
}

/// What the core persists for a pod of this handler (its handler_state).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShimState {
    socket: PathBuf,
    pid: u32,
    log: PathBuf,
    /// The shim's own handler_state, base64.
    state: String,
}

/// A running (or dead) shim of one pod.
struct Shim {
    sandbox_id: String,
    socket: PathBuf,
    pid: u32,
    log: PathBuf,
    client: Option<ShimClient>,
    /// How the shim ended, once known (set by the reaper of shims this daemon
    /// started, or when a restored shim turns out to be gone).
    exited: Arc<Mutex<Option<String>>>,
    /// This daemon started it, so its exit is reaped and reported.
    ours: bool,
    /// The pod's state dir (RunSandbox/RestoreSandbox `state_dir`).
    state_dir: String,
    /// The shim's own handler_state of the pod, and the containers it holds:
    /// what a fresh shim gets in RestoreSandbox when this one died.
    handler_state: Mutex<Vec<u8>>,
    containers: Mutex<BTreeMap<String, RestoreContainer>>,
}

impl Shim {
    fn exit_status(&self) -> Option<String> {
        self.exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn dead_error(&self, how: &str) -> HandlerError {
        HandlerError::internal(format!(
            "shim for pod {} {how}{}",
            self.sandbox_id,
            log_tail(&self.log)
                .map(|t| format!("; its log {} ends with: {t}", self.log.display()))
                .unwrap_or_default()
        ))
    }

    /// One call bounded by [`CALL_TIMEOUT`] (`Wait`: unbounded).
    async fn call(&self, name: &str, payload: Vec<u8>) -> HandlerResult<Vec<u8>> {
        let timeout = if name == method::WAIT {
            WAIT_TIMEOUT
        } else {
            CALL_TIMEOUT
        };
        self.call_within(name, payload, timeout).await
    }

    /// One call; a broken connection is reported as the shim's death.
    async fn call_within(
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
    fn restore_request(&self) -> RestoreSandboxRequest {
        RestoreSandboxRequest {
            sandbox_id: self.sandbox_id.clone(),
            state_dir: self.state_dir.clone(),
            handler_state: lock(&self.handler_state).clone(),
            containers: lock(&self.containers).values().cloned().collect(),
            config: None,
        }
    }

    fn mark_exited(&self, status: &str) {
        let mut exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        exited.get_or_insert_with(|| status.to_string());
    }

    fn is_dead(&self) -> bool {
        self.exit_status().is_some() || (!self.ours && !process_alive(self.pid))
    }

    /// Ends the shim process (its whole process group) if it still runs.
    async fn terminate(&self) {
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
    fn is_our_shim_process(&self) -> bool {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn process_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok())
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
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
fn log_tail(path: &Path) -> Option<String> {
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

/// A handler whose pods each run under a shim process.
pub struct RemoteHandler {
    name: String,
    exe: PathBuf,
    /// The handler's params as JSON, handed to every command with `--params-file`.
    params_file: PathBuf,
    socket_dir: PathBuf,
    run_sandbox_timeout: Duration,
    info: InfoResponse,
    shims: Mutex<HashMap<String, Arc<Shim>>>,
    /// Held while a dead shim is replaced, so that concurrent callers that
    /// all saw it die (a stop and the pod's exit `Wait`) get one fresh shim
    /// instead of starting one each on the same socket.
    respawning: tokio::sync::Mutex<()>,
    ready: Mutex<Option<(Instant, HandlerResult<()>)>>,
}

impl std::fmt::Debug for RemoteHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteHandler")
            .field("name", &self.name)
            .field("exe", &self.exe)
            .finish()
    }
}

impl RemoteHandler {
    /// Describes the handler by running `<exe> info`. Shim sockets go to
    /// `socket_dir` (kept short: unix socket paths are limited). The params
    /// file is written to `params.state_dir` (else `socket_dir`).
    pub async fn new(
        exe: &Path,
        params: HandlerParams,
        socket_dir: &Path,
    ) -> Result<Self, RemoteError> {
        let exe_error = |message: String| RemoteError::Exe {
            path: exe.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(exe).map_err(|e| exe_error(e.to_string()))?;
        if !meta.is_file()
            || std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0
        {
            return Err(exe_error("is not an executable file".to_string()));
        }
        let name = params.name.clone();
        let params_file =
            write_params_file(&params, socket_dir).map_err(|(path, e)| RemoteError::Params {
                name: name.clone(),
                path,
                message: e.to_string(),
            })?;
        let info = one_shot(exe, "info", &name, &params_file)
            .await
            .and_then(|bytes| wire::decode_response::<InfoResponse>(method::INFO, &bytes))
            .map_err(|error| RemoteError::Info {
                path: exe.to_path_buf(),
                name: name.clone(),
                error,
            })?;
        if info.contract_version != crius_shim_api::CONTRACT_VERSION {
            return Err(RemoteError::Contract {
                path: exe.to_path_buf(),
                name,
                found: info.contract_version,
                expected: crius_shim_api::CONTRACT_VERSION,
            });
        }
        info!(handler = %name, shim = %exe.display(), version = %info.version, "out-of-process handler ready to start shims");
        Ok(Self {
            name,
            exe: exe.to_path_buf(),
            params_file,
            socket_dir: socket_dir.to_path_buf(),
            run_sandbox_timeout: CALL_TIMEOUT,
            info,
            shims: Mutex::new(HashMap::new()),
            respawning: tokio::sync::Mutex::new(()),
            ready: Mutex::new(None),
        })
    }

    /// How long RunSandbox may take (default [`CALL_TIMEOUT`]): a handler
    /// that boots a VM needs at least its boot timeout.
    pub fn with_run_sandbox_timeout(mut self, timeout: Duration) -> Self {
        self.run_sandbox_timeout = timeout;
        self
    }

    fn shim(&self, sandbox_id: &str) -> HandlerResult<Arc<Shim>> {
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sandbox_id)
            .cloned()
            .ok_or_else(|| {
                HandlerError::not_found(format!(
                    "handler {}: no shim is known for pod {sandbox_id}",
                    self.name
                ))
            })
    }

    fn forget(&self, sandbox_id: &str) -> Option<Arc<Shim>> {
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox_id)
    }

    async fn rpc<Req: Message, Resp: Message + Default>(
        &self,
        sandbox_id: &str,
        name: &'static str,
        request: &Req,
    ) -> HandlerResult<Resp> {
        let mut shim = self.shim(sandbox_id)?;
        if shim.is_dead() {
            // The pod's shim died while its workload may still run: a fresh
            // shim restores the pod (RestoreSandbox with what the dead one
            // held), reattaching to whatever survived, and takes the call.
            if let Some(fresh) = self.respawn(&shim).await {
                shim = fresh;
            }
        }
        let answer = match shim.call(name, wire::encode(request)).await {
            Ok(answer) => answer,
            // The shim was killed and the daemon had not seen it yet (seen
            // on CI: a status call right after a kill -9 answered UNKNOWN):
            // the call goes once more, to a fresh shim that restored the pod.
            Err(err) if shim.is_dead() => {
                warn!(handler = %self.name, pod = %sandbox_id, method = name, "the shim died before answering; retrying on a fresh shim: {err}");
                match self.respawn(&shim).await {
                    Some(fresh) => fresh.call(name, wire::encode(request)).await?,
                    None => return Err(err),
                }
            }
            Err(err) => return Err(err),
        };
        wire::decode_response(name, &answer)
    }

    async fn rpc_unit<Req: Message>(
        &self,
        sandbox_id: &str,
        name: &'static str,
        request: &Req,
    ) -> HandlerResult<()> {
        self.rpc::<Req, Empty>(sandbox_id, name, request)
            .await
            .map(|_| ())
    }

    /// Like [`Self::rpc_unit`] for stop/remove calls, which must work even
    /// when the pod's shim died: a fresh shim is started for the pod (the
    /// handler cleans up from what it keeps on disk). An unknown pod, or one
    /// for which no shim can be started, has nothing left to stop.
    async fn rpc_idempotent<Req: Message>(
        &self,
        sandbox_id: &str,
        name: &'static str,
        request: &Req,
    ) -> HandlerResult<()> {
        self.rpc_idempotent_within(sandbox_id, name, request, CALL_TIMEOUT)
            .await
    }

    async fn rpc_idempotent_within<Req: Message>(
        &self,
        sandbox_id: &str,
        name: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> HandlerResult<()> {
        let Ok(mut shim) = self.shim(sandbox_id) else {
            return Ok(());
        };
        if shim.is_dead() {
            match self.respawn(&shim).await {
                Some(fresh) => shim = fresh,
                None => return Ok(()),
            }
        }
        match shim.call_within(name, wire::encode(request), timeout).await {
            Ok(_) => Ok(()),
            // The shim died during the call (a kill -9 the daemon had not
            // seen yet): the call goes again, once, to a fresh shim, so one
            // stop or remove still does the whole job.
            Err(err) if shim.is_dead() => {
                warn!(handler = %self.name, pod = %sandbox_id, method = name, "the shim died during the call; retrying on a fresh shim: {err}");
                match self.respawn(&shim).await {
                    Some(fresh) => fresh
                        .call_within(name, wire::encode(request), timeout)
                        .await
                        .map(|_| ()),
                    None => Ok(()),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// A new shim for a pod whose shim died: it restores the pod from what
    /// the dead one held and kept on disk, so that it can serve the pod's
    /// calls (stop and remove included).
    ///
    /// Once per dead shim: a caller that finds the pod already taken over
    /// by a live shim gets that one, and a pod removed in the meantime
    /// (forgotten) gets none, so no shim outlives its pod.
    async fn respawn(&self, dead: &Shim) -> Option<Arc<Shim>> {
        let id = &dead.sandbox_id;
        let _one_at_a_time = self.respawning.lock().await;
        match self.shims.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            None => return None,
            Some(current) if !std::ptr::eq(current.as_ref(), dead) && !current.is_dead() => {
                return Some(current.clone());
            }
            Some(_) => {}
        }
        warn!(handler = %self.name, pod = %id, "the pod's shim is gone; starting a new one that restores the pod");
        match self
            .spawn_shim(id, dead.socket.clone(), dead.log.clone(), &dead.state_dir)
            .await
        {
            Ok(fresh) => {
                // The fresh shim learns what the dead one held, so that its
                // stop and remove release it.
                let restore = dead.restore_request();
                *lock(&fresh.handler_state) = restore.handler_state.clone();
                *lock(&fresh.containers) = lock(&dead.containers).clone();
                if let Err(err) = fresh
                    .call(method::RESTORE_SANDBOX, wire::encode(&restore))
                    .await
                {
                    warn!(handler = %self.name, pod = %id, "the fresh shim could not restore the pod; cleaning up anyway: {err}");
                }
                let fresh = Arc::new(fresh);
                let mut shims = self.shims.lock().unwrap_or_else(|e| e.into_inner());
                if !shims.contains_key(id) {
                    // Removed while the fresh shim started: it has no pod.
                    drop(shims);
                    fresh.terminate_now();
                    let _ = std::fs::remove_file(&fresh.socket);
                    return None;
                }
                shims.insert(id.clone(), fresh.clone());
                Some(fresh)
            }
            Err(err) => {
                warn!(handler = %self.name, pod = %id, "cannot start a shim to clean up; nothing left to stop: {err}");
                None
            }
        }
    }

    fn socket_path(&self, sandbox_id: &str) -> HandlerResult<PathBuf> {
        let short: String = sandbox_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(24)
            .collect();
        let socket = self.socket_dir.join(format!("{}-{short}.sock", self.name));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HandlerError::failed_precondition(format!(
                "handler {}: the shim socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter state_dir",
                self.name,
                socket.display()
            )));
        }
        Ok(socket)
    }

    /// Starts the pod's shim and connects to it.
    async fn start_shim(&self, req: &RunSandboxRequest) -> HandlerResult<Shim> {
        let id = &req.sandbox_id;
        let socket = self.socket_path(id)?;
        let log_dir = if req.state_dir.is_empty() {
            self.socket_dir.clone()
        } else {
            PathBuf::from(&req.state_dir)
        };
        let log = log_dir.join(if req.state_dir.is_empty() {
            format!("{id}.log")
        } else {
            "shim.log".to_string()
        });
        self.spawn_shim(id, socket, log, &req.state_dir).await
    }

    /// Starts a shim serving pod `id` on `socket`, logging to `log`.
    async fn spawn_shim(
        &self,
        id: &str,
        socket: PathBuf,
        log: PathBuf,
        state_dir: &str,
    ) -> HandlerResult<Shim> {
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            HandlerError::internal(format!("handler {}: {what} for pod {id}: {e}", self.name))
        };
        crate::perms::ensure_private_dir(&self.socket_dir)
            .map_err(|e| internal("creating the shim socket dir", &e))?;
        if let Some(dir) = log.parent() {
            crate::perms::ensure_private_dir(dir)
                .map_err(|e| internal("creating the pod state dir", &e))?;
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| internal("opening the shim log", &e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| internal("opening the shim log", &e))?;
        let _ = std::fs::remove_file(&socket);
        let mut child = tokio::process::Command::new(&self.exe)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--sandbox-id")
            .arg(id)
            .arg("--params-file")
            .arg(&self.params_file)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            // Its own process group: signals for the daemon's group (a
            // terminal's ^C, a service manager's stop) must not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| internal(&format!("starting the shim {}", self.exe.display()), &e))?;
        let pid = child.id().unwrap_or_default();
        let exited = Arc::new(Mutex::new(None));
        let reaper_exited = exited.clone();
        let (handler, pod) = (self.name.clone(), id.to_string());
        tokio::spawn(async move {
            let status = describe(&child.wait().await);
            info!(handler = %handler, pod = %pod, "shim exited: {status}");
            *reaper_exited.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        });
        let mut shim = Shim {
            sandbox_id: id.to_string(),
            socket: socket.clone(),
            pid,
            log,
            client: None,
            exited,
            ours: true,
            state_dir: state_dir.to_string(),
            handler_state: Mutex::new(Vec::new()),
            containers: Mutex::new(BTreeMap::new()),
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = shim.exit_status() {
                return Err(shim.dead_error(&format!("exited before serving ({status})")));
            }
            match ShimClient::connect(&socket).await {
                Ok(client) => {
                    shim.client = Some(client);
                    return Ok(shim);
                }
                Err(err) if Instant::now() > deadline => {
                    shim.client = None;
                    shim.terminate_now();
                    return Err(shim.dead_error(&format!(
                        "did not listen on {} within {START_TIMEOUT:?}: {err}",
                        socket.display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

impl Shim {
    fn terminate_now(&self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Writes `params` as JSON, readable by the daemon's user only (the options
/// may hold anything the handler needs, so they stay off command lines).
fn write_params_file(
    params: &HandlerParams,
    socket_dir: &Path,
) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = if params.state_dir.is_empty() {
        socket_dir.to_path_buf()
    } else {
        PathBuf::from(&params.state_dir)
    };
    let path = dir.join(if params.state_dir.is_empty() {
        format!("{}.params.json", params.name)
    } else {
        "params.json".to_string()
    });
    let write = || -> std::io::Result<()> {
        crate::perms::ensure_private_dir(&dir)?;
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(params.to_json().as_bytes())?;
        file.sync_all()?;
        // A running shim may be reading the old one: replace it atomically.
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| (path.clone(), e))?;
    Ok(path)
}

/// Runs `<exe> <command> --params-file <path>` and returns its stdout, or
/// the handler's error.
async fn one_shot(
    exe: &Path,
    command: &str,
    name: &str,
    params_file: &Path,
) -> HandlerResult<Vec<u8>> {
    let run = tokio::process::Command::new(exe)
        .arg(command)
        .arg("--params-file")
        .arg(params_file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(ONE_SHOT_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => {
            return Err(HandlerError::internal(format!(
                "handler {name}: cannot run {} {command}: {err}",
                exe.display()
            )));
        }
        Err(_) => {
            return Err(HandlerError::deadline_exceeded(format!(
                "handler {name}: {} {command} did not finish within {ONE_SHOT_TIMEOUT:?}",
                exe.display()
            )));
        }
    };
    if output.status.success() {
        return Ok(output.stdout);
    }
    if output.status.code() == Some(i32::from(EXIT_HANDLER_ERROR))
        && let Ok(error) = crius_shim_api::types::Error::decode(output.stdout.as_slice())
    {
        return Err(HandlerError::from_wire(error));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(HandlerError::internal(format!(
        "handler {name}: {} {command} failed ({}): {}",
        exe.display(),
        describe(&Ok(output.status)),
        stderr.trim()
    )))
}

fn wrap_state(shim: &Shim, state: &[u8]) -> Vec<u8> {
    let wrapped = ShimState {
        socket: shim.socket.clone(),
        pid: shim.pid,
        log: shim.log.clone(),
        state: base64::engine::general_purpose::STANDARD.encode(state),
    };
    serde_json::to_vec(&wrapped).unwrap_or_default()
}

#[async_trait]
impl RuntimeHandler for RemoteHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.info.capabilities.unwrap_or_default()
    }

    async fn check_ready(&self) -> HandlerResult<()> {
        if let Some((at, result)) = &*self.ready.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < READY_CACHE
        {
            return result.clone();
        }
        let result = one_shot(&self.exe, "check-ready", &self.name, &self.params_file)
            .await
            .map(|_| ());
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), result.clone()));
        result
    }

    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        let id = req.sandbox_id.clone();
        if let Ok(old) = self.shim(&id) {
            if !old.is_dead() {
                return Err(HandlerError::new(
                    crius_shim_api::ErrorKind::AlreadyExists,
                    format!("handler {}: pod {id} already has a running shim", self.name),
                ));
            }
            self.forget(&id);
        }
        let shim = Arc::new(self.start_shim(&req).await?);
        info!(handler = %self.name, pod = %id, pid = shim.pid, socket = %shim.socket.display(), "shim started");
        let answer = shim
            .call_within(
                method::RUN_SANDBOX,
                wire::encode(&req),
                self.run_sandbox_timeout,
            )
            .await
            .and_then(|bytes| {
                wire::decode_response::<RunSandboxResponse>(method::RUN_SANDBOX, &bytes)
            });
        match answer {
            Ok(mut response) => {
                *lock(&shim.handler_state) = response.handler_state.clone();
                response.handler_state = wrap_state(&shim, &response.handler_state);
                self.shims
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, shim);
                Ok(response)
            }
            Err(err) => {
                // RunSandbox must leave nothing behind.
                shim.terminate_now();
                let _ = std::fs::remove_file(&shim.socket);
                Err(err)
            }
        }
    }

    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.rpc_idempotent(&req.sandbox_id.clone(), method::STOP_SANDBOX, &req)
            .await
    }

    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let id = req.sandbox_id.clone();
        self.rpc_idempotent(&id, method::REMOVE_SANDBOX, &req)
            .await?;
        if let Some(shim) = self.forget(&id) {
            // The shim exits by itself after RemoveSandbox; make sure.
            shim.terminate().await;
            let _ = std::fs::remove_file(&shim.socket);
        }
        Ok(())
    }

    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        let shim = self.shim(&req.sandbox_id)?;
        if let Some(status) = shim.exit_status() {
            // The pod is not ready; say why instead of failing the status call.
            return Ok(SandboxStatusResponse {
                ready: false,
                info: [("shim".to_string(), format!("exited ({status})"))]
                    .into_iter()
                    .collect(),
            });
        }
        self.rpc(&req.sandbox_id.clone(), method::SANDBOX_STATUS, &req)
            .await
    }

    async fn restore_sandbox(
        &self,
        mut req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        let id = req.sandbox_id.clone();
        let state: ShimState = serde_json::from_slice(&req.handler_state).map_err(|e| {
            HandlerError::invalid_argument(format!(
                "handler {}: pod {id} has no usable shim state: {e}",
                self.name
            ))
        })?;
        req.handler_state = base64::engine::general_purpose::STANDARD
            .decode(&state.state)
            .map_err(|e| {
                HandlerError::invalid_argument(format!(
                    "handler {}: pod {id} has corrupt shim state: {e}",
                    self.name
                ))
            })?;
        let client = ShimClient::connect(&state.socket).await;
        let mut shim = Shim {
            sandbox_id: id.clone(),
            socket: state.socket,
            pid: state.pid,
            log: state.log,
            client: None,
            exited: Arc::new(Mutex::new(None)),
            ours: false,
            state_dir: req.state_dir.clone(),
            handler_state: Mutex::new(req.handler_state.clone()),
            containers: Mutex::new(
                req.containers
                    .iter()
                    .map(|c| (c.container_id.clone(), c.clone()))
                    .collect(),
            ),
        };
        let shim = match client {
            Ok(client) => {
                shim.client = Some(client);
                Arc::new(shim)
            }
            Err(err) => {
                warn!(handler = %self.name, pod = %id, "the pod's shim is gone after the restart: {err}");
                shim.mark_exited(&format!("gone after the daemon restart: {err}"));
                self.shims
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Arc::new(shim));
                return Ok(RestoreSandboxResponse { ready: false });
            }
        };
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), shim.clone());
        let answer = shim
            .call(method::RESTORE_SANDBOX, wire::encode(&req))
            .await?;
        wire::decode_response(method::RESTORE_SANDBOX, &answer)
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        let shim = self.shim(&req.sandbox_id)?;
        let answer = shim
            .call(method::CREATE_CONTAINER, wire::encode(&req))
            .await?;
        let response: CreateContainerResponse =
            wire::decode_response(method::CREATE_CONTAINER, &answer)?;
        let container = RestoreContainer {
            container_id: req.container_id.clone(),
            bundle_dir: req.bundle.map(|b| b.dir).unwrap_or_default(),
            log_path: req.log_path,
            handler_state: response.handler_state.clone(),
        };
        lock(&shim.containers).insert(req.container_id, container);
        Ok(response)
    }
    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::START_CONTAINER, &req)
            .await
    }
    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        // The handler waits up to the stop timeout before it answers.
        let grace = Duration::from_secs(u64::try_from(req.timeout_seconds).unwrap_or(0));
        self.rpc_idempotent_within(
            &req.sandbox_id.clone(),
            method::STOP_CONTAINER,
            &req,
            CALL_TIMEOUT + grace,
        )
        .await
    }
    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_idempotent(&req.sandbox_id.clone(), method::REMOVE_CONTAINER, &req)
            .await?;
        if let Ok(shim) = self.shim(&req.sandbox_id) {
            lock(&shim.containers).remove(&req.container_id);
        }
        Ok(())
    }
    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        self.rpc(&req.sandbox_id.clone(), method::CONTAINER_STATUS, &req)
            .await
    }
    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        // The command's own timeout (0 = none) comes on top of the call's.
        let timeout = match u64::try_from(req.timeout_seconds) {
            Ok(seconds) if seconds > 0 => CALL_TIMEOUT + Duration::from_secs(seconds),
            _ => WAIT_TIMEOUT,
        };
        let answer = self
            .shim(&req.sandbox_id)?
            .call_within(method::EXEC_SYNC, wire::encode(&req), timeout)
            .await?;
        wire::decode_response(method::EXEC_SYNC, &answer)
    }
    async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        self.rpc_unit(
            &req.sandbox_id.clone(),
            method::UPDATE_CONTAINER_RESOURCES,
            &req,
        )
        .await
    }
    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::REOPEN_CONTAINER_LOG, &req)
            .await
    }
    async fn container_stats(&self, req: ContainerRef) -> HandlerResult<ContainerStatsResponse> {
        self.rpc(&req.sandbox_id.clone(), method::CONTAINER_STATS, &req)
            .await
    }
    async fn exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        self.rpc(&req.sandbox_id.clone(), method::EXEC, &req).await
    }
    async fn attach(&self, req: AttachRequest) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::ATTACH, &req)
            .await
    }
    async fn resize_pty(&self, req: ResizePtyRequest) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::RESIZE_PTY, &req)
            .await
    }
    async fn kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        self.rpc_idempotent(&req.sandbox_id.clone(), method::KILL_PROCESS, &req)
            .await
    }
    async fn wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        self.rpc(&req.sandbox_id.clone(), method::WAIT, &req).await
    }
    async fn port_forward(&self, req: PortForwardRequest) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::PORT_FORWARD, &req)
            .await
    }
    async fn sandbox_stats(&self, req: SandboxRef) -> HandlerResult<SandboxStatsResponse> {
        self.rpc(&req.sandbox_id.clone(), method::SANDBOX_STATS, &req)
            .await
    }
    async fn update_sandbox_resources(
        &self,
        req: UpdateSandboxResourcesRequest,
    ) -> HandlerResult<()> {
        self.rpc_unit(
            &req.sandbox_id.clone(),
            method::UPDATE_SANDBOX_RESOURCES,
            &req,
        )
        .await
    }
}
