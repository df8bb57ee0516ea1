//! ContainerStats/ListContainerStats and PodSandboxStats/ListPodSandboxStats.
//!
//! CPU and memory come from the handler (`ContainerStats`, `SandboxStats`:
//! cgroups for the OCI handler, the guest for VM handlers); the network of
//! a pod from the handler too (the pod's namespace). The core adds what it
//! owns:
//! - `usage_nano_cores` from successive samples ([`CpuRates`]),
//! - the writable layer (the container's overlay `upper` dir, which the
//!   core creates for every handler) through [`UsageCache`]: a cached walk
//!   refreshed in the background, never a walk per call,
//! - swap, page faults and available memory from the container's host
//!   cgroup, when it has one (OCI handlers; a VM handler's containers have
//!   no host cgroup and report no swap),
//! - for a handler without pod-level figures (`SandboxStats` answering
//!   `Unimplemented`, or leaving parts out): the network counters of the
//!   pod's network namespace, which the core owns (a VM's tap device lives
//!   there, so they count the VM's traffic), and CPU and memory as the sum
//!   of the pod's containers (the workload, without the VM's own overhead).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crius_proto::cri;
use crius_shim_api::{ErrorKind, types};

use super::error::{PodError, PodResult};
use super::store::{ContainerRecord, PodRecord, PodState};
use super::{PodManager, labels_match};
use crate::fsusage::{self, UsageCache};
use crate::sandbox::{CgroupLayout, CgroupMode};

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// Samples closer together than this reuse the previous rate: a rate over
/// a few milliseconds (two kubelet components asking back to back) is noise.
const MIN_RATE_INTERVAL_NS: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at_ns: i64,
    total_ns: u64,
    rate: Option<u64>,
}

/// CPU rate per container/pod from the previous sample.
#[derive(Debug, Default)]
pub(super) struct CpuRates(Mutex<HashMap<String, CpuSample>>);

impl CpuRates {
    /// Cores × 1e9 used between the previous sample of `key` and this one;
    /// `None` for the first sample.
    fn rate(&self, key: &str, at_ns: i64, total_ns: u64) -> Option<u64> {
        let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match samples.get(key).copied() {
            Some(prev) if at_ns - prev.at_ns < MIN_RATE_INTERVAL_NS => prev.rate,
            Some(prev) if total_ns >= prev.total_ns => {
                let dt = (at_ns - prev.at_ns) as u128;
                let rate = ((total_ns - prev.total_ns) as u128 * 1_000_000_000 / dt) as u64;
                samples.insert(
                    key.to_string(),
                    CpuSample {
                        at_ns,
                        total_ns,
                        rate: Some(rate),
                    },
                );
                Some(rate)
            }
            // First sample, or the counter went back (a new cgroup).
            _ => {
                samples.insert(
                    key.to_string(),
                    CpuSample {
                        at_ns,
                        total_ns,
                        rate: None,
                    },
                );
                None
            }
        }
    }

    fn retain(&self, keep: &HashSet<String>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep.contains(k));
    }
}

/// What the stats RPCs keep between calls.
#[derive(Debug, Default)]
pub(super) struct StatsState {
    pub(super) cpu: CpuRates,
    pub(super) layers: Arc<UsageCache>,
    /// Mount point of the filesystem holding the writable layers.
    layer_fs: OnceLock<PathBuf>,
}

/// Memory figures of a container's host cgroup the handlers do not report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct HostMemory {
    pub swap_usage: u64,
    /// Swap the cgroup may still use (its limit, capped by the host's free swap).
    pub swap_available: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The memory limit, when there is one.
    pub limit: Option<u64>,
}

/// "Unlimited" as cgroup v1 reports it (a page-aligned i64::MAX).
const V1_UNLIMITED: u64 = 1 << 62;

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn host_swap_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("SwapFree:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Reads [`HostMemory`] of `cgroup` (a cgroupfs path); `None` when the
/// cgroup does not exist in the memory hierarchy.
pub(super) fn host_memory(layout: &CgroupLayout, cgroup: &str) -> Option<HostMemory> {
    let rel = cgroup.trim_start_matches('/');
    let v2 = layout.mode() == CgroupMode::V2;
    let mount = layout.hierarchies().iter().find(|h| {
        if v2 {
            h.cgroup2
        } else {
            !h.cgroup2 && h.controllers.iter().any(|c| c == "memory")
        }
    })?;
    let dir = mount.mount.join(rel);
    let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let swap_free = host_swap_free();
    let mut m = HostMemory::default();
    if v2 {
        m.page_faults = keyed(&stat, "pgfault").unwrap_or(0);
        m.major_page_faults = keyed(&stat, "pgmajfault").unwrap_or(0);
        m.swap_usage = read("memory.swap.current")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let swap_max = read("memory.swap.max").and_then(|s| s.trim().parse::<u64>().ok());
        m.swap_available = match swap_max {
            Some(max) => max.saturating_sub(m.swap_usage).min(swap_free),
            None => swap_free,
        };
        m.limit = read("memory.max").and_then(|s| s.trim().parse().ok());
    } else {
        m.page_faults = keyed(&stat, "total_pgfault").unwrap_or(0);
        m.major_page_faults = keyed(&stat, "total_pgmajfault").unwrap_or(0);
        m.swap_usage = keyed(&stat, "total_swap").unwrap_or(0);
        let mem_limit = keyed(&stat, "hierarchical_memory_limit").unwrap_or(u64::MAX);
        let memsw_limit = keyed(&stat, "hierarchical_memsw_limit").unwrap_or(u64::MAX);
        m.swap_available = if memsw_limit >= V1_UNLIMITED {
            swap_free
        } else {
            memsw_limit
                .saturating_sub(mem_limit.min(memsw_limit))
                .saturating_sub(m.swap_usage)
                .min(swap_free)
        };
        m.limit = (mem_limit < V1_UNLIMITED).then_some(mem_limit);
    }
    Some(m)
}

fn attributes(c: &ContainerRecord) -> cri::ContainerAttributes {
    cri::ContainerAttributes {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
    }
}

fn pod_attributes(p: &PodRecord) -> cri::PodSandboxAttributes {
    cri::PodSandboxAttributes {
        id: p.id.clone(),
        metadata: p.config.metadata.clone(),
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
    }
}

/// Parses `/proc/net/dev`: the counters per interface, loopback left out.
pub(super) fn parse_net_dev(text: &str, timestamp: i64) -> cri::NetworkUsage {
    let mut interfaces: Vec<cri::NetworkInterfaceUsage> = text
        .lines()
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
            (f.len() >= 11).then(|| cri::NetworkInterfaceUsage {
                name: name.to_string(),
                rx_bytes: value(f[0]),
                rx_errors: value(f[2]),
                tx_bytes: value(f[8]),
                tx_errors: value(f[10]),
            })
        })
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
}

/// The network counters of the namespace pinned at `netns` (read on a
/// thread of its own that joins the namespace).
async fn netns_network(netns: PathBuf) -> PodResult<cri::NetworkUsage> {
    let text = super::blocking("reading a pod's network counters", move || {
        let ns = crate::sandbox::NetNs::open(&netns)?;
        let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?;
        text.map_err(|e| PodError::io(format!("reading /proc/net/dev in {}", netns.display()), e))
    })
    .await?;
    Ok(parse_net_dev(&text, super::store::now_nanos()))
}

/// Pod CPU and memory as the sum of its containers'.
fn sum_of_containers(
    containers: &[cri::ContainerStats],
) -> (Option<cri::CpuUsage>, Option<cri::MemoryUsage>) {
    if containers.is_empty() {
        return (None, None);
    }
    let v = |x: &Option<cri::UInt64Value>| x.as_ref().map_or(0, |v| v.value);
    let (mut cpu_ns, mut ws, mut usage, mut rss, mut ts) = (0, 0, 0, 0, 0);
    for c in containers {
        if let Some(cpu) = &c.cpu {
            cpu_ns += v(&cpu.usage_core_nano_seconds);
            ts = ts.max(cpu.timestamp);
        }
        if let Some(m) = &c.memory {
            ws += v(&m.working_set_bytes);
            usage += v(&m.usage_bytes);
            rss += v(&m.rss_bytes);
        }
    }
    (
        Some(cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: value(cpu_ns),
            ..Default::default()
        }),
        Some(cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: value(ws),
            usage_bytes: value(usage),
            rss_bytes: value(rss),
            ..Default::default()
        }),
    )
}

/// The container's writable layer: the overlay upper dir in its bundle,
/// or with the vfs driver (no `upper`) the rootfs copy itself.
pub(super) fn upper_dir(c: &ContainerRecord) -> PathBuf {
    let upper = c.bundle_dir.join("upper");
    if upper.is_dir() {
        upper
    } else {
        c.bundle_dir.join("rootfs")
    }
}

impl PodManager {
    /// Mount point of the filesystem that holds the writable layers.
    pub fn container_fs_mountpoint(&self) -> PathBuf {
        self.stats
            .layer_fs
            .get_or_init(|| fsusage::mount_point_of(self.store.root()))
            .clone()
    }

    /// Usage of the writable layer of `c` (cached, see the module docs).
    async fn writable_layer(&self, c: &ContainerRecord) -> Option<cri::FilesystemUsage> {
        let upper = upper_dir(c);
        let usage = match self.stats.layers.usage(&upper).await {
            Ok(usage) => usage,
            Err(e) => {
                tracing::debug!(container_id = %c.id, error = %e, "no writable layer usage");
                return None;
            }
        };
        Some(cri::FilesystemUsage {
            timestamp: usage.timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.container_fs_mountpoint().display().to_string(),
            }),
            used_bytes: value(usage.bytes),
            inodes_used: value(usage.inodes),
        })
    }

    /// The full stats of `c`, whose pod is `pod`.
    pub(super) async fn stats_of(
        &self,
        c: &ContainerRecord,
        pod: &PodRecord,
    ) -> PodResult<cri::ContainerStats> {
        let handler = self.handler(&pod.id, &pod.handler)?;
        let s = handler
            .container_stats(Self::container_ref(c))
            .await
            .map_err(|e| PodError::handler(format!("stats of container {}", c.id), e))?;
        let nano_cores = self.stats.cpu.rate(
            &format!("c/{}", c.id),
            s.timestamp,
            s.cpu_usage_core_nanoseconds,
        );
        let cgroup = pod.container_cgroups_path(&c.id);
        let layout = self.cgroups.clone();
        let host = super::blocking("reading a container cgroup", move || {
            Ok(crius_shim_api::cgroupfs::systemd::resolve(&cgroup)
                .ok()
                .and_then(|path| host_memory(&layout, &path)))
        })
        .await?;
        let mut memory = cri::MemoryUsage {
            timestamp: s.timestamp,
            working_set_bytes: value(s.memory_working_set_bytes),
            usage_bytes: value(s.memory_usage_bytes),
            rss_bytes: value(s.memory_rss_bytes),
            ..Default::default()
        };
        if let Some(h) = &host {
            memory.page_faults = value(h.page_faults);
            memory.major_page_faults = value(h.major_page_faults);
            memory.available_bytes = h.limit.map(|l| cri::UInt64Value {
                value: l.saturating_sub(s.memory_working_set_bytes),
            });
        }
        Ok(cri::ContainerStats {
            attributes: Some(attributes(c)),
            cpu: Some(cri::CpuUsage {
                timestamp: s.timestamp,
                usage_core_nano_seconds: value(s.cpu_usage_core_nanoseconds),
                usage_nano_cores: nano_cores.map(|v| cri::UInt64Value { value: v }),
                ..Default::default()
            }),
            memory: Some(memory),
            writable_layer: self.writable_layer(c).await,
            swap: host.map(|h| cri::SwapUsage {
                timestamp: s.timestamp,
                swap_available_bytes: value(h.swap_available),
                swap_usage_bytes: value(h.swap_usage),
            }),
            io: None,
        })
    }

    fn pod_of(&self, c: &ContainerRecord) -> PodResult<PodRecord> {
        self.store
            .pod(&c.pod_id)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {} not found", c.pod_id)))
    }

    /// ContainerStats.
    pub async fn container_stats(&self, id: &str) -> PodResult<cri::ContainerStats> {
        let c = self.container_record(id)?;
        let pod = self.pod_of(&c)?;
        self.stats_of(&c, &pod).await
    }

    /// Forgets the samples and cached walks of containers and pods that no
    /// longer exist.
    fn prune_stats(&self) {
        let containers = self.store.containers();
        let mut keys: HashSet<String> = containers.iter().map(|c| format!("c/{}", c.id)).collect();
        keys.extend(self.store.pods().iter().map(|p| format!("p/{}", p.id)));
        self.stats.cpu.retain(&keys);
        let uppers: HashSet<PathBuf> = containers.iter().map(upper_dir).collect();
        self.stats.layers.retain(&uppers);
    }

    /// ListContainerStats: containers the handler cannot measure (not
    /// running, gone) are left out rather than failing the whole list.
    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        self.prune_stats();
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
            let stats = match self.pod_of(&c) {
                Ok(pod) => self.stats_of(&c, &pod).await,
                Err(e) => Err(e),
            };
            match stats {
                Ok(stats) => out.push(stats),
                Err(e) => {
                    tracing::debug!(container_id = %c.id, error = %e, "no stats for container")
                }
            }
        }
        out
    }

    /// The stats of pod `pod`: the handler's pod-level figures (a handler
    /// that has none, `Unimplemented`, gives a pod with its containers'
    /// stats only) and its measurable containers.
    async fn pod_stats_of(&self, pod: &PodRecord) -> PodResult<cri::PodSandboxStats> {
        let handler = self.handler(&pod.id, &pod.handler)?;
        let s = match handler
            .sandbox_stats(types::SandboxRef {
                sandbox_id: pod.id.clone(),
            })
            .await
        {
            Ok(s) => s,
            Err(e) if e.kind == ErrorKind::Unimplemented => {
                tracing::debug!(pod_id = %pod.id, handler = %pod.handler, "handler has no pod-level stats");
                types::SandboxStatsResponse::default()
            }
            Err(e) => return Err(PodError::handler(format!("stats of pod {}", pod.id), e)),
        };
        let mut containers = Vec::new();
        for c in self.store.containers() {
            if c.pod_id != pod.id || !c.handler_created {
                continue;
            }
            match self.stats_of(&c, pod).await {
                Ok(stats) => containers.push(stats),
                Err(e) => {
                    tracing::debug!(pod_id = %pod.id, container_id = %c.id, error = %e, "no stats for container")
                }
            }
        }
        let mut network = s.network;
        if network.is_none()
            && let Some(netns) = pod.netns_path.clone()
        {
            match netns_network(netns).await {
                Ok(n) => network = Some(n),
                Err(e) => {
                    tracing::debug!(pod_id = %pod.id, error = %e, "no network counters for pod")
                }
            }
        }
        let (mut cpu, mut memory) = (s.cpu, s.memory);
        if cpu.is_none() && memory.is_none() {
            (cpu, memory) = sum_of_containers(&containers);
        }
        if let Some(cpu) = cpu.as_mut()
            && let Some(total) = &cpu.usage_core_nano_seconds
            && cpu.usage_nano_cores.is_none()
        {
            cpu.usage_nano_cores = self
                .stats
                .cpu
                .rate(&format!("p/{}", pod.id), cpu.timestamp, total.value)
                .map(|v| cri::UInt64Value { value: v });
        }
        Ok(cri::PodSandboxStats {
            attributes: Some(pod_attributes(pod)),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu,
                memory,
                network,
                process: s.process,
                containers,
                io: None,
            }),
            windows: None,
        })
    }

    /// PodSandboxStats.
    pub async fn pod_sandbox_stats(&self, id: &str) -> PodResult<cri::PodSandboxStats> {
        if id.is_empty() {
            return Err(PodError::InvalidArgument(
                "PodSandboxStats: pod_sandbox_id is required".into(),
            ));
        }
        let pod = self.known_pod(id)?;
        if pod.state != PodState::Ready {
            return Err(PodError::FailedPrecondition(format!(
                "PodSandboxStats: pod sandbox {} is not ready",
                pod.id
            )));
        }
        self.pod_stats_of(&pod).await
    }

    /// ListPodSandboxStats: ready pods matching the filter (id prefix,
    /// labels); pods the handler cannot measure are left out.
    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        self.prune_stats();
        let filter = filter.unwrap_or_default();
        let mut out = Vec::new();
        for pod in self.store.pods() {
            if pod.state != PodState::Ready
                || (!filter.id.is_empty() && !pod.id.starts_with(&filter.id))
                || !labels_match(&pod.config.labels, &filter.label_selector)
            {
                continue;
            }
            match self.pod_stats_of(&pod).await {
                Ok(stats) => out.push(stats),
                Err(e) => tracing::debug!(pod_id = %pod.id, error = %e, "no stats for pod"),
            }
        }
        out
    }

    /// Usage of every writable layer (for ImageFsInfo's container
    /// filesystem): the cached walks of the existing containers.
    pub async fn writable_layers_usage(&self) -> fsusage::DiskUsage {
        let mut total = fsusage::DiskUsage {
            timestamp: super::store::now_nanos(),
            ..Default::default()
        };
        for c in self.store.containers() {
            if let Ok(u) = self.stats.layers.usage(&upper_dir(&c)).await {
                total.bytes += u.bytes;
                total.inodes += u.inodes;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_from_successive_samples() {
        let rates = CpuRates::default();
        assert_eq!(rates.rate("c/1", 0, 0), None);
        // Too close: no rate yet.
        assert_eq!(rates.rate("c/1", 10_000_000, 5_000_000), None);
        // Half a core over 2 s.
        assert_eq!(
            rates.rate("c/1", 2_000_000_000, 1_000_000_000),
            Some(500_000_000)
        );
        // Back to back: the previous rate.
        assert_eq!(
            rates.rate("c/1", 2_001_000_000, 1_000_500_000),
            Some(500_000_000)
        );
        // A counter reset starts over.
        assert_eq!(rates.rate("c/1", 4_000_000_000, 10), None);
        rates.retain(&HashSet::new());
        assert_eq!(rates.rate("c/1", 5_000_000_000, 20), None);
    }

    #[test]
    fn net_dev_without_loopback_and_sums_of_containers() {
        let text = "Inter-|   Receive |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  tap0:    10      1    0    0    0     0          0         0     20      1    0    0    0     0       0          0
  eth0:    5000      40    1    0    0     0          0         0     7000      50    2    0    0     0       0          0
";
        let n = parse_net_dev(text, 9);
        assert_eq!(n.interfaces.len(), 2);
        let eth0 = n.default_interface.unwrap();
        assert_eq!(
            (
                eth0.name.as_str(),
                eth0.rx_bytes.unwrap().value,
                eth0.rx_errors.unwrap().value
            ),
            ("eth0", 5000, 1)
        );
        assert_eq!(
            (eth0.tx_bytes.unwrap().value, eth0.tx_errors.unwrap().value),
            (7000, 2)
        );
        let c = |cpu: u64, ws: u64| cri::ContainerStats {
            cpu: Some(cri::CpuUsage {
                timestamp: 3,
                usage_core_nano_seconds: value(cpu),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                working_set_bytes: value(ws),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (cpu, mem) = sum_of_containers(&[c(10, 100), c(5, 50)]);
        assert_eq!(cpu.unwrap().usage_core_nano_seconds.unwrap().value, 15);
        assert_eq!(mem.unwrap().working_set_bytes.unwrap().value, 150);
        assert_eq!(sum_of_containers(&[]), (None, None));
    }

    #[test]
    fn host_memory_of_a_v1_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("memory");
        std::fs::create_dir_all(mem.join("pod/c")).unwrap();
        std::fs::write(
            mem.join("pod/c/memory.stat"),
            "total_pgfault 7\ntotal_pgmajfault 2\ntotal_swap 4096\n\
             hierarchical_memory_limit 1048576\nhierarchical_memsw_limit 9223372036854771712\n",
        )
        .unwrap();
        let info = format!(
            "30 25 0:26 / {} rw - cgroup cgroup rw,memory\n",
            mem.display()
        );
        let layout = CgroupLayout::from_mountinfo(&info).unwrap();
        let m = host_memory(&layout, "/pod/c").unwrap();
        assert_eq!(m.page_faults, 7);
        assert_eq!(m.major_page_faults, 2);
        assert_eq!(m.swap_usage, 4096);
        assert_eq!(m.limit, Some(1_048_576));
        assert_eq!(host_memory(&layout, "/pod/missing"), None);
    }
}
