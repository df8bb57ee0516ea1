//! Guest cgroup v2: container stats and OOM-kill detection.

use std::collections::HashMap;
use std::path::PathBuf;

use crius_agent_proto::agent::{
    CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats, NetworkStats, PidsStats,
    ThrottlingData,
};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup of container `cid` (matches the cgroupsPath set in spec.rs).
pub fn container_cgroup(cid: &str) -> PathBuf {
    PathBuf::from(format!("{CGROUP_ROOT}/crius/{cid}"))
}

fn flat_keyed(path: PathBuf) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn single(path: PathBuf) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads cpu, memory and pids statistics of a container's cgroup.
pub fn stats(cid: &str) -> CgroupStats {
    let cg = container_cgroup(cid);
    let cpu = flat_keyed(cg.join("cpu.stat"));
    let mem = flat_keyed(cg.join("memory.stat"));
    let events = flat_keyed(cg.join("memory.events"));
    let g = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    // cgroup v2 reports microseconds; the API carries nanoseconds.
    let cpu_stats = CpuStats {
        cpu_usage: Some(CpuUsage {
            total_usage: g(&cpu, "usage_usec") * 1000,
            usage_in_usermode: g(&cpu, "user_usec") * 1000,
            usage_in_kernelmode: g(&cpu, "system_usec") * 1000,
            ..Default::default()
        })
        .into(),
        throttling_data: Some(ThrottlingData {
            periods: g(&cpu, "nr_periods"),
            throttled_periods: g(&cpu, "nr_throttled"),
            throttled_time: g(&cpu, "throttled_usec") * 1000,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let limit = std::fs::read_to_string(cg.join("memory.max"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX);
    let memory_stats = MemoryStats {
        cache: g(&mem, "file"),
        usage: Some(MemoryData {
            usage: single(cg.join("memory.current")),
            max_usage: single(cg.join("memory.peak")),
            failcnt: g(&events, "max"),
            limit,
            ..Default::default()
        })
        .into(),
        swap_usage: Some(MemoryData {
            usage: single(cg.join("memory.swap.current")),
            ..Default::default()
        })
        .into(),
        use_hierarchy: true,
        stats: mem,
        ..Default::default()
    };
    let pids_stats = PidsStats {
        current: single(cg.join("pids.current")),
        limit: std::fs::read_to_string(cg.join("pids.max"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        ..Default::default()
    };
    CgroupStats {
        cpu_stats: Some(cpu_stats).into(),
        memory_stats: Some(memory_stats).into(),
        pids_stats: Some(pids_stats).into(),
        ..Default::default()
    }
}

/// The number of OOM kills recorded for a container's cgroup.
pub fn oom_kills(cid: &str) -> u64 {
    flat_keyed(container_cgroup(cid).join("memory.events"))
        .get("oom_kill")
        .copied()
        .unwrap_or(0)
}

/// Per-interface counters from /proc/net/dev (the VM's network is the pod's).
pub fn network_stats() -> Vec<NetworkStats> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() >= 12).then(|| NetworkStats {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
                ..Default::default()
            })
        })
        .collect()
}
