//! The VM shim's side: one process per pod serving the handler contract
//! for that pod (see [`crate::wire`]). It owns the VM and, through the guest
//! agent, the pod's containers; it outlives daemon restarts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crius_shim_api::types::{
    Capabilities, RestoreSandboxRequest, RestoreSandboxResponse, RunSandboxRequest, RunSandboxResponse,
    SandboxRef, SandboxStatusResponse,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerResult, RuntimeHandler};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::{VmConfig, VsockMode, size_vm};
use crate::spawn::ProcessSpawner;
use crate::vm::{AGENT_PORT, BootError, Vm, VmLayout, VmParams, connect_hybrid};

/// What the daemon hands the shim (as JSON in the pod's state dir).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The handler entry's name (for messages).
    pub handler: String,
    pub sandbox_id: String,
    pub state_dir: PathBuf,
    pub qemu_path: PathBuf,
    pub vm: VmConfig,
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
    vm_start: Duration,
    agent_ready: Duration,
}

enum Phase {
    /// Before RunSandbox.
    Empty,
    Running(Box<Running>),
    /// The VM is gone: stopped, or it died (`reason`).
    Stopped { reason: String },
}

struct Running {
    vm: Vm,
    timings: Timings,
}

/// The pod's handler as served by the shim.
pub struct PodShim {
    config: ShimConfig,
    spawner: Arc<dyn ProcessSpawner>,
    phase: Mutex<Phase>,
}

impl PodShim {
    pub fn new(config: ShimConfig, spawner: Arc<dyn ProcessSpawner>) -> Self {
        Self { config, spawner, phase: Mutex::new(Phase::Empty) }
    }

    fn check_pod(&self, sandbox_id: &str) -> HandlerResult<()> {
        if sandbox_id == self.config.sandbox_id {
            Ok(())
        } else {
            Err(HandlerError::not_found(format!(
                "VM shim of pod {} does not serve pod {sandbox_id}",
                self.config.sandbox_id
            )))
        }
    }

    async fn boot(&self, req: &RunSandboxRequest) -> HandlerResult<(Vm, Timings)> {
        let config = &self.config.vm;
        let resources = req.config.as_ref().and_then(|c| c.linux.as_ref()).and_then(|l| l.resources.as_ref());
        let annotations = req.annotations.clone().into_iter().collect();
        let size = size_vm(
            config,
            &annotations,
            resources.map_or(0, |r| r.memory_limit_in_bytes),
            resources.map_or(0, |r| r.cpu_quota),
            resources.map_or(0, |r| r.cpu_period),
        )
        .map_err(HandlerError::invalid_argument)?;
        let layout = VmLayout::new(&self.config.state_dir, &self.config.sandbox_id);
        let params = VmParams {
            sandbox_id: self.config.sandbox_id.clone(),
            qemu_path: self.config.qemu_path.clone(),
            config: config.clone(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            extra_kernel_params: size.extra_kernel_params,
            layout: layout.clone(),
            netns: None,
            net: None,
        };
        let begin = Instant::now();
        let mut vm = Vm::start(self.spawner.as_ref(), &params).await.map_err(|err| self.boot_error(err))?;
        let vm_start = begin.elapsed();
        let timeout = Duration::from_secs(config.boot_timeout_seconds);
        let uds = layout.vsock_uds();
        let ready = vm
            .wait_ready(timeout, || {
                let uds = uds.clone();
                async move { connect_hybrid(&uds, AGENT_PORT).await.ok() }
            })
            .await;
        match ready {
            Ok(_stream) => {
                let timings = Timings { vm_start, agent_ready: begin.elapsed() };
                tracing::info!(
                    sandbox = %self.config.sandbox_id,
                    vm_start_ms = timings.vm_start.as_millis() as u64,
                    agent_ready_ms = timings.agent_ready.as_millis() as u64,
                    vcpus = size.vcpus,
                    memory_mib = size.memory_mib,
                    "VM ready"
                );
                Ok((vm, timings))
            }
            Err(err) => {
                vm.stop().await;
                Err(self.boot_error(err))
            }
        }
    }

    fn boot_error(&self, err: BootError) -> HandlerError {
        let kind = match err {
            BootError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            BootError::Prepare(_) | BootError::Exited { .. } => ErrorKind::Internal,
        };
        HandlerError::new(
            kind,
            format!("VM of pod {} ({}) failed to start: {err}", self.config.sandbox_id, self.config.handler),
        )
    }

    /// Stops the VM (if it runs) and remembers why.
    pub async fn stop_vm(&self, reason: &str) {
        let mut phase = self.phase.lock().await;
        if let Phase::Running(running) = &mut *phase {
            running.vm.stop().await;
            *phase = Phase::Stopped { reason: reason.to_string() };
        }
    }
}

#[async_trait]
impl RuntimeHandler for PodShim {
    fn name(&self) -> &str {
        &self.config.handler
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { kernel_separated: true, ..Default::default() }
    }

    async fn check_ready(&self) -> HandlerResult<()> {
        Ok(())
    }

    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        self.check_pod(&req.sandbox_id)?;
        let mut phase = self.phase.lock().await;
        if !matches!(*phase, Phase::Empty) {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!("pod {} already ran its VM", req.sandbox_id),
            ));
        }
        if self.config.vm.vsock == VsockMode::Vhost {
            return Err(HandlerError::unimplemented(&self.config.handler, "vsock mode `vhost` (use `hybrid`)"));
        }
        let (vm, timings) = self.boot(&req).await?;
        let state = VmState {
            qemu_pid: vm.qemu_pid(),
            helper_pids: vm.pids().into_iter().skip(1).collect(),
            socket_dir: vm.layout.socket_dir.clone(),
            boot_ms: timings.agent_ready.as_millis() as u64,
        };
        *phase = Phase::Running(Box::new(Running { vm, timings }));
        Ok(RunSandboxResponse {
            handler_state: serde_json::to_vec(&state).unwrap_or_default(),
            infra_pid: 0,
        })
    }

    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.check_pod(&req.sandbox_id)?;
        self.stop_vm("the pod was stopped").await;
        Ok(())
    }

    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.check_pod(&req.sandbox_id)?;
        self.stop_vm("the pod was removed").await;
        let layout = VmLayout::new(&self.config.state_dir, &self.config.sandbox_id);
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
            *phase = Phase::Stopped { reason };
        }
        let mut info = std::collections::HashMap::new();
        let ready = match &*phase {
            Phase::Empty => false,
            Phase::Running(running) => {
                info.insert("qemuPid".to_string(), running.vm.qemu_pid().to_string());
                info.insert("vmStartMs".to_string(), running.timings.vm_start.as_millis().to_string());
                info.insert("agentReadyMs".to_string(), running.timings.agent_ready.as_millis().to_string());
                true
            }
            Phase::Stopped { reason } => {
                info.insert("reason".to_string(), reason.clone());
                false
            }
        };
        Ok(SandboxStatusResponse { ready, info })
    }

    async fn restore_sandbox(&self, req: RestoreSandboxRequest) -> HandlerResult<RestoreSandboxResponse> {
        // The shim kept running across the daemon restart: its state is
        // current, so restoring is reporting it.
        let status = self.sandbox_status(SandboxRef { sandbox_id: req.sandbox_id }).await?;
        Ok(RestoreSandboxResponse { ready: status.ready })
    }
}
