//! Booting a pod's VM: the pod network bridged to a tap, vhost-device-vsock
//! (or virtiofsd) and QEMU started, the agent awaited, then the guest's
//! sandbox (hostname, DNS, shared directory) and network configured.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crius_shim_api::cri::{LinuxContainerResources, NamespaceOption, PodSandboxConfig};
use crius_shim_api::types::{CreateContainerRequest, RunSandboxRequest};
use crius_shim_api::{ErrorKind, HandlerError, HandlerResult};

use crate::agent_client::{AgentAddr, AgentClient, AgentError, shared_9p_storage};
use crate::config::{SharedFs, VmSize, VsockMode, size_vm};
use crate::shim::{PodShim, Timings};
use crate::vm::{AGENT_PORT, BootError, Vm, VmParams};

/// Refuses what a VM cannot honour: a pod in the host's network, PID or
/// IPC namespace (the VM has its own kernel, so it cannot share the
/// host's; Kata refuses them too).
pub(crate) fn refuse_host_namespaces(req: &RunSandboxRequest) -> HandlerResult<()> {
    use crius_shim_api::cri::NamespaceMode;
    let Some(ns) = pod_namespace_options(req.config.as_ref()) else {
        return Ok(());
    };
    let node = NamespaceMode::Node as i32;
    for (what, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
        if mode == node {
            return Err(HandlerError::invalid_argument(format!(
                "pod {}: a kata pod cannot use the host {what} namespace: it runs in a VM \
                 with its own kernel (use a runc/crun RuntimeClass for host namespaces)",
                req.sandbox_id
            )));
        }
    }
    Ok(())
}

/// The namespace options of a pod's sandbox config, if it has any.
fn pod_namespace_options(config: Option<&PodSandboxConfig>) -> Option<&NamespaceOption> {
    config
        .and_then(|c| c.linux.as_ref())
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
}

/// The resources of a pod's sandbox config (what sizes its VM).
fn pod_resources(req: &RunSandboxRequest) -> Option<&LinuxContainerResources> {
    req.config
        .as_ref()
        .and_then(|c| c.linux.as_ref())
        .and_then(|l| l.resources.as_ref())
}

/// What the agent prints on the console once it listens (see the README).
const AGENT_LISTENING_LINE: &[u8] = b"crius-agent: listening on";
/// How long to wait for that line before probing anyway.
const AGENT_LINE_GRACE: Duration = Duration::from_secs(60);

/// The host's CPUs and memory (MiB; `None` if /proc/meminfo is unreadable):
/// what an entry without maxima lets a VM grow to. Reads procfs: call it
/// off the executor.
fn host_size() -> (u32, Option<u64>) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024);
    (cpus, memory_mib)
}

/// What a VM booted with `vcpus`/`memory_mib` may grow to: the entry's
/// `max_vcpus`/`max_memory_mib`, 0 meaning the host's CPUs and memory.
fn room_to_grow(
    config: &crate::config::VmConfig,
    (vcpus, memory_mib): (u32, u64),
    (host_cpus, host_memory_mib): (u32, Option<u64>),
) -> (u32, u64) {
    let max_vcpus = match config.max_vcpus {
        0 => host_cpus.min(240),
        n => n,
    };
    let max_memory_mib = match config.max_memory_mib {
        0 => host_memory_mib.unwrap_or(memory_mib),
        n => n,
    };
    (max_vcpus.max(vcpus), max_memory_mib.max(memory_mib))
}

/// Whether the container shares the pod's PID namespace (PID mode POD,
/// Kubernetes' `shareProcessNamespace`): from the container's namespace
/// options, else the pod's.
pub(crate) fn shares_pod_pid_namespace(req: &CreateContainerRequest) -> bool {
    use crius_shim_api::cri::NamespaceMode;
    let container = req
        .config
        .as_ref()
        .and_then(|c| c.linux.as_ref())
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|n| n.pid);
    let pod = pod_namespace_options(req.sandbox_config.as_ref()).map(|n| n.pid);
    container.or(pod) == Some(NamespaceMode::Pod as i32)
}

impl PodShim {
    /// Everything RunSandbox can refuse before it starts anything.
    pub(crate) fn check_request(&self, req: &RunSandboxRequest) -> HandlerResult<()> {
        refuse_host_namespaces(req)?;
        let annotations = req.annotations.clone().into_iter().collect();
        self.requested_size(&annotations, pod_resources(req))
            .map_err(|e| HandlerError::invalid_argument(format!("pod {}: {e}", req.sandbox_id)))?;
        Ok(())
    }

    /// The VM size the pod asks for (annotations, then its resources),
    /// within the handler's limits.
    fn requested_size(
        &self,
        annotations: &HashMap<String, String>,
        resources: Option<&LinuxContainerResources>,
    ) -> Result<VmSize, String> {
        size_vm(
            &self.config.vm,
            annotations,
            resources.map_or(0, |r| r.memory_limit_in_bytes),
            resources.map_or(0, |r| r.cpu_quota),
            resources.map_or(0, |r| r.cpu_period),
        )
    }

    pub(crate) async fn boot(
        &self,
        req: &RunSandboxRequest,
    ) -> HandlerResult<(Vm, AgentClient, Timings, Option<crate::net::NetSetup>)> {
        let net = if req.netns_path.is_empty() {
            None
        } else {
            let netns = PathBuf::from(&req.netns_path);
            let network = req.network.clone().unwrap_or_default();
            let net = crate::net::setup(&req.sandbox_id, &netns, &network).await;
            Some(net.map_err(|err| {
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
                self.remove_vm_cgroup().await;
                Err(err)
            }
        }
    }

    /// Runs a blocking step of the boot (`what`, for the error) off the
    /// executor. Its failure is the host's state, not the request's: a
    /// FailedPrecondition of the pod.
    async fn blocking_step<T, E>(
        &self,
        what: &str,
        step: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> HandlerResult<T>
    where
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        tokio::task::spawn_blocking(step)
            .await
            .map_err(|e| HandlerError::internal(format!("{what}: {e}")))?
            .map_err(|e| {
                HandlerError::new(
                    ErrorKind::FailedPrecondition,
                    format!("pod {}: {what}: {e}", self.sandbox_id()),
                )
            })
    }

    /// Creates the pod's VM cgroup, `<cgroup_parent>/vm` in every hierarchy
    /// (a child, not the pod cgroup itself: on cgroup v2 a cgroup that
    /// delegates controllers holds no processes), and returns the
    /// `cgroup.procs` files QEMU and the helpers join. The pod's limits,
    /// which the daemon set on the pod cgroup, then bound the whole VM, so
    /// the RuntimeClass overhead must cover it (handlers/kata/README.md).
    async fn create_vm_cgroup(&self, cgroup_parent: &str) -> HandlerResult<Vec<PathBuf>> {
        use crius_shim_api::cgroupfs::{CgroupLayout, PodCgroup};
        if cgroup_parent.is_empty() {
            return Ok(Vec::new());
        }
        let path = format!("{}/vm", cgroup_parent.trim_end_matches('/'));
        let created = self
            .blocking_step("creating the VM cgroup", move || {
                let layout = CgroupLayout::detect()?;
                PodCgroup::create(&layout, &path)
            })
            .await?;
        let procs = created
            .dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect();
        *self.vm_cgroup.lock().unwrap_or_else(|e| e.into_inner()) = Some(created);
        Ok(procs)
    }

    /// Removes the VM cgroup once QEMU and the helpers are gone (the kernel
    /// may report it busy for a moment after the last exit). Best effort:
    /// the daemon removes the whole pod cgroup tree afterwards anyway.
    pub(crate) async fn remove_vm_cgroup(&self) {
        let Some(cgroup) = self
            .vm_cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        for _ in 0..40 {
            let cg = cgroup.clone();
            match tokio::task::spawn_blocking(move || cg.remove()).await {
                Ok(Ok(())) => return,
                Ok(Err(crius_shim_api::cgroupfs::CgroupError::Busy { .. })) => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok(Err(err)) => {
                    tracing::warn!(path = %cgroup.path(), error = %err, "removing the VM cgroup");
                    return;
                }
                Err(_) => return,
            }
        }
        tracing::warn!(path = %cgroup.path(), "the VM cgroup stayed busy");
    }

    async fn boot_with(
        &self,
        req: &RunSandboxRequest,
        net: Option<&crate::net::NetSetup>,
    ) -> HandlerResult<(Vm, AgentClient, Timings)> {
        let config = &self.config.vm;
        let resources = pod_resources(req);
        let annotations = req.annotations.clone().into_iter().collect();
        let size = self
            .requested_size(&annotations, resources)
            .map_err(HandlerError::invalid_argument)?;
        let layout = self.layout();
        let guest_cid = match config.vsock {
            VsockMode::Hybrid => config.guest_cid,
            VsockMode::Vhost => {
                let base = config.guest_cid;
                let seed = self.sandbox_id().to_string();
                self.blocking_step("allocating a vsock CID", move || {
                    crate::cid::allocate(base, &seed)
                })
                .await?
            }
        };
        self.guest_cid
            .store(guest_cid, std::sync::atomic::Ordering::Relaxed);
        let cgroup_procs = self.create_vm_cgroup(&req.cgroup_parent).await?;
        let host = tokio::task::spawn_blocking(host_size)
            .await
            .map_err(|e| HandlerError::internal(format!("reading the host's size: {e}")))?;
        let (max_vcpus, max_memory_mib) = room_to_grow(config, (size.vcpus, size.memory_mib), host);
        let params = VmParams {
            sandbox_id: self.sandbox_id().to_string(),
            qemu_path: self.config.qemu_path.clone(),
            config: config.clone(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            max_vcpus,
            max_memory_mib,
            extra_kernel_params: size.extra_kernel_params.clone(),
            guest_cid,
            layout: layout.clone(),
            netns: net.map(|n| n.netns.clone()),
            net: net.map(|n| crate::qemu::NetDevice {
                tap: n.tap.clone(),
                mac: n.interface.mac.clone(),
            }),
            cgroup_procs,
        };
        let begin = Instant::now();
        let mut vm = Vm::start(self.spawner.as_ref(), &params)
            .await
            .map_err(|err| self.boot_error(err))?;
        let vm_start = begin.elapsed();
        *self.sizing.lock().await = crate::resize::Sizing {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            max_vcpus,
            // Hot-plugged DIMMs need q35.
            max_memory_mib: if config.machine == crate::config::Machine::Q35 {
                max_memory_mib
            } else {
                size.memory_mib
            },
            annotations: annotations.clone(),
            pod: crate::resize::Limits::of(resources),
            ..Default::default()
        };
        let timeout = Duration::from_secs(config.boot_timeout_seconds);
        let addr = match config.vsock {
            VsockMode::Hybrid => AgentAddr::Hybrid {
                uds: layout.vsock_uds(),
                port: AGENT_PORT,
            },
            VsockMode::Vhost => AgentAddr::Vsock {
                cid: guest_cid,
                port: AGENT_PORT,
            },
        };
        // Connect only once the agent said on the console that it listens
        // (or after AGENT_LINE_GRACE, for a guest image that does not say
        // so): hybrid-vsock CONNECTs sent while the guest was still booting
        // were seen to leave vhost-device-vsock answering none of the later
        // ones (the agent listening, the pod failing after 150 s).
        let console = layout.console_log();
        let probing_since = Instant::now();
        let ready = vm
            .wait_ready(timeout, || {
                let addr = addr.clone();
                let console = console.clone();
                async move {
                    if probing_since.elapsed() < AGENT_LINE_GRACE {
                        let text = tokio::fs::read(&console).await.unwrap_or_default();
                        if !text
                            .windows(AGENT_LISTENING_LINE.len())
                            .any(|w| w == AGENT_LISTENING_LINE)
                        {
                            return Err("the console does not yet say the agent listens".into());
                        }
                    }
                    let agent = AgentClient::connect(&addr)
                        .await
                        .map_err(|e| format!("connecting to the agent: {e}"))?
                        .with_timeout(Duration::from_secs(2));
                    agent
                        .check()
                        .await
                        .map_err(|e| format!("agent health check: {e}"))?;
                    Ok(agent.with_timeout(crate::agent_client::DEFAULT_TIMEOUT))
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
}

#[cfg(test)]
mod tests {
    use super::room_to_grow;
    use crate::config::VmConfig;

    #[test]
    fn room_to_grow_takes_the_entrys_maxima_else_the_hosts_and_never_shrinks() {
        let unset = VmConfig {
            max_vcpus: 0,
            max_memory_mib: 0,
            ..VmConfig::default()
        };
        assert_eq!(
            room_to_grow(&unset, (1, 256), (8, Some(16_384))),
            (8, 16_384)
        );
        assert_eq!(room_to_grow(&unset, (1, 256), (8, None)), (8, 256));
        let set = VmConfig {
            max_vcpus: 3,
            max_memory_mib: 2048,
            ..VmConfig::default()
        };
        assert_eq!(room_to_grow(&set, (1, 256), (8, Some(16_384))), (3, 2048));
        // A pod that boots bigger than the maxima keeps its boot size.
        assert_eq!(room_to_grow(&set, (4, 4096), (8, Some(16_384))), (4, 4096));
    }
}
