//! UpdatePodSandboxResources: in-place resize at pod level. The core checks
//! the request; the handler applies it (the OCI handler writes the pod
//! cgroup, a VM handler may resize its VM).

use crius_proto::cri;
use crius_shim_api::types;

use super::PodManager;
use super::error::{PodError, PodResult};
use super::store::PodState;

/// The kernel's bounds for a CFS period and the smallest quota (µs).
const CFS_PERIOD_US: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
const MIN_CFS_QUOTA_US: i64 = 1_000;

fn check(what: &str, r: &cri::LinuxContainerResources) -> PodResult<()> {
    crate::spec::validate_resources(r).map_err(|e| {
        PodError::InvalidArgument(format!("UpdatePodSandboxResources: {what}: {e}"))
    })?;
    if r.cpu_period != 0 && !CFS_PERIOD_US.contains(&r.cpu_period) {
        return Err(PodError::InvalidArgument(format!(
            "UpdatePodSandboxResources: {what}: cpu_period {} is outside 1000..=1000000 µs",
            r.cpu_period
        )));
    }
    if r.cpu_quota > 0 && r.cpu_quota < MIN_CFS_QUOTA_US {
        return Err(PodError::InvalidArgument(format!(
            "UpdatePodSandboxResources: {what}: cpu_quota {} is below {MIN_CFS_QUOTA_US} µs",
            r.cpu_quota
        )));
    }
    Ok(())
}

impl PodManager {
    /// UpdatePodSandboxResources: `resources` is the pod's new total (the
    /// sum of its containers'), `overhead` the pod overhead.
    pub async fn update_pod_sandbox_resources(
        &self,
        req: cri::UpdatePodSandboxResourcesRequest,
    ) -> PodResult<()> {
        if req.pod_sandbox_id.is_empty() {
            return Err(PodError::InvalidArgument(
                "UpdatePodSandboxResources: pod_sandbox_id is required".into(),
            ));
        }
        let Some(resources) = req.resources.as_ref() else {
            return Err(PodError::InvalidArgument(
                "UpdatePodSandboxResources: resources is required".into(),
            ));
        };
        check("resources", resources)?;
        if let Some(overhead) = &req.overhead {
            check("overhead", overhead)?;
        }
        let id = self.known_pod_id(&req.pod_sandbox_id)?;
        let _guard = self.lock_pod(&id).await;
        let pod = self
            .store
            .pod(&id)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {id} not found")))?;
        if pod.state != PodState::Ready {
            return Err(PodError::FailedPrecondition(format!(
                "UpdatePodSandboxResources: pod sandbox {id} is not ready"
            )));
        }
        let handler = self.handler(&pod.id, &pod.handler)?;
        handler
            .update_sandbox_resources(types::UpdateSandboxResourcesRequest {
                sandbox_id: id.clone(),
                overhead: req.overhead.clone(),
                resources: req.resources.clone(),
            })
            .await
            .map_err(|e| PodError::handler(format!("updating the resources of pod {id}"), e))?;
        tracing::info!(pod_id = %id, handler = %pod.handler, "pod sandbox resources updated");
        Ok(())
    }
}
