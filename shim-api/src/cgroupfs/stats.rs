//! Reading usage and OOM kills of a cgroup (v1 per-controller files, or
//! the v2 unified files), for container and pod stats.
//!
//! The figures are what the CRI reports: a file that is missing or
//! unreadable counts as zero, since a cgroup that exists but lacks one
//! accounting file (a controller not enabled) should still report the rest.
//! Only a missing memory cgroup means "no such cgroup".

use std::fs;
use std::path::{Path, PathBuf};

use super::{CgroupMode, PodCgroup};

/// Usage figures of one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    /// Usage minus inactive file cache, as the kubelet defines it.
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`,
/// `memory.events`, `memory.oom_control`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl PodCgroup {
    /// The directory of this cgroup holding `controller`'s files: on v1 the
    /// hierarchy carrying it, on v2 the single tree (cpu accounting exists
    /// in every v2 cgroup, the rest where the controller is enabled).
    fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        match self.layout.mode {
            CgroupMode::V1 => self
                .layout
                .hierarchies
                .iter()
                .find(|h| !h.cgroup2 && h.has(controller))
                .map(|h| self.dir_in(h)),
            CgroupMode::V2 => self.layout.hierarchies.first().map(|h| self.dir_in(h)),
        }
    }

    /// Reads CPU and memory usage; `None` when the memory cgroup does not
    /// exist (the cgroup was never created or is already removed).
    pub fn stats(&self) -> Option<CgroupStats> {
        let v2 = self.layout.mode == CgroupMode::V2;
        let mem = self.controller_dir("memory")?;
        if !mem.is_dir() {
            return None;
        }
        let stat = mem.join("memory.stat");
        // v1 memory.stat has per-cgroup and hierarchical (`total_`) keys; the
        // hierarchical ones match v2, whose figures always include children.
        let (usage_file, inactive_key, rss_key) = if v2 {
            ("memory.current", "inactive_file", "anon")
        } else {
            ("memory.usage_in_bytes", "total_inactive_file", "total_rss")
        };
        let memory_usage_bytes = read_u64(&mem.join(usage_file)).unwrap_or(0);
        let inactive = keyed(&stat, inactive_key).unwrap_or(0);
        let cpu_usage_ns = if v2 {
            // v2 counts microseconds; the CRI wants nanoseconds.
            keyed(&mem.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000
        } else {
            self.controller_dir("cpuacct")
                .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                .unwrap_or(0)
        };
        Some(CgroupStats {
            cpu_usage_ns,
            memory_usage_bytes,
            memory_working_set_bytes: memory_usage_bytes.saturating_sub(inactive),
            memory_rss_bytes: keyed(&stat, rss_key).unwrap_or(0),
        })
    }

    /// How many processes the kernel OOM-killed in this cgroup (the
    /// `oom_kill` counter of `memory.oom_control` on v1, `memory.events` on
    /// v2); zero when the cgroup or the counter (older kernels) is missing.
    pub fn oom_kill_count(&self) -> u64 {
        let file = match self.layout.mode {
            CgroupMode::V1 => "memory.oom_control",
            CgroupMode::V2 => "memory.events",
        };
        self.controller_dir("memory")
            .and_then(|d| keyed(&d.join(file), "oom_kill"))
            .unwrap_or(0)
    }

    /// `pids.current`: the number of tasks in the cgroup, if the pids
    /// controller is available to it.
    pub fn pids_current(&self) -> Option<u64> {
        read_u64(&self.controller_dir("pids")?.join("pids.current"))
    }
}
