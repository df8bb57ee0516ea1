//! Growing a running pod's VM when its containers' limits grow (in-place
//! pod resize): vCPUs and memory are hot-plugged through QMP, within the
//! entry's `max_vcpus`/`max_memory_mib`, and brought online by the agent.
//!
//! The VM is sized like at boot ([`size_vm`]): the entry's defaults (or
//! the pod's sizing annotations) plus the containers' CPU and memory
//! limits, or the pod's total when the kubelet sends one
//! (UpdatePodSandboxResources). It only grows: hot-unplug is unreliable in
//! guests, and a pod that shrank keeps the room (its cgroups in the guest
//! still enforce the new limits).

use std::collections::HashMap;

use crius_shim_api::cri::LinuxContainerResources;
use crius_shim_api::{HandlerError, HandlerResult};

use crate::config::size_vm;
use crate::qemu::MEMORY_SLOTS;
use crate::qmp::{self, MEMORY_BLOCK_MIB};
use crate::shim::{PodShim, agent_err};

/// CPU and memory limits, in the units the VM is sized in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub memory_bytes: i64,
    /// CPU quota per [`CPU_PERIOD`] microseconds.
    pub cpu_quota: i64,
}

/// The period every quota is converted to before summing.
const CPU_PERIOD: i64 = 100_000;

impl Limits {
    pub(crate) fn of(r: Option<&LinuxContainerResources>) -> Self {
        let Some(r) = r else {
            return Self::default();
        };
        let cpu_quota = if r.cpu_quota > 0 && r.cpu_period > 0 {
            r.cpu_quota.saturating_mul(CPU_PERIOD) / r.cpu_period
        } else {
            0
        };
        Self {
            memory_bytes: r.memory_limit_in_bytes.max(0),
            cpu_quota,
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            cpu_quota: self.cpu_quota.saturating_add(other.cpu_quota),
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
            cpu_quota: self.cpu_quota.max(other.cpu_quota),
        }
    }
}

/// What the VM has and may grow to.
#[derive(Debug, Default)]
pub(crate) struct Sizing {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
    pub annotations: HashMap<String, String>,
    pub dimms: u32,
    /// Per container.
    pub containers: HashMap<String, Limits>,
    /// The pod's total from UpdatePodSandboxResources (or RunSandbox).
    pub pod: Limits,
}

/// Memory to add to go from `have` to `want` MiB without passing `max`:
/// whole memory blocks, rounded up unless that would pass `max`.
fn memory_to_add(have: u64, want: u64, max: u64) -> u64 {
    let want = want.min(max);
    if want <= have {
        return 0;
    }
    let up = (want - have).div_ceil(MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB;
    if have + up <= max {
        up
    } else {
        (max - have) / MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB
    }
}

impl PodShim {
    /// Records `limits` for `container` (None: forgets it) and grows the
    /// VM if the pod now needs more.
    pub(crate) async fn resize_for_container(
        &self,
        container: &str,
        limits: Option<Limits>,
    ) -> HandlerResult<()> {
        {
            let mut sizing = self.sizing.lock().await;
            match limits {
                Some(l) => sizing.containers.insert(container.to_string(), l),
                None => sizing.containers.remove(container),
            };
        }
        self.grow_vm().await
    }

    /// UpdateSandboxResources: the pod's new total.
    pub(crate) async fn resize_for_pod(&self, total: Limits) -> HandlerResult<()> {
        self.sizing.lock().await.pod = total;
        self.grow_vm().await
    }

    async fn grow_vm(&self) -> HandlerResult<()> {
        let mut sizing = self.sizing.lock().await;
        if sizing.max_vcpus == 0 {
            // No VM (yet, or any more).
            return Ok(());
        }
        let sum = sizing
            .containers
            .values()
            .fold(Limits::default(), |a, l| a.add(*l));
        let need = sum.max(sizing.pod);
        let want = size_vm(
            &self.config.vm,
            &sizing.annotations,
            need.memory_bytes,
            need.cpu_quota,
            CPU_PERIOD,
        )
        .map_err(HandlerError::invalid_argument)?;
        let socket = self.layout().qmp_socket();
        let agent = self.agent().await?;
        let sandbox = self.sandbox_id().to_string();

        let target_vcpus = want.vcpus.min(sizing.max_vcpus);
        if target_vcpus > sizing.vcpus {
            let plugged = qmp::plug_vcpus(&socket, target_vcpus)
                .await
                .map_err(|e| HandlerError::internal(format!("pod {sandbox}: adding vCPUs: {e}")))?;
            let added = plugged.saturating_sub(sizing.vcpus);
            agent
                .online_cpu_mem(added)
                .await
                .map_err(|e| agent_err(&format!("pod {sandbox}: onlining vCPUs"), e))?;
            tracing::info!(sandbox = %sandbox, from = sizing.vcpus, to = plugged, "vCPUs hot-plugged");
            sizing.vcpus = plugged;
        }
        if want.vcpus > sizing.max_vcpus {
            tracing::warn!(sandbox = %sandbox, wanted = want.vcpus, max = sizing.max_vcpus,
                "the pod's CPU limits exceed the VM's max_vcpus");
        }

        let add = memory_to_add(sizing.memory_mib, want.memory_mib, sizing.max_memory_mib);
        if add > 0 {
            if sizing.dimms >= MEMORY_SLOTS {
                tracing::warn!(sandbox = %sandbox, "no DIMM slot left for more memory");
            } else {
                qmp::plug_memory(&socket, add, sizing.dimms)
                    .await
                    .map_err(|e| {
                        HandlerError::internal(format!("pod {sandbox}: adding memory: {e}"))
                    })?;
                sizing.dimms += 1;
                agent
                    .online_cpu_mem(0)
                    .await
                    .map_err(|e| agent_err(&format!("pod {sandbox}: onlining memory"), e))?;
                tracing::info!(sandbox = %sandbox, from = sizing.memory_mib,
                    to = sizing.memory_mib + add, "memory hot-plugged");
                sizing.memory_mib += add;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_summed_in_one_cpu_period() {
        let a = Limits::of(Some(&LinuxContainerResources {
            cpu_quota: 50_000,
            cpu_period: 50_000,
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }));
        assert_eq!(a.cpu_quota, 100_000, "one CPU");
        let b = Limits::of(Some(&LinuxContainerResources {
            cpu_quota: 150_000,
            cpu_period: 100_000,
            ..Default::default()
        }));
        let sum = a.add(b);
        assert_eq!((sum.cpu_quota, sum.memory_bytes), (250_000, 256 << 20));
        assert_eq!(Limits::of(None), Limits::default());
    }

    #[test]
    fn memory_grows_in_whole_blocks_within_the_maximum() {
        assert_eq!(memory_to_add(256, 256, 4096), 0);
        assert_eq!(memory_to_add(256, 300, 4096), 128);
        assert_eq!(memory_to_add(256, 768, 4096), 512);
        assert_eq!(
            memory_to_add(256, 9000, 1000),
            640,
            "capped at max, whole blocks"
        );
        assert_eq!(memory_to_add(256, 300, 300), 0, "less than a block of room");
    }
}
