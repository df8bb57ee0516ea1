//! A private systemd for the systemd cgroup driver's tests, on machines
//! whose PID 1 is not systemd (these test machines boot a small init).
//!
//! systemd runs as PID 1 of a new PID and mount namespace, in a cgroup of
//! its own in every hierarchy (which it then treats as its root, as in a
//! container without a cgroup namespace), with a unit path holding only an
//! target that wants only the D-Bus system bus (units of our own: Debian's
//! dbus.service sets a negative OOMScoreAdjust, which root cannot here), so
//! it starts nothing of the host's. `/run/systemd` and `/run/dbus` are
//! tmpfs mounts inside that mount namespace. The daemon
//! under test runs in the same namespaces ([`NestedSystemd::command_prefix`]),
//! so systemd, runc and crius agree on PIDs and paths. Dropping it kills
//! everything in the PID namespace and removes its cgroups.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What [`NestedSystemd::start`] runs (Debian's systemd and util-linux).
pub const TOOLS: &[&str] = &[
    SYSTEMD,
    DBUS_DAEMON,
    "unshare",
    "nsenter",
    "systemctl",
    "busctl",
];

const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

const SYSTEMD: &str = "/lib/systemd/systemd";

pub struct NestedSystemd {
    unshare: Child,
    /// systemd's PID in the host's PID namespace.
    pid: i32,
    /// The cgroup (same relative path in every hierarchy) systemd runs in.
    cgroup: String,
    _units: tempfile::TempDir,
}

impl NestedSystemd {
    pub async fn start() -> Result<NestedSystemd> {
        let units = tempfile::Builder::new()
            .prefix("crius-systemd-units-")
            .tempdir()?;
        for (name, text) in [
            (
                "crius-test.target",
                "[Unit]\nDescription=crius systemd driver test\nWants=dbus.socket dbus.service\n"
                    .to_string(),
            ),
            (
                "dbus.socket",
                "[Unit]\nDescription=D-Bus system bus socket\n\
                 [Socket]\nListenStream=/run/dbus/system_bus_socket\n"
                    .to_string(),
            ),
            (
                "dbus.service",
                format!(
                    "[Unit]\nDescription=D-Bus system bus\nRequires=dbus.socket\n\
                     [Service]\nExecStart={DBUS_DAEMON} --system --address=systemd: --nofork \
                     --nopidfile --systemd-activation --nosyslog\n"
                ),
            ),
        ] {
            std::fs::write(units.path().join(name), text)?;
        }
        let cgroup = format!("crius-systemd-{}", &crate::unique_token()[..12]);
        for h in hierarchies() {
            let dir = h.join(&cgroup);
            std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            // A new v1 cpuset starts empty and takes no tasks.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                    let _ = std::fs::write(dir.join(f), v.trim());
                }
            }
        }
        std::fs::create_dir_all("/run/systemd")?;
        std::fs::create_dir_all("/run/dbus")?;
        let script = format!(
            "set -e\n\
             mount --make-rprivate /\n\
             mount -t tmpfs -o mode=0755 tmpfs /run/systemd\n\
             mount -t tmpfs -o mode=0755 tmpfs /run/dbus\n\
             for h in /sys/fs/cgroup/*; do echo $$ > \"$h/{cgroup}/cgroup.procs\" 2>/dev/null || true; done\n\
             exec env -i container=crius-test SYSTEMD_UNIT_PATH={units} PATH=/usr/sbin:/usr/bin:/sbin:/bin \
             {SYSTEMD} --unit=crius-test.target --log-target=console --log-level=notice\n",
            units = units.path().display(),
        );
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning unshare")?;
        let mut me = NestedSystemd {
            pid: 0,
            unshare,
            cgroup,
            _units: units,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if me.pid == 0 {
                me.pid = child_of(me.unshare.id()).unwrap_or(0);
            }
            if me.pid != 0 && is_systemd(me.pid) {
                // Up once systemd answers on the bus (it joins it when
                // dbus.service is running).
                let prefix = me.command_prefix();
                let ping = Command::new(&prefix[0])
                    .args(&prefix[1..])
                    .args(["busctl", "--system", "call", "org.freedesktop.systemd1"])
                    .args([
                        "/org/freedesktop/systemd1",
                        "org.freedesktop.DBus.Peer",
                        "Ping",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                if ping.success() {
                    return Ok(me);
                }
            }
            if let Some(status) = me.unshare.try_wait()? {
                bail!("the private systemd exited with {status} before it was up");
            }
            if Instant::now() > deadline {
                bail!(
                    "the private systemd (pid {}) was not up within 30 s",
                    me.pid
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a command in systemd's namespaces.
    pub fn command_prefix(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid.to_string(), "-p", "-m", "--"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// systemd's PID (in the test's PID namespace): its mounts are the
    /// daemon's.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `systemctl` against this systemd.
    pub fn systemctl(&self, args: &[&str]) -> Result<Output> {
        let prefix = self.command_prefix();
        Command::new(&prefix[0])
            .args(&prefix[1..])
            .arg("systemctl")
            .args(args)
            .output()
            .context("running systemctl")
    }

    /// The cgroupfs path (below the hierarchy mounts) systemd treats as its
    /// root.
    pub fn root(&self) -> String {
        format!("/{}", self.cgroup)
    }

    /// The directory of `rel` (below systemd's root) in the hierarchy whose
    /// mount point ends in `name` (`memory`, `pids`, `systemd`).
    pub fn cgroup_dir(&self, hierarchy: &str, rel: &str) -> Option<PathBuf> {
        hierarchies()
            .into_iter()
            .find(|h| h.file_name().is_some_and(|n| n == hierarchy))
            .map(|h| h.join(&self.cgroup).join(rel.trim_start_matches('/')))
    }
}

impl Drop for NestedSystemd {
    // Drop cannot await; the waits for the kernel to empty the cgroups hold
    // up only the test that is ending.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        if self.pid > 0 {
            // PID 1 of the namespace: the kernel kills everything in it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        for h in hierarchies() {
            let dir = h.join(&self.cgroup);
            while dir.exists() && remove_tree(&dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    if out.is_empty() && Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        out.push("/sys/fs/cgroup".into());
    }
    out
}

fn child_of(pid: u32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn is_systemd(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "systemd"))
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}
