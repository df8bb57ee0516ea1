//! Registered runtime handlers, by name, and routing of requests to them.
//!
//! Each entry of the config's handler table becomes one
//! `Arc<dyn RuntimeHandler>` registered under its RuntimeClass name. A pod's
//! `runtime_handler` picks the entry; an empty name picks the default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crius_shim_api::types::Capabilities;
use crius_shim_api::{HandlerError, RuntimeHandler};

use crate::config::{Config, HandlerConfig, HandlerKind};

/// A requested handler name that is not in the handler table.
#[derive(Debug, thiserror::Error)]
#[error("unknown runtime handler {requested:?}; known handlers: {known}")]
pub struct UnknownHandler {
    pub requested: String,
    pub known: String,
}

/// The handler table of a running daemon.
pub struct HandlerRegistry {
    default: String,
    handlers: BTreeMap<String, Arc<dyn RuntimeHandler>>,
}

impl HandlerRegistry {
    /// Creates a registry; `default` must be one of `handlers`' names.
    pub fn new(default: String, handlers: BTreeMap<String, Arc<dyn RuntimeHandler>>) -> Self {
        Self { default, handlers }
    }

    /// Builds every handler of the config's table.
    pub async fn from_config(config: &Config) -> Self {
        let mut handlers: BTreeMap<String, Arc<dyn RuntimeHandler>> = BTreeMap::new();
        for (name, entry) in &config.runtime_handlers {
            let handler = build_handler(name, entry, config).await;
            let bounded = crate::deadlines::DeadlineHandler::new(handler, call_limits(entry));
            handlers.insert(name.clone(), Arc::new(bounded));
        }
        Self::new(config.default_runtime_handler.clone(), handlers)
    }

    /// The handler for a pod's `runtime_handler` (empty = the default).
    pub fn resolve(&self, requested: &str) -> Result<Arc<dyn RuntimeHandler>, UnknownHandler> {
        let name = if requested.is_empty() {
            self.default.as_str()
        } else {
            requested
        };
        self.handlers
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownHandler {
                requested: requested.to_string(),
                known: self.handlers.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Name of the default handler.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// All handlers, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn RuntimeHandler>)> {
        self.handlers
            .iter()
            .map(|(name, handler)| (name.as_str(), handler))
    }
}

/// The limits of an entry's calls (see [`crate::deadlines`]).
pub fn call_limits(entry: &HandlerConfig) -> crate::deadlines::CallLimits {
    let call = entry
        .call_timeout_seconds
        .map_or(crate::deadlines::DEFAULT_CALL_TIMEOUT, Duration::from_secs);
    let run_sandbox = match (entry.run_sandbox_timeout_seconds, entry.kind) {
        (Some(seconds), _) => Duration::from_secs(seconds),
        (None, HandlerKind::Vm) => {
            Duration::from_secs(crate::config::VM_RUN_SANDBOX_TIMEOUT_SECONDS)
        }
        (None, _) => call,
    };
    crate::deadlines::CallLimits {
        call,
        run_sandbox,
        ready: crate::deadlines::READY_TIMEOUT,
    }
}

async fn build_handler(
    name: &str,
    entry: &HandlerConfig,
    config: &Config,
) -> Arc<dyn RuntimeHandler> {
    match entry.kind {
        HandlerKind::Oci => {
            let runtime_root = entry
                .runtime_root
                .clone()
                .unwrap_or_else(|| config.state_dir.join(name));
            let monitor_path = entry
                .monitor_path
                .clone()
                .unwrap_or_else(|| crius_handler_runc::DEFAULT_MONITOR_PATH.into());
            // One OCI handler implementation; the runtime's own crate gives
            // its configuration (crun: no `features` probing to trust).
            let mut oci = if entry.runtime_path.file_name().is_some_and(|f| f == "crun") {
                crius_handler_crun::config(name, &entry.runtime_path, runtime_root, monitor_path)
            } else {
                crius_handler_runc::OciHandlerConfig {
                    name: name.to_string(),
                    runtime_path: entry.runtime_path.clone(),
                    runtime_root,
                    monitor_path,
                    feature_overrides: Default::default(),
                }
            };
            let overrides = &mut oci.feature_overrides;
            if let Some(value) = entry.features.recursive_read_only_mounts {
                overrides.recursive_read_only_mounts = Some(value);
            }
            if let Some(value) = entry.features.user_namespaces {
                overrides.user_namespaces = Some(value);
            }
            Arc::new(crius_handler_runc::OciHandler::new(oci).await)
        }
        HandlerKind::Vm => build_vm(name, entry, config).await,
        HandlerKind::Plugin => build_plugin(name, entry, config).await,
    }
}

/// The VM shim's file name, looked for beside the daemon.
pub const VM_SHIM_BINARY: &str = "crius-kata-shim";

/// `crius-kata-shim` next to the running binary (the daemon, or a test
/// binary under `target/debug/deps`, whose parent holds the binaries).
pub fn default_vm_shim_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join(VM_SHIM_BINARY);
    if beside.exists() || dir.file_name().is_none_or(|n| n != "deps") {
        return beside;
    }
    dir.parent()
        .map(|p| p.join(VM_SHIM_BINARY))
        .unwrap_or(beside)
}

/// The per-handler directory handed to a handler as `HandlerParams.state_dir`.
fn handler_state_dir(name: &str, config: &Config) -> PathBuf {
    let state_dir = config.state_dir.join("plugins").join(name);
    if let Err(err) = crate::perms::ensure_private_dir(&state_dir) {
        tracing::warn!(handler = name, dir = %state_dir.display(), "creating the handler state dir: {err}");
    }
    state_dir
}

fn handler_params(
    name: &str,
    entry: &HandlerConfig,
    state_dir: &Path,
    options: serde_json::Map<String, serde_json::Value>,
) -> crius_shim_api::HandlerParams {
    crius_shim_api::HandlerParams {
        name: name.to_string(),
        state_dir: state_dir.display().to_string(),
        runtime_path: entry.runtime_path.display().to_string(),
        runtime_root: entry
            .runtime_root
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        options,
    }
}

/// A `kind: vm` entry: a shim handler like any other. The shim (`vm.shim_path`,
/// else `crius-kata-shim` beside the daemon) gets the `vm:` table as its
/// options and judges it; a table it refuses makes the handler unavailable
/// with the shim's message behind the table's position in the config.
async fn build_vm(name: &str, entry: &HandlerConfig, config: &Config) -> Arc<dyn RuntimeHandler> {
    let shim = entry.vm_shim_path().unwrap_or_else(default_vm_shim_path);
    let state_dir = handler_state_dir(name, config);
    let params = handler_params(
        name,
        entry,
        &state_dir,
        entry.vm.clone().unwrap_or_default(),
    );
    let timeout = call_limits(entry).run_sandbox;
    let built = crate::remote::RemoteHandler::new(&shim, params, &config.state_dir.join("shims"))
        .await
        .map(|h| Arc::new(h.with_run_sandbox_timeout(timeout)) as Arc<dyn RuntimeHandler>)
        .map_err(|err| match err {
            // The shim's verdict on the `vm:` table, located in the config.
            crate::remote::RemoteError::Info { error, .. }
                if error.kind == crius_shim_api::ErrorKind::InvalidArgument =>
            {
                format!(
                    "{}: runtime_handlers.{name}.vm: {}",
                    entry.vm_location.as_deref().unwrap_or("the config"),
                    error.message
                )
            }
            other => other.to_string(),
        });
    unavailable_unless_built(name, built)
}

fn unavailable_unless_built(
    name: &str,
    built: Result<Arc<dyn RuntimeHandler>, String>,
) -> Arc<dyn RuntimeHandler> {
    built.unwrap_or_else(|reason| {
        tracing::error!(handler = name, "cannot load the handler: {reason}");
        Arc::new(UnavailableHandler {
            name: name.to_string(),
            reason,
        })
    })
}

/// A third-party handler: a plugin library loaded into the daemon, or a shim
/// executable run once per pod. One that cannot be loaded is registered as
/// unavailable with the reason, and the daemon serves everything else.
async fn build_plugin(
    name: &str,
    entry: &HandlerConfig,
    config: &Config,
) -> Arc<dyn RuntimeHandler> {
    let plugin = entry.plugin.clone().unwrap_or_default();
    let state_dir = handler_state_dir(name, config);
    let params = handler_params(name, entry, &state_dir, plugin.options.clone());
    let run_sandbox_timeout = call_limits(entry).run_sandbox;
    let built = match plugin.mode {
        crate::config::PluginMode::Library => {
            crate::plugin::load_handler(&entry.runtime_path, params)
                .await
                .map_err(|e| e.to_string())
        }
        crate::config::PluginMode::Process => crate::remote::RemoteHandler::new(
            &entry.runtime_path,
            params,
            &config.state_dir.join("shims"),
        )
        .await
        .map(|h| {
            Arc::new(h.with_run_sandbox_timeout(run_sandbox_timeout)) as Arc<dyn RuntimeHandler>
        })
        .map_err(|e| e.to_string()),
    };
    unavailable_unless_built(name, built)
}

/// A configured handler this build cannot serve. It is listed in `Status`
/// so operators see it, reports why it is not ready, and every pod routed to
/// it fails with that reason.
struct UnavailableHandler {
    name: String,
    reason: String,
}

#[async_trait]
impl RuntimeHandler for UnavailableHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn check_ready(&self) -> Result<(), HandlerError> {
        Err(HandlerError::not_ready(&self.name, &self.reason))
    }

    // Pods routed here fail with the reason, not a generic "unimplemented".
    async fn run_sandbox(
        &self,
        _req: crius_shim_api::types::RunSandboxRequest,
    ) -> Result<crius_shim_api::types::RunSandboxResponse, HandlerError> {
        Err(HandlerError::not_ready(&self.name, &self.reason))
    }

    async fn create_container(
        &self,
        _req: crius_shim_api::types::CreateContainerRequest,
    ) -> Result<crius_shim_api::types::CreateContainerResponse, HandlerError> {
        Err(HandlerError::not_ready(&self.name, &self.reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> HandlerRegistry {
        let mut handlers: BTreeMap<String, Arc<dyn RuntimeHandler>> = BTreeMap::new();
        for name in ["runc", "kata"] {
            handlers.insert(
                name.to_string(),
                Arc::new(UnavailableHandler {
                    name: name.to_string(),
                    reason: "test".to_string(),
                }),
            );
        }
        HandlerRegistry::new("runc".to_string(), handlers)
    }

    #[test]
    fn empty_name_resolves_to_default() {
        assert_eq!(registry().resolve("").unwrap().name(), "runc");
        assert_eq!(registry().resolve("kata").unwrap().name(), "kata");
    }

    #[test]
    fn unknown_name_lists_known_handlers() {
        let err = registry().resolve("gvisor").err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown runtime handler \"gvisor\"; known handlers: kata, runc"
        );
    }
}
