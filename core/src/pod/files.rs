//! Per-pod files shared by every container of the pod (hostname,
//! resolv.conf, hosts, the /dev/shm tmpfs) and careful removal of pod
//! directories (never through a mount that is still there).

use std::fs;
use std::path::{Path, PathBuf};

use crius_proto::cri;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::error::{PodError, PodResult};

/// Size of a pod's /dev/shm tmpfs (Docker's and CRI-O's default).
pub const SHM_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// The host's resolver configuration, copied when the pod sets no DNS.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

fn write(path: &Path, text: &str) -> PodResult<()> {
    fs::write(path, text).map_err(|e| PodError::io(format!("writing {}", path.display()), e))
}

/// The pod's hostname: the config's, else the host's for host-network
/// pods, else the pod name cut to a DNS label.
pub fn pod_hostname(config: &cri::PodSandboxConfig, host_network: bool) -> String {
    if !config.hostname.is_empty() {
        return config.hostname.clone();
    }
    if host_network {
        return fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
    }
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    name.chars().take(63).collect()
}

/// Writes `<dir>/hostname`.
pub fn write_hostname(dir: &Path, hostname: &str) -> PodResult<PathBuf> {
    let path = dir.join("hostname");
    write(&path, &format!("{hostname}\n"))?;
    Ok(path)
}

/// Writes `<dir>/resolv.conf` from the pod's DNS config, or a copy of the
/// host's when the pod sets no servers, searches or options.
pub fn write_resolv_conf(dir: &Path, dns: Option<&cri::DnsConfig>) -> PodResult<PathBuf> {
    let path = dir.join("resolv.conf");
    let text = match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut out = String::new();
            for s in &d.servers {
                out.push_str(&format!("nameserver {s}\n"));
            }
            if !d.searches.is_empty() {
                out.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            if !d.options.is_empty() {
                out.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            out
        }
        _ => fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default(),
    };
    write(&path, &text)?;
    Ok(path)
}

/// Writes `<dir>/hosts`: localhost entries plus the pod's IPs under its
/// hostname.
pub fn write_hosts(dir: &Path, hostname: &str, pod_ips: &[String]) -> PodResult<PathBuf> {
    let path = dir.join("hosts");
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n",
    );
    if !hostname.is_empty() {
        for ip in pod_ips {
            text.push_str(&format!("{ip}\t{hostname}\n"));
        }
    }
    write(&path, &text)?;
    Ok(path)
}

/// Creates `<dir>/shm` and mounts a 64 MiB tmpfs on it.
pub fn mount_shm(dir: &Path) -> PodResult<PathBuf> {
    let path = dir.join("shm");
    fs::create_dir_all(&path)
        .map_err(|e| PodError::io(format!("creating {}", path.display()), e))?;
    let data = format!("mode=1777,size={SHM_SIZE_BYTES}");
    mount(
        Some("shm"),
        &path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| PodError::io(format!("mounting tmpfs on {}", path.display()), e.into()))?;
    Ok(path)
}

/// Unmounts `path`; not mounted or missing is fine.
pub fn unmount(path: &Path) -> PodResult<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(PodError::io(
            format!("unmounting {}", path.display()),
            e.into(),
        )),
    }
}

/// Pids in the cgroups at `dirs` and below (`cgroup.procs` of every level).
pub fn cgroup_pids(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = crius_shim_api::mountinfo::read_self() else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Removes `dir` recursively after unmounting anything still mounted below
/// it, so the removal can never reach into a mounted filesystem. Missing
/// is fine.
pub fn remove_dir_safely(dir: &Path) -> PodResult<()> {
    for m in mounts_under(dir) {
        unmount(&m)?;
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        return Err(PodError::FailedPrecondition(format!(
            "not removing {}: still mounted: {left:?}",
            dir.display()
        )));
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodError::io(format!("removing {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dir = tempfile::tempdir().unwrap();
        let dns = cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        let path = write_resolv_conf(dir.path(), Some(&dns)).unwrap();
        assert_eq!(
            fs::read_to_string(path).unwrap(),
            "nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_names_the_pod_ips() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_hosts(dir.path(), "web", &["10.88.0.5".into()]).unwrap();
        let text = fs::read_to_string(path).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(text.ends_with("10.88.0.5\tweb\n"), "{text}");
    }

    #[test]
    fn hostname_defaults() {
        let mut config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "x".repeat(70),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_hostname(&config, false).len(), 63);
        config.hostname = "h".into();
        assert_eq!(pod_hostname(&config, false), "h");
    }
}
