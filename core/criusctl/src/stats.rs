//! `criusctl stats` and `statsp`: ListContainerStats / ListPodSandboxStats
//! with crictl's columns. CPU % is `usage_nano_cores` (the runtime's rate
//! from successive samples) as a share of one core.

use crius_proto::cri;

use crate::output::{Table, id, size};

fn value(v: &Option<cri::UInt64Value>) -> u64 {
    v.as_ref().map_or(0, |v| v.value)
}

fn cpu_percent(cpu: &Option<cri::CpuUsage>) -> String {
    let nano_cores = cpu.as_ref().map_or(0, |c| value(&c.usage_nano_cores));
    format!("{:.2}", nano_cores as f64 / 1e7)
}

fn memory(memory: &Option<cri::MemoryUsage>) -> String {
    size(memory.as_ref().map_or(0, |m| value(&m.working_set_bytes)))
}

/// CONTAINER NAME CPU % MEM DISK INODES SWAP, one row a container.
pub fn containers_table(stats: &[cri::ContainerStats], no_trunc: bool) -> Table {
    let mut table = Table::new(&[
        "CONTAINER",
        "NAME",
        "CPU %",
        "MEM",
        "DISK",
        "INODES",
        "SWAP",
    ]);
    for s in stats {
        let attributes = s.attributes.clone().unwrap_or_default();
        let layer = s.writable_layer.clone().unwrap_or_default();
        let swap = s.swap.as_ref().map_or(0, |s| value(&s.swap_usage_bytes));
        table.row(vec![
            id(&attributes.id, no_trunc),
            attributes.metadata.unwrap_or_default().name,
            cpu_percent(&s.cpu),
            memory(&s.memory),
            size(value(&layer.used_bytes)),
            value(&layer.inodes_used).to_string(),
            size(swap),
        ]);
    }
    table
}

/// POD POD ID CPU % MEM, one row a pod.
pub fn pods_table(stats: &[cri::PodSandboxStats], no_trunc: bool) -> Table {
    let mut table = Table::new(&["POD", "POD ID", "CPU %", "MEM"]);
    for s in stats {
        let attributes = s.attributes.clone().unwrap_or_default();
        let linux = s.linux.clone().unwrap_or_default();
        table.row(vec![
            attributes.metadata.unwrap_or_default().name,
            id(&attributes.id, no_trunc),
            cpu_percent(&linux.cpu),
            memory(&linux.memory),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_rows_carry_cpu_memory_and_the_writable_layer() {
        let stats = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: "0123456789abcdef".into(),
                metadata: Some(cri::ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            cpu: Some(cri::CpuUsage {
                usage_nano_cores: Some(cri::UInt64Value { value: 250_000_000 }),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                working_set_bytes: Some(cri::UInt64Value { value: 2_000_000 }),
                ..Default::default()
            }),
            writable_layer: Some(cri::FilesystemUsage {
                used_bytes: Some(cri::UInt64Value { value: 10_000_000 }),
                inodes_used: Some(cri::UInt64Value { value: 7 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            containers_table(&[stats], false).render(),
            "CONTAINER       NAME   CPU %   MEM   DISK   INODES   SWAP\n\
             0123456789abc   web    25.00   2MB   10MB   7        0B\n"
        );
    }
}
