//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor-style
//! series the kubelet can take from the runtime instead of cAdvisor
//! (`PodAndContainerStatsFromCRI`), built from the same samples as the
//! stats RPCs.
//!
//! Every series carries the labels [`BASE_LABELS`] (`id`, `name`, `image`,
//! `container`, `pod`, `namespace`) plus its own (`cpu`, `interface`,
//! `device`). Pod-level series (the pod cgroup, the pod's network) have an
//! empty `container` and `image`, as cAdvisor reports a pod cgroup.
//! Values are unsigned integers on the wire: CPU time is whole seconds.

use crius_proto::cri;

use super::PodManager;
use super::store::{ContainerRecord, PodRecord, now_nanos};

/// Labels of every series, in this order.
pub const BASE_LABELS: [&str; 6] = ["id", "name", "image", "container", "pod", "namespace"];

struct Descriptor {
    name: &'static str,
    help: &'static str,
    extra: Option<&'static str>,
    kind: cri::MetricType,
}

const fn d(
    name: &'static str,
    help: &'static str,
    extra: Option<&'static str>,
    kind: cri::MetricType,
) -> Descriptor {
    Descriptor {
        name,
        help,
        extra,
        kind,
    }
}

use cri::MetricType::{Counter, Gauge};

const DESCRIPTORS: &[Descriptor] = &[
    d(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Some("cpu"),
        Counter,
    ),
    d(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        None,
        Gauge,
    ),
    d(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        None,
        Gauge,
    ),
    d("container_memory_rss", "Size of RSS in bytes.", None, Gauge),
    d(
        "container_memory_swap",
        "Container swap usage in bytes.",
        None,
        Gauge,
    ),
    d(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        Some("failure_type"),
        Counter,
    ),
    d(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Some("device"),
        Gauge,
    ),
    d(
        "container_fs_inodes_used",
        "Number of inodes that are consumed by the container on this filesystem.",
        Some("device"),
        Gauge,
    ),
    d(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        Some("interface"),
        Counter,
    ),
    d(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        Some("interface"),
        Counter,
    ),
    d(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        Some("interface"),
        Counter,
    ),
    d(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        Some("interface"),
        Counter,
    ),
    d(
        "container_processes",
        "Number of processes running inside the container.",
        None,
        Gauge,
    ),
    d(
        "container_last_seen",
        "Last time a container was seen by the exporter (Unix seconds).",
        None,
        Gauge,
    ),
];

/// ListMetricDescriptors.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_string(),
            help: d.help.to_string(),
            label_keys: BASE_LABELS
                .iter()
                .copied()
                .chain(d.extra)
                .map(str::to_string)
                .collect(),
        })
        .collect()
}

/// Collects the series of one pod or container.
struct Series {
    base: Vec<String>,
    timestamp: i64,
    out: Vec<cri::Metric>,
}

impl Series {
    fn push(&mut self, name: &str, extra: Option<&str>, value: Option<u64>) {
        let Some(value) = value else {
            return;
        };
        let Some(desc) = DESCRIPTORS.iter().find(|d| d.name == name) else {
            return;
        };
        let mut label_values = self.base.clone();
        if desc.extra.is_some() {
            label_values.push(extra.unwrap_or_default().to_string());
        }
        self.out.push(cri::Metric {
            name: name.to_string(),
            timestamp: self.timestamp,
            metric_type: desc.kind as i32,
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }

    fn cpu_memory(&mut self, cpu: Option<&cri::CpuUsage>, memory: Option<&cri::MemoryUsage>) {
        let v = |x: &Option<cri::UInt64Value>| x.as_ref().map(|v| v.value);
        if let Some(cpu) = cpu {
            self.push(
                "container_cpu_usage_seconds_total",
                Some("total"),
                v(&cpu.usage_core_nano_seconds).map(|ns| ns / 1_000_000_000),
            );
        }
        if let Some(m) = memory {
            self.push("container_memory_usage_bytes", None, v(&m.usage_bytes));
            self.push(
                "container_memory_working_set_bytes",
                None,
                v(&m.working_set_bytes),
            );
            self.push("container_memory_rss", None, v(&m.rss_bytes));
            self.push(
                "container_memory_failures_total",
                Some("pgfault"),
                v(&m.page_faults),
            );
            self.push(
                "container_memory_failures_total",
                Some("pgmajfault"),
                v(&m.major_page_faults),
            );
        }
    }
}

impl Series {
    /// The series of one container of `pod`, or of the pod itself (`id`
    /// and `name` the pod's, no image or container name): the values of
    /// `BASE_LABELS`, the pod's name and namespace last.
    fn of(pod: &PodRecord, [id, name, image, container]: [String; 4], timestamp: i64) -> Self {
        let meta = pod.metadata();
        Self {
            base: vec![id, name, image, container, meta.name, meta.namespace],
            timestamp,
            out: Vec::new(),
        }
    }
}

fn container_series(
    c: &ContainerRecord,
    pod: &PodRecord,
    stats: &cri::ContainerStats,
    timestamp: i64,
) -> cri::ContainerMetrics {
    let mut s = Series::of(
        pod,
        [
            c.id.clone(),
            c.name.clone(),
            c.image_name.clone(),
            c.metadata().name,
        ],
        timestamp,
    );
    s.cpu_memory(stats.cpu.as_ref(), stats.memory.as_ref());
    if let Some(swap) = &stats.swap {
        s.push(
            "container_memory_swap",
            None,
            swap.swap_usage_bytes.as_ref().map(|v| v.value),
        );
    }
    if let Some(fs) = &stats.writable_layer {
        let device = fs
            .fs_id
            .as_ref()
            .map(|f| f.mountpoint.clone())
            .unwrap_or_default();
        s.push(
            "container_fs_usage_bytes",
            Some(&device),
            fs.used_bytes.as_ref().map(|v| v.value),
        );
        s.push(
            "container_fs_inodes_used",
            Some(&device),
            fs.inodes_used.as_ref().map(|v| v.value),
        );
    }
    s.push(
        "container_last_seen",
        None,
        Some((timestamp / 1_000_000_000) as u64),
    );
    cri::ContainerMetrics {
        container_id: c.id.clone(),
        metrics: s.out,
    }
}

impl PodManager {
    /// ListPodSandboxMetrics: the series of every ready pod and its
    /// measurable containers.
    pub async fn list_pod_sandbox_metrics(&self) -> Vec<cri::PodSandboxMetrics> {
        let timestamp = now_nanos();
        let mut out = Vec::new();
        for stats in self.list_pod_sandbox_stats(None).await {
            let Some(id) = stats.attributes.as_ref().map(|a| a.id.clone()) else {
                continue;
            };
            let Some(pod) = self.store.pod(&id) else {
                continue;
            };
            let linux = stats.linux.unwrap_or_default();
            let mut s = Series::of(
                &pod,
                [
                    pod.id.clone(),
                    pod.name.clone(),
                    String::new(),
                    String::new(),
                ],
                timestamp,
            );
            s.cpu_memory(linux.cpu.as_ref(), linux.memory.as_ref());
            if let Some(net) = &linux.network {
                for i in &net.interfaces {
                    let v = |x: &Option<cri::UInt64Value>| x.as_ref().map(|v| v.value);
                    let name = Some(i.name.as_str());
                    for (metric, value) in [
                        ("container_network_receive_bytes_total", &i.rx_bytes),
                        ("container_network_receive_errors_total", &i.rx_errors),
                        ("container_network_transmit_bytes_total", &i.tx_bytes),
                        ("container_network_transmit_errors_total", &i.tx_errors),
                    ] {
                        s.push(metric, name, v(value));
                    }
                }
            }
            if let Some(p) = &linux.process {
                s.push(
                    "container_processes",
                    None,
                    p.process_count.as_ref().map(|v| v.value),
                );
            }
            let container_metrics = linux
                .containers
                .iter()
                .filter_map(|cs| {
                    let id = cs.attributes.as_ref()?.id.clone();
                    let c = self.store.container(&id)?;
                    Some(container_series(&c, &pod, cs, timestamp))
                })
                .collect();
            out.push(cri::PodSandboxMetrics {
                pod_sandbox_id: pod.id.clone(),
                metrics: s.out,
                container_metrics,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_have_the_base_labels_and_their_own() {
        let all = descriptors();
        let cpu = all
            .iter()
            .find(|d| d.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(
            cpu.label_keys,
            [
                "id",
                "name",
                "image",
                "container",
                "pod",
                "namespace",
                "cpu"
            ]
        );
        let ws = all
            .iter()
            .find(|d| d.name == "container_memory_working_set_bytes")
            .unwrap();
        assert_eq!(ws.label_keys.len(), BASE_LABELS.len());
        // Names are unique.
        let mut names: Vec<_> = all.iter().map(|d| &d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn series_carry_one_label_value_per_key() {
        let mut s = Series {
            base: BASE_LABELS.iter().map(|l| format!("v-{l}")).collect(),
            timestamp: 5,
            out: Vec::new(),
        };
        s.push(
            "container_network_receive_bytes_total",
            Some("eth0"),
            Some(10),
        );
        s.push("container_memory_rss", None, Some(3));
        s.push("container_memory_rss", None, None);
        assert_eq!(s.out.len(), 2);
        assert_eq!(s.out[0].label_values.len(), 7);
        assert_eq!(s.out[0].label_values[6], "eth0");
        assert_eq!(s.out[0].metric_type, Counter as i32);
        assert_eq!(s.out[1].label_values.len(), 6);
        assert_eq!(s.out[1].metric_type, Gauge as i32);
    }
}
