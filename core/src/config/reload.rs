//! What a reloaded configuration (SIGHUP) changes, and which of it the
//! running daemon applies without a restart.
//!
//! Applied live: `log_level`, `registries` (mirrors, locations, insecure,
//! blocked) and `image.*` (the next pull uses them; running pulls finish
//! with what they started with). Everything else (sockets, directories,
//! the handler table, CNI, streaming, metrics) is fixed when the daemon
//! starts: a change there is reported by key and waits for a restart,
//! while pods, including those of a removed handler, keep working.

use serde_json::Value;

use super::Config;

/// Top-level keys a reload applies at once.
pub const LIVE_KEYS: &[&str] = &["log_level", "registries", "image"];

/// The changes between the running and a newly loaded configuration, as
/// dotted keys (`image.pull_progress_timeout_seconds`,
/// `runtime_handlers.kata (added)`).
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
            changed_paths(key, old.get(key), new.get(key), 1, &mut changes);
            if LIVE_KEYS.contains(&key.as_str()) {
                plan.live.extend(changes);
            } else {
                plan.restart.extend(changes);
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
    fn registries_image_and_log_level_are_live_the_rest_waits_for_a_restart() {
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
        new.streaming.port = 10010;
        let plan = ReloadPlan::new(&old, &new);
        assert_eq!(
            plan.live,
            vec![
                "image.pull_progress_timeout_seconds",
                "log_level",
                "registries"
            ]
        );
        assert_eq!(
            plan.restart,
            vec![
                "runtime_handlers.crun (removed)",
                "runtime_handlers.runc",
                "runtime_handlers.runc2 (added)",
                "streaming.port",
            ]
        );
        let running = apply_live(&old, &new);
        assert_eq!(running.registries, new.registries);
        assert_eq!(running.image, new.image);
        assert_eq!(running.log_level, "debug");
        assert_eq!(running.runtime_handlers, old.runtime_handlers);
        assert_eq!(running.streaming, old.streaming);
        // Compared with what now runs, the restart-only changes remain.
        let again = ReloadPlan::new(&running, &new);
        assert!(again.live.is_empty(), "{again:?}");
        assert_eq!(again.restart, plan.restart);
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
