//! Reading a container's cgroup (cgroupfs layout, v1, hybrid or v2) for
//! statistics and as a second source of OOM kills.
//!
//! The cgroup is the spec's `linux.cgroupsPath` under each hierarchy's mount
//! point. The runtime keeps it until `delete`, so it is readable after the
//! container exited.

use std::path::{Path, PathBuf};

/// Where the cgroup hierarchies of this host are mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// v1 hierarchies: controller names and mount point.
    pub v1: Vec<(Vec<String>, PathBuf)>,
    /// The cgroup2 mount, if any (on hybrid hosts it usually has no
    /// controllers).
    pub v2: Option<PathBuf>,
}

impl CgroupMounts {
    /// Parses `/proc/self/mountinfo`.
    pub fn from_mountinfo(text: &str) -> CgroupMounts {
        let mut mounts = CgroupMounts::default();
        for entry in crius_shim_api::mountinfo::parse(text) {
            let (fstype, super_opts, mount_point) =
                (&*entry.fs_type, &*entry.super_options, entry.mount_point);
            match fstype {
                "cgroup2" => mounts.v2 = Some(mount_point),
                "cgroup" => {
                    let controllers = super_opts
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro")
                                && !o.starts_with("name=")
                                && !o.contains('=')
                        })
                        .map(str::to_string)
                        .collect();
                    mounts.v1.push((controllers, mount_point));
                }
                _ => {}
            }
        }
        mounts
    }

    /// The host's mounts.
    pub fn current() -> std::io::Result<CgroupMounts> {
        Ok(Self::from_mountinfo(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// Directory of `cgroup` for `controller` (a v1 hierarchy carrying it,
    /// else the v2 mount when it offers the controller).
    pub fn dir(&self, controller: &str, cgroup: &str) -> Option<PathBuf> {
        let rel = cgroup.trim_start_matches('/');
        if let Some((_, mount)) = self
            .v1
            .iter()
            .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
        {
            return Some(mount.join(rel));
        }
        let v2 = self.v2.as_ref()?;
        let offered = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
        // cpu accounting (cpu.stat usage_usec) exists in every v2 cgroup.
        let wanted = if controller == "cpuacct" {
            "cpu"
        } else {
            controller
        };
        if controller == "cpuacct" || offered.split_whitespace().any(|c| c == wanted) {
            Some(v2.join(rel))
        } else {
            None
        }
    }

    fn is_v2_dir(&self, dir: &Path) -> bool {
        self.v2.as_ref().is_some_and(|v2| dir.starts_with(v2))
    }
}

/// Usage figures of one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`,
/// `memory.events`, `memory.oom_control`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads usage of `cgroup`; `None` when the memory cgroup does not exist.
pub fn stats(mounts: &CgroupMounts, cgroup: &str) -> Option<CgroupStats> {
    let mem = mounts.dir("memory", cgroup)?;
    if !mem.exists() {
        return None;
    }
    let mut s = CgroupStats::default();
    if mounts.is_v2_dir(&mem) {
        s.memory_usage_bytes = read_u64(&mem.join("memory.current")).unwrap_or(0);
        let stat = mem.join("memory.stat");
        let inactive = keyed(&stat, "inactive_file").unwrap_or(0);
        s.memory_working_set_bytes = s.memory_usage_bytes.saturating_sub(inactive);
        s.memory_rss_bytes = keyed(&stat, "anon").unwrap_or(0);
    } else {
        s.memory_usage_bytes = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
        let stat = mem.join("memory.stat");
        let inactive = keyed(&stat, "total_inactive_file").unwrap_or(0);
        s.memory_working_set_bytes = s.memory_usage_bytes.saturating_sub(inactive);
        s.memory_rss_bytes = keyed(&stat, "total_rss").unwrap_or(0);
    }
    if let Some(cpu) = mounts.dir("cpuacct", cgroup) {
        s.cpu_usage_ns = if mounts.is_v2_dir(&cpu) {
            keyed(&cpu.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000
        } else {
            read_u64(&cpu.join("cpuacct.usage")).unwrap_or(0)
        };
    }
    Some(s)
}

/// Whether the kernel OOM-killed a process in `cgroup` (the `oom_kill`
/// counter of `memory.oom_control` on v1, `memory.events` on v2).
pub fn oom_killed(mounts: &CgroupMounts, cgroup: &str) -> bool {
    let Some(mem) = mounts.dir("memory", cgroup) else {
        return false;
    };
    let file = if mounts.is_v2_dir(&mem) {
        mem.join("memory.events")
    } else {
        mem.join("memory.oom_control")
    };
    keyed(&file, "oom_kill").is_some_and(|n| n > 0)
}

/// Limits written to a pod cgroup by `UpdateSandboxResources`. `None`
/// leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// v1 `cpu.shares`; `cpu.weight` on v2.
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per period; `Some(None)` = unlimited.
    pub cpu_quota: Option<Option<u64>>,
    /// CFS period in µs.
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Bytes; `Some(None)` = unlimited.
    pub memory_limit: Option<Option<u64>>,
}

/// v1 `cpu.shares` to v2 `cpu.weight` (runc's and crun's linear mapping).
fn weight_of(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

fn controller_dir(
    mounts: &CgroupMounts,
    controller: &str,
    cgroup: &str,
) -> std::io::Result<PathBuf> {
    match mounts.dir(controller, cgroup) {
        Some(dir) if dir.is_dir() => Ok(dir),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("cgroup {cgroup} has no {controller} controller directory"),
        )),
    }
}

/// Writes `limits` to `cgroup` (v1 per-controller files, or v2 files).
/// Stops at the first write the kernel refuses (for example a memory limit
/// below the current usage) and reports it.
pub fn set_limits(mounts: &CgroupMounts, cgroup: &str, limits: &PodLimits) -> std::io::Result<()> {
    if limits.cpu_shares.is_some() || limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
        let dir = controller_dir(mounts, "cpu", cgroup)?;
        if mounts.is_v2_dir(&dir) {
            if let Some(shares) = limits.cpu_shares {
                write_file(&dir.join("cpu.weight"), &weight_of(shares).to_string())?;
            }
            if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
                let current = std::fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
                let mut parts = current.split_whitespace();
                let cur_quota = parts.next().unwrap_or("max").to_string();
                let cur_period = parts.next().unwrap_or("100000").to_string();
                let quota = match limits.cpu_quota {
                    Some(Some(q)) => q.to_string(),
                    Some(None) => "max".to_string(),
                    None => cur_quota,
                };
                let period = limits
                    .cpu_period
                    .map(|p| p.to_string())
                    .unwrap_or(cur_period);
                write_file(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
        } else {
            if let Some(shares) = limits.cpu_shares {
                write_file(&dir.join("cpu.shares"), &shares.to_string())?;
            }
            // The period first: the kernel checks a quota against it.
            if let Some(period) = limits.cpu_period {
                write_file(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            }
            match limits.cpu_quota {
                Some(Some(q)) => write_file(&dir.join("cpu.cfs_quota_us"), &q.to_string())?,
                Some(None) => write_file(&dir.join("cpu.cfs_quota_us"), "-1")?,
                None => {}
            }
        }
    }
    if limits.cpuset_cpus.is_some() || limits.cpuset_mems.is_some() {
        let dir = controller_dir(mounts, "cpuset", cgroup)?;
        if let Some(cpus) = &limits.cpuset_cpus {
            write_file(&dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = &limits.cpuset_mems {
            write_file(&dir.join("cpuset.mems"), mems)?;
        }
    }
    if let Some(limit) = limits.memory_limit {
        let dir = controller_dir(mounts, "memory", cgroup)?;
        if mounts.is_v2_dir(&dir) {
            let value = limit.map(|l| l.to_string()).unwrap_or_else(|| "max".into());
            write_file(&dir.join("memory.max"), &value)?;
        } else {
            let value = limit.map(|l| l.to_string()).unwrap_or_else(|| "-1".into());
            write_file(&dir.join("memory.limit_in_bytes"), &value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn parses_hybrid_mounts() {
        let m = CgroupMounts::from_mountinfo(HYBRID);
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            m.dir("memory", "/kube/pod1/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/kube/pod1/c1"))
        );
        assert_eq!(
            m.dir("cpuacct", "/kube/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kube/c1"))
        );
        // name=systemd is not a controller.
        assert!(
            m.v1.iter()
                .all(|(c, _)| !c.iter().any(|c| c.contains("systemd")))
        );
    }

    #[test]
    fn reads_v1_files() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("memory/c1");
        let cpu = dir.path().join("cpuacct/c1");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(
            mem.join("memory.stat"),
            "cache 5\ntotal_inactive_file 300\ntotal_rss 600\n",
        )
        .unwrap();
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "123456\n").unwrap();
        let m = CgroupMounts {
            v1: vec![
                (vec!["memory".into()], dir.path().join("memory")),
                (vec!["cpuacct".into()], dir.path().join("cpuacct")),
            ],
            v2: None,
        };
        assert_eq!(
            stats(&m, "/c1").unwrap(),
            CgroupStats {
                cpu_usage_ns: 123456,
                memory_usage_bytes: 1000,
                memory_working_set_bytes: 700,
                memory_rss_bytes: 600
            }
        );
        assert!(oom_killed(&m, "/c1"));
        assert!(!oom_killed(&m, "/missing"));
        assert_eq!(stats(&m, "/missing"), None);
    }

    #[test]
    fn writes_v1_limits() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("cpu/pod");
        let mem = dir.path().join("memory/pod");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::create_dir_all(&mem).unwrap();
        let m = CgroupMounts {
            v1: vec![
                (vec!["cpu".into()], dir.path().join("cpu")),
                (vec!["memory".into()], dir.path().join("memory")),
            ],
            v2: None,
        };
        let limits = PodLimits {
            cpu_shares: Some(512),
            cpu_quota: Some(Some(50_000)),
            cpu_period: Some(100_000),
            memory_limit: Some(Some(64 << 20)),
            ..Default::default()
        };
        set_limits(&m, "/pod", &limits).unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(cpu.join("cpu.shares")), "512");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        let unlimited = PodLimits {
            cpu_quota: Some(None),
            memory_limit: Some(None),
            ..Default::default()
        };
        set_limits(&m, "/pod", &unlimited).unwrap();
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1");
        assert_eq!(read(mem.join("memory.limit_in_bytes")), "-1");
        let err = set_limits(&m, "/missing", &limits).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
