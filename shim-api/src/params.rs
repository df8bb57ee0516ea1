//! What the core tells a third-party handler when it creates it.

use serde::{Deserialize, Serialize};

/// Handed to a plugin's constructor (JSON across the C ABI) and to a shim
/// executable (`--params <json>`). Unknown fields are ignored so the core
/// may add fields without breaking older handlers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HandlerParams {
    /// The handler's name in the config (the RuntimeClass `handler`).
    pub name: String,
    /// A directory the handler may use for state shared by all its pods
    /// (created by the core; volatile, like the daemon's `state_dir`).
    pub state_dir: String,
    /// The entry's `runtime_path` (the runtime binary, hypervisor, plugin
    /// library or shim executable), as configured.
    pub runtime_path: String,
    /// The entry's `runtime_root`, if configured ("" = not set).
    pub runtime_root: String,
    /// The handler's own settings table of its config entry, as given
    /// (YAML turned into JSON values). The core never looks inside: the
    /// handler parses and validates it, and reports problems as a
    /// `HandlerError` whose message names the key.
    pub options: serde_json::Map<String, serde_json::Value>,
    /// The daemon's cgroup driver: `cgroupfs` ("" from older daemons) or
    /// `systemd`. With `systemd`, `cgroup_parent` is still the pod's
    /// cgroupfs path (its slice, expanded), but the containers' OCI
    /// `cgroupsPath` is `slice:crius:<id>` for a runtime run with
    /// `--systemd-cgroup` (see `cgroupfs::systemd::resolve`).
    pub cgroup_driver: String,
}

impl HandlerParams {
    /// A string option, if set to a string.
    pub fn option_str(&self, key: &str) -> Option<&str> {
        self.options.get(key).and_then(serde_json::Value::as_str)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    pub fn from_json(text: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(text)
    }
}
