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

mod handler;
mod shim;

use shim::*;

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
        let meta = tokio::fs::metadata(exe)
            .await
            .map_err(|e| exe_error(e.to_string()))?;
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
                let adopted = {
                    let mut shims = self.shims.lock().unwrap_or_else(|e| e.into_inner());
                    // Removed while the fresh shim started: it has no pod.
                    let pod_still_known = shims.contains_key(id);
                    if pod_still_known {
                        shims.insert(id.clone(), fresh.clone());
                    }
                    pod_still_known
                };
                if !adopted {
                    fresh.terminate_now();
                    let _ = tokio::fs::remove_file(&fresh.socket).await;
                    return None;
                }
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
        let log_file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .await
            .map_err(|e| internal("opening the shim log", &e))?
            .into_std()
            .await;
        let log_err = log_file
            .try_clone()
            .map_err(|e| internal("opening the shim log", &e))?;
        let _ = tokio::fs::remove_file(&socket).await;
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
