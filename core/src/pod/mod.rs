//! The pod and container lifecycle: what RunPodSandbox, CreateContainer and
//! friends do, on top of the sandbox plumbing (`crate::sandbox`), image
//! rootfs (`crate::rootfs`), OCI specs (`crate::spec`) and the runtime
//! handlers. Records persist in [`store`] so pods outlive the daemon.
//!
//! Concurrency: one async lock per pod serializes the lifecycle operations
//! of that pod and its containers (a container operation takes its pod's
//! lock); different pods proceed in parallel. Status, list and exec calls
//! do not take the lock.

mod checkpoint;
mod container;
pub mod error;
pub mod files;
mod image_volumes;
mod interactive;
pub mod metrics;
mod notify;
mod resize;
mod restore;
mod sandbox;
mod stats;
pub mod store;
mod teardown;
mod userns;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use crius_proto::cri;
use crius_shim_api::{ErrorKind, RuntimeHandler};

use crate::config::{Config, HandlerConfig};
use crate::handlers::HandlerRegistry;
use crate::image::{ImageManager, ImageUsage};
use crate::sandbox::CgroupLayout;

pub use error::{PodError, PodResult};
pub use interactive::{AttachSpec, ExecSpec, ProcessControl, ProcessStreams};
pub use restore::{Loaded, RestoreReport};
pub use store::{ContainerRecord, PodRecord, PodState, Store};

/// Where the pause binary is taken from when the config does not say.
pub const DEFAULT_CATATONIT: &str = "/usr/bin/catatonit";

/// The daemon's own `oom_score_adj`: the floor for restricted containers
/// (0 when it cannot be read, the kernel's default).
fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs pods and containers through the runtime handlers.
pub struct PodManager {
    config: Arc<Config>,
    handlers: Arc<HandlerRegistry>,
    images: Arc<ImageManager>,
    cgroups: CgroupLayout,
    store: Arc<Store>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes building the shared infra rootfs.
    infra_rootfs: Mutex<Option<PathBuf>>,
    catatonit: PathBuf,
    /// Floor for containers' `oom_score_adj` (`restrict_oom_score_adj`).
    min_oom_score_adj: Option<i32>,
    /// Lifecycle events for GetContainerEvents.
    events: Arc<crate::events::EventBus>,
    /// CPU samples and writable-layer usage between stats calls.
    stats: stats::StatsState,
    /// Whether pods can run in user namespaces here (probed once).
    userns_probe: tokio::sync::OnceCell<Result<(), String>>,
    /// Itself, for the tasks it spawns (exit watchers).
    me: Weak<PodManager>,
}

impl PodManager {
    /// A manager over the records under `<root>/pods` (persistent, with the
    /// containers' writable layers; not loaded yet: call
    /// [`PodManager::restore`], or [`PodManager::load`] then
    /// [`PodManager::restore_loaded`]).
    pub fn new(
        config: Arc<Config>,
        handlers: Arc<HandlerRegistry>,
        images: Arc<ImageManager>,
        cgroups: CgroupLayout,
    ) -> Arc<Self> {
        let store = Arc::new(Store::new(config.root.join("pods")));
        let catatonit = config.pause.catatonit_path.clone();
        let min_oom_score_adj = config.restrict_oom_score_adj.then(own_oom_score_adj);
        let manager = Arc::new_cyclic(|me| Self {
            config,
            handlers,
            images,
            cgroups,
            store,
            locks: Mutex::new(HashMap::new()),
            infra_rootfs: Mutex::new(None),
            catatonit,
            min_oom_score_adj,
            events: Default::default(),
            stats: Default::default(),
            userns_probe: Default::default(),
            me: me.clone(),
        });
        manager
            .images
            .set_usage(Arc::new(StoreUsage(manager.store.clone())));
        manager
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The cgroup driver (fixed at start: a reload does not change it).
    pub fn cgroup_driver(&self) -> crate::config::CgroupDriver {
        self.config.cgroup_driver
    }

    /// The per-pod lifecycle lock.
    async fn lock_pod(&self, pod_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(pod_id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Forgets a removed pod's lock and its handler binding.
    fn drop_lock(&self, pod_id: &str) {
        self.handlers.unbind(pod_id);
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod_id);
    }

    /// The full id of the pod `id` names (a full id or a unique prefix).
    fn known_pod_id(&self, id: &str) -> PodResult<String> {
        self.store.find_pod_id(id).ok_or_else(|| {
            PodError::NotFound(format!(
                "pod sandbox {:?} not found",
                crate::bounded::bounded(id)
            ))
        })
    }

    /// The record of the pod `id` names (a full id or a unique prefix).
    fn known_pod(&self, id: &str) -> PodResult<PodRecord> {
        let full = self.known_pod_id(id)?;
        self.store
            .pod(&full)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {full:?} not found")))
    }

    /// The handler serving existing pod `pod_id` of handler `name`: the
    /// instance the pod was created (or restored) with, also after a
    /// reload changed or removed its entry (see [`crate::handlers`]).
    fn handler(&self, pod_id: &str, name: &str) -> PodResult<Arc<dyn RuntimeHandler>> {
        Ok(self.handlers.for_pod(pod_id, name)?.handler().clone())
    }

    /// The handler a pod restored at start reattaches through: the current
    /// table's entry for its name, bound to the pod from now on.
    fn bind_restored(&self, pod: &PodRecord) -> PodResult<Arc<dyn RuntimeHandler>> {
        let slot = self.handlers.for_pod(&pod.id, &pod.handler)?;
        let handler = slot.handler().clone();
        self.handlers.bind(&pod.id, slot);
        Ok(handler)
    }

    /// The pod's handler for stop/remove; a handler no longer in the
    /// configuration (and not bound to the pod) becomes [`GoneHandler`], so
    /// the core's own resources (network, cgroup, mounts, records) can
    /// still be released.
    fn handler_for_teardown(&self, pod_id: &str, name: &str) -> Arc<dyn RuntimeHandler> {
        match self.handlers.for_pod(pod_id, name) {
            Ok(slot) => slot.handler().clone(),
            Err(e) => {
                tracing::warn!(handler = %name, error = %e, "handler is gone; releasing the core's resources only");
                Arc::new(GoneHandler(name.to_string()))
            }
        }
    }

    /// The config entry of the handler serving pod `pod_id`.
    fn handler_config(&self, pod_id: &str, name: &str) -> Option<HandlerConfig> {
        let slot = self.handlers.for_pod(pod_id, name).ok()?;
        slot.entry().cloned()
    }

    /// The configured kind of handler `name` (the current table's entry,
    /// else that of pods still on a removed handler of that name).
    pub fn handler_kind(&self, name: &str) -> Option<crate::config::HandlerKind> {
        self.handlers.kind_of(name)
    }

    /// The running configuration: the keys a reload applies (CNI, CDI and
    /// hook dirs) are read from it; `self.config` is what the daemon
    /// started with, for the keys that need a restart.
    fn live_config(&self) -> Arc<Config> {
        self.handlers.config()
    }

    /// Pod annotations the handler's allowlist admits, plus its defaults
    /// for keys the pod does not set.
    fn handler_annotations(
        &self,
        pod_id: &str,
        handler: &str,
        pod: &HashMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(hc) = self.handler_config(pod_id, handler) else {
            return out;
        };
        for (k, v) in pod {
            let allowed = hc
                .allowed_annotations
                .iter()
                .any(|a| match a.strip_suffix('*') {
                    Some(prefix) => k.starts_with(prefix),
                    None => a == k,
                });
            if allowed {
                out.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &hc.default_annotations {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
        out
    }
}

/// Stands in for a handler removed from the configuration while it still
/// had pods: stop and remove succeed without doing anything (whatever that
/// handler ran is out of reach), everything else fails.
struct GoneHandler(String);

#[async_trait::async_trait]
impl RuntimeHandler for GoneHandler {
    fn name(&self) -> &str {
        &self.0
    }
    fn capabilities(&self) -> crius_shim_api::types::Capabilities {
        Default::default()
    }
    async fn check_ready(&self) -> crius_shim_api::HandlerResult<()> {
        Err(crius_shim_api::HandlerError::not_ready(
            &self.0,
            "not in the configuration any more",
        ))
    }
    async fn stop_sandbox(
        &self,
        _: crius_shim_api::types::SandboxRef,
    ) -> crius_shim_api::HandlerResult<()> {
        Ok(())
    }
    async fn remove_sandbox(
        &self,
        _: crius_shim_api::types::SandboxRef,
    ) -> crius_shim_api::HandlerResult<()> {
        Ok(())
    }
    async fn stop_container(
        &self,
        _: crius_shim_api::types::StopContainerRequest,
    ) -> crius_shim_api::HandlerResult<()> {
        Ok(())
    }
    async fn remove_container(
        &self,
        _: crius_shim_api::types::ContainerRef,
    ) -> crius_shim_api::HandlerResult<()> {
        Ok(())
    }
}

/// Tells the image manager which containers use an image.
struct StoreUsage(Arc<Store>);

impl ImageUsage for StoreUsage {
    fn users_of(&self, image_id: &str) -> Vec<String> {
        self.0.users_of_image(image_id)
    }
}

/// The namespace mode the pod asks for (network, pid, ipc).
fn ns_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn is_node(mode: i32) -> bool {
    mode == cri::NamespaceMode::Node as i32
}

/// Runs blocking filesystem work (removing trees, unmounting with retries)
/// on tokio's blocking pool, so a slow disk never stalls the executor. A
/// panic in `work` is re-raised here, as a direct call would have done.
async fn blocking<R: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> PodResult<R> + Send + 'static,
) -> PodResult<R> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(PodError::io(what.to_string(), std::io::Error::other(e))),
    }
}

/// A handler error whose kind says "already gone": fine for stop/remove.
fn is_gone(err: &crius_shim_api::HandlerError) -> bool {
    err.kind == ErrorKind::NotFound
}

/// Label selector match: every selector pair must be present.
fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selector() {
        let labels: HashMap<String, String> =
            [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        assert!(labels_match(&labels, &HashMap::new()));
        assert!(labels_match(&labels, &[("a".into(), "1".into())].into()));
        assert!(!labels_match(&labels, &[("a".into(), "2".into())].into()));
        assert!(!labels_match(&labels, &[("c".into(), "1".into())].into()));
    }
}
