//! `SandboxStats` of [`OciHandler`]: CPU and memory of the pod cgroup
//! (`RunSandboxRequest.cgroup_parent`), the network counters of the pod's
//! namespace (`/proc/<infra pid>/net/dev`, which shows the interfaces of
//! the namespace the infra process lives in) and the pod's process count
//! (`pids.current` of the pod cgroup).

use crius_shim_api::cri;
use crius_shim_api::types::{SandboxRef, SandboxStatsResponse};
use crius_shim_api::{HandlerError, HandlerResult};

use crate::OciHandler;
use crate::cgroupfs::{self, CgroupMounts};
use crate::ops::Observed;
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

impl OciHandler {
    pub(crate) async fn do_sandbox_stats(
        &self,
        req: SandboxRef,
    ) -> HandlerResult<SandboxStatsResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        let cgroup = pod.cgroup_parent.clone().ok_or_else(|| {
            HandlerError::failed_precondition(format!(
                "handler {}: sandbox {} has no pod cgroup recorded",
                self.config.name, req.sandbox_id
            ))
        })?;
        let infra_pid = match self.observe(&pod.infra).await? {
            Observed::Running => Some(pod.infra.pid),
            _ => None,
        };
        let collect = move || {
            let mounts = CgroupMounts::current().unwrap_or_default();
            let stats = cgroupfs::stats(&mounts, &cgroup);
            let pids = mounts
                .dir("pids", &cgroup)
                .and_then(|d| std::fs::read_to_string(d.join("pids.current")).ok())
                .and_then(|s| s.trim().parse::<u64>().ok());
            let net = infra_pid
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok())
                .map(|t| parse_net_dev(&t));
            (stats, pids, net)
        };
        let (stats, pids, net) = tokio::task::spawn_blocking(collect)
            .await
            .map_err(|e| self.err("sandbox stats task", e))?;
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
