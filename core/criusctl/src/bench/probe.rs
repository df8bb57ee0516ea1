//! What the bench reads off the host about each endpoint: the daemon's RSS
//! and CPU time (by pid or pid file), the CPU time of a cgroup the endpoint
//! runs in (the daemon with everything it forks: shims, conmon, runc), and
//! the PSS of its per-pod helper processes (found by process name).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use procfs::process::Process;

/// `NAME=VALUE` for the per-endpoint options (`--daemon`, `--cgroup`,
/// `--helpers`).
pub(crate) fn split_named<'a>(option: &str, spec: &'a str) -> Result<(&'a str, &'a str)> {
    match spec.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => Ok((name, value)),
        _ => bail!("--{option} {spec:?}: expected NAME=VALUE"),
    }
}

/// The daemon of an endpoint: `PID`, or `@FILE` holding the pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DaemonRef {
    Pid(i32),
    PidFile(PathBuf),
}

impl DaemonRef {
    pub(crate) fn parse(value: &str) -> Result<Self> {
        if let Some(file) = value.strip_prefix('@') {
            return Ok(Self::PidFile(PathBuf::from(file)));
        }
        match value.parse::<i32>() {
            Ok(pid) if pid > 0 => Ok(Self::Pid(pid)),
            _ => bail!("--daemon: {value:?} is neither a pid nor @PIDFILE"),
        }
    }

    fn pid(&self) -> Result<i32> {
        match self {
            Self::Pid(pid) => Ok(*pid),
            Self::PidFile(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                text.trim()
                    .parse()
                    .with_context(|| format!("{}: not a pid", file.display()))
            }
        }
    }
}

/// One reading of a daemon.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DaemonSample {
    pub rss_kib: u64,
    /// User + system time of the daemon and of the children it has reaped.
    pub cpu_ms: f64,
    /// User + system time of the daemon's own threads.
    pub own_cpu_ms: f64,
}

pub(crate) fn sample_daemon(daemon: &DaemonRef) -> Result<DaemonSample> {
    let pid = daemon.pid()?;
    let process = Process::new(pid).with_context(|| format!("daemon pid {pid}"))?;
    let rss_kib = process
        .status()
        .with_context(|| format!("/proc/{pid}/status"))?
        .vmrss
        .unwrap_or(0);
    let stat = process
        .stat()
        .with_context(|| format!("/proc/{pid}/stat"))?;
    let own = stat.utime as f64 + stat.stime as f64;
    let children = stat.cutime.max(0) as f64 + stat.cstime.max(0) as f64;
    let ms_per_tick = 1000.0 / procfs::ticks_per_second() as f64;
    Ok(DaemonSample {
        rss_kib,
        cpu_ms: (own + children) * ms_per_tick,
        own_cpu_ms: own * ms_per_tick,
    })
}

/// CPU time used by every process that ever ran in the cgroup `dir`
/// (cgroup v1 `cpuacct.usage`, or v2 `cpu.stat`'s `usage_usec`), in ms.
pub(crate) fn cgroup_cpu_ms(dir: &Path) -> Result<f64> {
    let v1 = dir.join("cpuacct.usage");
    if let Ok(text) = std::fs::read_to_string(&v1) {
        let ns: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("{}: not a number", v1.display()))?;
        return Ok(ns as f64 / 1e6);
    }
    let v2 = dir.join("cpu.stat");
    let text = std::fs::read_to_string(&v2)
        .with_context(|| format!("neither {} nor {} readable", v1.display(), v2.display()))?;
    parse_cpu_stat_usage_ms(&text).with_context(|| format!("{}: no usage_usec", v2.display()))
}

fn parse_cpu_stat_usage_ms(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us as f64 / 1000.0)
}

/// Helper processes found by name: how many, and their summed PSS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HelperSample {
    pub processes: usize,
    pub pss_kib: u64,
}

/// The kernel keeps the first 15 bytes of a process name (`comm`).
const COMM_LEN: usize = 15;

fn comm_matches(comm: &str, names: &[String]) -> bool {
    names.iter().any(|n| {
        let n = &n.as_bytes()[..n.len().min(COMM_LEN)];
        comm.as_bytes() == n
    })
}

/// Sums the PSS of every process whose name is one of `names` (a process
/// that exits while being read is skipped).
pub(crate) fn sample_helpers(names: &[String]) -> Result<HelperSample> {
    let mut sample = HelperSample::default();
    for process in procfs::process::all_processes().context("listing /proc")? {
        let Ok(process) = process else { continue };
        let Ok(stat) = process.stat() else { continue };
        if !comm_matches(&stat.comm, names) {
            continue;
        }
        let Ok(rollup) = process.smaps_rollup() else {
            continue;
        };
        let pss: u64 = rollup
            .memory_map_rollup
            .iter()
            .filter_map(|m| m.extension.map.get("Pss"))
            .sum();
        sample.processes += 1;
        sample.pss_kib += pss / 1024;
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_is_a_pid_or_a_pid_file() {
        assert_eq!(DaemonRef::parse("42").unwrap(), DaemonRef::Pid(42));
        assert_eq!(
            DaemonRef::parse("@/run/c.pid").unwrap(),
            DaemonRef::PidFile("/run/c.pid".into())
        );
        assert!(DaemonRef::parse("0").is_err());
        assert!(DaemonRef::parse("crius").is_err());
    }

    #[test]
    fn named_values_need_both_halves() {
        assert_eq!(split_named("daemon", "a=1").unwrap(), ("a", "1"));
        assert!(split_named("daemon", "a=").is_err());
        assert!(split_named("daemon", "=1").is_err());
        assert!(split_named("daemon", "a").is_err());
    }

    #[test]
    fn long_process_names_match_their_truncated_comm() {
        let names = vec!["containerd-shim-runc-v2".to_string(), "conmon".to_string()];
        assert!(comm_matches("containerd-shim", &names));
        assert!(comm_matches("conmon", &names));
        assert!(!comm_matches("containerd", &names));
        assert!(!comm_matches("conmon2", &names));
    }

    #[test]
    fn cgroup_v2_usage_is_read_from_cpu_stat() {
        let text = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(parse_cpu_stat_usage_ms(text), Some(1.5));
        assert_eq!(parse_cpu_stat_usage_ms("user_usec 1\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = DaemonRef::Pid(std::process::id() as i32);
        let s = sample_daemon(&me).unwrap();
        assert!(s.rss_kib > 0, "{s:?}");
        let comm = Process::myself().unwrap().stat().unwrap().comm;
        let helpers = sample_helpers(&[comm]).unwrap();
        assert!(helpers.processes >= 1 && helpers.pss_kib > 0, "{helpers:?}");
    }
}
