//! The daemon's side: [`KataHandler`] starts one VM shim process per pod and
//! forwards every call for that pod to it (see [`crate::wire`]).

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crius_shim_api::prost::Message;
use crius_shim_api::types::{
    Capabilities, ContainerRef, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, Empty, ExecSyncRequest, ExecSyncResponse,
    RestoreSandboxRequest, RestoreSandboxResponse, RunSandboxRequest, RunSandboxResponse,
    SandboxRef, SandboxStatusResponse, StopContainerRequest, UpdateContainerResourcesRequest,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerResult, RuntimeHandler};
use serde::{Deserialize, Serialize};

use crate::config::{VmConfig, VsockMode};
use crate::shim::{ShimConfig, VmState};
use crate::spawn::{kill_stale, log_tail};
use crate::vm::VmLayout;
use crate::wire::{METHOD_SHUTDOWN, ShimTransport, UnixTransport, call};

/// The shim binary's file name.
pub const SHIM_BINARY: &str = "crius-kata-shim";
/// Calls other than RunSandbox/ExecSync get this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A `kind: vm` handler entry.
#[derive(Debug, Clone, PartialEq)]
pub struct KataHandlerConfig {
    pub name: String,
    /// The QEMU binary (the entry's `runtime_path`).
    pub qemu_path: PathBuf,
    pub vm: VmConfig,
}

/// What the core persists per pod and gives back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct HandlerState {
    shim_pid: u32,
    socket: PathBuf,
    vm: VmState,
}

struct Pod {
    transport: UnixTransport,
    state: HandlerState,
}

/// One VM per pod, through a per-pod shim process.
pub struct KataHandler {
    config: KataHandlerConfig,
    shim_path: PathBuf,
    pods: Mutex<HashMap<String, Arc<Pod>>>,
}

impl KataHandler {
    pub fn new(config: KataHandlerConfig) -> Self {
        let shim_path = if config.vm.shim_path.as_os_str().is_empty() {
            default_shim_path()
        } else {
            config.vm.shim_path.clone()
        };
        Self {
            config,
            shim_path,
            pods: Mutex::new(HashMap::new()),
        }
    }

    fn pod(&self, sandbox_id: &str) -> HandlerResult<Arc<Pod>> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sandbox_id)
            .cloned()
            .ok_or_else(|| {
                HandlerError::not_found(format!(
                    "pod {sandbox_id} has no VM shim in handler {}",
                    self.config.name
                ))
            })
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let vm = &self.config.vm;
        for (what, path) in [
            ("QEMU", &self.config.qemu_path),
            ("guest kernel", &vm.kernel),
            ("guest initrd", &vm.initrd),
        ] {
            if !path.exists() {
                out.push(format!("{what} {} does not exist", path.display()));
            }
        }
        if !self.shim_path.exists() {
            out.push(format!(
                "the VM shim {} does not exist",
                self.shim_path.display()
            ));
        }
        if vm.vsock == VsockMode::Hybrid && find_program(&vm.vhost_device_vsock_path).is_none() {
            out.push(format!(
                "vhost-device-vsock ({}) is not installed (scripts/setup --with-kata)",
                vm.vhost_device_vsock_path.display()
            ));
        }
        out
    }

    async fn spawn_shim(&self, req: &RunSandboxRequest) -> HandlerResult<(Arc<Pod>, u32)> {
        let state_dir = PathBuf::from(&req.state_dir);
        let io = |what: &str, err: std::io::Error| {
            HandlerError::internal(format!("pod {}: {what}: {err}", req.sandbox_id))
        };
        std::fs::create_dir_all(&state_dir).map_err(|e| io("cannot create the state dir", e))?;
        let layout = VmLayout::new(&state_dir, &req.sandbox_id);
        crate::vm::create_private_dir(&layout.socket_dir)
            .map_err(|e| io("cannot create the socket dir", e))?;
        let socket = layout.shim_socket();
        let _ = std::fs::remove_file(&socket);
        let shim_config = ShimConfig {
            handler: self.config.name.clone(),
            sandbox_id: req.sandbox_id.clone(),
            state_dir: state_dir.clone(),
            qemu_path: self.config.qemu_path.clone(),
            vm: self.config.vm.clone(),
        };
        let config_path = state_dir.join("shim.json");
        let json =
            serde_json::to_vec_pretty(&shim_config).map_err(|e| io("shim config", e.into()))?;
        std::fs::write(&config_path, json).map_err(|e| io("cannot write the shim config", e))?;
        let log_path = state_dir.join("shim.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io("cannot open the shim log", e))?;
        let mut command = std::process::Command::new(&self.shim_path);
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| io("shim log", e))?)
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("CRIUS_SHIM_LOG").unwrap_or_else(|_| "info".into()),
            );
        // SAFETY: setsid is async-signal-safe and touches no parent state; the
        // shim gets its own session so it outlives the daemon (and its
        // process group signals).
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                io(
                    &format!("cannot start the VM shim {}", self.shim_path.display()),
                    e,
                )
            })?;
        let shim_pid = child.id().unwrap_or_default();
        // Wait for the socket, or for the shim to die trying.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HandlerError::internal(format!(
                    "VM shim of pod {} exited at start ({status}): {}",
                    req.sandbox_id,
                    log_tail(&log_path, 2000)
                )));
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(HandlerError::internal(format!(
                    "VM shim of pod {} did not open {} within 10 s",
                    req.sandbox_id,
                    socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Reap it whenever it exits (after a daemon restart, init does).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let pod = Arc::new(Pod {
            transport: UnixTransport {
                socket: socket.clone(),
            },
            state: HandlerState {
                shim_pid,
                socket,
                vm: VmState::default(),
            },
        });
        Ok((pod, shim_pid))
    }

    /// Asks the shim to exit, then makes sure it and its VM are gone.
    async fn shutdown_shim(&self, state: &HandlerState) {
        let _ = call::<_, Empty>(
            &UnixTransport {
                socket: state.socket.clone(),
            },
            METHOD_SHUTDOWN,
            &Empty {},
            Duration::from_secs(10),
        )
        .await;
        let gone =
            |pid: u32| pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(state.shim_pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A shim that did not exit (or a crashed one) may leave processes;
        // its VM processes die with it (PDEATHSIG), this is the backstop.
        kill_stale(state.shim_pid, SHIM_BINARY);
        kill_stale(state.vm.qemu_pid, "qemu");
        for pid in &state.vm.helper_pids {
            kill_stale(*pid, "vhost-device-vsock");
            kill_stale(*pid, "virtiofsd");
        }
        let _ = std::fs::remove_file(&state.socket);
        // A short socket dir (deep state dirs) is ours alone; the state dir
        // itself belongs to the core.
        if let Some(dir) = state.socket.parent()
            && dir.starts_with(crate::vm::SHORT_SOCKET_ROOT)
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    async fn forward<Req: Message, Resp: Message + Default>(
        &self,
        sandbox_id: &str,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> HandlerResult<Resp> {
        let pod = self.pod(sandbox_id)?;
        call(
            &pod.transport as &dyn ShimTransport,
            method,
            request,
            timeout,
        )
        .await
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// `crius-kata-shim` next to the running binary (the daemon, or a test
/// binary under `target/debug/deps`, whose parent holds the binaries).
pub fn default_shim_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join(SHIM_BINARY);
    if beside.exists() || dir.file_name().is_none_or(|n| n != "deps") {
        return beside;
    }
    dir.parent().map(|p| p.join(SHIM_BINARY)).unwrap_or(beside)
}

/// An absolute path if it exists, or a bare name found on `PATH`.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() || program.components().count() > 1 {
        return program.exists().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.exists())
}

#[async_trait]
impl RuntimeHandler for KataHandler {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recursive_read_only_mounts: false,
            user_namespaces: false,
            needs_infra_container: false,
        }
    }

    async fn check_ready(&self) -> HandlerResult<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(HandlerError::not_ready(
                &self.config.name,
                problems.join("; "),
            ))
        }
    }

    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        if self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&req.sandbox_id)
        {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!("pod {} already has a VM", req.sandbox_id),
            ));
        }
        self.check_ready().await?;
        let (pod, _) = self.spawn_shim(&req).await?;
        let timeout =
            Duration::from_secs(self.config.vm.boot_timeout_seconds) + Duration::from_secs(30);
        let result: HandlerResult<RunSandboxResponse> = call(
            &pod.transport as &dyn ShimTransport,
            "RunSandbox",
            &req,
            timeout,
        )
        .await;
        match result {
            Ok(resp) => {
                let vm: VmState = serde_json::from_slice(&resp.handler_state).unwrap_or_default();
                let state = HandlerState {
                    vm,
                    ..pod.state.clone()
                };
                let handler_state = serde_json::to_vec(&state).unwrap_or_default();
                let pod = Arc::new(Pod {
                    transport: pod.transport.clone(),
                    state,
                });
                self.pods
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(req.sandbox_id.clone(), pod);
                Ok(RunSandboxResponse {
                    handler_state,
                    infra_pid: 0,
                })
            }
            Err(err) => {
                self.shutdown_shim(&pod.state).await;
                Err(err)
            }
        }
    }

    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let Ok(pod) = self.pod(&req.sandbox_id) else {
            // Never ran here, or already removed: nothing to stop.
            return Ok(());
        };
        match call::<_, Empty>(
            &pod.transport as &dyn ShimTransport,
            "StopSandbox",
            &req,
            CALL_TIMEOUT,
        )
        .await
        {
            Ok(_) => Ok(()),
            // A dead shim took its VM with it; make sure and carry on.
            Err(err) if err.kind == ErrorKind::NotReady => {
                tracing::warn!(sandbox = %req.sandbox_id, error = %err, "VM shim gone at stop");
                self.shutdown_shim(&pod.state).await;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let Ok(pod) = self.pod(&req.sandbox_id) else {
            return Ok(());
        };
        let result = call::<_, Empty>(
            &pod.transport as &dyn ShimTransport,
            "RemoveSandbox",
            &req,
            CALL_TIMEOUT,
        )
        .await;
        if let Err(err) = &result
            && err.kind != ErrorKind::NotReady
        {
            return Err(err.clone());
        }
        self.shutdown_shim(&pod.state).await;
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.sandbox_id);
        Ok(())
    }

    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        match call(
            &pod.transport as &dyn ShimTransport,
            "SandboxStatus",
            &req,
            CALL_TIMEOUT,
        )
        .await
        {
            Ok(status) => Ok(status),
            Err(err) if err.kind == ErrorKind::NotReady => Ok(SandboxStatusResponse {
                ready: false,
                info: HashMap::from([(
                    "reason".to_string(),
                    format!("the VM shim is gone: {err}"),
                )]),
            }),
            Err(err) => Err(err),
        }
    }

    async fn restore_sandbox(
        &self,
        req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        let state: HandlerState = serde_json::from_slice(&req.handler_state).map_err(|err| {
            HandlerError::invalid_argument(format!(
                "pod {}: bad kata handler state: {err}",
                req.sandbox_id
            ))
        })?;
        let pod = Arc::new(Pod {
            transport: UnixTransport {
                socket: state.socket.clone(),
            },
            state,
        });
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.sandbox_id.clone(), pod.clone());
        match call(
            &pod.transport as &dyn ShimTransport,
            "RestoreSandbox",
            &req,
            CALL_TIMEOUT,
        )
        .await
        {
            Ok(resp) => Ok(resp),
            // The shim died while the daemon was down: the pod is not ready,
            // but stays known so stop/remove can clean up.
            Err(err) if err.kind == ErrorKind::NotReady => {
                tracing::warn!(sandbox = %req.sandbox_id, error = %err, "VM shim gone after restart");
                Ok(RestoreSandboxResponse { ready: false })
            }
            Err(err) => Err(err),
        }
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        let id = req.sandbox_id.clone();
        self.forward(&id, "CreateContainer", &req, CALL_TIMEOUT)
            .await
    }

    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.forward::<_, Empty>(
            &req.sandbox_id.clone(),
            "StartContainer",
            &req,
            CALL_TIMEOUT,
        )
        .await
        .map(drop)
    }

    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        let timeout = CALL_TIMEOUT + Duration::from_secs(req.timeout_seconds.max(0) as u64);
        self.forward::<_, Empty>(&req.sandbox_id.clone(), "StopContainer", &req, timeout)
            .await
            .map(drop)
    }

    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.forward::<_, Empty>(
            &req.sandbox_id.clone(),
            "RemoveContainer",
            &req,
            CALL_TIMEOUT,
        )
        .await
        .map(drop)
    }

    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        self.forward(
            &req.sandbox_id.clone(),
            "ContainerStatus",
            &req,
            CALL_TIMEOUT,
        )
        .await
    }

    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        let timeout = match req.timeout_seconds {
            t if t > 0 => Duration::from_secs(t as u64) + Duration::from_secs(30),
            _ => Duration::from_secs(24 * 3600),
        };
        self.forward(&req.sandbox_id.clone(), "ExecSync", &req, timeout)
            .await
    }

    async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        self.forward::<_, Empty>(
            &req.sandbox_id.clone(),
            "UpdateContainerResources",
            &req,
            CALL_TIMEOUT,
        )
        .await
        .map(drop)
    }

    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        self.forward::<_, Empty>(
            &req.sandbox_id.clone(),
            "ReopenContainerLog",
            &req,
            CALL_TIMEOUT,
        )
        .await
        .map(drop)
    }

    async fn container_stats(&self, req: ContainerRef) -> HandlerResult<ContainerStatsResponse> {
        self.forward(
            &req.sandbox_id.clone(),
            "ContainerStats",
            &req,
            CALL_TIMEOUT,
        )
        .await
    }
}
