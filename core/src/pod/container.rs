//! CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ContainerStatus, ListContainers, UpdateContainerResources,
//! ReopenContainerLog and ExecSync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crius_proto::cri;
use crius_shim_api::types;
use crius_shim_api::{ErrorKind, RuntimeHandler};
use tracing::{info, warn};

use super::error::{PodError, PodResult};
use super::image_volumes::unmount_image_volumes;
use super::store::{ContainerRecord, PodRecord, PodState, new_id, now_nanos};
use super::userns::remove_userns_container_dir;
use super::{PodManager, files, is_gone, labels_match};
use crate::bounded::bounded;
use crate::rootfs;
use crate::spec::{self, ContainerSpecInput, PodNamespaces};
use crius_proto::cri::ContainerEventType as Event;

/// What the handler says about a container, or UNKNOWN when it cannot tell.
fn unknown_status() -> types::ContainerStatusResponse {
    types::ContainerStatusResponse {
        state: types::ContainerState::Unknown as i32,
        ..Default::default()
    }
}

impl PodManager {
    pub(super) fn container_record(&self, id: &str) -> PodResult<ContainerRecord> {
        self.store
            .find_container_id(id)
            .and_then(|id| self.store.container(&id))
            .ok_or_else(|| PodError::NotFound(format!("container {:?} not found", bounded(id))))
    }

    pub(super) fn container_ref(c: &ContainerRecord) -> types::ContainerRef {
        types::ContainerRef {
            sandbox_id: c.pod_id.clone(),
            container_id: c.id.clone(),
        }
    }

    /// The handler's view of a container's state.
    async fn handler_status(&self, c: &ContainerRecord) -> types::ContainerStatusResponse {
        let Some(pod) = self.store.pod(&c.pod_id) else {
            return unknown_status();
        };
        let Ok(handler) = self.handler(&pod.id, &pod.handler) else {
            return unknown_status();
        };
        match handler.container_status(Self::container_ref(c)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(container_id = %c.id, error = %e, "container status from handler failed");
                unknown_status()
            }
        }
    }

    /// CreateContainer: returns the new container's id. On failure nothing
    /// is left (no mount, bundle, record or runtime container).
    pub async fn create_container(&self, req: cri::CreateContainerRequest) -> PodResult<String> {
        let config = req.config.ok_or_else(|| {
            PodError::InvalidArgument("CreateContainer: config is required".into())
        })?;
        let meta = config.metadata.clone().ok_or_else(|| {
            PodError::InvalidArgument("CreateContainer: config.metadata is required".into())
        })?;
        if meta.name.is_empty() {
            return Err(PodError::InvalidArgument(
                "CreateContainer: metadata.name is required".into(),
            ));
        }
        crate::bounded::check_name_length("metadata.name", &meta.name)
            .map_err(|e| PodError::InvalidArgument(format!("CreateContainer: {e}")))?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                PodError::InvalidArgument("CreateContainer: config.image is required".into())
            })?;
        let pod_id = self.known_pod_id(&req.pod_sandbox_id)?;
        let _guard = self.lock_pod(&pod_id).await;
        let pod = self
            .store
            .pod(&pod_id)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {pod_id:?} not found")))?;
        if pod.state != PodState::Ready {
            return Err(PodError::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready; containers can only be created in a ready pod"
            )));
        }
        let handler = self.handler(&pod.id, &pod.handler)?;

        let (image, layers) = self.image_with_layers(&image_name, || {
            format!("image {image_name:?} not found; pull it first")
        })?;
        let defaults = image.config.config.clone();

        // Checked before anything is reserved or created.
        let log_path = confined_log_path(&pod.config.log_directory, &config.log_path)?;
        let resources = config.linux.as_ref().and_then(|l| l.resources.clone());
        if let Some(r) = &resources {
            spec::validate_resources(r)?;
        }

        let id = new_id()?;
        let name = format!("{pod_id}/{}_{}", meta.name, meta.attempt);
        self.store.reserve(&name, &id, "container")?;
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod_id.clone(),
            name,
            created_at: now_nanos(),
            config,
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            image_id: image.id.clone(),
            image_volume_ids: Vec::new(),
            image_name,
            bundle_dir: pod.containers_dir().join(&id),
            rootfs: None,
            log_path,
            handler_created: false,
            handler_state: Vec::new(),
            resources,
            user: None,
        };
        let started = std::time::Instant::now();
        match self
            .setup_container(&mut rec, &pod, handler.as_ref(), &layers, &defaults)
            .await
        {
            Ok(()) => {
                info!(pod_id = %pod_id, container_id = %id, handler = %pod.handler, image = %rec.image_id,
                    elapsed_ms = started.elapsed().as_millis() as u64, "container created");
                self.publish(&id, &pod_id, Event::ContainerCreatedEvent, None)
                    .await;
                Ok(id)
            }
            Err(e) => {
                warn!(pod_id = %pod_id, container_id = %id, error = %e, "CreateContainer failed; rolling back");
                if let Err(undo) = self
                    .remove_container_resources(&rec, handler.as_ref())
                    .await
                {
                    warn!(container_id = %id, error = %undo, "rollback of the container left something behind");
                }
                self.store.release(&rec.name, &rec.id);
                Err(e)
            }
        }
    }

    /// `dir/rootfs` from the image `layers` with the configured storage
    /// driver, on the blocking pool (vfs copies the whole image).
    /// `idmap`: for pods in a user namespace.
    pub(super) async fn prepare_rootfs(
        &self,
        layers: Vec<PathBuf>,
        dir: PathBuf,
        idmap: Option<super::userns::ContainerIdmap>,
    ) -> PodResult<rootfs::Overlay> {
        let driver = self.config.storage_driver;
        super::blocking("preparing a container rootfs", move || {
            let idmap = idmap.as_ref().map(|i| rootfs::Idmap {
                userns: &i.userns,
                mount_point: &i.mount_point,
                root_owner: i.root_owner,
            });
            Ok(rootfs::prepare(driver, &layers, &dir, idmap.as_ref())?)
        })
        .await
    }

    async fn setup_container(
        &self,
        rec: &mut ContainerRecord,
        pod: &PodRecord,
        handler: &dyn RuntimeHandler,
        layers: &[PathBuf],
        defaults: &crate::image::ContainerDefaults,
    ) -> PodResult<()> {
        // CDI devices first: an unknown device fails before anything exists.
        let cdi_names = spec::cdi::requested(&rec.config.cdi_devices, &rec.config.annotations);
        let cdi = if cdi_names.is_empty() {
            None
        } else {
            let dirs = self.live_config().cdi_spec_dirs.clone();
            let registry = tokio::task::spawn_blocking(move || spec::cdi::CdiRegistry::load(&dirs))
                .await
                .map_err(|e| PodError::io("reading CDI specs", std::io::Error::other(e)))?;
            registry.apply(&mut oci_spec::runtime::Spec::default(), &cdi_names)?;
            Some(registry)
        };
        // Root only: it holds the container's config (env) and its writable
        // layer (`upper`, which keeps the image's modes for the container).
        crate::perms::ensure_private_dir(&rec.bundle_dir)
            .map_err(|e| PodError::io(format!("creating {}", rec.bundle_dir.display()), e))?;
        // Recorded before mounting so a crash right after still unmounts.
        rec.rootfs = Some(match self.container_idmap(pod, &rec.id) {
            Some(idmap) => idmap.mount_point,
            None => rec.bundle_dir.join("rootfs"),
        });
        self.store.save_container(rec).await?;
        let overlay = self
            .prepare_rootfs(
                layers.to_vec(),
                rec.bundle_dir.clone(),
                self.container_idmap(pod, &rec.id),
            )
            .await?;
        rec.rootfs = Some(overlay.mount_point.clone());
        let config = self.mount_image_volumes(rec).await?;
        let config = self.idmap_volumes(&rec.id, pod, config).await?;

        let caps = handler.capabilities();
        let namespaces = PodNamespaces {
            netns_path: pod.netns_path.clone(),
            infra_pid: (pod.infra_pid != 0).then_some(pod.infra_pid),
            userns: pod.userns(),
        };
        let cgroups_path = pod.container_cgroups_path(&rec.id);
        let pod_files = Self::pod_files(pod);
        let privileged_without_host_devices = self
            .handler_config(&pod.id, &pod.handler)
            .map(|h| h.privileged_without_host_devices)
            .unwrap_or(false);
        let mut spec = spec::container_spec(&ContainerSpecInput {
            container_id: &rec.id,
            sandbox_id: &pod.id,
            config: &config,
            sandbox_config: &pod.config,
            image: defaults,
            rootfs: &overlay.mount_point,
            namespaces: &namespaces,
            cgroups_path: &cgroups_path,
            pod_files: &pod_files,
            capabilities: &caps,
            privileged_without_host_devices,
            min_oom_score_adj: self.min_oom_score_adj,
        })?;
        if let Some(registry) = &cdi {
            registry.apply(&mut spec, &cdi_names)?;
        }
        let hook_dirs = self.live_config().hooks_dirs.clone();
        let hooks =
            tokio::task::spawn_blocking(move || spec::hooks::HookRegistry::load(&hook_dirs))
                .await
                .map_err(|e| PodError::io("reading OCI hooks", std::io::Error::other(e)))?;
        hooks.apply(&mut spec, !rec.config.mounts.is_empty())?;
        rec.user = spec.process().as_ref().map(|p| {
            let user = p.user();
            super::store::ContainerUser {
                uid: user.uid(),
                gid: user.gid(),
                groups: user.additional_gids().clone().unwrap_or_default(),
            }
        });
        let oci_spec = spec::write_spec(&rec.bundle_dir, &spec)?;

        if !rec.log_path.is_empty()
            && let Some(parent) = Path::new(&rec.log_path).parent()
        {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                PodError::io(format!("creating log directory {}", parent.display()), e)
            })?;
        }

        rec.handler_created = true;
        self.store.save_container(rec).await?;
        let response = handler
            .create_container(types::CreateContainerRequest {
                sandbox_id: pod.id.clone(),
                container_id: rec.id.clone(),
                config: Some(rec.config.clone()),
                bundle: Some(types::Bundle {
                    dir: rec.bundle_dir.display().to_string(),
                    oci_spec,
                    rootfs: Some(types::Rootfs {
                        lower_dirs: overlay
                            .lower_dirs
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect(),
                        upper_dir: overlay.upper_dir.display().to_string(),
                        work_dir: overlay.work_dir.display().to_string(),
                        mount_point: overlay.mount_point.display().to_string(),
                    }),
                }),
                log_path: rec.log_path.clone(),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .map_err(|e| {
                PodError::handler(
                    format!(
                        "handler {} could not create container {}",
                        pod.handler, rec.id
                    ),
                    e,
                )
            })?;
        rec.handler_state = response.handler_state;
        self.store.save_container(rec).await?;
        Ok(())
    }

    /// Stops (at once), removes from the handler, unmounts and deletes a
    /// container and its record. Idempotent.
    pub(super) async fn remove_container_resources(
        &self,
        c: &ContainerRecord,
        handler: &dyn RuntimeHandler,
    ) -> PodResult<()> {
        if c.handler_created {
            let stop = types::StopContainerRequest {
                sandbox_id: c.pod_id.clone(),
                container_id: c.id.clone(),
                timeout_seconds: 0,
            };
            if let Err(e) = handler.stop_container(stop).await
                && !is_gone(&e)
            {
                return Err(PodError::handler(format!("stopping container {}", c.id), e));
            }
            if let Err(e) = handler.remove_container(Self::container_ref(c)).await
                && !is_gone(&e)
            {
                return Err(PodError::handler(format!("removing container {}", c.id), e));
            }
        }
        // The writable layer can hold gigabytes: unmount and delete it off
        // the executor.
        let rootfs = c.rootfs.clone();
        let bundle_dir = c.bundle_dir.clone();
        let (state_dir, pod_id, container_id) = (
            self.config.state_dir.clone(),
            c.pod_id.clone(),
            c.id.clone(),
        );
        super::blocking("removing a container's rootfs and bundle", move || {
            if let Some(rootfs) = &rootfs {
                rootfs::unmount(rootfs)?;
            }
            unmount_image_volumes(&bundle_dir)?;
            remove_userns_container_dir(&state_dir, &pod_id, &container_id)?;
            files::remove_dir_safely(&bundle_dir)
        })
        .await?;
        self.store.forget_container(c).await?;
        Ok(())
    }

    /// The container and its pod's handler, with the pod locked.
    async fn locked_container(
        &self,
        id: &str,
    ) -> PodResult<(
        ContainerRecord,
        std::sync::Arc<dyn RuntimeHandler>,
        tokio::sync::OwnedMutexGuard<()>,
    )> {
        let c = self.container_record(id)?;
        let guard = self.lock_pod(&c.pod_id).await;
        // Re-read under the lock: it may have been removed meanwhile.
        let c = self.container_record(&c.id)?;
        let pod = self.store.pod(&c.pod_id).ok_or_else(|| {
            PodError::NotFound(format!(
                "pod sandbox {} of container {} not found",
                c.pod_id, c.id
            ))
        })?;
        Ok((c, self.handler(&pod.id, &pod.handler)?, guard))
    }

    pub async fn start_container(&self, id: &str) -> PodResult<()> {
        let (c, handler, _guard) = self.locked_container(id).await?;
        let status = self.handler_status(&c).await;
        if status.state != types::ContainerState::Created as i32 {
            return Err(PodError::FailedPrecondition(format!(
                "container {} is not in the created state (state {})",
                c.id,
                state_name(status.state)
            )));
        }
        handler
            .start_container(Self::container_ref(&c))
            .await
            .map_err(|e| PodError::handler(format!("starting container {}", c.id), e))?;
        info!(pod_id = %c.pod_id, container_id = %c.id, "container started");
        self.publish(&c.id, &c.pod_id, Event::ContainerStartedEvent, None)
            .await;
        self.watch_exit(&c, handler);
        Ok(())
    }

    /// StopContainer: SIGTERM, SIGKILL after `timeout` seconds. Stopping a
    /// stopped container is fine.
    ///
    /// Does not take the pod lock: the kubelet stops a pod's containers in
    /// parallel, each with its grace period, and they must not queue behind
    /// each other. The handler serializes what it does per container, and
    /// stop is idempotent against a concurrent pod stop/remove.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> PodResult<()> {
        // Idempotent like StopPodSandbox: the kubelet retries a stop after
        // the container is gone (removed, or torn down with its pod).
        let Ok(c) = self.container_record(id) else {
            tracing::debug!(container_id = %bounded(id), "StopContainer of an unknown container");
            return Ok(());
        };
        let pod = self.store.pod(&c.pod_id).ok_or_else(|| {
            PodError::NotFound(format!(
                "pod sandbox {} of container {} not found",
                c.pod_id, c.id
            ))
        })?;
        let handler = self.handler_for_teardown(&pod.id, &pod.handler);
        let req = types::StopContainerRequest {
            sandbox_id: c.pod_id.clone(),
            container_id: c.id.clone(),
            timeout_seconds: timeout.max(0),
        };
        match handler.stop_container(req).await {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(PodError::handler(format!("stopping container {}", c.id), e)),
        }
        info!(pod_id = %c.pod_id, container_id = %c.id, timeout, "container stopped");
        self.publish(&c.id, &c.pod_id, Event::ContainerStoppedEvent, None)
            .await;
        Ok(())
    }

    /// RemoveContainer: idempotent, stops the container first.
    pub async fn remove_container(&self, id: &str) -> PodResult<()> {
        let Ok(c) = self.container_record(id) else {
            return Ok(());
        };
        let _guard = self.lock_pod(&c.pod_id).await;
        let Ok(c) = self.container_record(&c.id) else {
            return Ok(());
        };
        let handler_name = self
            .store
            .pod(&c.pod_id)
            .map(|p| p.handler)
            .unwrap_or_default();
        let handler = self.handler_for_teardown(&c.pod_id, &handler_name);
        self.remove_container_resources(&c, handler.as_ref())
            .await?;
        info!(pod_id = %c.pod_id, container_id = %c.id, "container removed");
        self.publish_removed(&c).await;
        Ok(())
    }

    fn cri_image_spec(c: &ContainerRecord) -> cri::ImageSpec {
        let mut spec = c.config.image.clone().unwrap_or_default();
        spec.image = c.image_name.clone();
        spec
    }

    /// ContainerStatus.
    pub async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> PodResult<cri::ContainerStatusResponse> {
        let c = self.container_record(id)?;
        let s = self.handler_status(&c).await;
        let status = cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: s.state,
            created_at: if s.created_at != 0 {
                s.created_at
            } else {
                c.created_at
            },
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            image: Some(Self::cri_image_spec(&c)),
            image_ref: c.image_ref.clone(),
            reason: s.reason.clone(),
            message: s.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.log_path.clone(),
            resources: c.resources.clone().map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
            image_id: c.image_id.clone(),
            user: c.user.as_ref().map(|u| cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: i64::from(u.uid),
                    gid: i64::from(u.gid),
                    supplemental_groups: u.groups.iter().map(|g| i64::from(*g)).collect(),
                }),
            }),
            stop_signal: c.config.stop_signal,
        };
        let mut info = HashMap::new();
        if verbose {
            let value = serde_json::json!({
                "sandboxID": c.pod_id,
                "pid": s.pid,
                "bundle": c.bundle_dir,
                "rootfs": c.rootfs,
                "image": c.image_name,
                "imageID": c.image_id,
            });
            info.insert("info".to_string(), value.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    /// ListContainers with the CRI filter (id prefix, state, pod, labels).
    pub async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Vec<cri::Container> {
        let filter = filter.unwrap_or_default();
        let mut out = Vec::new();
        for c in self.store.containers() {
            if !filter.id.is_empty() && !c.id.starts_with(&filter.id) {
                continue;
            }
            if !filter.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&filter.pod_sandbox_id) {
                continue;
            }
            if !labels_match(&c.config.labels, &filter.label_selector) {
                continue;
            }
            if !c.handler_created {
                // Still being created.
                continue;
            }
            let state = self.handler_status(&c).await.state;
            if let Some(want) = &filter.state
                && want.state != state
            {
                continue;
            }
            out.push(cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(Self::cri_image_spec(&c)),
                image_ref: c.image_ref.clone(),
                state,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            });
        }
        out
    }

    pub(super) async fn require_running(&self, c: &ContainerRecord, what: &str) -> PodResult<()> {
        let state = self.handler_status(c).await.state;
        if state != types::ContainerState::Running as i32 {
            return Err(PodError::FailedPrecondition(format!(
                "{what}: container {} is not running (state {})",
                c.id,
                state_name(state)
            )));
        }
        Ok(())
    }

    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> PodResult<()> {
        let (mut c, handler, _guard) = self.locked_container(id).await?;
        let Some(resources) = resources else {
            return Ok(());
        };
        spec::validate_resources(&resources)?;
        handler
            .update_container_resources(types::UpdateContainerResourcesRequest {
                sandbox_id: c.pod_id.clone(),
                container_id: c.id.clone(),
                linux: Some(resources.clone()),
            })
            .await
            .map_err(|e| {
                PodError::handler(format!("updating resources of container {}", c.id), e)
            })?;
        c.resources = Some(resources);
        self.store.save_container(&c).await?;
        Ok(())
    }

    pub async fn reopen_container_log(&self, id: &str) -> PodResult<()> {
        let (c, handler, _guard) = self.locked_container(id).await?;
        self.require_running(&c, "ReopenContainerLog").await?;
        handler
            .reopen_container_log(Self::container_ref(&c))
            .await
            .map_err(|e| PodError::handler(format!("reopening the log of container {}", c.id), e))
    }

    /// ExecSync. Does not take the pod lock: probes run while the pod's
    /// other operations proceed.
    pub async fn exec_sync(&self, req: cri::ExecSyncRequest) -> PodResult<cri::ExecSyncResponse> {
        if req.cmd.is_empty() {
            return Err(PodError::InvalidArgument(
                "ExecSync: cmd is required".into(),
            ));
        }
        let c = self.container_record(&req.container_id)?;
        self.require_running(&c, "ExecSync").await?;
        let pod = self
            .store
            .pod(&c.pod_id)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {} not found", c.pod_id)))?;
        let handler = self.handler(&pod.id, &pod.handler)?;
        let resp = handler
            .exec_sync(types::ExecSyncRequest {
                sandbox_id: c.pod_id.clone(),
                container_id: c.id.clone(),
                cmd: req.cmd.clone(),
                timeout_seconds: req.timeout.max(0),
            })
            .await
            .map_err(|e| match e.kind {
                ErrorKind::DeadlineExceeded => PodError::DeadlineExceeded(format!(
                    "command {:?} in container {} timed out after {}s",
                    req.cmd, c.id, req.timeout
                )),
                _ => PodError::handler(format!("exec in container {}", c.id), e),
            })?;
        if resp.timed_out {
            // The kubelet reads a timeout from the code; the output the
            // command gave before it was killed goes into the message
            // (probe events show it), bounded.
            return Err(PodError::DeadlineExceeded(format!(
                "command {:?} in container {} timed out after {}s{}",
                req.cmd,
                c.id,
                req.timeout,
                partial_output(&resp.stdout, &resp.stderr)
            )));
        }
        Ok(cri::ExecSyncResponse {
            stdout: resp.stdout,
            stderr: resp.stderr,
            exit_code: resp.exit_code,
        })
    }
}

/// `; output before the timeout: stdout "..", stderr ".."`, each stream cut
/// at 256 bytes; empty when the command printed nothing.
fn partial_output(stdout: &[u8], stderr: &[u8]) -> String {
    const MAX: usize = 256;
    if stdout.is_empty() && stderr.is_empty() {
        return String::new();
    }
    let cut = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
        if bytes.len() > MAX {
            format!("{text}...")
        } else {
            text
        }
    };
    format!(
        "; output before the timeout: stdout {:?}, stderr {:?}",
        cut(stdout),
        cut(stderr)
    )
}

/// The container's log file: `log_path` resolved against the pod's
/// `log_directory`, which it must stay inside. The check is lexical (no
/// `..`, not absolute): the directory is the kubelet's, root-owned, and
/// conmon creates the file there as root, so what matters is that a request
/// cannot name a path outside it.
fn confined_log_path(log_directory: &str, log_path: &str) -> PodResult<String> {
    use std::path::Component;
    if log_path.is_empty() {
        return Ok(String::new());
    }
    let invalid = |why: &str| {
        PodError::InvalidArgument(format!(
            "CreateContainer: log_path {:?} {why}",
            bounded(log_path)
        ))
    };
    if log_directory.is_empty() || !Path::new(log_directory).is_absolute() {
        return Err(invalid(
            "needs the pod's log_directory, an absolute path, to be set",
        ));
    }
    let relative = Path::new(log_path);
    let mut normal = 0;
    for component in relative.components() {
        match component {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("must be relative to the pod's log_directory"));
            }
            Component::ParentDir => {
                return Err(invalid(
                    "must stay inside the pod's log_directory (no \"..\")",
                ));
            }
        }
    }
    if normal == 0 {
        return Err(invalid("names no file"));
    }
    Ok(Path::new(log_directory)
        .join(relative)
        .display()
        .to_string())
}

fn state_name(state: i32) -> &'static str {
    match types::ContainerState::try_from(state) {
        Ok(types::ContainerState::Created) => "created",
        Ok(types::ContainerState::Running) => "running",
        Ok(types::ContainerState::Exited) => "exited",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_inside_the_log_directory() {
        let dir = "/var/log/pods/ns_web_uid";
        assert_eq!(confined_log_path(dir, "").unwrap(), "");
        assert_eq!(
            confined_log_path(dir, "app/0.log").unwrap(),
            "/var/log/pods/ns_web_uid/app/0.log"
        );
        for bad in ["../../x", "app/../../x", "/etc/cron.d/x", ".", "./"] {
            let err = confined_log_path(dir, bad).unwrap_err();
            assert!(matches!(err, PodError::InvalidArgument(_)), "{bad}: {err}");
        }
        for bad_dir in ["", "relative/dir"] {
            let err = confined_log_path(bad_dir, "app/0.log").unwrap_err();
            assert!(
                matches!(err, PodError::InvalidArgument(_)),
                "{bad_dir}: {err}"
            );
        }
    }
}
