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
    Capabilities, ContainerRef, ContainerState, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse,
    RestoreSandboxRequest, RestoreSandboxResponse, RunSandboxRequest, RunSandboxResponse,
    SandboxRef, SandboxStatusResponse, StopContainerRequest, UpdateContainerResourcesRequest,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerParams, HandlerResult, RuntimeHandler};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::agent_client::{AgentAddr, AgentClient, AgentError, shared_9p_storage};
use crate::config::{SharedFs, VmConfig, VsockMode, size_vm};
use crate::container::{Container, Status, adapt_spec, mount_share, now_nanos, unshare_container};
use crate::crilog::{CriLog, LineSplitter};
use crate::spawn::{ProcessSpawner, RealSpawner, kill_stale};
use crate::vm::{AGENT_PORT, BootError, Vm, VmLayout, VmParams};

/// The handler entry, as the daemon hands it over (`HandlerParams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The handler entry's name (for messages).
    pub handler: String,
    /// The entry's `runtime_path`.
    pub qemu_path: PathBuf,
    /// The entry's `vm:` table.
    pub vm: VmConfig,
}

impl ShimConfig {
    /// The entry as the daemon hands it over; a bad `vm:` table is an
    /// `InvalidArgument` naming its keys.
    pub fn from_params(params: &HandlerParams) -> HandlerResult<Self> {
        Ok(Self {
            handler: params.name.clone(),
            qemu_path: PathBuf::from(&params.runtime_path),
            vm: VmConfig::from_options(&params.options)?,
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
}

/// Timings of one VM start, logged and reported in SandboxStatus info.
#[derive(Debug, Clone, Copy, Default)]
struct Timings {
    /// Starting vhost-device-vsock (virtiofsd) and QEMU.
    vm_start: Duration,
    /// From the start until the agent answered Check: the guest booted.
    agent_ready: Duration,
    /// ... until CreateSandbox and the guest network were done.
    sandbox_ready: Duration,
}

enum Phase {
    /// Before RunSandbox.
    Empty,
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
    config: ShimConfig,
    pod: OnceLock<PodIdent>,
    spawner: Arc<dyn ProcessSpawner>,
    phase: Mutex<Phase>,
    containers: std::sync::Mutex<HashMap<String, Arc<Container>>>,
    /// Containers the agent reported OOM-killed.
    oom_killed: Arc<std::sync::Mutex<HashSet<String>>>,
    exec_counter: std::sync::atomic::AtomicU64,
    /// CreateContainer + StartContainer of the first container, in the
    /// guest (for the bench's kata split).
    last_container_start_ms: std::sync::atomic::AtomicU64,
    first_create_began: std::sync::Mutex<Option<Instant>>,
}

/// Exit code of a process killed by SIGKILL, as the agent reports it.
const SIGKILL_EXIT: i32 = 128 + 9;

fn agent_err(what: &str, err: AgentError) -> HandlerError {
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
            containers: std::sync::Mutex::new(HashMap::new()),
            oom_killed: Arc::new(std::sync::Mutex::new(HashSet::new())),
            exec_counter: std::sync::atomic::AtomicU64::new(0),
            last_container_start_ms: std::sync::atomic::AtomicU64::new(0),
            first_create_began: std::sync::Mutex::new(None),
        }
    }

    /// The pod's id ("" before RunSandbox/RestoreSandbox).
    fn sandbox_id(&self) -> &str {
        self.pod.get().map_or("", |p| p.sandbox_id.as_str())
    }

    fn layout(&self) -> VmLayout {
        match self.pod.get() {
            Some(pod) => VmLayout::new(&pod.state_dir, &pod.sandbox_id),
            None => VmLayout::new(Path::new(""), ""),
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
    async fn agent(&self) -> HandlerResult<AgentClient> {
        match &*self.phase.lock().await {
            Phase::Running(running) => Ok(running.agent.clone()),
            Phase::Empty => Err(HandlerError::failed_precondition(format!(
                "pod {} has no VM yet",
                self.sandbox_id()
            ))),
            Phase::Stopped { reason } => Err(HandlerError::failed_precondition(format!(
                "the VM of pod {} is not running: {reason}",
                self.sandbox_id()
            ))),
        }
    }

    fn container(&self, req_sandbox: &str, id: &str) -> HandlerResult<Arc<Container>> {
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

    fn check_pod(&self, sandbox_id: &str) -> HandlerResult<()> {
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

    async fn boot(
        &self,
        req: &RunSandboxRequest,
    ) -> HandlerResult<(Vm, AgentClient, Timings, Option<crate::net::NetSetup>)> {
        let net = if req.netns_path.is_empty() {
            None
        } else {
            let netns = PathBuf::from(&req.netns_path);
            let network = req.network.clone().unwrap_or_default();
            Some(crate::net::setup(&netns, &network).await.map_err(|err| {
                HandlerError::internal(format!(
                    "pod {}: bridging the pod network to the VM: {err}",
                    req.sandbox_id
                ))
            })?)
        };
        let result = self.boot_with(req, net.as_ref()).await;
        match result {
            Ok((vm, agent, timings)) => Ok((vm, agent, timings, net)),
            Err(err) => {
                if let Some(net) = &net {
                    crate::net::teardown(net).await;
                }
                Err(err)
            }
        }
    }

    async fn boot_with(
        &self,
        req: &RunSandboxRequest,
        net: Option<&crate::net::NetSetup>,
    ) -> HandlerResult<(Vm, AgentClient, Timings)> {
        let config = &self.config.vm;
        let resources = req
            .config
            .as_ref()
            .and_then(|c| c.linux.as_ref())
            .and_then(|l| l.resources.as_ref());
        let annotations = req.annotations.clone().into_iter().collect();
        let size = size_vm(
            config,
            &annotations,
            resources.map_or(0, |r| r.memory_limit_in_bytes),
            resources.map_or(0, |r| r.cpu_quota),
            resources.map_or(0, |r| r.cpu_period),
        )
        .map_err(HandlerError::invalid_argument)?;
        let layout = self.layout();
        let params = VmParams {
            sandbox_id: self.sandbox_id().to_string(),
            qemu_path: self.config.qemu_path.clone(),
            config: config.clone(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            extra_kernel_params: size.extra_kernel_params,
            layout: layout.clone(),
            netns: net.map(|n| n.netns.clone()),
            net: net.map(|n| crate::qemu::NetDevice {
                tap: n.tap.clone(),
                mac: n.interface.mac.clone(),
            }),
        };
        let begin = Instant::now();
        let mut vm = Vm::start(self.spawner.as_ref(), &params)
            .await
            .map_err(|err| self.boot_error(err))?;
        let vm_start = begin.elapsed();
        let timeout = Duration::from_secs(config.boot_timeout_seconds);
        let addr = match config.vsock {
            VsockMode::Hybrid => AgentAddr::Hybrid {
                uds: layout.vsock_uds(),
                port: AGENT_PORT,
            },
            VsockMode::Vhost => AgentAddr::Vsock {
                cid: config.guest_cid,
                port: AGENT_PORT,
            },
        };
        let ready = vm
            .wait_ready(timeout, || {
                let addr = addr.clone();
                async move {
                    let agent = AgentClient::connect(&addr)
                        .await
                        .ok()?
                        .with_timeout(Duration::from_secs(2));
                    agent.check().await.ok()?;
                    Some(agent.with_timeout(crate::agent_client::DEFAULT_TIMEOUT))
                }
            })
            .await;
        let agent_ready = begin.elapsed();
        let ready = match ready {
            Ok(agent) => self
                .create_guest_sandbox(&agent, req, net)
                .await
                .map(|()| agent),
            Err(err) => Err(self.boot_error(err)),
        };
        match ready {
            Ok(agent) => {
                let timings = Timings {
                    vm_start,
                    agent_ready,
                    sandbox_ready: begin.elapsed(),
                };
                tracing::info!(
                    sandbox = %self.sandbox_id(),
                    vm_start_ms = timings.vm_start.as_millis() as u64,
                    agent_ready_ms = timings.agent_ready.as_millis() as u64,
                    sandbox_ready_ms = timings.sandbox_ready.as_millis() as u64,
                    vcpus = size.vcpus,
                    memory_mib = size.memory_mib,
                    "VM ready"
                );
                Ok((vm, agent, timings))
            }
            Err(err) => {
                vm.stop().await;
                Err(err)
            }
        }
    }

    /// CreateSandbox in the guest: hostname, DNS and the shared directory.
    async fn create_guest_sandbox(
        &self,
        agent: &AgentClient,
        req: &RunSandboxRequest,
        net: Option<&crate::net::NetSetup>,
    ) -> HandlerResult<()> {
        let config = req.config.clone().unwrap_or_default();
        let storage = match self.config.vm.shared_fs {
            SharedFs::NineP => shared_9p_storage(),
            SharedFs::Virtiofs => crius_agent_proto::agent::Storage {
                driver: "virtio-fs".into(),
                source: crate::vm::SHARED_TAG.into(),
                fstype: "virtiofs".into(),
                mount_point: crate::agent_client::GUEST_SHARED_DIR.into(),
                ..Default::default()
            },
        };
        let request = crius_agent_proto::agent::CreateSandboxRequest {
            hostname: config.hostname.clone(),
            dns: config.dns_config.map(|d| d.servers).unwrap_or_default(),
            storages: vec![storage],
            sandbox_id: req.sandbox_id.clone(),
            ..Default::default()
        };
        agent.create_sandbox(request).await.map_err(|err| {
            HandlerError::internal(format!(
                "pod {}: guest agent CreateSandbox: {err}",
                req.sandbox_id
            ))
        })?;
        if let Some(net) = net {
            self.configure_guest_network(agent, net)
                .await
                .map_err(|err| {
                    HandlerError::internal(format!(
                        "pod {}: configuring the guest network: {err}",
                        req.sandbox_id
                    ))
                })?;
        }
        // Collects OOM kills for the pod's lifetime; exits with the VM.
        let oom = self.oom_killed.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            while let Ok(id) = agent.get_oom_event().await {
                tracing::info!(container = %id, "OOM kill reported by the guest");
                oom.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
            }
        });
        Ok(())
    }

    /// Gives the guest NIC (same MAC as the CNI interface) the pod's
    /// addresses and routes.
    async fn configure_guest_network(
        &self,
        agent: &AgentClient,
        net: &crate::net::NetSetup,
    ) -> Result<(), AgentError> {
        use crius_agent_proto::types::{IPAddress, IPFamily, Interface, Route};
        let family = |v6: bool| if v6 { IPFamily::v6 } else { IPFamily::v4 };
        let interface = Interface {
            device: net.interface.name.clone(),
            name: net.interface.name.clone(),
            hwAddr: net.interface.mac.clone(),
            mtu: net.interface.mtu,
            IPAddresses: net
                .interface
                .addresses
                .iter()
                .map(|(address, prefix, v6)| IPAddress {
                    family: family(*v6).into(),
                    address: address.clone(),
                    mask: prefix.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        agent.update_interface(interface).await?;
        let routes = net
            .routes
            .iter()
            .map(|r| Route {
                dest: if r.dest == "default" {
                    String::new()
                } else {
                    r.dest.clone()
                },
                gateway: r.gateway.clone(),
                device: r.device.clone(),
                source: r.source.clone(),
                scope: r.scope,
                family: family(r.ipv6).into(),
                ..Default::default()
            })
            .collect();
        agent.update_routes(routes).await?;
        Ok(())
    }

    fn boot_error(&self, err: BootError) -> HandlerError {
        let kind = match err {
            BootError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            BootError::Prepare(_) | BootError::Exited { .. } => ErrorKind::Internal,
        };
        HandlerError::new(
            kind,
            format!(
                "VM of pod {} ({}) failed to start: {err}",
                self.sandbox_id(),
                self.config.handler
            ),
        )
    }

    /// Stops the VM (if it runs) and remembers why.
    pub async fn stop_vm(&self, reason: &str) {
        let mut phase = self.phase.lock().await;
        if let Phase::Running(running) = &mut *phase {
            running.vm.stop().await;
            if let Some(net) = &running.net {
                crate::net::teardown(net).await;
            }
            *phase = Phase::Stopped {
                reason: reason.to_string(),
            };
        }
        drop(phase);
        self.containers_gone(reason);
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
            let (exited, _) = tokio::sync::watch::channel(true);
            let container = Container {
                id: c.container_id.clone(),
                spec: serde_json::Value::Null,
                log: None,
                status: std::sync::Mutex::new(Status {
                    state: ContainerState::Exited as i32,
                    finished_at: now_nanos(),
                    exit_code: SIGKILL_EXIT,
                    reason: "Error".to_string(),
                    message: reason.to_string(),
                    ..Default::default()
                }),
                exited,
            };
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
    fn containers_gone(&self, reason: &str) {
        let containers: Vec<_> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for c in containers {
            let status = c.status();
            if status.is(ContainerState::Running) {
                c.set_exited(
                    SIGKILL_EXIT,
                    "Error",
                    &format!("the pod's VM is gone: {reason}"),
                );
            } else if status.is(ContainerState::Created) {
                c.set_exited(-1, "Error", &format!("the pod's VM is gone: {reason}"));
            }
        }
    }
}

#[async_trait]
impl RuntimeHandler for PodShim {
    fn name(&self) -> &str {
        &self.config.handler
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ..Default::default()
        }
    }

    async fn check_ready(&self) -> HandlerResult<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(HandlerError::not_ready(
                &self.config.handler,
                problems.join("; "),
            ))
        }
    }

    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        self.claim(&req.sandbox_id, &req.state_dir)?;
        self.check_ready().await?;
        let mut phase = self.phase.lock().await;
        if !matches!(*phase, Phase::Empty) {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!("pod {} already ran its VM", req.sandbox_id),
            ));
        }
        let (vm, agent, timings, net) = self.boot(&req).await?;
        let state = VmState {
            qemu_pid: vm.qemu_pid(),
            helper_pids: vm.pids().into_iter().skip(1).collect(),
            socket_dir: vm.layout.socket_dir.clone(),
            boot_ms: timings.sandbox_ready.as_millis() as u64,
        };
        *phase = Phase::Running(Box::new(Running {
            vm,
            agent,
            timings,
            net,
        }));
        Ok(RunSandboxResponse {
            handler_state: serde_json::to_vec(&state).unwrap_or_default(),
            infra_pid: 0,
        })
    }

    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        if self.pod.get().is_none() {
            // Never ran here: nothing to stop.
            return Ok(());
        }
        self.check_pod(&req.sandbox_id)?;
        self.stop_vm("the pod was stopped").await;
        Ok(())
    }

    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        if self.pod.get().is_none() {
            return Ok(());
        }
        self.check_pod(&req.sandbox_id)?;
        self.stop_vm("the pod was removed").await;
        let layout = self.layout();
        let mut ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(id, _)| id)
            .collect();
        // A shim that took over from a dead one knows the containers only
        // from the shared dir: release whatever is there.
        if let Ok(entries) = std::fs::read_dir(layout.shared_dir()) {
            ids.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        for id in ids {
            unshare_container(&layout.shared_dir(), &id);
        }
        let _ = std::fs::remove_dir(layout.shared_dir());
        layout.remove_socket_dir();
        Ok(())
    }

    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        self.check_pod(&req.sandbox_id)?;
        let mut phase = self.phase.lock().await;
        if let Phase::Running(running) = &mut *phase
            && let Some(err) = running.vm.exited()
        {
            let reason = format!("the VM died: {err}");
            tracing::warn!(sandbox = %req.sandbox_id, %reason, "VM gone");
            running.vm.stop().await;
            if let Some(net) = &running.net {
                crate::net::teardown(net).await;
            }
            *phase = Phase::Stopped {
                reason: reason.clone(),
            };
            drop(phase);
            self.containers_gone(&reason);
            phase = self.phase.lock().await;
        }
        let mut info = std::collections::HashMap::new();
        let ready = match &*phase {
            Phase::Empty => false,
            Phase::Running(running) => {
                info.insert("qemuPid".to_string(), running.vm.qemu_pid().to_string());
                let t = &running.timings;
                info.insert(
                    "vm_start_ms".to_string(),
                    t.vm_start.as_millis().to_string(),
                );
                info.insert(
                    "agent_ready_ms".to_string(),
                    t.agent_ready.as_millis().to_string(),
                );
                info.insert(
                    "sandbox_ready_ms".to_string(),
                    t.sandbox_ready.as_millis().to_string(),
                );
                let start = self
                    .last_container_start_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                if start > 0 {
                    info.insert("container_start_ms".to_string(), start.to_string());
                }
                true
            }
            Phase::Stopped { reason } => {
                info.insert("reason".to_string(), reason.clone());
                false
            }
        };
        Ok(SandboxStatusResponse { ready, info })
    }

    async fn restore_sandbox(
        &self,
        req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        if self.pod.get().is_none() {
            // A fresh shim for a pod whose shim died (and its VM with it).
            self.claim(&req.sandbox_id, &req.state_dir)?;
            self.adopt_dead_pod(&req);
            return Ok(RestoreSandboxResponse { ready: false });
        }
        // The shim kept running across the daemon restart: its state is
        // current, so restoring is reporting it.
        let status = self
            .sandbox_status(SandboxRef {
                sandbox_id: req.sandbox_id,
            })
            .await?;
        Ok(RestoreSandboxResponse {
            ready: status.ready,
        })
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        self.check_pod(&req.sandbox_id)?;
        self.first_create_began
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        let cid = req.container_id.clone();
        if self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&cid)
        {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!("container {cid} already exists"),
            ));
        }
        let agent = self.agent().await?;
        let bundle = req.bundle.clone().unwrap_or_default();
        let mut spec: serde_json::Value =
            serde_json::from_slice(&bundle.oci_spec).map_err(|err| {
                HandlerError::invalid_argument(format!("container {cid}: bad OCI spec: {err}"))
            })?;
        let rootfs = bundle
            .rootfs
            .as_ref()
            .map(|r| PathBuf::from(&r.mount_point))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(&bundle.dir).join("rootfs"));
        let shared_dir = self.layout().shared_dir();
        let shares = adapt_spec(&mut spec, &cid, &rootfs, &shared_dir);
        let log = if req.log_path.is_empty() {
            None
        } else {
            Some(Arc::new(
                CriLog::open(std::path::Path::new(&req.log_path)).map_err(|err| {
                    HandlerError::internal(format!(
                        "container {cid}: cannot open log {}: {err}",
                        req.log_path
                    ))
                })?,
            ))
        };
        let result = async {
            for share in &shares {
                mount_share(share).map_err(|err| {
                    HandlerError::internal(format!("container {cid}: sharing with the VM: {err}"))
                })?;
            }
            let request = crius_agent_proto::agent::CreateContainerRequest {
                container_id: cid.clone(),
                exec_id: cid.clone(),
                OCI: Some(crius_agent_proto::convert::spec_from_json(&spec)).into(),
                ..Default::default()
            };
            agent.create_container(request).await.map_err(|err| {
                agent_err(
                    &format!("container {cid}: guest agent CreateContainer"),
                    err,
                )
            })
        }
        .await;
        if let Err(err) = result {
            unshare_container(&shared_dir, &cid);
            return Err(err);
        }
        let (exited, _) = tokio::sync::watch::channel(false);
        let container = Arc::new(Container {
            id: cid.clone(),
            spec,
            log,
            status: std::sync::Mutex::new(Status {
                state: ContainerState::Created as i32,
                created_at: now_nanos(),
                ..Default::default()
            }),
            exited,
        });
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cid, container);
        Ok(CreateContainerResponse {
            handler_state: Vec::new(),
        })
    }

    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        if !c.status().is(ContainerState::Created) {
            return Err(HandlerError::failed_precondition(format!(
                "container {} is not in the created state",
                c.id
            )));
        }
        let agent = self.agent().await?;
        let started = Instant::now();
        agent.start_container(&c.id).await.map_err(|err| {
            agent_err(
                &format!("container {}: guest agent StartContainer", c.id),
                err,
            )
        })?;
        c.update(|s| {
            s.state = ContainerState::Running as i32;
            s.started_at = now_nanos();
        });
        let start_ms = started.elapsed().as_millis() as u64;
        tracing::info!(container = %c.id, start_ms, "container started in the VM");
        // The first container only: that is the pod start the bench measures
        // (from its CreateContainer reaching the shim until it runs).
        if let Some(began) = *self
            .first_create_began
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            let _ = self.last_container_start_ms.compare_exchange(
                0,
                began.elapsed().as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let stdout = tokio::spawn(copy_output(agent.clone(), c.clone(), "stdout"));
        let stderr = tokio::spawn(copy_output(agent.clone(), c.clone(), "stderr"));
        let oom = self.oom_killed.clone();
        tokio::spawn(async move {
            let result = agent.wait_process(&c.id, "").await;
            // The output is complete once both copiers saw EOF.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = stdout.await;
                let _ = stderr.await;
            })
            .await;
            match result {
                Ok(code) => {
                    // The OOM event may trail the exit a little.
                    let mut oom_killed = false;
                    for _ in 0..(if code == SIGKILL_EXIT { 10 } else { 1 }) {
                        oom_killed = oom.lock().unwrap_or_else(|e| e.into_inner()).remove(&c.id);
                        if oom_killed {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let reason = match (oom_killed, code) {
                        (true, _) => "OOMKilled",
                        (false, 0) => "Completed",
                        _ => "Error",
                    };
                    tracing::info!(container = %c.id, exit_code = code, reason, "container exited");
                    c.set_exited(code, reason, "");
                }
                Err(err) => {
                    tracing::warn!(container = %c.id, error = %err, "lost the container's process");
                    c.set_exited(
                        SIGKILL_EXIT,
                        "Error",
                        &format!("lost contact with the guest agent: {err}"),
                    );
                }
            }
        });
        Ok(())
    }

    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        let status = c.status();
        if status.is(ContainerState::Exited) {
            return Ok(());
        }
        if status.is(ContainerState::Created) {
            c.set_exited(0, "Completed", "stopped before it started");
            return Ok(());
        }
        let agent = self.agent().await?;
        if req.timeout_seconds > 0 {
            let signal = stop_signal(&c.spec);
            if let Err(err) = agent.signal_process(&c.id, "", signal).await {
                tracing::debug!(container = %c.id, error = %err, "stop signal failed");
            }
            if c.wait_exited(Duration::from_secs(req.timeout_seconds as u64))
                .await
            {
                return Ok(());
            }
        }
        if let Err(err) = agent.signal_process(&c.id, "", libc::SIGKILL as u32).await {
            tracing::debug!(container = %c.id, error = %err, "SIGKILL failed");
        }
        if c.wait_exited(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(HandlerError::deadline_exceeded(format!(
                "container {} did not exit 10 s after SIGKILL",
                c.id
            )))
        }
    }

    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.check_pod(&req.sandbox_id)?;
        let Some(c) = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&req.container_id)
            .cloned()
        else {
            return Ok(());
        };
        if c.status().is(ContainerState::Running) {
            return Err(HandlerError::failed_precondition(format!(
                "container {} is still running",
                c.id
            )));
        }
        if let Ok(agent) = self.agent().await
            && let Err(err) = agent.remove_container(&c.id, 10).await
        {
            return Err(agent_err(
                &format!("container {}: guest agent RemoveContainer", c.id),
                err,
            ));
        }
        unshare_container(&self.layout().shared_dir(), &c.id);
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        Ok(())
    }

    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        Ok(c.status().to_response())
    }

    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        if !c.status().is(ContainerState::Running) {
            return Err(HandlerError::failed_precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        if req.cmd.is_empty() {
            return Err(HandlerError::invalid_argument("ExecSync needs a command"));
        }
        let agent = self.agent().await?;
        let n = self
            .exec_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exec_id = format!("exec-{}-{n}", std::process::id());
        let mut process = c
            .spec
            .get("process")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        process["args"] = serde_json::json!(req.cmd);
        process["terminal"] = serde_json::Value::Bool(false);
        let process = crius_agent_proto::convert::process_from_json(&process);
        agent
            .exec_process(&c.id, &exec_id, process)
            .await
            .map_err(|err| {
                agent_err(&format!("container {}: guest agent ExecProcess", c.id), err)
            })?;
        let run = async {
            let out = read_all(agent.clone(), c.id.clone(), exec_id.clone(), true);
            let err = read_all(agent.clone(), c.id.clone(), exec_id.clone(), false);
            let (stdout, stderr, code) =
                tokio::join!(out, err, agent.wait_process(&c.id, &exec_id));
            (stdout, stderr, code)
        };
        let result = if req.timeout_seconds > 0 {
            tokio::time::timeout(Duration::from_secs(req.timeout_seconds as u64), run)
                .await
                .ok()
        } else {
            Some(run.await)
        };
        match result {
            Some((stdout, stderr, code)) => Ok(ExecSyncResponse {
                stdout,
                stderr,
                exit_code: code.map_err(|err| {
                    agent_err(&format!("container {}: guest agent WaitProcess", c.id), err)
                })?,
                timed_out: false,
            }),
            None => {
                let _ = agent
                    .signal_process(&c.id, &exec_id, libc::SIGKILL as u32)
                    .await;
                Ok(ExecSyncResponse {
                    exit_code: -1,
                    timed_out: true,
                    ..Default::default()
                })
            }
        }
    }

    async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        let agent = self.agent().await?;
        let linux = req.linux.unwrap_or_default();
        let mut resources = serde_json::json!({});
        if linux.memory_limit_in_bytes > 0 {
            resources["memory"] = serde_json::json!({ "limit": linux.memory_limit_in_bytes });
        }
        let mut cpu = serde_json::Map::new();
        if linux.cpu_shares > 0 {
            cpu.insert("shares".into(), linux.cpu_shares.into());
        }
        if linux.cpu_quota > 0 {
            cpu.insert("quota".into(), linux.cpu_quota.into());
        }
        if linux.cpu_period > 0 {
            cpu.insert("period".into(), linux.cpu_period.into());
        }
        if !linux.cpuset_cpus.is_empty() {
            cpu.insert("cpus".into(), linux.cpuset_cpus.clone().into());
        }
        if !linux.cpuset_mems.is_empty() {
            cpu.insert("mems".into(), linux.cpuset_mems.clone().into());
        }
        if !cpu.is_empty() {
            resources["cpu"] = serde_json::Value::Object(cpu);
        }
        agent
            .update_container(
                &c.id,
                crius_agent_proto::convert::resources_from_json(&resources),
            )
            .await
            .map_err(|err| {
                agent_err(
                    &format!("container {}: guest agent UpdateContainer", c.id),
                    err,
                )
            })
    }

    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        if let Some(log) = &c.log {
            log.reopen().map_err(|err| {
                HandlerError::internal(format!("container {}: reopening its log: {err}", c.id))
            })?;
        }
        Ok(())
    }

    async fn container_stats(&self, req: ContainerRef) -> HandlerResult<ContainerStatsResponse> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        let agent = self.agent().await?;
        let stats = agent.stats_container(&c.id).await.map_err(|err| {
            agent_err(
                &format!("container {}: guest agent StatsContainer", c.id),
                err,
            )
        })?;
        let cgroup = stats.cgroup_stats.into_option().unwrap_or_default();
        let cpu = cgroup
            .cpu_stats
            .into_option()
            .unwrap_or_default()
            .cpu_usage
            .into_option()
            .unwrap_or_default();
        let memory = cgroup.memory_stats.into_option().unwrap_or_default();
        let usage = memory.usage.into_option().unwrap_or_default().usage;
        let inactive = memory.stats.get("inactive_file").copied().unwrap_or(0);
        Ok(ContainerStatsResponse {
            timestamp: now_nanos(),
            cpu_usage_core_nanoseconds: cpu.total_usage,
            memory_working_set_bytes: usage.saturating_sub(inactive),
            memory_usage_bytes: usage,
            memory_rss_bytes: memory
                .stats
                .get("anon")
                .or(memory.stats.get("rss"))
                .copied()
                .unwrap_or(0),
        })
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

/// The signal that asks the container to stop: the image's STOPSIGNAL if
/// the core recorded it as an annotation, else SIGTERM.
fn stop_signal(spec: &serde_json::Value) -> u32 {
    spec.pointer("/annotations/io.kubernetes.cri.stop-signal")
        .and_then(serde_json::Value::as_str)
        .and_then(|name| {
            let name = name.trim_start_matches("SIG");
            match name {
                "TERM" | "15" => Some(libc::SIGTERM),
                "INT" | "2" => Some(libc::SIGINT),
                "QUIT" | "3" => Some(libc::SIGQUIT),
                "KILL" | "9" => Some(libc::SIGKILL),
                "HUP" | "1" => Some(libc::SIGHUP),
                "USR1" | "10" => Some(libc::SIGUSR1),
                "USR2" | "12" => Some(libc::SIGUSR2),
                _ => None,
            }
        })
        .unwrap_or(libc::SIGTERM) as u32
}

/// Copies one stream of a container's main process into its CRI log
/// until EOF (or until the agent is gone).
async fn copy_output(agent: AgentClient, c: Arc<Container>, stream: &'static str) {
    let mut splitter = LineSplitter::default();
    loop {
        let read = if stream == "stdout" {
            agent.read_stdout(&c.id, "", 64 * 1024).await
        } else {
            agent.read_stderr(&c.id, "", 64 * 1024).await
        };
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(container = %c.id, stream, error = %err, "output copy ended");
                break;
            }
        };
        if let Some(log) = &c.log {
            for (partial, content) in splitter.feed(&chunk) {
                if let Err(err) = log.write_record(stream, partial, &content) {
                    tracing::warn!(container = %c.id, error = %err, "writing the CRI log failed");
                }
            }
        }
    }
    if let (Some(log), Some((partial, content))) = (&c.log, splitter.finish()) {
        let _ = log.write_record(stream, partial, &content);
    }
}

/// All of an exec's stdout or stderr (bounded to 16 MiB, as kubelet output).
async fn read_all(agent: AgentClient, cid: String, exec_id: String, stdout: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let read = if stdout {
            agent.read_stdout(&cid, &exec_id, 64 * 1024).await
        } else {
            agent.read_stderr(&cid, &exec_id, 64 * 1024).await
        };
        match read {
            Ok(Some(chunk)) if out.len() < 16 << 20 => out.extend_from_slice(&chunk),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_shim_api::types::RestoreContainer;

    fn params(options: serde_json::Value) -> HandlerParams {
        HandlerParams {
            name: "kata".into(),
            runtime_path: "/nonexistent/qemu-system-x86_64".into(),
            options: options.as_object().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_bad_vm_table_fails_construction_naming_the_key() {
        let err = PodShim::from_params(params(serde_json::json!({ "default_vcpus": 0 })))
            .err()
            .expect("refused");
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(err.message.contains("default_vcpus"), "{err}");
        let shim = PodShim::from_params(params(serde_json::json!({}))).unwrap();
        let err = shim.check_ready().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotReady);
        assert!(
            err.message
                .contains("QEMU /nonexistent/qemu-system-x86_64 does not exist"),
            "{err}"
        );
    }

    /// A fresh shim for a pod whose shim died: stop before restore is a
    /// no-op, restore reports the pod not ready and its containers exited
    /// with why, and remove releases the shared dir the dead shim left.
    #[tokio::test]
    async fn a_fresh_shim_takes_over_a_dead_pod_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("handler");
        std::fs::create_dir_all(state_dir.join("shared/c1/rootfs")).unwrap();
        let shim = PodShim::from_params(params(serde_json::json!({}))).unwrap();
        let pod = SandboxRef {
            sandbox_id: "p1".into(),
        };
        shim.stop_sandbox(pod.clone())
            .await
            .expect("nothing to stop");

        let restored = shim
            .restore_sandbox(RestoreSandboxRequest {
                sandbox_id: "p1".into(),
                state_dir: state_dir.display().to_string(),
                handler_state: br#"{"qemu_pid":0,"helper_pids":[],"socket_dir":"","boot_ms":0}"#
                    .to_vec(),
                containers: vec![RestoreContainer {
                    container_id: "c1".into(),
                    ..Default::default()
                }],
                config: None,
            })
            .await
            .unwrap();
        assert!(!restored.ready);
        let status = shim
            .container_status(ContainerRef {
                sandbox_id: "p1".into(),
                container_id: "c1".into(),
            })
            .await
            .unwrap();
        assert_eq!(status.state, ContainerState::Exited as i32);
        assert!(status.message.contains("shim died"), "{status:?}");
        let sandbox = shim.sandbox_status(pod.clone()).await.unwrap();
        assert!(!sandbox.ready);
        assert!(sandbox.info["reason"].contains("shim died"), "{sandbox:?}");

        let other = shim
            .stop_sandbox(SandboxRef {
                sandbox_id: "p2".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(other.kind, ErrorKind::NotFound);

        shim.stop_sandbox(pod.clone()).await.unwrap();
        shim.remove_sandbox(pod.clone()).await.unwrap();
        assert!(
            !state_dir.join("shared").exists(),
            "the dead shim's shares are gone"
        );
        shim.remove_sandbox(pod).await.expect("idempotent");
    }
}
