//! What a reloaded configuration (SIGHUP) changes, and which of it the
//! running daemon applies without a restart.
//!
//! The new file (and its drop-ins) is loaded and validated as at start; a
//! configuration that does not load is reported and the running one kept,
//! all of it. Otherwise the daemon runs with [`apply_live`]'s result: the
//! keys below from the new file, the rest as it started.
//!
//! Applied live:
//!
//! - `log_level` (unless `--log-level` was given);
//! - `registries` (mirrors, locations, insecure, blocked) and `image.*`:
//!   the next pull uses them; running pulls finish with what they started
//!   with;
//! - the handler table, `runtime_handlers` and `default_runtime_handler`:
//!   handlers added, removed or with changed options (any key of the entry)
//!   are what new pods get, and `Status` lists the new table. An unchanged
//!   entry keeps its handler instance; a new or changed one is built as at
//!   start (one that cannot be built is listed as not ready). Pods that
//!   exist keep the handler instance they were created with, also when
//!   their entry was changed or removed: their containers, exec, attach,
//!   port-forward, stats, events and exit monitoring, stop and remove go on
//!   as before, until the pod is removed; the old instance is dropped with
//!   its last pod (see `crate::handlers`). A new pod naming a removed
//!   handler is refused as any unknown handler (InvalidArgument);
//! - `cni.conf_dir` and `cni.bin_dirs`: the network config is read from
//!   the directory for every new pod anyway (so a changed conflist applies
//!   without a reload); the keys apply to pods created after the reload.
//!   A pod's network is torn down with the config recorded when it was
//!   set up, its plugins looked up in the current `bin_dirs`;
//! - `cdi_spec_dirs` and `hooks_dirs`: read for every new container;
//! - `streaming.token_ttl_seconds` (URLs handed out after the reload),
//!   `streaming.idle_timeout_seconds` (sessions started after it) and
//!   `streaming.max_sessions` (admissions after it; a lower bound closes no
//!   running session).
//!
//! Only after a restart (reported by key; the daemon keeps the old
//! values): `listen`, `root`, `state_dir` (sockets and directories that
//! pods, records and runtime roots live in), `cgroup_driver`,
//! `storage_driver` (containers' root filesystems exist in it),
//! `restrict_oom_score_adj` and `pause` (read once when the pod manager
//! starts), `streaming.address`, `streaming.port`, `streaming.tls_cert`
//! and `streaming.tls_key` (rebinding the listener live would fail on the
//! same port while the old one holds it, and URLs already handed to the
//! kubelet name the old address and scheme), `metrics_address` and
//! `otlp_endpoint` (bound or connected once at start).

use serde_json::Value;

use super::Config;

/// Top-level keys a reload applies at once.
pub const LIVE_KEYS: &[&str] = &[
    "log_level",
    "registries",
    "image",
    "default_runtime_handler",
    "runtime_handlers",
    "cni",
    "cdi_spec_dirs",
    "hooks_dirs",
];

/// Keys under `streaming` a reload applies at once; the others (the
/// listener's address, port and TLS files) need a restart.
pub const LIVE_STREAMING_KEYS: &[&str] =
    &["token_ttl_seconds", "idle_timeout_seconds", "max_sessions"];

/// Whether a reload applies the change at dotted `path` (as
/// [`ReloadPlan`] names changes) at once.
pub fn is_live(path: &str) -> bool {
    let key = path.split(' ').next().unwrap_or(path);
    let mut parts = key.splitn(3, '.');
    let top = parts.next().unwrap_or_default();
    if top == "streaming" {
        return parts
            .next()
            .is_some_and(|field| LIVE_STREAMING_KEYS.contains(&field));
    }
    LIVE_KEYS.contains(&top)
}

/// The changes between the running and a newly loaded configuration, as
/// dotted keys (`image.pull_progress_timeout_seconds`,
/// `runtime_handlers.kata (added)`, `runtime_handlers.runc.runtime_path`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Applied now.
    pub live: Vec<String>,
    /// Only after a restart; the daemon keeps running with the old values.
    pub restart: Vec<String>,
}

impl ReloadPlan {
    /// Compares `running` with `new`.
    pub fn new(running: &Config, new: &Config) -> Self {
        let (old, new) = (as_object(running), as_object(new));
        let mut plan = Self::default();
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            let mut changes = Vec::new();
            // Handler entries are named down to the option that changed.
            let depth = if key == "runtime_handlers" { 2 } else { 1 };
            changed_paths(key, old.get(key), new.get(key), depth, &mut changes);
            for change in changes {
                if is_live(&change) {
                    plan.live.push(change);
                } else {
                    plan.restart.push(change);
                }
            }
        }
        plan
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }
}

/// `running` with the live part of `new` applied: what the daemon runs
/// with after a reload.
pub fn apply_live(running: &Config, new: &Config) -> Config {
    let mut out = running.clone();
    out.log_level = new.log_level.clone();
    out.registries = new.registries.clone();
    out.image = new.image.clone();
    out.default_runtime_handler = new.default_runtime_handler.clone();
    out.runtime_handlers = new.runtime_handlers.clone();
    out.cni = new.cni.clone();
    out.cdi_spec_dirs = new.cdi_spec_dirs.clone();
    out.hooks_dirs = new.hooks_dirs.clone();
    out.streaming.token_ttl_seconds = new.streaming.token_ttl_seconds;
    out.streaming.idle_timeout_seconds = new.streaming.idle_timeout_seconds;
    out.streaming.max_sessions = new.streaming.max_sessions;
    out
}

fn as_object(config: &Config) -> serde_json::Map<String, Value> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        // A struct of plain data always serializes to an object.
        _ => serde_json::Map::new(),
    }
}

/// Pushes the dotted paths under `path` where `old` and `new` differ,
/// descending `depth` more levels into maps (handler tables, sub-tables).
fn changed_paths(
    path: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    depth: usize,
    out: &mut Vec<String>,
) {
    match (old, new) {
        (a, b) if a == b => {}
        (None, Some(_)) => out.push(format!("{path} (added)")),
        (Some(_), None) => out.push(format!("{path} (removed)")),
        (Some(Value::Object(a)), Some(Value::Object(b))) if depth > 0 => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                changed_paths(
                    &format!("{path}.{key}"),
                    a.get(key),
                    b.get(key),
                    depth - 1,
                    out,
                );
            }
        }
        _ => out.push(path.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MirrorConfig, RegistryConfig};

    #[test]
    fn nothing_changed_is_an_empty_plan() {
        let c = Config::default();
        assert!(ReloadPlan::new(&c, &c.clone()).is_empty());
    }

    #[test]
    fn registries_image_handlers_cni_and_session_limits_are_live_listeners_wait_for_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.log_level = "debug".into();
        new.image.pull_progress_timeout_seconds = 5;
        new.registries.push(RegistryConfig {
            mirrors: vec![MirrorConfig {
                location: "127.0.0.1:5000".into(),
                insecure: true,
            }],
            ..RegistryConfig::new("docker.io")
        });
        new.runtime_handlers.remove("crun");
        let mut runc = new.runtime_handlers["runc"].clone();
        runc.runtime_path = "/usr/local/sbin/runc".into();
        new.runtime_handlers.insert("runc".into(), runc.clone());
        new.runtime_handlers.insert("runc2".into(), runc);
        new.cni.conf_dir = "/etc/cni/other.d".into();
        new.hooks_dirs = vec!["/etc/hooks".into()];
        new.streaming.port = 10010;
        new.streaming.max_sessions = 8;
        new.state_dir = "/run/other".into();
        let plan = ReloadPlan::new(&old, &new);
        assert_eq!(
            plan.live,
            vec![
                "cni.conf_dir",
                "hooks_dirs",
                "image.pull_progress_timeout_seconds",
                "log_level",
                "registries",
                "runtime_handlers.crun (removed)",
                "runtime_handlers.runc.runtime_path",
                "runtime_handlers.runc2 (added)",
                "streaming.max_sessions",
            ]
        );
        assert_eq!(plan.restart, vec!["state_dir", "streaming.port"]);
        let running = apply_live(&old, &new);
        assert_eq!(running.registries, new.registries);
        assert_eq!(running.image, new.image);
        assert_eq!(running.log_level, "debug");
        assert_eq!(running.runtime_handlers, new.runtime_handlers);
        assert_eq!(running.cni, new.cni);
        assert_eq!(running.hooks_dirs, new.hooks_dirs);
        assert_eq!(running.streaming.max_sessions, 8);
        assert_eq!(running.streaming.port, old.streaming.port);
        assert_eq!(running.state_dir, old.state_dir);
        // Compared with what now runs, the restart-only changes remain.
        let again = ReloadPlan::new(&running, &new);
        assert!(again.live.is_empty(), "{again:?}");
        assert_eq!(again.restart, plan.restart);
    }

    #[test]
    fn every_live_key_is_applied() {
        // Each live key set to something else than the default: applying
        // the new config leaves no live change behind.
        let old = Config::default();
        let mut new = old.clone();
        new.log_level = "warn".into();
        new.default_runtime_handler = "crun".into();
        new.cdi_spec_dirs = vec!["/etc/cdi2".into()];
        new.hooks_dirs = vec!["/etc/hooks2".into()];
        new.cni.bin_dirs = vec!["/opt/cni/bin".into()];
        new.image.max_concurrent_downloads += 1;
        new.streaming.token_ttl_seconds += 1;
        new.streaming.idle_timeout_seconds += 1;
        new.streaming.max_sessions += 1;
        let plan = ReloadPlan::new(&old, &new);
        assert!(plan.restart.is_empty(), "{plan:?}");
        assert_eq!(plan.live.len(), 9, "{plan:?}");
        assert!(ReloadPlan::new(&apply_live(&old, &new), &new).is_empty());
    }

    #[test]
    fn live_paths_are_told_from_restart_only_ones() {
        assert!(is_live("runtime_handlers.kata (added)"));
        assert!(is_live("runtime_handlers.runc.allowed_annotations"));
        assert!(is_live("streaming.idle_timeout_seconds"));
        assert!(!is_live("streaming.address"));
        assert!(!is_live("streaming.tls_cert (added)"));
        assert!(!is_live("listen"));
        assert!(!is_live("pause.catatonit_path"));
    }

    #[test]
    fn an_optional_key_set_or_unset_is_named() {
        let old = Config::default();
        let mut new = old.clone();
        new.metrics_address = Some("127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            ReloadPlan::new(&old, &new).restart,
            vec!["metrics_address (added)"]
        );
        assert_eq!(
            ReloadPlan::new(&new, &old).restart,
            vec!["metrics_address (removed)"]
        );
    }
}
