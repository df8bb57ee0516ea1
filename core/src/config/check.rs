//! `crius check`: whether a loaded configuration can run on this host —
//! every handler's binaries, the pause binary, the cgroup layout, the CNI
//! network config and its plugins, the streaming TLS files.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Config, HandlerKind};

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `false`: a problem the daemon would run into.
    pub ok: bool,
    /// What was checked (`handler runc`, `cni`, `cgroups`).
    pub subject: String,
    /// What was found.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok { "ok     " } else { "PROBLEM" };
        write!(f, "{verdict} {}: {}", self.subject, self.message)
    }
}

struct Findings(Vec<Finding>);

impl Findings {
    fn ok(&mut self, subject: &str, message: String) {
        self.0.push(Finding {
            ok: true,
            subject: subject.to_string(),
            message,
        });
    }

    fn problem(&mut self, subject: &str, message: String) {
        self.0.push(Finding {
            ok: false,
            subject: subject.to_string(),
            message,
        });
    }

    /// `path` must be an executable regular file.
    fn executable(&mut self, subject: &str, what: &str, path: &Path) {
        match executable(path) {
            Ok(()) => self.ok(subject, format!("{what} {}", path.display())),
            Err(reason) => self.problem(subject, format!("{what} {}: {reason}", path.display())),
        }
    }

    /// `path` must be a readable regular file.
    fn readable(&mut self, subject: &str, what: &str, path: &Path) {
        match std::fs::File::open(path).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => self.ok(subject, format!("{what} {}", path.display())),
            Ok(_) => self.problem(
                subject,
                format!("{what} {}: not a regular file", path.display()),
            ),
            Err(e) => self.problem(subject, format!("{what} {}: {e}", path.display())),
        }
    }
}

fn executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    Ok(())
}

/// Checks `config` against this host. Blocking (reads files and
/// `/proc/self/mountinfo`); meant for the `crius check` command.
pub fn check_host(config: &Config) -> Vec<Finding> {
    let mut out = Findings(Vec::new());
    for (name, entry) in &config.runtime_handlers {
        let subject = format!("handler {name}");
        match entry.kind {
            HandlerKind::Oci => {
                out.executable(&subject, "runtime", &entry.runtime_path);
                match &entry.monitor_path {
                    Some(conmon) => out.executable(&subject, "monitor", conmon),
                    None => out.problem(
                        &subject,
                        "monitor_path is not set (oci handlers run each container under conmon)"
                            .into(),
                    ),
                }
            }
            HandlerKind::Vm => {
                out.executable(&subject, "hypervisor", &entry.runtime_path);
                let shim = entry
                    .vm_shim_path()
                    .unwrap_or_else(crate::handlers::default_vm_shim_path);
                out.executable(&subject, "shim", &shim);
            }
            HandlerKind::Plugin => {
                let library = entry
                    .plugin
                    .as_ref()
                    .is_some_and(|p| p.mode == super::PluginMode::Library);
                if library {
                    out.readable(&subject, "plugin library", &entry.runtime_path);
                } else {
                    out.executable(&subject, "shim", &entry.runtime_path);
                }
            }
        }
    }
    if config
        .runtime_handlers
        .values()
        .any(|h| h.kind == HandlerKind::Oci)
    {
        out.executable("pause", "catatonit", &config.pause.catatonit_path);
    }
    match crate::sandbox::CgroupLayout::detect() {
        Ok(layout) => {
            let mode = match layout.mode() {
                crate::sandbox::cgroup::CgroupMode::V1 => "cgroup v1 (or hybrid)",
                crate::sandbox::cgroup::CgroupMode::V2 => "cgroup v2",
            };
            match config.cgroup_driver {
                crate::config::CgroupDriver::Cgroupfs => {
                    out.ok("cgroups", format!("{mode}, cgroupfs driver"))
                }
                crate::config::CgroupDriver::Systemd => {
                    let socket = crate::sandbox::systemd::system_bus_socket();
                    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                        out.ok("cgroups", format!("{mode}, systemd driver ({socket})"))
                    } else {
                        out.problem(
                            "cgroups",
                            format!(
                                "cgroup_driver: systemd, but systemd does not answer on {socket} \
                                 (systemd must be the init of this PID namespace, with its D-Bus system bus)"
                            ),
                        )
                    }
                }
            }
        }
        Err(e) => out.problem("cgroups", format!("cannot detect the cgroup layout: {e}")),
    }
    check_cni(config, &mut out);
    if let (Some(cert), Some(key)) = (&config.streaming.tls_cert, &config.streaming.tls_key) {
        out.readable("streaming", "TLS certificate", cert);
        out.readable("streaming", "TLS key", key);
    }
    out.0
}

/// The network config the daemon would load, and every plugin it names
/// (chain entries and their IPAM) in `cni.bin_dirs`.
fn check_cni(config: &Config, out: &mut Findings) {
    let network = match crate::sandbox::cni::CniNetwork::load(&config.cni) {
        Ok(network) => network,
        Err(e) => {
            out.problem("cni", e.to_string());
            return;
        }
    };
    out.ok(
        "cni",
        format!(
            "network {:?} (cniVersion {}) from {}",
            network.name(),
            network.cni_version(),
            network.source().display()
        ),
    );
    for plugin in plugin_types(network.source()) {
        match crate::sandbox::cni::find_plugin(&plugin, &config.cni.bin_dirs) {
            Some(path) => out.ok("cni", format!("plugin {plugin} at {}", path.display())),
            None => out.problem(
                "cni",
                format!(
                    "plugin {plugin} not found in {}",
                    config
                        .cni
                        .bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
}

/// Plugin binaries a (loaded, hence well-formed) CNI config file names.
fn plugin_types(source: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(source) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    let plugins = match value.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list.clone(),
        None => vec![value],
    };
    let mut out = Vec::new();
    for plugin in &plugins {
        for conf in [Some(plugin), plugin.get("ipam")].into_iter().flatten() {
            if let Some(t) = conf.get("type").and_then(|t| t.as_str())
                && !out.iter().any(|o| o == t)
            {
                out.push(t.to_string());
            }
        }
    }
    out
}

/// Only the problems, for an exit status.
pub fn problems(findings: &[Finding]) -> Vec<&Finding> {
    findings.iter().filter(|f| !f.ok).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_exec(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn missing_binaries_and_cni_plugins_are_problems_present_ones_are_ok() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let net = dir.path().join("net.d");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&net).unwrap();
        for b in ["runc", "conmon", "catatonit", "bridge"] {
            write_exec(&bin.join(b));
        }
        std::fs::write(bin.join("not-exec"), "").unwrap();
        std::fs::write(
            net.join("10-test.conflist"),
            r#"{"cniVersion":"1.0.0","name":"t","plugins":[
                {"type":"bridge","ipam":{"type":"host-local"}},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let mut config = Config::default();
        config.cni.conf_dir = net;
        config.cni.bin_dirs = vec![bin.clone()];
        config.pause.catatonit_path = bin.join("catatonit");
        let runc = config.runtime_handlers.get_mut("runc").unwrap();
        runc.runtime_path = bin.join("runc");
        runc.monitor_path = Some(bin.join("conmon"));
        let crun = config.runtime_handlers.get_mut("crun").unwrap();
        crun.runtime_path = bin.join("not-exec");
        crun.monitor_path = None;

        let findings = check_host(&config);
        let problems: Vec<String> = problems(&findings).iter().map(|f| f.to_string()).collect();
        let text = problems.join("\n");
        assert!(
            text.contains("handler crun: runtime") && text.contains("not executable"),
            "{text}"
        );
        assert!(
            text.contains("handler crun: monitor_path is not set"),
            "{text}"
        );
        assert!(text.contains("plugin host-local not found"), "{text}");
        assert!(text.contains("plugin portmap not found"), "{text}");
        assert_eq!(problems.len(), 4, "{text}");
        let oks: Vec<String> = findings
            .iter()
            .filter(|f| f.ok)
            .map(|f| f.to_string())
            .collect();
        let oks = oks.join("\n");
        assert!(oks.contains("handler runc: runtime"), "{oks}");
        assert!(oks.contains("plugin bridge at"), "{oks}");
        assert!(oks.contains("network \"t\""), "{oks}");
    }

    #[test]
    fn an_unparsable_cni_config_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-bad.conflist"), "{ not json").unwrap();
        let mut config = Config::default();
        config.runtime_handlers.clear();
        config.cni.conf_dir = dir.path().to_path_buf();
        let findings = check_host(&config);
        let cni: Vec<&Finding> = findings.iter().filter(|f| f.subject == "cni").collect();
        assert_eq!(cni.len(), 1, "{findings:?}");
        assert!(!cni[0].ok);
        assert!(
            cni[0].message.contains("10-bad.conflist"),
            "{}",
            cni[0].message
        );
    }
}
