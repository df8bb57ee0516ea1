//! Registered runtime handlers, by name, and routing of requests to them.
//!
//! Each entry of the config's handler table becomes one
//! `Arc<dyn RuntimeHandler>` registered under its RuntimeClass name. A new
//! pod's `runtime_handler` picks the entry of the current table; an empty
//! name picks the default.
//!
//! The table is swappable: a configuration reload (SIGHUP, see
//! `crate::config::ReloadPlan`) builds a new [`HandlerTable`], taking over
//! every handler whose entry did not change, and installs it in one step.
//! A pod is *bound* to the handler instance it was created (or, at start,
//! restored) with, and every later call for the pod goes to that instance,
//! also when its entry was changed or removed since: the pod and its
//! containers keep being served as they were until the pod is removed,
//! while new pods get the new table. A handler that is in no table any
//! more is dropped with its last pod.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
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

/// One handler of a table: the instance and the entry it was built from.
pub struct HandlerSlot {
    name: String,
    handler: Arc<dyn RuntimeHandler>,
    /// `None` for a handler registered without a config entry (tests).
    entry: Option<HandlerConfig>,
}

impl HandlerSlot {
    /// The RuntimeClass name the handler is registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn handler(&self) -> &Arc<dyn RuntimeHandler> {
        &self.handler
    }

    /// The config entry the handler was built from.
    pub fn entry(&self) -> Option<&HandlerConfig> {
        self.entry.as_ref()
    }
}

/// One generation of the handler table, with the configuration it was
/// built from (the daemon's running configuration while it is current).
pub struct HandlerTable {
    default: String,
    slots: BTreeMap<String, Arc<HandlerSlot>>,
    config: Arc<Config>,
}

/// What building a table changed against the previous one, by handler name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChanges {
    /// New or changed entries: a new handler instance.
    pub built: Vec<String>,
    /// Unchanged entries: the previous instance, taken over.
    pub kept: Vec<String>,
    /// Entries of the previous table that are gone.
    pub removed: Vec<String>,
}

impl HandlerTable {
    /// A table of `handlers`; `default` must be one of their names.
    pub fn new(
        default: String,
        handlers: BTreeMap<String, Arc<dyn RuntimeHandler>>,
        config: Arc<Config>,
    ) -> Self {
        let slots = handlers
            .into_iter()
            .map(|(name, handler)| {
                let entry = config.runtime_handlers.get(&name).cloned();
                let slot = HandlerSlot {
                    name: name.clone(),
                    handler,
                    entry,
                };
                (name, Arc::new(slot))
            })
            .collect();
        Self {
            default,
            slots,
            config,
        }
    }

    /// Builds the table of `config`. Entries that `previous` holds
    /// unchanged keep their handler instance; the others are built (as at
    /// start: one that cannot be built is registered as unavailable).
    pub async fn build(
        config: Arc<Config>,
        previous: Option<&HandlerTable>,
    ) -> (Self, TableChanges) {
        let mut changes = TableChanges::default();
        let mut slots = BTreeMap::new();
        for (name, entry) in &config.runtime_handlers {
            let kept = previous
                .and_then(|t| t.slots.get(name))
                .filter(|slot| slot.entry.as_ref().is_some_and(|e| same_entry(e, entry)));
            let slot = match kept {
                Some(slot) => {
                    changes.kept.push(name.clone());
                    slot.clone()
                }
                None => {
                    changes.built.push(name.clone());
                    let handler = build_handler(name, entry, &config).await;
                    let bounded =
                        crate::deadlines::DeadlineHandler::new(handler, call_limits(entry));
                    Arc::new(HandlerSlot {
                        name: name.clone(),
                        handler: Arc::new(bounded),
                        entry: Some(entry.clone()),
                    })
                }
            };
            slots.insert(name.clone(), slot);
        }
        if let Some(previous) = previous {
            changes.removed = previous
                .slots
                .keys()
                .filter(|name| !slots.contains_key(*name))
                .cloned()
                .collect();
        }
        let table = Self {
            default: config.default_runtime_handler.clone(),
            slots,
            config,
        };
        (table, changes)
    }

    /// The entry for a pod's `runtime_handler` (empty = the default).
    pub fn resolve(&self, requested: &str) -> Result<Arc<HandlerSlot>, UnknownHandler> {
        let name = if requested.is_empty() {
            self.default.as_str()
        } else {
            requested
        };
        self.slots.get(name).cloned().ok_or_else(|| UnknownHandler {
            requested: requested.to_string(),
            known: self.slots.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Name of the default handler.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// All handlers, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn RuntimeHandler>)> {
        self.slots
            .iter()
            .map(|(name, slot)| (name.as_str(), &slot.handler))
    }

    /// The configuration the table was built from.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }
}

/// Whether two entries build the same handler (where the entry was
/// written does not matter).
fn same_entry(a: &HandlerConfig, b: &HandlerConfig) -> bool {
    let unplaced = |h: &HandlerConfig| HandlerConfig {
        vm_location: None,
        ..h.clone()
    };
    unplaced(a) == unplaced(b)
}

/// The handler table of a running daemon: the current [`HandlerTable`],
/// and the handler each pod is bound to.
///
/// Neither lock is held across an await: the table is an `Arc` read out
/// (or swapped in) under the lock, and the bindings are a plain map.
pub struct HandlerRegistry {
    current: RwLock<Arc<HandlerTable>>,
    /// Pod id → the handler the pod was created or restored with.
    bound: Mutex<HashMap<String, Arc<HandlerSlot>>>,
}

impl HandlerRegistry {
    /// A registry of `handlers` (no config entries: tests); `default` must
    /// be one of their names.
    pub fn new(default: String, handlers: BTreeMap<String, Arc<dyn RuntimeHandler>>) -> Self {
        let config = Arc::new(Config {
            default_runtime_handler: default.clone(),
            runtime_handlers: BTreeMap::new(),
            ..Config::default()
        });
        Self::with_table(HandlerTable::new(default, handlers, config))
    }

    /// A registry whose current table is `table`.
    pub fn with_table(table: HandlerTable) -> Self {
        Self {
            current: RwLock::new(Arc::new(table)),
            bound: Mutex::new(HashMap::new()),
        }
    }

    /// Builds every handler of the config's table.
    pub async fn from_config(config: Arc<Config>) -> Self {
        Self::with_table(HandlerTable::build(config, None).await.0)
    }

    /// The current table.
    pub fn table(&self) -> Arc<HandlerTable> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The running configuration (the current table's).
    pub fn config(&self) -> Arc<Config> {
        self.table().config.clone()
    }

    /// Makes `table` the current one: new pods are routed by it from now
    /// on; pods bound to a handler of the previous table keep it. Returns
    /// the previous table.
    pub fn install(&self, table: HandlerTable) -> Arc<HandlerTable> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *current, Arc::new(table))
    }

    /// The handler a new pod asking for `requested` gets (empty = the
    /// default): the current table's. [`bind`](Self::bind) it to the pod.
    pub fn resolve(&self, requested: &str) -> Result<Arc<HandlerSlot>, UnknownHandler> {
        self.table().resolve(requested)
    }

    /// Serves pod `pod_id` with `slot` from now on, until [`unbind`](Self::unbind).
    pub fn bind(&self, pod_id: &str, slot: Arc<HandlerSlot>) {
        self.bindings().insert(pod_id.to_string(), slot);
    }

    /// Forgets pod `pod_id`'s binding (the pod is gone). A handler that is
    /// not in the current table is dropped with its last pod.
    pub fn unbind(&self, pod_id: &str) {
        let slot = self.bindings().remove(pod_id);
        drop(slot);
    }

    /// The handler serving existing pod `pod_id` of handler `name`: the one
    /// it is bound to, else (a pod whose handler was not in the table when
    /// the daemon started) the current table's entry `name`.
    pub fn for_pod(&self, pod_id: &str, name: &str) -> Result<Arc<HandlerSlot>, UnknownHandler> {
        let bound = self
            .bindings()
            .get(pod_id)
            .filter(|slot| slot.name == name)
            .cloned();
        match bound {
            Some(slot) => Ok(slot),
            None => self.table().resolve(name),
        }
    }

    /// The kind of handler `name`: the current table's entry, else that of
    /// a pod still bound to a handler of that name.
    pub fn kind_of(&self, name: &str) -> Option<HandlerKind> {
        let current = self
            .table()
            .slots
            .get(name)
            .and_then(|s| s.entry.as_ref().map(|e| e.kind));
        current.or_else(|| {
            self.bindings()
                .values()
                .find(|slot| slot.name == name)
                .and_then(|slot| slot.entry.as_ref().map(|e| e.kind))
        })
    }

    /// Handlers no longer in the current table (removed, or replaced by a
    /// changed entry) that still serve pods: name → how many pods.
    pub fn retired(&self) -> BTreeMap<String, usize> {
        let table = self.table();
        let mut out = BTreeMap::new();
        for slot in self.bindings().values() {
            let current = table
                .slots
                .get(&slot.name)
                .is_some_and(|s| Arc::ptr_eq(s, slot));
            if !current {
                *out.entry(slot.name.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    fn bindings(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<HandlerSlot>>> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner())
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
                    systemd_cgroup: false,
                }
            };
            oci.systemd_cgroup = config.cgroup_driver == crate::config::CgroupDriver::Systemd;
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
    config: &Config,
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
        cgroup_driver: match config.cgroup_driver {
            crate::config::CgroupDriver::Cgroupfs => "cgroupfs",
            crate::config::CgroupDriver::Systemd => "systemd",
        }
        .to_string(),
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
        config,
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
    let params = handler_params(name, config, entry, &state_dir, plugin.options.clone());
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

    fn handlers(names: &[&str]) -> BTreeMap<String, Arc<dyn RuntimeHandler>> {
        let mut handlers: BTreeMap<String, Arc<dyn RuntimeHandler>> = BTreeMap::new();
        for name in names {
            handlers.insert(
                name.to_string(),
                Arc::new(UnavailableHandler {
                    name: name.to_string(),
                    reason: "test".to_string(),
                }),
            );
        }
        handlers
    }

    fn registry() -> HandlerRegistry {
        HandlerRegistry::new("runc".to_string(), handlers(&["runc", "kata"]))
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

    #[test]
    fn a_pod_keeps_the_handler_it_was_bound_to_after_its_removal() {
        let registry = registry();
        let kata = registry.resolve("kata").unwrap();
        registry.bind("pod1", kata.clone());
        let retired = Arc::downgrade(&kata);
        drop(kata);
        let table = HandlerTable::new("runc".into(), handlers(&["runc"]), registry.config());
        drop(registry.install(table));

        // New pods cannot ask for it any more; the bound pod is served by it.
        assert!(registry.resolve("kata").is_err());
        let served = registry.for_pod("pod1", "kata").unwrap();
        assert!(Arc::ptr_eq(&served, &retired.upgrade().unwrap()));
        drop(served);
        assert_eq!(
            registry.retired(),
            BTreeMap::from([("kata".to_string(), 1)])
        );
        // An unbound pod of a removed handler finds nothing, as after a restart.
        assert!(registry.for_pod("pod2", "kata").is_err());

        // Its last pod gone, the handler is dropped.
        registry.unbind("pod1");
        assert!(retired.upgrade().is_none());
        assert!(registry.retired().is_empty());
        assert!(registry.for_pod("pod1", "kata").is_err());
    }

    #[test]
    fn a_changed_handler_serves_new_pods_and_its_old_instance_the_old_ones() {
        let registry = registry();
        let old = registry.resolve("runc").unwrap();
        registry.bind("old-pod", old.clone());
        let table = HandlerTable::new(
            "runc".into(),
            handlers(&["runc", "kata"]),
            registry.config(),
        );
        drop(registry.install(table));

        let new = registry.resolve("").unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(Arc::ptr_eq(
            &registry.for_pod("old-pod", "runc").unwrap(),
            &old
        ));
        registry.bind("new-pod", new.clone());
        assert!(Arc::ptr_eq(
            &registry.for_pod("new-pod", "runc").unwrap(),
            &new
        ));
        // A pod never bound (restored without its handler) gets the current one.
        assert!(Arc::ptr_eq(
            &registry.for_pod("other", "runc").unwrap(),
            &new
        ));
        assert_eq!(
            registry.retired(),
            BTreeMap::from([("runc".to_string(), 1)])
        );
    }

    fn plugin_entry(option: &str) -> HandlerConfig {
        HandlerConfig {
            kind: HandlerKind::Plugin,
            runtime_path: "/nonexistent/libhandler.so".into(),
            runtime_root: None,
            monitor_path: None,
            allowed_annotations: Vec::new(),
            default_annotations: BTreeMap::new(),
            privileged_without_host_devices: false,
            features: Default::default(),
            plugin: Some(crate::config::PluginConfig {
                mode: crate::config::PluginMode::Library,
                options: serde_json::Map::from_iter([("o".to_string(), option.into())]),
            }),
            vm: None,
            run_sandbox_timeout_seconds: None,
            call_timeout_seconds: None,
            vm_location: None,
        }
    }

    #[tokio::test]
    async fn a_rebuilt_table_keeps_the_instances_of_unchanged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            state_dir: dir.path().to_path_buf(),
            default_runtime_handler: "a".into(),
            ..Config::default()
        };
        config.runtime_handlers = BTreeMap::from([
            ("a".to_string(), plugin_entry("1")),
            ("b".to_string(), plugin_entry("1")),
            ("c".to_string(), plugin_entry("1")),
        ]);
        let (first, changes) = HandlerTable::build(Arc::new(config.clone()), None).await;
        assert_eq!(changes.built, ["a", "b", "c"]);

        let mut next = config.clone();
        next.runtime_handlers.remove("c");
        next.runtime_handlers.insert("b".into(), plugin_entry("2"));
        next.runtime_handlers.insert("d".into(), plugin_entry("1"));
        // Where an entry was written is no change.
        next.runtime_handlers.get_mut("a").unwrap().vm_location = Some("x.yaml:3:1".into());
        let (second, changes) = HandlerTable::build(Arc::new(next), Some(&first)).await;
        assert_eq!(
            changes,
            TableChanges {
                built: vec!["b".into(), "d".into()],
                kept: vec!["a".into()],
                removed: vec!["c".into()],
            }
        );
        let same = |name: &str| {
            Arc::ptr_eq(
                &first.resolve(name).unwrap(),
                &second.resolve(name).unwrap(),
            )
        };
        assert!(same("a"));
        assert!(!same("b"));
        assert_eq!(
            second
                .resolve("b")
                .unwrap()
                .entry()
                .unwrap()
                .plugin
                .as_ref()
                .unwrap()
                .options["o"],
            "2"
        );
        assert!(second.resolve("c").is_err());
    }
}
