//! The VM shim's handler: [`PodShim`] serves the handler contract for one
//! pod (`crius-kata-shim serve`, through `crius_shim_api::shim`). It owns
//! the VM and, through the guest agent, the pod's containers; it outlives
//! daemon restarts. The same type answers the one-shot `info` (parsing and
//! checking the `vm:` table) and `check-ready`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};

use crius_shim_api::types::{
    AttachRequest, Capabilities, ContainerRef, ContainerState, ContainerStatsResponse,
    ContainerStatusResponse, CreateContainerRequest, CreateContainerResponse, ExecRequest,
    ExecResponse, ExecSyncRequest, ExecSyncResponse, KillProcessRequest, PortForwardRequest,
    ProcessRef, ResizePtyRequest, RestoreSandboxRequest, RestoreSandboxResponse, RunSandboxRequest,
    RunSandboxResponse, SandboxRef, SandboxStatusResponse, StopContainerRequest,
    UpdateContainerResourcesRequest, UpdateSandboxResourcesRequest, WaitResponse,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerParams, HandlerResult, RuntimeHandler};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::agent_client::{AgentClient, AgentError};
use crate::attach::{Stream, copy_output};
use crate::config::{VmConfig, VsockMode};
use crate::container::{
    Container, Status, StdioConfig, VOLUMES, adapt_spec, mount_share, now_nanos, unshare_container,
    unshare_pod_volumes,
};
use crate::crilog::CriLog;
use crate::spawn::{ProcessSpawner, RealSpawner, kill_stale};
use crate::vm::{Vm, VmLayout};

mod handler;
#[cfg(test)]
mod tests;

/// The handler entry, as the daemon hands it over (`HandlerParams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The handler entry's name (for messages).
    pub handler: String,
    /// The entry's `runtime_path`.
    pub qemu_path: PathBuf,
    /// The entry's `vm:` table.
    pub vm: VmConfig,
    /// The handler's state dir (`HandlerParams.state_dir`, under the
    /// daemon's `state_dir`): VM sockets go there when a pod's state dir is
    /// too deep for a socket path.
    #[serde(default)]
    pub handler_state_dir: PathBuf,
}

impl ShimConfig {
    /// The entry as the daemon hands it over; a bad `vm:` table is an
    /// `InvalidArgument` naming its keys.
    pub fn from_params(params: &HandlerParams) -> HandlerResult<Self> {
        Ok(Self {
            handler: params.name.clone(),
            qemu_path: PathBuf::from(&params.runtime_path),
            vm: VmConfig::from_options(&params.options)?,
            handler_state_dir: PathBuf::from(&params.state_dir),
        })
    }
}

/// The pod this shim serves, learnt from RunSandbox (or, for a fresh shim
/// taking over a pod whose shim died, from RestoreSandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodIdent {
    sandbox_id: String,
    state_dir: PathBuf,
}

/// What the shim reports about its VM in RunSandbox's `handler_state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    pub qemu_pid: u32,
    pub helper_pids: Vec<u32>,
    pub socket_dir: PathBuf,
    /// Milliseconds from QEMU start until the agent answered.
    pub boot_ms: u64,
    /// The guest's vsock CID (unique per VM with `vsock: vhost`).
    #[serde(default)]
    pub guest_cid: u32,
}

/// Timings of one VM start, logged and reported in SandboxStatus info.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timings {
    /// Starting vhost-device-vsock (virtiofsd) and QEMU.
    pub(crate) vm_start: Duration,
    /// From the start until the agent answered Check: the guest booted.
    pub(crate) agent_ready: Duration,
    /// ... until CreateSandbox and the guest network were done.
    pub(crate) sandbox_ready: Duration,
}

enum Phase {
    /// Before RunSandbox.
    Empty,
    /// RunSandbox is starting the VM (the phase lock is not held meanwhile,
    /// so status and the other calls answer during a slow boot).
    Booting,
    Running(Box<Running>),
    /// The VM is gone: stopped, or it died (`reason`).
    Stopped {
        reason: String,
    },
}

struct Running {
    vm: Vm,
    agent: AgentClient,
    timings: Timings,
    net: Option<crate::net::NetSetup>,
}

/// The pod's handler as served by the shim.
pub struct PodShim {
    pub(crate) config: ShimConfig,
    pod: OnceLock<PodIdent>,
    pub(crate) spawner: Arc<dyn ProcessSpawner>,
    phase: Mutex<Phase>,
    /// Held by RunSandbox for the whole boot and by the VM teardown, so a
    /// stop waits for a boot to finish instead of racing it; status never
    /// takes it.
    lifecycle: Mutex<()>,
    pub(crate) containers: std::sync::Mutex<HashMap<String, Arc<Container>>>,
    /// Containers the agent reported OOM-killed.
    pub(crate) oom_killed: Arc<std::sync::Mutex<HashSet<String>>>,
    pub(crate) exec_counter: std::sync::atomic::AtomicU64,
    /// Interactive execs until `Wait` answered for them.
    pub(crate) execs: crate::interactive::Execs,
    /// The running VM's vsock CID.
    pub(crate) guest_cid: std::sync::atomic::AtomicU32,
    /// CreateContainer + StartContainer of the first container, in the
    /// guest (for the bench's kata split).
    last_container_start_ms: std::sync::atomic::AtomicU64,
    first_create_began: std::sync::Mutex<Option<Instant>>,
    /// The pod's VM cgroup (`<pod cgroup>/vm`) QEMU and the helpers run in.
    pub(crate) vm_cgroup: std::sync::Mutex<Option<crius_shim_api::cgroupfs::PodCgroup>>,
    /// Pod-wide shares mounted so far (see `container::VOLUMES`).
    pod_volumes: std::sync::Mutex<HashSet<PathBuf>>,
    /// The VM's size and what it may grow to (see `resize`).
    pub(crate) sizing: Mutex<crate::resize::Sizing>,
}

/// Exit code of a process killed by SIGKILL, as the agent reports it.
pub(crate) const SIGKILL_EXIT: i32 = 128 + 9;

pub(crate) fn agent_err(what: &str, err: AgentError) -> HandlerError {
    HandlerError::internal(format!("{what}: {err}"))
}

impl PodShim {
    /// The shim's handler for the entry in `params` (what `serve_shim`
    /// constructs), starting real processes.
    pub fn from_params(params: HandlerParams) -> HandlerResult<Self> {
        Ok(Self::new(
            ShimConfig::from_params(&params)?,
            Arc::new(RealSpawner),
        ))
    }

    pub fn new(config: ShimConfig, spawner: Arc<dyn ProcessSpawner>) -> Self {
        Self {
            config,
            pod: OnceLock::new(),
            spawner,
            phase: Mutex::new(Phase::Empty),
            lifecycle: Mutex::new(()),
            containers: std::sync::Mutex::new(HashMap::new()),
            oom_killed: Arc::new(std::sync::Mutex::new(HashSet::new())),
            exec_counter: std::sync::atomic::AtomicU64::new(0),
            execs: Default::default(),
            guest_cid: std::sync::atomic::AtomicU32::new(0),
            last_container_start_ms: std::sync::atomic::AtomicU64::new(0),
            first_create_began: std::sync::Mutex::new(None),
            vm_cgroup: std::sync::Mutex::new(None),
            pod_volumes: Default::default(),
            sizing: Default::default(),
        }
    }

    /// The running VM's vsock CID.
    pub(crate) fn guest_cid(&self) -> u32 {
        self.guest_cid.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pod's id ("" before RunSandbox/RestoreSandbox).
    pub(crate) fn sandbox_id(&self) -> &str {
        self.pod.get().map_or("", |p| p.sandbox_id.as_str())
    }

    pub(crate) fn layout(&self) -> VmLayout {
        match self.pod.get() {
            Some(pod) => VmLayout::new(
                &pod.state_dir,
                &self.config.handler_state_dir,
                &pod.sandbox_id,
            ),
            None => VmLayout::new(Path::new(""), Path::new(""), ""),
        }
    }

    /// Binds the shim to its pod (once; a shim serves one pod).
    fn claim(&self, sandbox_id: &str, state_dir: &str) -> HandlerResult<()> {
        if state_dir.is_empty() || !Path::new(state_dir).is_absolute() {
            return Err(HandlerError::invalid_argument(format!(
                "pod {sandbox_id}: the VM shim needs an absolute state_dir, got {state_dir:?}"
            )));
        }
        let ident = PodIdent {
            sandbox_id: sandbox_id.to_string(),
            state_dir: PathBuf::from(state_dir),
        };
        let bound = self.pod.get_or_init(|| ident.clone());
        if bound.sandbox_id != ident.sandbox_id {
            return Err(HandlerError::not_found(format!(
                "VM shim of pod {} does not serve pod {sandbox_id}",
                bound.sandbox_id
            )));
        }
        Ok(())
    }

    /// The agent of the running VM.
    pub(crate) async fn agent(&self) -> HandlerResult<AgentClient> {
        match &mut *self.phase.lock().await {
            Phase::Running(running) => match running.vm.exited() {
                None => Ok(running.agent.clone()),
                Some(err) => Err(HandlerError::failed_precondition(format!(
                    "the VM of pod {} is not running: the VM died: {err}",
                    self.sandbox_id()
                ))),
            },
            Phase::Empty => Err(HandlerError::failed_precondition(format!(
                "pod {} has no VM yet",
                self.sandbox_id()
            ))),
            Phase::Booting => Err(HandlerError::failed_precondition(format!(
                "the VM of pod {} is still booting",
                self.sandbox_id()
            ))),
            Phase::Stopped { reason } => Err(HandlerError::failed_precondition(format!(
                "the VM of pod {} is not running: {reason}",
                self.sandbox_id()
            ))),
        }
    }

    pub(crate) fn container(&self, req_sandbox: &str, id: &str) -> HandlerResult<Arc<Container>> {
        self.check_pod(req_sandbox)?;
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                HandlerError::not_found(format!("container {id} not found in pod {req_sandbox}"))
            })
    }

    pub(crate) fn check_pod(&self, sandbox_id: &str) -> HandlerResult<()> {
        if self.pod.get().is_none() {
            Err(HandlerError::not_found(format!(
                "pod {sandbox_id} has no VM: its shim never ran it"
            )))
        } else if sandbox_id == self.sandbox_id() {
            Ok(())
        } else {
            Err(HandlerError::not_found(format!(
                "VM shim of pod {} does not serve pod {sandbox_id}",
                self.sandbox_id()
            )))
        }
    }

    /// Stops the VM (if it runs) and remembers why.
    pub async fn stop_vm(&self, reason: &str) {
        let _lifecycle = self.lifecycle.lock().await;
        let mut phase = self.phase.lock().await;
        self.tear_down_vm(&mut phase, reason).await;
        drop(phase);
        self.containers_gone(reason);
    }

    /// Stops a running VM with everything it holds on the host (helpers,
    /// network, cgroup, sizing) and records `reason`; a VM that does not
    /// run is left as it is. The caller holds the phase lock.
    async fn tear_down_vm(&self, phase: &mut Phase, reason: &str) {
        if let Phase::Running(running) = phase {
            running.vm.stop().await;
            if let Some(net) = &running.net {
                crate::net::teardown(net).await;
            }
            self.remove_vm_cgroup().await;
            // No VM to grow any more.
            *self.sizing.lock().await = Default::default();
            *phase = Phase::Stopped {
                reason: reason.to_string(),
            };
        }
    }

    /// Takes over a pod whose shim died: its VM died with it (PDEATHSIG;
    /// leftovers are killed by the pids the dead shim reported), its
    /// containers are reported exited, and stop/remove release the rest.
    fn adopt_dead_pod(&self, req: &RestoreSandboxRequest) {
        let reason = "the pod's VM shim died, and the VM with it";
        tracing::warn!(sandbox = %req.sandbox_id, "{reason}; this shim cleans up");
        let state: VmState = serde_json::from_slice(&req.handler_state).unwrap_or_default();
        kill_stale(state.qemu_pid, "qemu");
        for pid in &state.helper_pids {
            let _ = kill_stale(*pid, "vhost-device-vsock") || kill_stale(*pid, "virtiofsd");
        }
        if let Ok(mut phase) = self.phase.try_lock() {
            *phase = Phase::Stopped {
                reason: reason.to_string(),
            };
        }
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        for c in &req.containers {
            let container = Container::new(
                c.container_id.clone(),
                crius_agent_proto::oci_spec::runtime::Spec::default(),
                None,
                Status {
                    state: ContainerState::Exited as i32,
                    finished_at: now_nanos(),
                    exit_code: SIGKILL_EXIT,
                    reason: "Error".to_string(),
                    message: reason.to_string(),
                    ..Default::default()
                },
                StdioConfig::default(),
            );
            containers.insert(c.container_id.clone(), Arc::new(container));
        }
    }

    /// What is missing for starting VMs; empty when ready.
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
        if vm.vsock == VsockMode::Hybrid && find_program(&vm.vhost_device_vsock_path).is_none() {
            out.push(format!(
                "vhost-device-vsock ({}) is not installed (scripts/setup --with-kata)",
                vm.vhost_device_vsock_path.display()
            ));
        }
        out
    }

    /// Every container that still ran is reported exited: its VM is gone.
    /// Records that the VM's containers ended with it; returns how many
    /// were still created or running.
    fn containers_gone(&self, reason: &str) -> usize {
        let containers: Vec<_> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut ended = 0;
        for c in containers {
            let status = c.status();
            if status.is(ContainerState::Running) {
                c.set_exited(
                    SIGKILL_EXIT,
                    "Error",
                    &format!("the pod's VM is gone: {reason}"),
                );
                ended += 1;
            } else if status.is(ContainerState::Created) {
                c.set_exited(-1, "Error", &format!("the pod's VM is gone: {reason}"));
                ended += 1;
            }
        }
        ended
    }
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

/// Annotations the image's STOPSIGNAL may arrive in (the core sets the
/// OCI one; the others as the runc handler also reads them).
const STOP_SIGNAL_ANNOTATIONS: &[&str] = &[
    "org.opencontainers.image.stopSignal",
    "io.crius.image.stop-signal",
    "io.containerd.image.config.stop-signal",
    "io.kubernetes.cri.stop-signal",
];

/// The signal that asks the container to stop: the image's STOPSIGNAL
/// (`SIGINT`, `INT` or a number) if the core recorded it as an annotation,
/// else SIGTERM.
pub(crate) fn stop_signal(spec: &crius_agent_proto::oci_spec::runtime::Spec) -> u32 {
    let annotations = spec.annotations().as_ref();
    STOP_SIGNAL_ANNOTATIONS
        .iter()
        .filter_map(|key| annotations?.get(*key).map(String::as_str))
        .find_map(|value| {
            let value = value.trim().to_ascii_uppercase();
            if let Ok(n) = value.parse::<u32>() {
                return (1..=64).contains(&n).then_some(n);
            }
            let name = if value.starts_with("SIG") {
                value
            } else {
                format!("SIG{value}")
            };
            name.parse::<nix::sys::signal::Signal>()
                .ok()
                .map(|s| s as i32 as u32)
        })
        .unwrap_or(libc::SIGTERM as u32)
}
