//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and
//! ListPodSandbox.
//!
//! A pod's resources are recorded in its [`PodRecord`] as they are created
//! (and the record saved), so one teardown path serves a failed
//! RunPodSandbox, StopPodSandbox/RemovePodSandbox and a pod left half-made
//! by a crash: it undoes exactly what the record says exists (`teardown`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crius_proto::cri;
use crius_proto::cri::ContainerEventType as Event;
use crius_shim_api::RuntimeHandler;
use crius_shim_api::types;
use tracing::{info, warn};

use super::error::{PodError, PodResult};
use super::store::{PodRecord, PodState, new_id, now_nanos};
use super::{PodManager, files, is_node, labels_match, ns_options};
use crate::sandbox::cgroup::{Resources, pod_cgroup_path};
use crate::sandbox::{CniNetwork, CniRequest, NetNs, PodCgroup, PortMapping};
use crate::spec::{self, InfraSpecInput, PodFiles};

fn port_mappings(config: &cri::PodSandboxConfig) -> Vec<PortMapping> {
    config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0 && p.container_port > 0)
        .map(|p| PortMapping {
            host_port: p.host_port as u16,
            container_port: p.container_port as u16,
            protocol: match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .to_string(),
            host_ip: p.host_ip.clone(),
        })
        .collect()
}

/// Pod-level limits for the pod cgroup: the pod's resources, grown by the
/// handler's overhead when both are set.
fn pod_resources(config: &cri::PodSandboxConfig) -> Option<Resources> {
    let linux = config.linux.as_ref()?;
    let r = linux.resources.as_ref()?;
    let overhead = linux.overhead.clone().unwrap_or_default();
    let positive = |v: i64| (v > 0).then_some(v);
    let memory =
        positive(r.memory_limit_in_bytes).map(|m| m + overhead.memory_limit_in_bytes.max(0));
    let quota = positive(r.cpu_quota).map(|q| q + overhead.cpu_quota.max(0));
    Some(Resources {
        cpu_shares: positive(r.cpu_shares).map(|s| s as u64),
        cpu_quota: quota,
        cpu_period: positive(r.cpu_period).map(|p| p as u64),
        cpuset_cpus: (!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()),
        cpuset_mems: (!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()),
        memory_limit: memory,
        pids_limit: None,
    })
}

impl PodManager {
    /// The pod's cgroupfs path and, with the systemd driver, its slice.
    fn pod_cgroup(
        &self,
        cgroup_parent: &str,
        id: &str,
    ) -> Result<(String, Option<String>), crate::sandbox::CgroupError> {
        use crius_shim_api::cgroupfs::systemd;
        match self.cgroup_driver() {
            crate::config::CgroupDriver::Cgroupfs => {
                Ok((pod_cgroup_path(cgroup_parent, id)?, None))
            }
            crate::config::CgroupDriver::Systemd => {
                let slice = if cgroup_parent.is_empty() {
                    systemd::default_pod_slice(id)?
                } else {
                    systemd::validate_slice(cgroup_parent)?
                };
                let path = systemd::slice_cgroupfs_path(&systemd::manager_root(), &slice)?;
                Ok((path, Some(slice)))
            }
        }
    }

    /// Starts the pod's slice through systemd with the pod's limits, unless
    /// kubelet made it already. cpusets go straight to cgroupfs: systemd
    /// does not manage v1's cpuset hierarchy (nor the other controllers it
    /// has no properties for), where the pod directory is made as with
    /// cgroupfs.
    async fn start_pod_slice(&self, rec: &mut PodRecord, slice: &str) -> PodResult<()> {
        use crate::sandbox::systemd::{Systemd, slice_properties};
        let resources = pod_resources(&rec.config).unwrap_or_default();
        let properties = slice_properties(
            &format!("crius pod {}", rec.name),
            self.cgroups.mode(),
            &resources,
        );
        let systemd = Systemd::connect().await?;
        rec.slice_owned = systemd.start_slice(slice, properties).await?;
        let layout = self.cgroups.clone();
        let path = rec.cgroup_path.clone();
        super::blocking("creating a pod cgroup", move || {
            let cgroup = PodCgroup::create(&layout, &path)?;
            cgroup.set_resources(&Resources {
                cpuset_cpus: resources.cpuset_cpus,
                cpuset_mems: resources.cpuset_mems,
                ..Default::default()
            })?;
            Ok(())
        })
        .await
    }

    /// RunPodSandbox: returns the new pod's id. On failure everything made
    /// so far is undone before the error is returned.
    pub async fn run_pod_sandbox(&self, req: cri::RunPodSandboxRequest) -> PodResult<String> {
        let config = req
            .config
            .ok_or_else(|| PodError::InvalidArgument("RunPodSandbox: config is required".into()))?;
        let meta = config.metadata.clone().ok_or_else(|| {
            PodError::InvalidArgument("RunPodSandbox: config.metadata is required".into())
        })?;
        if meta.name.is_empty() {
            return Err(PodError::InvalidArgument(
                "RunPodSandbox: metadata.name is required".into(),
            ));
        }
        for (what, value) in [
            ("metadata.name", &meta.name),
            ("metadata.namespace", &meta.namespace),
            ("metadata.uid", &meta.uid),
        ] {
            crate::bounded::check_name_length(what, value)
                .map_err(|e| PodError::InvalidArgument(format!("RunPodSandbox: {e}")))?;
        }
        // Container log paths are resolved against it (and confined to it).
        if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
            return Err(PodError::InvalidArgument(format!(
                "RunPodSandbox: log_directory {:?} must be an absolute path",
                crate::bounded::bounded(&config.log_directory)
            )));
        }
        // An unknown handler is the caller's mistake: InvalidArgument, with
        // the names that exist.
        let slot = self.handlers.resolve(&req.runtime_handler)?;
        let handler = slot.handler().clone();
        let handler_name = slot.name().to_string();
        if super::userns::requested_mappings(&config)?.is_some() {
            self.check_userns_support(handler.as_ref()).await?;
        }
        let id = new_id()?;
        let name = format!(
            "{}_{}_{}_{}",
            meta.name, meta.namespace, meta.uid, meta.attempt
        );
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.as_str())
            .unwrap_or("");
        let (cgroup_path, systemd_slice) = self
            .pod_cgroup(cgroup_parent, &id)
            .map_err(|e| PodError::InvalidArgument(format!("RunPodSandbox: {e}")))?;
        self.store.reserve(&name, &id, "pod")?;
        let _guard = self.lock_pod(&id).await;
        // From here the pod is served by this instance, whatever a reload
        // does to the table (unbound when the pod is forgotten).
        self.handlers.bind(&id, slot);

        let dir = self.store.pod_dir(&id);
        let mut rec = PodRecord {
            id: id.clone(),
            name,
            handler: handler_name.clone(),
            state: PodState::Creating,
            created_at: now_nanos(),
            config,
            dir: dir.clone(),
            netns_path: None,
            userns_path: None,
            cni_record: None,
            cni_attached: false,
            cgroup_path,
            systemd_slice,
            slice_owned: false,
            pod_ips: Vec::new(),
            infra_pid: 0,
            infra_bundle: None,
            handler_dir: dir.join("handler"),
            handler_started: false,
            handler_state: Vec::new(),
            handler_annotations: Default::default(),
            hostname_path: None,
            resolv_conf_path: None,
            hosts_path: None,
            shm_dir: None,
            shm_mounted: false,
        };
        let started = std::time::Instant::now();
        let result = match self.store.save_pod(&rec).await {
            Ok(()) => self.setup_pod(&mut rec, handler.as_ref()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                rec.state = PodState::Ready;
                if let Err(e) = self.store.save_pod(&rec).await {
                    self.undo_pod(&mut rec, handler.as_ref()).await;
                    return Err(e);
                }
                crate::metrics::global().pod_start(&handler_name, "total", started.elapsed());
                info!(pod_id = %id, handler = %handler_name, pod_ips = ?rec.pod_ips, infra_pid = rec.infra_pid,
                    elapsed_ms = started.elapsed().as_millis() as u64, "pod sandbox ready");
                self.publish_sandbox(
                    &id,
                    &[Event::ContainerCreatedEvent, Event::ContainerStartedEvent],
                    None,
                )
                .await;
                Ok(id)
            }
            Err(e) => {
                warn!(pod_id = %id, handler = %handler_name, error = %e, "RunPodSandbox failed; rolling back");
                self.undo_pod(&mut rec, handler.as_ref()).await;
                Err(e)
            }
        }
    }

    /// Rollback of a failed RunPodSandbox: tear down and forget the pod.
    pub(super) async fn undo_pod(&self, rec: &mut PodRecord, handler: &dyn RuntimeHandler) {
        if let Err(e) = self.teardown_pod(rec, handler).await {
            warn!(pod_id = %rec.id, error = %e, "rollback of the pod left something behind");
        }
        self.store.forget_pod(rec);
        self.drop_lock(&rec.id);
    }

    async fn setup_pod(&self, rec: &mut PodRecord, handler: &dyn RuntimeHandler) -> PodResult<()> {
        let id = rec.id.clone();
        let ns = ns_options(&rec.config);
        let host_network = is_node(ns.network);
        let host_ipc = is_node(ns.ipc);

        // The pod cgroup (kubelet usually made it already; that is fine).
        match rec.systemd_slice.clone() {
            Some(slice) => self.start_pod_slice(rec, &slice).await?,
            None => {
                let cgroup = PodCgroup::create(&self.cgroups, &rec.cgroup_path)?;
                if let Some(resources) = pod_resources(&rec.config) {
                    cgroup.set_resources(&resources)?;
                }
            }
        }

        // The pod's namespaces first: the files and the infra bundle name them.
        let mut network = None;
        if !host_network {
            let netns_dir = self.config.state_dir.join("netns");
            let cni = CniNetwork::load(&self.live_config().cni)?;
            let ns = match super::userns::requested_mappings(&rec.config)? {
                // The netns must be owned by the pod's user namespace, so
                // both are made together.
                Some(maps) => {
                    self.create_userns_pod_dir(&id, &maps)?;
                    let userns_dir = self.config.state_dir.join("userns");
                    let name = id.clone();
                    let dir = netns_dir.clone();
                    let (userns_pin, ns) =
                        super::blocking("creating the pod's user namespace", move || {
                            Ok(crate::sandbox::userns::create_pod_namespaces(
                                &userns_dir,
                                &dir,
                                &name,
                                &maps,
                            )?)
                        })
                        .await?;
                    rec.userns_path = Some(userns_pin);
                    ns
                }
                None => NetNs::create(&netns_dir, &id)?,
            };
            let record = rec.dir.join("cni.json");
            rec.netns_path = Some(ns.path().to_path_buf());
            rec.cni_record = Some(record.clone());
            network = Some((cni, ns, record));
        }

        // The runtime mounts the pod's files from inside the pod's user
        // namespace, which cannot pass the daemon's private root.
        let files_dir = match rec.userns_path {
            Some(_) => self.userns_pod_dir(&id),
            None => rec.dir.clone(),
        };
        let hostname = files::pod_hostname(&rec.config, host_network);
        rec.hostname_path = Some(files::write_hostname(&files_dir, &hostname)?);
        rec.resolv_conf_path = Some(files::write_resolv_conf(
            &files_dir,
            rec.config.dns_config.as_ref(),
        )?);
        // Without the pod IPs until CNI has run; rewritten in place then,
        // so a bind mount of it made meanwhile sees them too.
        rec.hosts_path = Some(files::write_hosts(&files_dir, &hostname, &[])?);
        if !host_ipc {
            rec.shm_dir = Some(files_dir.join("shm"));
        }
        crate::perms::ensure_private_dir(&rec.handler_dir)
            .map_err(|e| PodError::io(format!("creating {}", rec.handler_dir.display()), e))?;
        rec.handler_annotations =
            self.handler_annotations(&rec.id, &rec.handler, &rec.config.annotations);
        let caps = handler.capabilities();
        let mut infra = if caps.needs_infra_container {
            Some(self.infra_bundle(rec)?)
        } else {
            None
        };
        // A handler that needs no CNI result starts beside CNI ADD.
        let side_by_side = caps.starts_without_network;

        // One write-ahead record for all that is about to be made (the CNI
        // attachment, the shm mount and, side by side, the handler's pod):
        // a crash before it leaves only the netns pin, which the restore
        // removes as a stray; after it, the teardown undoes each through the
        // record, and undoing what was never made succeeds (CNI DEL of an
        // absent attachment, unmounting what is not mounted, Stop/Remove of
        // an unknown sandbox).
        if let Some((_, ns, _)) = &network {
            ns.bring_up_loopback()?;
        }
        rec.cni_attached = network.is_some();
        rec.shm_mounted = rec.shm_dir.is_some();
        rec.handler_started = side_by_side;
        self.store.save_pod(rec).await?;
        if rec.shm_dir.is_some()
            && let Err(e) = files::mount_shm(&files_dir)
        {
            // The handler was not called: the rollback must not ask it.
            rec.handler_started = false;
            return Err(e);
        }

        let attach = async {
            let Some((cni, ns, record)) = &network else {
                return Ok(None);
            };
            let meta = rec.metadata();
            let request = CniRequest {
                port_mappings: port_mappings(&rec.config),
                pod_namespace: meta.namespace,
                pod_name: meta.name,
                pod_uid: meta.uid,
                ..CniRequest::new(id.clone(), ns.path())
            };
            let cni_started = std::time::Instant::now();
            let result = cni.add_recorded(&request, record).await;
            crate::metrics::global().pod_start(&rec.handler, "cni", cni_started.elapsed());
            result.map(Some)
        };
        let (attached, handler_result) = if side_by_side {
            // Both run to the end, whatever the other does: a future
            // dropped halfway would leave its work unrecorded.
            let start = self.start_handler_sandbox(rec, handler, infra.take(), None);
            let (attached, started) = tokio::join!(attach, start);
            (attached, Some(started))
        } else {
            (attach.await, None)
        };
        match &handler_result {
            Some(Ok(response)) => {
                rec.infra_pid = response.infra_pid;
                rec.handler_state = response.handler_state.clone();
            }
            // A failed RunSandbox leaves nothing in the handler (the
            // contract says so), so the rollback must not ask it to stop or
            // remove the pod: a handler that cannot serve (failed to load)
            // would refuse, and the half-created pod would stay.
            Some(Err(_)) => rec.handler_started = false,
            None => {}
        }
        let result = match attached {
            Ok(result) => result,
            Err(e) => {
                // The CNI client already ran DEL for what the failed ADD
                // (or record write) did: nothing is attached.
                rec.cni_attached = false;
                return Err(e.into());
            }
        };
        let pod_network = result.map(|result| {
            // Recorded with the next save: a pod still Creating is torn
            // down through its CNI record, which does not need the IPs.
            rec.pod_ips = result.pod_ips().iter().map(|ip| ip.to_string()).collect();
            result.pod_network()
        });
        if !rec.pod_ips.is_empty() {
            files::write_hosts(&files_dir, &hostname, &rec.pod_ips)?;
        }
        match handler_result {
            Some(result) => {
                result?;
            }
            None => {
                rec.handler_started = true;
                self.store.save_pod(rec).await?;
                let response = self
                    .start_handler_sandbox(rec, handler, infra.take(), pod_network)
                    .await
                    .inspect_err(|_| rec.handler_started = false)?;
                rec.infra_pid = response.infra_pid;
                rec.handler_state = response.handler_state;
            }
        }
        Ok(())
    }

    /// The handler's RunSandbox for `rec`, with the CNI result when the
    /// handler waits for it.
    async fn start_handler_sandbox(
        &self,
        rec: &PodRecord,
        handler: &dyn RuntimeHandler,
        infra: Option<types::Bundle>,
        network: Option<types::PodNetwork>,
    ) -> PodResult<types::RunSandboxResponse> {
        let started = std::time::Instant::now();
        let response = handler
            .run_sandbox(types::RunSandboxRequest {
                sandbox_id: rec.id.clone(),
                config: Some(rec.config.clone()),
                state_dir: rec.handler_dir.display().to_string(),
                netns_path: rec
                    .netns_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                cgroup_parent: rec.cgroup_path.clone(),
                pod_ips: rec.pod_ips.clone(),
                infra,
                annotations: rec.handler_annotations.clone().into_iter().collect(),
                network,
            })
            .await
            .map_err(|e| {
                PodError::handler(
                    format!("handler {} could not start pod {}", rec.handler, rec.id),
                    e,
                )
            })?;
        crate::metrics::global().pod_start(&rec.handler, "handler", started.elapsed());
        Ok(response)
    }

    /// The pod files as the spec generator takes them.
    pub(super) fn pod_files(rec: &PodRecord) -> PodFiles {
        PodFiles {
            hostname: rec.hostname_path.clone(),
            resolv_conf: rec.resolv_conf_path.clone(),
            hosts: rec.hosts_path.clone(),
            shm_dir: rec.shm_dir.clone(),
        }
    }

    /// The shared infra rootfs (built once per daemon root).
    fn infra_rootfs(&self) -> PodResult<PathBuf> {
        let mut cached = self.infra_rootfs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = cached.as_ref() {
            return Ok(path.clone());
        }
        let path =
            crate::rootfs::prepare_infra_rootfs(&self.config.root.join("infra"), &self.catatonit)?;
        *cached = Some(path.clone());
        Ok(path)
    }

    /// Writes the infra container's bundle (`<pod dir>/infra/config.json`,
    /// rootfs = the shared read-only infra rootfs used in place).
    fn infra_bundle(&self, rec: &mut PodRecord) -> PodResult<types::Bundle> {
        let rootfs = match rec.userns_path {
            Some(_) => self.userns_infra_rootfs(rec, &self.infra_rootfs()?)?,
            None => self.infra_rootfs()?,
        };
        let bundle = rec.dir.join("infra");
        crate::perms::ensure_private_dir(&bundle)
            .map_err(|e| PodError::io(format!("creating {}", bundle.display()), e))?;
        let files = Self::pod_files(rec);
        let cgroups_path = rec.container_cgroups_path(&rec.id);
        let spec = spec::infra_spec(&InfraSpecInput {
            sandbox_id: &rec.id,
            sandbox_config: &rec.config,
            rootfs: &rootfs,
            netns_path: rec.netns_path.as_deref(),
            userns: rec.userns().as_ref(),
            cgroups_path: &cgroups_path,
            pod_files: &files,
        })?;
        let bytes = spec::write_spec(&bundle, &spec)?;
        rec.infra_bundle = Some(bundle.clone());
        Ok(types::Bundle {
            dir: bundle.display().to_string(),
            oci_spec: bytes,
            rootfs: Some(types::Rootfs {
                lower_dirs: Vec::new(),
                upper_dir: String::new(),
                work_dir: String::new(),
                mount_point: rootfs.display().to_string(),
            }),
        })
    }

    /// StopPodSandbox: idempotent; an unknown pod is not an error (CRI).
    pub async fn stop_pod_sandbox(&self, id: &str) -> PodResult<()> {
        let Some(id) = self.store.find_pod_id(id) else {
            return Ok(());
        };
        let _guard = self.lock_pod(&id).await;
        let Some(mut rec) = self.store.pod(&id) else {
            return Ok(());
        };
        let handler = self.handler_for_teardown(&rec.id, &rec.handler);
        let result = self.stop_pod_resources(&mut rec, handler.as_ref()).await;
        if rec.state != PodState::Creating {
            rec.state = PodState::NotReady;
        }
        self.store.save_pod(&rec).await?;
        result?;
        info!(pod_id = %id, handler = %rec.handler, "pod sandbox stopped");
        self.publish_sandbox(&id, &[Event::ContainerStoppedEvent], None)
            .await;
        Ok(())
    }

    /// RemovePodSandbox: stops the pod if needed, removes its containers
    /// and everything it holds. Idempotent; unknown pods are fine.
    pub async fn remove_pod_sandbox(&self, id: &str) -> PodResult<()> {
        let Some(id) = self.store.find_pod_id(id) else {
            return Ok(());
        };
        let guard = self.lock_pod(&id).await;
        let Some(mut rec) = self.store.pod(&id) else {
            return Ok(());
        };
        let handler = self.handler_for_teardown(&rec.id, &rec.handler);
        if let Err(e) = self.teardown_pod(&mut rec, handler.as_ref()).await {
            // Keep the record (with what is left) so a retry finishes the job.
            if rec.dir.exists() {
                let _ = self.store.save_pod(&rec).await;
            }
            return Err(e);
        }
        self.store.forget_pod(&rec);
        drop(guard);
        self.drop_lock(&id);
        info!(pod_id = %id, handler = %rec.handler, "pod sandbox removed");
        self.publish_sandbox(
            &id,
            &[Event::ContainerStoppedEvent, Event::ContainerDeletedEvent],
            Some(&rec),
        )
        .await;
        Ok(())
    }

    /// Whether the pod is ready now: recorded ready and, if the handler can
    /// tell, its infra/VM still running.
    async fn pod_state(&self, rec: &PodRecord) -> cri::PodSandboxState {
        if rec.state != PodState::Ready {
            return cri::PodSandboxState::SandboxNotready;
        }
        let Ok(handler) = self.handler(&rec.id, &rec.handler) else {
            return cri::PodSandboxState::SandboxNotready;
        };
        match handler
            .sandbox_status(types::SandboxRef {
                sandbox_id: rec.id.clone(),
            })
            .await
        {
            Ok(s) if s.ready => cri::PodSandboxState::SandboxReady,
            // A handler that cannot report goes by the record.
            Err(e) if e.kind == crius_shim_api::ErrorKind::Unimplemented => {
                cri::PodSandboxState::SandboxReady
            }
            _ => cri::PodSandboxState::SandboxNotready,
        }
    }

    /// PodSandboxStatus.
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> PodResult<cri::PodSandboxStatusResponse> {
        let rec = self.known_pod(id)?;
        let state = self.pod_state(&rec).await;
        let network = rec
            .pod_ips
            .split_first()
            .map(|(first, rest)| cri::PodSandboxNetworkStatus {
                ip: first.clone(),
                additional_ips: rest
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            });
        let status = cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            state: state as i32,
            created_at: rec.created_at,
            network,
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(ns_options(&rec.config)),
                }),
            }),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            runtime_handler: rec.handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            let handler_info = match self.handler(&rec.id, &rec.handler) {
                Ok(h) => h
                    .sandbox_status(types::SandboxRef {
                        sandbox_id: rec.id.clone(),
                    })
                    .await
                    .map(|s| {
                        s.info
                            .into_iter()
                            .collect::<std::collections::BTreeMap<_, _>>()
                    })
                    .unwrap_or_default(),
                Err(_) => Default::default(),
            };
            let value = serde_json::json!({
                "pid": rec.infra_pid,
                "runtimeHandler": rec.handler,
                "netnsPath": rec.netns_path,
                "cgroupPath": rec.cgroup_path,
                "podDir": rec.dir,
                "infraBundle": rec.infra_bundle,
                "podIPs": rec.pod_ips,
                "handlerAnnotations": rec.handler_annotations,
                "handlerInfo": handler_info,
            });
            info.insert("info".to_string(), value.to_string());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_nanos(),
        })
    }

    /// ListPodSandbox with the CRI filter (id prefix, state, labels).
    pub async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Vec<cri::PodSandbox> {
        let filter = filter.unwrap_or_default();
        let mut out = Vec::new();
        for rec in self.store.pods() {
            if rec.state == PodState::Creating {
                continue;
            }
            if !filter.id.is_empty() && !rec.id.starts_with(&filter.id) {
                continue;
            }
            if !labels_match(&rec.config.labels, &filter.label_selector) {
                continue;
            }
            let state = self.pod_state(&rec).await;
            if let Some(want) = &filter.state
                && want.state != state as i32
            {
                continue;
            }
            out.push(cri::PodSandbox {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                state: state as i32,
                created_at: rec.created_at,
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
                runtime_handler: rec.handler.clone(),
            });
        }
        out
    }
}
