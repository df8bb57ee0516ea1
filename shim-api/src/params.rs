//! What the core tells a third-party handler when it creates it.

use std::collections::BTreeMap;

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
    /// `plugin.options` of the handler's config entry, as given.
    pub options: BTreeMap<String, String>,
}

impl HandlerParams {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    pub fn from_json(text: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(text)
    }
}
