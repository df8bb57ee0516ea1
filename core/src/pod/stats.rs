//! ContainerStats and ListContainerStats from the handlers' cgroup figures.

use crius_proto::cri;

use super::error::{PodError, PodResult};
use super::store::ContainerRecord;
use super::{PodManager, labels_match};

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

impl PodManager {
    async fn stats_of(&self, c: &ContainerRecord) -> PodResult<cri::ContainerStats> {
        let pod = self
            .store
            .pod(&c.pod_id)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {} not found", c.pod_id)))?;
        let handler = self.handler(&pod.handler)?;
        let s = handler
            .container_stats(Self::container_ref(c))
            .await
            .map_err(|e| PodError::handler(format!("stats of container {}", c.id), e))?;
        Ok(cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: s.timestamp,
                usage_core_nano_seconds: value(s.cpu_usage_core_nanoseconds),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: s.timestamp,
                working_set_bytes: value(s.memory_working_set_bytes),
                usage_bytes: value(s.memory_usage_bytes),
                rss_bytes: value(s.memory_rss_bytes),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// ContainerStats.
    pub async fn container_stats(&self, id: &str) -> PodResult<cri::ContainerStats> {
        let c = self.container_record(id)?;
        self.stats_of(&c).await
    }

    /// ListContainerStats: containers the handler cannot measure (not
    /// running, gone) are left out rather than failing the whole list.
    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        let filter = filter.unwrap_or_default();
        let mut out = Vec::new();
        for c in self.store.containers() {
            if !c.handler_created
                || (!filter.id.is_empty() && !c.id.starts_with(&filter.id))
                || (!filter.pod_sandbox_id.is_empty()
                    && !c.pod_id.starts_with(&filter.pod_sandbox_id))
                || !labels_match(&c.config.labels, &filter.label_selector)
            {
                continue;
            }
            match self.stats_of(&c).await {
                Ok(stats) => out.push(stats),
                Err(e) => {
                    tracing::debug!(container_id = %c.id, error = %e, "no stats for container")
                }
            }
        }
        out
    }
}
