//! Container resources in the guest: `UpdateContainerResources` (the
//! guest cgroup, through the agent's UpdateContainer) and `ContainerStats`
//! (the agent's cgroup statistics).

use crius_shim_api::HandlerResult;
use crius_shim_api::types::{
    ContainerRef, ContainerStatsResponse, UpdateContainerResourcesRequest,
};

use crius_agent_proto::oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

use crate::container::now_nanos;
use crate::shim::{PodShim, agent_err};

impl PodShim {
    pub(crate) async fn do_update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        let agent = self.agent().await?;
        let linux = req.linux.unwrap_or_default();
        // Room first (hot-plug), then the container's new limits in the guest.
        self.resize_for_container(&c.id, Some(crate::resize::Limits::of(Some(&linux))))
            .await?;
        let resources = oci_resources(&linux);
        agent
            .update_container(&c.id, &resources)
            .await
            .map_err(|err| {
                agent_err(
                    &format!("container {}: guest agent UpdateContainer", c.id),
                    err,
                )
            })
    }

    pub(crate) async fn do_container_stats(
        &self,
        req: ContainerRef,
    ) -> HandlerResult<ContainerStatsResponse> {
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

/// The CRI resources as OCI `linux.resources`: what is set (non-zero),
/// as the runc handler's update does.
fn oci_resources(linux: &crius_shim_api::cri::LinuxContainerResources) -> LinuxResources {
    let mut resources: LinuxResources =
        serde_json::from_value(serde_json::json!({})).unwrap_or_default();
    if linux.memory_limit_in_bytes > 0 {
        let mut memory: LinuxMemory =
            serde_json::from_value(serde_json::json!({})).unwrap_or_default();
        memory.set_limit(Some(linux.memory_limit_in_bytes));
        resources.set_memory(Some(memory));
    }
    let mut cpu: LinuxCpu = serde_json::from_value(serde_json::json!({})).unwrap_or_default();
    let mut any = false;
    if linux.cpu_shares > 0 {
        cpu.set_shares(Some(linux.cpu_shares as u64));
        any = true;
    }
    if linux.cpu_quota > 0 {
        cpu.set_quota(Some(linux.cpu_quota));
        any = true;
    }
    if linux.cpu_period > 0 {
        cpu.set_period(Some(linux.cpu_period as u64));
        any = true;
    }
    if !linux.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(linux.cpuset_cpus.clone()));
        any = true;
    }
    if !linux.cpuset_mems.is_empty() {
        cpu.set_mems(Some(linux.cpuset_mems.clone()));
        any = true;
    }
    if any {
        resources.set_cpu(Some(cpu));
    }
    resources
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_set_cri_resources_reach_the_oci_update() {
        let linux = crius_shim_api::cri::LinuxContainerResources {
            memory_limit_in_bytes: 48 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(oci_resources(&linux)).unwrap(),
            serde_json::json!({"memory": {"limit": 48 << 20},
                               "cpu": {"quota": 50_000, "period": 100_000}})
        );
        assert_eq!(
            serde_json::to_value(oci_resources(&Default::default())).unwrap(),
            serde_json::json!({})
        );
    }
}
