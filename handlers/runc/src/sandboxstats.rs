//! `SandboxStats` and `UpdateSandboxResources` of [`OciHandler`]. Stats: CPU and memory of the pod cgroup
//! (`RunSandboxRequest.cgroup_parent`), the network counters of the pod's
//! namespace (`/proc/<infra pid>/net/dev`, which shows the interfaces of
//! the namespace the infra process lives in) and the pod's process count
//! (`pids.current` of the pod cgroup). Resources: the pod cgroup's limits
//! are the pod's total resources plus its overhead, as at RunSandbox.

use crius_shim_api::cgroupfs::{CgroupError, Resources};
use crius_shim_api::cri;
use crius_shim_api::types::{SandboxRef, SandboxStatsResponse, UpdateSandboxResourcesRequest};
use crius_shim_api::{HandlerError, HandlerResult};

use crate::OciHandler;
use crate::ops::{Observed, Pod};
use crate::state::now_ns;

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// Parses `/proc/net/dev`: (name, rx_bytes, rx_errors, tx_bytes, tx_errors)
/// per interface, loopback left out.
pub(crate) fn parse_net_dev(text: &str) -> Vec<(String, u64, u64, u64, u64)> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|n| n.parse().unwrap_or(0))
                .collect();
            (f.len() >= 11).then(|| (name.to_string(), f[0], f[2], f[8], f[10]))
        })
        .collect()
}

/// The pod cgroup limits for `resources` (the sum of the containers')
/// plus `overhead`: zero leaves a setting as it is, a negative CPU quota
/// lifts the limit, other negative values are refused.
pub(crate) fn pod_limits(
    resources: Option<&cri::LinuxContainerResources>,
    overhead: Option<&cri::LinuxContainerResources>,
) -> Result<Resources, String> {
    let r = resources.cloned().unwrap_or_default();
    let o = overhead.cloned().unwrap_or_default();
    for (what, v) in [
        ("cpu_shares", r.cpu_shares),
        ("cpu_period", r.cpu_period),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("overhead cpu_shares", o.cpu_shares),
        ("overhead memory_limit_in_bytes", o.memory_limit_in_bytes),
    ] {
        if v < 0 {
            return Err(format!("{what} {v} is negative"));
        }
    }
    let positive = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
    // A negative overhead adds nothing (only the quota may be negative).
    let plus = |v: i64, extra: i64| v.saturating_add(extra.max(0));
    Ok(Resources {
        cpu_shares: positive(r.cpu_shares)
            .map(|s| s.saturating_add(u64::try_from(o.cpu_shares).unwrap_or(0))),
        cpu_quota: match r.cpu_quota {
            // Resources' "unlimited".
            q if q < 0 => Some(-1),
            0 => None,
            q => Some(plus(q, o.cpu_quota)),
        },
        cpu_period: positive(r.cpu_period),
        cpuset_cpus: (!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()),
        cpuset_mems: (!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()),
        memory_limit: (r.memory_limit_in_bytes > 0)
            .then(|| plus(r.memory_limit_in_bytes, o.memory_limit_in_bytes)),
        // The CRI's pod resources carry no pids limit.
        pids_limit: None,
    })
}

/// The CRI code for a failed cgroup write: a value the kernel refused is
/// the caller's, a missing or busy cgroup is the pod's state.
fn cgroup_error(message: String, e: &CgroupError) -> HandlerError {
    let kind = match e {
        CgroupError::Io { source, .. }
        | CgroupError::Write { source, .. }
        | CgroupError::Busy { source, .. } => source.kind(),
        CgroupError::InvalidPath { .. }
        | CgroupError::NotMounted
        | CgroupError::MissingController { .. } => std::io::ErrorKind::NotFound,
    };
    match kind {
        std::io::ErrorKind::InvalidInput => HandlerError::invalid_argument(message),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ResourceBusy => {
            HandlerError::failed_precondition(message)
        }
        _ => HandlerError::internal(message),
    }
}

impl OciHandler {
    /// The sandbox and the pod cgroup recorded for it.
    fn pod_cgroup(&self, sandbox_id: &str) -> HandlerResult<(std::sync::Arc<Pod>, String)> {
        let pod = self.pod(sandbox_id)?;
        let cgroup = pod.cgroup_parent.clone().ok_or_else(|| {
            HandlerError::failed_precondition(format!(
                "handler {}: sandbox {sandbox_id} has no pod cgroup recorded",
                self.config.name
            ))
        })?;
        Ok((pod, cgroup))
    }

    pub(crate) async fn do_update_sandbox_resources(
        &self,
        req: UpdateSandboxResourcesRequest,
    ) -> HandlerResult<()> {
        let (_, cgroup) = self.pod_cgroup(&req.sandbox_id)?;
        let limits = pod_limits(req.resources.as_ref(), req.overhead.as_ref()).map_err(|e| {
            HandlerError::invalid_argument(format!("sandbox {}: {e}", req.sandbox_id))
        })?;
        let target = cgroup.clone();
        let applied = limits.clone();
        let result =
            tokio::task::spawn_blocking(move || Self::cgroup(&target)?.set_resources(&applied))
                .await
                .map_err(|e| self.err("sandbox resources task", e))?;
        match result {
            Ok(()) => {
                tracing::info!(pod_id = %req.sandbox_id, handler = %self.config.name, cgroup = %cgroup, limits = ?limits, "pod cgroup limits updated");
                Ok(())
            }
            Err(e) => {
                let message = format!(
                    "handler {}: updating the cgroup {cgroup} of sandbox {}: {e}",
                    self.config.name, req.sandbox_id
                );
                Err(cgroup_error(message, &e))
            }
        }
    }

    pub(crate) async fn do_sandbox_stats(
        &self,
        req: SandboxRef,
    ) -> HandlerResult<SandboxStatsResponse> {
        let (pod, cgroup) = self.pod_cgroup(&req.sandbox_id)?;
        let infra_pid = match self.observe(&pod.infra).await? {
            Observed::Running => Some(pod.infra.pid),
            _ => None,
        };
        let (stats, pids, net) = tokio::task::spawn_blocking(move || {
            let cg = Self::cgroup(&cgroup)?;
            let net = infra_pid
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok())
                .map(|t| parse_net_dev(&t));
            Ok::<_, CgroupError>((cg.stats(), cg.pids_current(), net))
        })
        .await
        .map_err(|e| self.err("sandbox stats task", e))?
        .map_err(|e| self.err(format!("cgroup of sandbox {}", req.sandbox_id), e))?;
        let stats = stats.ok_or_else(|| {
            HandlerError::failed_precondition(format!(
                "handler {}: the cgroup of sandbox {} does not exist",
                self.config.name, req.sandbox_id
            ))
        })?;
        let timestamp = now_ns();
        let network = net.map(|ifaces| {
            let mut interfaces: Vec<cri::NetworkInterfaceUsage> = ifaces
                .into_iter()
                .map(
                    |(name, rx, rx_err, tx, tx_err)| cri::NetworkInterfaceUsage {
                        name,
                        rx_bytes: value(rx),
                        rx_errors: value(rx_err),
                        tx_bytes: value(tx),
                        tx_errors: value(tx_err),
                    },
                )
                .collect();
            interfaces.sort_by(|a, b| a.name.cmp(&b.name));
            let default_interface = interfaces
                .iter()
                .find(|i| i.name == "eth0")
                .or(interfaces.first())
                .cloned();
            cri::NetworkUsage {
                timestamp,
                default_interface,
                interfaces,
            }
        });
        Ok(SandboxStatsResponse {
            cpu: Some(cri::CpuUsage {
                timestamp,
                usage_core_nano_seconds: value(stats.cpu_usage_ns),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                timestamp,
                working_set_bytes: value(stats.memory_working_set_bytes),
                usage_bytes: value(stats.memory_usage_bytes),
                rss_bytes: value(stats.memory_rss_bytes),
                ..Default::default()
            }),
            network,
            process: pids.map(|n| cri::ProcessUsage {
                timestamp,
                process_count: value(n),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_limits_add_the_overhead() {
        let resources = cri::LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 100 << 20,
            ..Default::default()
        };
        let overhead = cri::LinuxContainerResources {
            cpu_shares: 10,
            cpu_quota: 5_000,
            memory_limit_in_bytes: 10 << 20,
            ..Default::default()
        };
        let l = pod_limits(Some(&resources), Some(&overhead)).unwrap();
        assert_eq!(l.cpu_shares, Some(1034));
        assert_eq!(l.cpu_quota, Some(55_000));
        assert_eq!(l.cpu_period, Some(100_000));
        assert_eq!(l.memory_limit, Some(110 << 20));
        assert_eq!(l.cpuset_cpus, None);
        // Zero: untouched; negative quota: unlimited.
        let l = pod_limits(
            Some(&cri::LinuxContainerResources {
                cpu_quota: -1,
                ..Default::default()
            }),
            None,
        )
        .unwrap();
        assert_eq!(l.cpu_quota, Some(-1));
        assert_eq!(l.memory_limit, None);
        let bad = cri::LinuxContainerResources {
            memory_limit_in_bytes: -5,
            ..Default::default()
        };
        assert!(
            pod_limits(Some(&bad), None)
                .unwrap_err()
                .contains("negative")
        );
    }

    #[test]
    fn net_dev_is_parsed_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    5000      40    1    0    0     0          0         0     7000      50    2    0    0     0       0          0
";
        assert_eq!(
            parse_net_dev(text),
            vec![("eth0".to_string(), 5000, 1, 7000, 2)]
        );
    }
}
