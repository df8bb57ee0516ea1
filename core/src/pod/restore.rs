//! What a starting daemon does with the records a previous run left:
//! reattach to its pods, or, after a reboot, tear down what that boot left.
//!
//! Start-up is split so the CRI socket can be bound before the work:
//! [`PodManager::load`] reads the records (fast, no handler call), then
//! [`PodManager::restore_loaded`] restores every pod in parallel (each under
//! its pod lock) while the socket already answers; `crate::restore_gate`
//! holds the pod-touching RPCs until it is done, so none is answered from a
//! half-restored view.
//!
//! **Reboot.** Records, writable layers and the CNI attachment records live
//! under `root` (persistent); netns pins, runtime state and sockets under
//! `state_dir` (tmpfs, gone at reboot). `<state_dir>/boot_id` holds the
//! kernel's boot id of the run that wrote it. Records present while that
//! marker is missing (or names another boot) are a previous boot's: as
//! CRI-O does after a reboot, those pods are *removed*, not restored (their
//! processes, namespaces and mounts died with the old boot; the kubelet
//! creates its pods anew): CNI DEL with the saved result (IPAM leases are
//! released), writable layers and pod directories deleted, records
//! forgotten. The handlers are not asked (nothing they ran survived).
//!
//! **Runtime leftovers.** After the pods are settled, each OCI runtime's
//! state root is reconciled with the records: a container crius has no
//! record of, whose bundle is under crius's pods directory, is deleted
//! (`delete --force`); one with its bundle elsewhere (a runtime root shared
//! with another daemon by mistake) is left alone with a warning.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crius_shim_api::RuntimeHandler;
use crius_shim_api::types;
use futures::StreamExt;
use tracing::{info, warn};

use super::error::PodResult;
use super::store::{PodRecord, PodState};
use super::{GoneHandler, PodManager};
use crate::config::HandlerKind;

/// Pods restored (or torn down) at the same time.
const RESTORE_PARALLELISM: usize = 16;

/// The records as loaded, before any handler was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub pods: usize,
    pub containers: usize,
    /// The records are a previous boot's (see the module docs).
    pub after_reboot: bool,
}

/// What [`PodManager::restore_loaded`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub restored: usize,
    /// Pods caught mid-creation, or left by a previous boot, and removed.
    pub removed: usize,
    /// Runtime containers without a record, deleted.
    pub runtime_leftovers: usize,
}

/// The kernel's id of the running boot.
fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl PodManager {
    fn boot_marker(&self) -> PathBuf {
        self.config.state_dir.join("boot_id")
    }

    /// Loads the records from disk and tells whether they are a previous
    /// boot's. No handler is called.
    pub fn load(&self) -> PodResult<Loaded> {
        self.store.load()?;
        let pods = self.store.pods().len();
        let recorded = std::fs::read_to_string(self.boot_marker()).ok();
        let after_reboot =
            pods > 0 && recorded.as_deref().map(str::trim) != Some(current_boot_id().as_str());
        Ok(Loaded {
            pods,
            containers: self.store.containers().len(),
            after_reboot,
        })
    }

    /// Loads and restores in one go (what a caller without a socket to
    /// bind in between wants).
    pub async fn restore(self: &Arc<Self>) -> PodResult<RestoreReport> {
        let loaded = self.load()?;
        Ok(self.restore_loaded(loaded).await)
    }

    /// Restores (or, after a reboot, removes) every loaded pod, in
    /// parallel, then deletes runtime containers nobody has a record of and
    /// records this boot.
    pub async fn restore_loaded(self: &Arc<Self>, loaded: Loaded) -> RestoreReport {
        let started = Instant::now();
        let pods = self.store.pods();
        let outcomes: Vec<bool> = futures::stream::iter(pods)
            .map(|rec| {
                let this = self.clone();
                async move {
                    // Each pod on its own task: a slow one (a VM, a stuck
                    // runtime) must not hold the others up.
                    let task = tokio::spawn(async move {
                        let id = rec.id.clone();
                        let _guard = this.lock_pod(&id).await;
                        if loaded.after_reboot {
                            this.remove_previous_boot_pod(rec).await;
                            false
                        } else {
                            this.restore_pod(rec).await
                        }
                    });
                    task.await.unwrap_or(false)
                }
            })
            .buffer_unordered(RESTORE_PARALLELISM)
            .collect()
            .await;
        let restored = outcomes.iter().filter(|kept| **kept).count();
        let removed = outcomes.len() - restored;
        let runtime_leftovers = self.delete_runtime_leftovers().await;
        self.remove_stray_netns_pins().await;
        // state_dir exists (the daemon made it, 0711, before loading).
        if let Err(e) = tokio::fs::write(self.boot_marker(), current_boot_id()).await {
            warn!(path = %self.boot_marker().display(), error = %e, "cannot record the boot id; the next start may take the pods for a previous boot's");
        }
        info!(
            restored,
            removed,
            runtime_leftovers,
            after_reboot = loaded.after_reboot,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pods restored"
        );
        RestoreReport {
            restored,
            removed,
            runtime_leftovers,
        }
    }

    /// A pod of the previous boot: everything the core holds for it is
    /// released (CNI DEL with the saved result first) and it is forgotten.
    async fn remove_previous_boot_pod(&self, mut rec: PodRecord) {
        warn!(pod_id = %rec.id, handler = %rec.handler, "pod is from a previous boot; removing it");
        let gone = GoneHandler(rec.handler.clone());
        if let Err(e) = self.teardown_pod(&mut rec, &gone).await {
            // Kept (with what is left) so RemovePodSandbox can finish it.
            warn!(pod_id = %rec.id, error = %e, "removing a previous boot's pod left something; kept as not ready");
            rec.state = PodState::NotReady;
            if rec.dir.exists() {
                let _ = self.store.save_pod(&rec).await;
            }
            return;
        }
        self.store.forget_pod(&rec);
        self.drop_lock(&rec.id);
    }

    /// Lets the pod's handler reattach; pods caught mid-creation are torn
    /// down. `true` when the pod is kept.
    async fn restore_pod(&self, mut rec: PodRecord) -> bool {
        let handler = match self.bind_restored(&rec) {
            Ok(h) => h,
            Err(e) => {
                warn!(pod_id = %rec.id, handler = %rec.handler, error = %e, "pod's handler is gone; pod marked not ready");
                rec.state = PodState::NotReady;
                let _ = self.store.save_pod(&rec).await;
                return true;
            }
        };
        let creating = rec.state == PodState::Creating;
        if rec.cni_attached && rec.cni_record.as_deref().is_none_or(|p| !p.exists()) {
            // The daemon died during CNI ADD: its plugins may still run.
            kill_leftover_cni_plugins(&rec.id).await;
        }
        if creating && !rec.handler_started {
            warn!(pod_id = %rec.id, "pod was being created when the daemon stopped; removing it");
            self.undo_pod(&mut rec, handler.as_ref()).await;
            return false;
        }
        // Containers caught mid-creation never reached the handler: only
        // their rootfs and bundle exist.
        for c in self
            .store
            .containers_of(&rec.id)
            .into_iter()
            .filter(|c| !c.handler_created)
        {
            warn!(pod_id = %rec.id, container_id = %c.id, "container was being created when the daemon stopped; removing it");
            if let Err(e) = self.remove_container_resources(&c, handler.as_ref()).await {
                warn!(pod_id = %rec.id, container_id = %c.id, error = %e, "removing a half-created container failed");
            }
        }
        let restored = self.restore_in_handler(&rec, handler.as_ref()).await;
        if creating {
            // The handler may have started the infra before the crash;
            // restoring first lets it find and stop what it made.
            warn!(pod_id = %rec.id, restored = restored.is_ok(), "pod was being created when the daemon stopped; removing it");
            self.undo_pod(&mut rec, handler.as_ref()).await;
            return false;
        }
        match restored {
            Ok(resp) => {
                if !resp.ready && rec.state == PodState::Ready {
                    warn!(pod_id = %rec.id, "pod's infra is gone after restart; marked not ready");
                    rec.state = PodState::NotReady;
                    let _ = self.store.save_pod(&rec).await;
                }
                info!(pod_id = %rec.id, handler = %rec.handler, ready = resp.ready, "pod restored");
            }
            Err(e) => {
                warn!(pod_id = %rec.id, handler = %rec.handler, error = %e, "handler could not restore pod; marked not ready");
                if rec.state == PodState::Ready {
                    rec.state = PodState::NotReady;
                    let _ = self.store.save_pod(&rec).await;
                }
            }
        }
        true
    }

    async fn restore_in_handler(
        &self,
        rec: &PodRecord,
        handler: &dyn RuntimeHandler,
    ) -> crius_shim_api::HandlerResult<types::RestoreSandboxResponse> {
        let containers = self
            .store
            .containers_of(&rec.id)
            .into_iter()
            .filter(|c| c.handler_created)
            .map(|c| types::RestoreContainer {
                container_id: c.id.clone(),
                bundle_dir: c.bundle_dir.display().to_string(),
                log_path: c.log_path.clone(),
                handler_state: c.handler_state.clone(),
            })
            .collect();
        handler
            .restore_sandbox(types::RestoreSandboxRequest {
                sandbox_id: rec.id.clone(),
                state_dir: rec.handler_dir.display().to_string(),
                handler_state: rec.handler_state.clone(),
                containers,
                config: Some(rec.config.clone()),
            })
            .await
    }

    /// Removes namespace pins (`<state_dir>/{netns,userns}/<pod id>`) no
    /// pod record names: a crash between pinning a pod's namespaces and
    /// recording them leaves pins the pod's teardown does not know of.
    async fn remove_stray_netns_pins(&self) {
        let dirs = [
            self.config.state_dir.join("netns"),
            self.config.state_dir.join("userns"),
        ];
        let known: HashSet<String> = self.store.pods().into_iter().map(|p| p.id).collect();
        let _ = super::blocking("removing stray namespace pins", move || {
            for dir in &dirs {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if known.contains(&name) {
                        continue;
                    }
                    match crate::sandbox::netns::remove_path(&entry.path()) {
                        Ok(()) => warn!(path = %entry.path().display(), "removed a namespace pin no pod record names"),
                        Err(e) => warn!(path = %entry.path().display(), error = %e, "cannot remove a stray namespace pin"),
                    }
                }
            }
            Ok(())
        })
        .await;
    }

    /// Deletes, in every OCI handler's runtime state root, the containers
    /// no pod or container record names. Returns how many were deleted.
    async fn delete_runtime_leftovers(&self) -> usize {
        let mut known: HashSet<String> = self.store.pods().into_iter().map(|p| p.id).collect();
        known.extend(self.store.containers().into_iter().map(|c| c.id));
        let mut deleted = 0;
        for (name, entry) in &self.config.runtime_handlers {
            if entry.kind != HandlerKind::Oci {
                continue;
            }
            let root = entry
                .runtime_root
                .clone()
                .unwrap_or_else(|| self.config.state_dir.join(name));
            let runtime = oci_runtime(&entry.runtime_path, &root);
            let pods_dir = self.store.root().to_path_buf();
            let gone = crius_handler_runc::delete_unknown_containers(
                &runtime,
                &|id| known.contains(id),
                &|bundle| bundle.starts_with(&pods_dir),
            )
            .await;
            if !gone.is_empty() {
                warn!(handler = %name, root = %root.display(), deleted = ?gone, "deleted runtime containers crius had no record of");
            }
            deleted += gone.len();
        }
        deleted
    }
}

/// Kills the CNI plugins a previous run started for `pod_id` (found by the
/// `CNI_CONTAINERID` they run with; an IPAM plugin inherits it from its
/// caller) and waits until none is left. A plugin outliving the killed
/// daemon would otherwise finish its ADD after the teardown's DEL and keep
/// the pod's IP lease forever.
async fn kill_leftover_cni_plugins(pod_id: &str) {
    const ROUNDS: u32 = 100;
    const WAIT: std::time::Duration = std::time::Duration::from_millis(20);
    let needle = format!("CNI_CONTAINERID={pod_id}").into_bytes();
    let mut killed = 0u32;
    for _ in 0..ROUNDS {
        let needle = needle.clone();
        let found = super::blocking("looking for leftover CNI plugins", move || {
            Ok(processes_with_env(&needle))
        })
        .await
        .unwrap_or_default();
        if found.is_empty() {
            break;
        }
        for pid in found {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        tokio::time::sleep(WAIT).await;
    }
    if killed > 0 {
        warn!(
            pod_id,
            killed, "killed CNI plugins a previous run left running for the pod"
        );
    }
}

/// Pids (not ours, not init) whose environment holds `entry` exactly.
fn processes_with_env(entry: &[u8]) -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid > 1 && pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == entry))
        })
        .collect()
}

fn oci_runtime(path: &Path, root: &Path) -> crius_handler_runc::OciRuntime {
    crius_handler_runc::OciRuntime::new(
        path,
        root,
        Arc::new(crius_handler_runc::TokioCommandRunner),
    )
}
