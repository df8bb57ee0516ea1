//! The pod and container lifecycle of [`OciHandler`]: every container (the
//! infra one included) runs under its own conmon; the OCI runtime is called
//! directly for start/kill/delete/update/state.
//!
//! conmon daemonizes (fork + setsid) before it creates the container, so it
//! outlives the daemon; after a restart the handler rebuilds its view from
//! the records in the pod's state directory and the exit files conmon
//! leaves (the `observe` module: container state and restore).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crius_shim_api::types::{
    ContainerRef, ContainerState, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse,
    RunSandboxRequest, RunSandboxResponse, SandboxRef, SandboxStatusResponse, StopContainerRequest,
    UpdateContainerResourcesRequest,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerResult};
use serde_json::Value;

use crate::cgroupfs::{self, CgroupMounts};
use crate::monitor::{ContainerMonitor, ExecSyncSpec, LaunchSpec, MonitorError};
use crate::state::{
    Container, ContainerRecord, Layout, RECORD_VERSION, SandboxRecord, conmon_alive, now_ns,
    write_atomic,
};
use crate::{OciHandler, signal};

/// conmon's log-size limit for the infra container's own log.
const INFRA_LOG_SIZE_MAX: u64 = 1 << 20;
/// How long to wait for a SIGKILLed container to be reported exited.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long conmon may take to exit after its container was deleted.
pub(crate) const CONMON_EXIT_WAIT: Duration = Duration::from_secs(5);

/// One pod as the handler holds it.
#[derive(Debug)]
pub(crate) struct Pod {
    pub id: String,
    pub layout: Layout,
    /// The pod's network namespace; `None` = host network.
    pub netns_path: Option<PathBuf>,
    /// The pod cgroup; `None` if the core gave none.
    pub cgroup_parent: Option<String>,
    pub infra: Arc<Container>,
    pub containers: std::sync::Mutex<HashMap<String, Arc<Container>>>,
    /// Serialises container creation against pod stop/remove, so no
    /// container appears in a pod being torn down and two creates of one
    /// ID cannot both pass the existence check.
    pub lifecycle: tokio::sync::Mutex<()>,
}

/// Locks one of the handler's maps. They are held only for a lookup, an
/// insert or a remove, which cannot leave a map half-changed, so a poisoned
/// lock (a panic elsewhere while it was held) still guards a consistent map:
/// carry on with it rather than fail every later operation of the handler.
fn lock_map<T>(map: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pod {
    fn container(&self, id: &str) -> Option<Arc<Container>> {
        lock_map(&self.containers).get(id).cloned()
    }
    fn all_containers(&self) -> Vec<Arc<Container>> {
        lock_map(&self.containers).values().cloned().collect()
    }
    fn insert_container(&self, ctr: Container) {
        lock_map(&self.containers).insert(ctr.id.clone(), Arc::new(ctr));
    }
    fn forget_container(&self, id: &str) {
        lock_map(&self.containers).remove(id);
    }
}

/// The pods of one handler instance.
#[derive(Debug, Default)]
pub(crate) struct Pods {
    map: std::sync::Mutex<HashMap<String, Arc<Pod>>>,
}

impl Pods {
    fn get(&self, id: &str) -> Option<Arc<Pod>> {
        lock_map(&self.map).get(id).cloned()
    }
    pub(crate) fn insert(&self, pod: Pod) {
        lock_map(&self.map).insert(pod.id.clone(), Arc::new(pod));
    }
    fn forget(&self, id: &str) {
        lock_map(&self.map).remove(id);
    }
}

/// What a container is doing, from the exit file, conmon and the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observed {
    Created,
    Running,
    Exited {
        exit_code: i32,
        finished_at: i64,
        oom_killed: bool,
        /// CRI reason when the handler knows better than the exit code
        /// (empty: derived from it).
        reason: String,
        message: String,
    },
    Unknown(String),
}

/// IDs become file names and runtime container names.
pub(crate) fn check_id(what: &str, id: &str) -> HandlerResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(HandlerError::invalid_argument(format!(
            "invalid {what} {id:?}: use 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

/// Reads the bundle's config.json leniently (only a few fields are used).
pub(crate) fn load_spec(bundle: &Path) -> HandlerResult<Value> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| {
        HandlerError::invalid_argument(format!("cannot read OCI spec {}: {e}", path.display()))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        HandlerError::invalid_argument(format!("OCI spec {} is not JSON: {e}", path.display()))
    })
}

pub(crate) fn spec_cgroup(spec: &Value) -> Option<String> {
    spec.pointer("/linux/cgroupsPath")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn spec_annotations(spec: &Value) -> HashMap<String, String> {
    spec.get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn remove_path(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove handler file");
    }
}

/// SIGKILLs `pid` if it is still a live conmon.
fn kill_conmon(pid: Option<i32>) {
    if conmon_alive(pid)
        && let Some(pid) = pid
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Waits for conmon to exit on its own (it does once its container is
/// gone), then kills it.
pub(crate) async fn reap_conmon(pid: Option<i32>, wait: Duration) {
    let deadline = Instant::now() + wait;
    while conmon_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if conmon_alive(pid) {
        tracing::warn!(conmon_pid = ?pid, "conmon did not exit after its container was deleted; killing it");
        kill_conmon(pid);
    }
}

pub(crate) fn read_conmon_pid(bundle: &Path) -> Option<i32> {
    std::fs::read_to_string(bundle.join("conmon.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

impl OciHandler {
    pub(crate) fn err(
        &self,
        action: impl std::fmt::Display,
        cause: impl std::fmt::Display,
    ) -> HandlerError {
        HandlerError::internal(format!("handler {}: {action}: {cause}", self.config.name))
    }

    pub(crate) fn pod(&self, sandbox_id: &str) -> HandlerResult<Arc<Pod>> {
        self.pods.get(sandbox_id).ok_or_else(|| {
            HandlerError::not_found(format!(
                "handler {}: sandbox {sandbox_id} not found",
                self.config.name
            ))
        })
    }

    pub(crate) fn container(
        &self,
        sandbox_id: &str,
        id: &str,
    ) -> HandlerResult<(Arc<Pod>, Arc<Container>)> {
        let pod = self.pod(sandbox_id)?;
        let ctr = pod.container(id).ok_or_else(|| {
            HandlerError::not_found(format!(
                "handler {}: container {id} not found in sandbox {sandbox_id}",
                self.config.name
            ))
        })?;
        Ok((pod, ctr))
    }

    /// Looks a container up without failing for unknown IDs (stop/remove
    /// are idempotent).
    fn known_container(&self, sandbox_id: &str, id: &str) -> Option<(Arc<Pod>, Arc<Container>)> {
        let pod = self.pods.get(sandbox_id)?;
        let ctr = pod.container(id)?;
        Some((pod, ctr))
    }

    pub(crate) fn mounts(&self) -> CgroupMounts {
        CgroupMounts::current().unwrap_or_default()
    }

    /// Waits up to `timeout` for the container to be exited.
    async fn wait_exited(&self, ctr: &Container, timeout: Duration) -> HandlerResult<bool> {
        let deadline = Instant::now() + timeout;
        let mut next_probe = Instant::now() + Duration::from_millis(500);
        loop {
            if ctr.exit_file().exists() {
                return Ok(true);
            }
            // Without conmon no exit file will come; the runtime decides.
            if Instant::now() >= next_probe && !conmon_alive(ctr.conmon_pid) {
                next_probe = Instant::now() + Duration::from_millis(500);
                match self.observe(ctr).await? {
                    Observed::Exited { .. } | Observed::Unknown(_) => return Ok(true),
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` through the runtime; a container that exited in the
    /// meantime is not an error.
    pub(crate) async fn signal(
        &self,
        ctr: &Container,
        signal: i32,
        all: bool,
    ) -> HandlerResult<()> {
        match self.runtime().kill(&ctr.id, &signal.to_string(), all).await {
            Ok(()) => Ok(()),
            Err(e) => match self.observe(ctr).await? {
                Observed::Exited { .. } | Observed::Unknown(_) => Ok(()),
                _ => Err(self.err(format!("send signal {signal} to container {}", ctr.id), e)),
            },
        }
    }

    /// Stops a container: `signal`, up to `timeout`, then SIGKILL.
    async fn stop(&self, ctr: &Container, timeout: Duration) -> HandlerResult<()> {
        let observed = self.observe(ctr).await?;
        let signal = match observed {
            Observed::Exited { .. } | Observed::Unknown(_) => return Ok(()),
            // A created container's process is the runtime's init waiting
            // to exec; only SIGKILL is certain to end it.
            Observed::Created => libc::SIGKILL,
            Observed::Running if timeout.is_zero() => libc::SIGKILL,
            Observed::Running => ctr.stop_signal,
        };
        let started = Instant::now();
        if signal != libc::SIGKILL {
            self.signal(ctr, signal, false).await?;
            if self.wait_exited(ctr, timeout).await? {
                tracing::info!(container = %ctr.id, signal, elapsed_ms = started.elapsed().as_millis() as u64, "container stopped by its stop signal");
                return Ok(());
            }
            tracing::info!(container = %ctr.id, timeout_s = timeout.as_secs(), "stop timeout passed; sending SIGKILL");
        }
        self.signal(ctr, libc::SIGKILL, true).await?;
        if self.wait_exited(ctr, KILL_WAIT).await? {
            tracing::info!(container = %ctr.id, elapsed_ms = started.elapsed().as_millis() as u64, "container killed");
            Ok(())
        } else {
            Err(HandlerError::deadline_exceeded(format!(
                "handler {}: container {} did not exit within {KILL_WAIT:?} of SIGKILL",
                self.config.name, ctr.id
            )))
        }
    }

    /// Deletes the runtime state, waits out conmon and removes the
    /// container's handler files.
    async fn destroy(&self, ctr: &Container) -> HandlerResult<()> {
        self.runtime()
            .delete(&ctr.id)
            .await
            .map_err(|e| self.err(format!("delete container {}", ctr.id), e))?;
        reap_conmon(ctr.conmon_pid, CONMON_EXIT_WAIT).await;
        remove_path(&ctr.exit_file());
        remove_path(&ctr.attach_dir.join(&ctr.id));
        remove_path(&ctr.dir);
        Ok(())
    }

    /// Undoes a failed create: conmon, runtime state, files.
    async fn roll_back_create(&self, id: &str, bundle: &Path, dir: &Path, layout: &Layout) {
        if let Err(e) = self.runtime().delete(id).await {
            tracing::warn!(container = id, error = %e, "rollback: runtime delete failed");
        }
        reap_conmon(read_conmon_pid(bundle), CONMON_EXIT_WAIT).await;
        remove_path(&layout.exit_dir().join(id));
        remove_path(&layout.attach_dir().join(id));
        remove_path(dir);
    }

    /// Creates (and for the infra container starts) a container under
    /// conmon; rolls back on any failure.
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        &self,
        layout: &Layout,
        record: ContainerRecord,
        name: String,
        log_path: Option<PathBuf>,
        log_size_max: Option<u64>,
        terminal: bool,
        stdin: bool,
        stdin_once: bool,
    ) -> HandlerResult<Container> {
        let mut ctr = Container::from_record(&record, layout);
        let what = if record.infra {
            format!("sandbox {} infra container", record.sandbox_id)
        } else {
            format!("container {}", record.id)
        };
        for dir in [
            layout.exit_dir(),
            layout.attach_dir(),
            ctr.persist_dir(),
            ctr.exec_dir(),
        ] {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                remove_path(&ctr.dir);
                return Err(self.err(format!("create {}", dir.display()), e));
            }
        }
        let spec = LaunchSpec {
            id: record.id.clone(),
            name,
            bundle: record.bundle.clone(),
            log_path,
            exit_dir: layout.exit_dir(),
            persist_dir: ctr.persist_dir(),
            socket_dir: layout.attach_dir(),
            log_size_max,
            terminal,
            stdin,
            stdin_once,
        };
        let started = Instant::now();
        let launched = match self.monitor().create(&spec).await {
            Ok(l) => l,
            Err(e) => {
                self.roll_back_create(&record.id, &record.bundle, &ctr.dir, layout)
                    .await;
                let kind = match e {
                    MonitorError::RuntimeFailed { .. } => "runtime create failed",
                    _ => "conmon failed",
                };
                return Err(self.err(
                    format!(
                        "create {what} with {} under {} ({kind})",
                        self.config.runtime_path.display(),
                        self.config.monitor_path.display()
                    ),
                    e,
                ));
            }
        };
        ctr.pid = launched.container_pid as u32;
        ctr.conmon_pid = launched.monitor_pid;
        let created_ms = started.elapsed().as_millis() as u64;
        if record.infra {
            if let Err(e) = self.runtime().start(&record.id).await {
                self.roll_back_create(&record.id, &record.bundle, &ctr.dir, layout)
                    .await;
                return Err(self.err(format!("start {what}"), e));
            }
            ctr.set_started_at(now_ns());
        }
        if let Err(e) = ctr.save() {
            self.roll_back_create(&record.id, &record.bundle, &ctr.dir, layout)
                .await;
            return Err(self.err(format!("persist record of {what}"), e));
        }
        tracing::info!(
            handler = %self.config.name,
            container = %record.id,
            sandbox = %record.sandbox_id,
            pid = ctr.pid,
            conmon_pid = ?ctr.conmon_pid,
            created_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "container created under conmon"
        );
        Ok(ctr)
    }

    pub(crate) async fn do_run_sandbox(
        &self,
        req: RunSandboxRequest,
    ) -> HandlerResult<RunSandboxResponse> {
        check_id("sandbox id", &req.sandbox_id)?;
        if req.state_dir.is_empty() || !Path::new(&req.state_dir).is_absolute() {
            return Err(HandlerError::invalid_argument(format!(
                "sandbox {}: state_dir {:?} must be an absolute path",
                req.sandbox_id, req.state_dir
            )));
        }
        let infra = req
            .infra
            .as_ref()
            .filter(|b| !b.dir.is_empty())
            .ok_or_else(|| {
                HandlerError::invalid_argument(format!(
                    "sandbox {}: handler {} needs an infra container bundle",
                    req.sandbox_id, self.config.name
                ))
            })?;
        let bundle = PathBuf::from(&infra.dir);
        let spec = load_spec(&bundle)?;
        if self.pods.get(&req.sandbox_id).is_some() || self.runtime().has_state(&req.sandbox_id) {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "handler {}: sandbox {} already exists",
                    self.config.name, req.sandbox_id
                ),
            ));
        }
        let layout = Layout::new(&req.state_dir);
        let name = req
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| format!("{}_{}_infra", m.namespace, m.name))
            .unwrap_or_else(|| format!("{}_infra", req.sandbox_id));
        let record = ContainerRecord {
            version: RECORD_VERSION,
            id: req.sandbox_id.clone(),
            sandbox_id: req.sandbox_id.clone(),
            infra: true,
            bundle: bundle.clone(),
            log_path: None,
            cgroup: spec_cgroup(&spec),
            stop_signal: libc::SIGKILL,
            created_at: now_ns(),
            started_at: 0,
            pid: 0,
            conmon_pid: None,
            terminal: false,
            stdin: false,
            stdin_once: false,
        };
        let infra_log = layout.infra_dir().join("infra.log");
        let ctr = match self
            .launch(
                &layout,
                record,
                name,
                Some(infra_log),
                Some(INFRA_LOG_SIZE_MAX),
                false,
                false,
                false,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                for entry in layout.owned_entries() {
                    remove_path(&entry);
                }
                return Err(e);
            }
        };
        let sandbox = SandboxRecord {
            version: RECORD_VERSION,
            sandbox_id: req.sandbox_id.clone(),
            state_dir: layout.root.clone(),
            infra: ctr.record(),
            netns_path: (!req.netns_path.is_empty()).then(|| PathBuf::from(&req.netns_path)),
            cgroup_parent: (!req.cgroup_parent.is_empty()).then(|| req.cgroup_parent.clone()),
        };
        let bytes =
            serde_json::to_vec(&sandbox).map_err(|e| self.err("encode sandbox record", e))?;
        if let Err(e) = write_atomic(&layout.sandbox_record(), &bytes) {
            let _ = self.destroy(&ctr).await;
            for entry in layout.owned_entries() {
                remove_path(&entry);
            }
            return Err(self.err(format!("persist sandbox {}", req.sandbox_id), e));
        }
        let infra_pid = ctr.pid;
        let pod = Pod {
            id: req.sandbox_id.clone(),
            layout,
            netns_path: sandbox.netns_path.clone(),
            cgroup_parent: sandbox.cgroup_parent.clone(),
            infra: Arc::new(ctr),
            containers: Default::default(),
            lifecycle: Default::default(),
        };
        self.pods.insert(pod);
        Ok(RunSandboxResponse {
            handler_state: bytes,
            infra_pid,
        })
    }

    pub(crate) async fn do_stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let Some(pod) = self.pods.get(&req.sandbox_id) else {
            return Ok(());
        };
        let _pod_guard = pod.lifecycle.lock().await;
        // Every process of the pod: containers first (the kubelet stopped
        // them with their grace periods already), then the infra.
        for ctr in pod.all_containers() {
            let _guard = ctr.lifecycle.lock().await;
            self.stop(&ctr, Duration::ZERO).await?;
        }
        let _guard = pod.infra.lifecycle.lock().await;
        self.stop(&pod.infra, Duration::ZERO).await
    }

    pub(crate) async fn do_remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let Some(pod) = self.pods.get(&req.sandbox_id) else {
            // Unknown here, but the runtime may still hold the infra (named
            // by the sandbox id) of a pod whose restore never reached us.
            check_id("sandbox id", &req.sandbox_id)?;
            if self.runtime().has_state(&req.sandbox_id) {
                self.runtime().delete(&req.sandbox_id).await.map_err(|e| {
                    self.err(format!("delete infra of sandbox {}", req.sandbox_id), e)
                })?;
            }
            return Ok(());
        };
        let _pod_guard = pod.lifecycle.lock().await;
        for ctr in pod.all_containers() {
            let _guard = ctr.lifecycle.lock().await;
            self.stop(&ctr, Duration::ZERO).await?;
            self.destroy(&ctr).await?;
            pod.forget_container(&ctr.id);
        }
        {
            let _guard = pod.infra.lifecycle.lock().await;
            self.stop(&pod.infra, Duration::ZERO).await?;
            self.destroy(&pod.infra).await?;
        }
        for entry in pod.layout.owned_entries() {
            remove_path(&entry);
        }
        self.pods.forget(&pod.id);
        tracing::info!(handler = %self.config.name, sandbox = %pod.id, "sandbox removed");
        Ok(())
    }

    pub(crate) async fn do_sandbox_status(
        &self,
        req: SandboxRef,
    ) -> HandlerResult<SandboxStatusResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        let observed = self.observe(&pod.infra).await?;
        let mut info = HashMap::new();
        info.insert("infraPid".to_string(), pod.infra.pid.to_string());
        info.insert(
            "runtime".to_string(),
            self.config.runtime_path.display().to_string(),
        );
        info.insert("infraState".to_string(), format!("{observed:?}"));
        Ok(SandboxStatusResponse {
            ready: observed == Observed::Running,
            info,
        })
    }

    pub(crate) async fn do_create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        check_id("container id", &req.container_id)?;
        let pod = self.pod(&req.sandbox_id)?;
        let bundle = req
            .bundle
            .as_ref()
            .filter(|b| !b.dir.is_empty())
            .map(|b| PathBuf::from(&b.dir))
            .ok_or_else(|| {
                HandlerError::invalid_argument(format!(
                    "container {}: no bundle given",
                    req.container_id
                ))
            })?;
        let spec = load_spec(&bundle)?;
        let _pod_guard = pod.lifecycle.lock().await;
        if self.pods.get(&req.sandbox_id).is_none() {
            return Err(HandlerError::not_found(format!(
                "handler {}: sandbox {} was removed",
                self.config.name, req.sandbox_id
            )));
        }
        if pod.container(&req.container_id).is_some() || self.runtime().has_state(&req.container_id)
        {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "handler {}: container {} already exists",
                    self.config.name, req.container_id
                ),
            ));
        }
        if !matches!(self.observe(&pod.infra).await?, Observed::Running) {
            return Err(HandlerError::failed_precondition(format!(
                "handler {}: sandbox {} is not ready (its infra container is not running)",
                self.config.name, req.sandbox_id
            )));
        }
        let config = req.config.clone().unwrap_or_default();
        // The spec decides whether the runtime expects a console socket.
        let terminal = spec
            .pointer("/process/terminal")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if terminal != config.tty {
            tracing::warn!(container = %req.container_id, tty = config.tty, spec_terminal = terminal, "CRI tty and spec process.terminal disagree; following the spec");
        }
        let annotations = spec_annotations(&spec);
        let log_path = (!req.log_path.is_empty()).then(|| PathBuf::from(&req.log_path));
        if let Some(p) = &log_path
            && !p.is_absolute()
        {
            return Err(HandlerError::invalid_argument(format!(
                "container {}: log path {} is not absolute",
                req.container_id,
                p.display()
            )));
        }
        let name = config
            .metadata
            .as_ref()
            .map(|m| format!("{}_{}", m.name, m.attempt))
            .unwrap_or_else(|| req.container_id.clone());
        let record = ContainerRecord {
            version: RECORD_VERSION,
            id: req.container_id.clone(),
            sandbox_id: req.sandbox_id.clone(),
            infra: false,
            bundle,
            log_path: log_path.clone(),
            cgroup: spec_cgroup(&spec),
            stop_signal: signal::stop_signal(config.stop_signal, Some(&annotations)),
            created_at: now_ns(),
            started_at: 0,
            pid: 0,
            conmon_pid: None,
            terminal,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
        };
        let ctr = self
            .launch(
                &pod.layout,
                record,
                name,
                log_path,
                None,
                terminal,
                config.stdin,
                config.stdin_once,
            )
            .await?;
        let handler_state = serde_json::to_vec(&ctr.record())
            .map_err(|e| self.err("encode container record", e))?;
        pod.insert_container(ctr);
        Ok(CreateContainerResponse { handler_state })
    }

    pub(crate) async fn do_start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        let _guard = ctr.lifecycle.lock().await;
        match self.observe(&ctr).await? {
            Observed::Created => {}
            other => {
                return Err(HandlerError::failed_precondition(format!(
                    "handler {}: container {} cannot be started: it is {other:?}",
                    self.config.name, ctr.id
                )));
            }
        }
        let started = Instant::now();
        // Recorded before the call: a short-lived process can exit (and
        // conmon stamp its exit file) before `start` returns.
        ctr.set_started_at(now_ns());
        self.runtime().start(&ctr.id).await.map_err(|e| {
            ctr.set_started_at(0);
            self.err(
                format!(
                    "start container {} with {}",
                    ctr.id,
                    self.config.runtime_path.display()
                ),
                e,
            )
        })?;
        if let Err(e) = ctr.save() {
            tracing::warn!(container = %ctr.id, error = %e, "cannot persist start time");
        }
        tracing::info!(handler = %self.config.name, container = %ctr.id, start_ms = started.elapsed().as_millis() as u64, "container started");
        Ok(())
    }

    pub(crate) async fn do_stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        let Some((_, ctr)) = self.known_container(&req.sandbox_id, &req.container_id) else {
            return Ok(());
        };
        if req.timeout_seconds < 0 {
            return Err(HandlerError::invalid_argument(format!(
                "container {}: negative stop timeout {}",
                req.container_id, req.timeout_seconds
            )));
        }
        let _guard = ctr.lifecycle.lock().await;
        self.stop(&ctr, Duration::from_secs(req.timeout_seconds as u64))
            .await
    }

    pub(crate) async fn do_remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        let Some((pod, ctr)) = self.known_container(&req.sandbox_id, &req.container_id) else {
            return Ok(());
        };
        let _guard = ctr.lifecycle.lock().await;
        if self.observe(&ctr).await? == Observed::Running {
            return Err(HandlerError::failed_precondition(format!(
                "handler {}: container {} is running; stop it first",
                self.config.name, ctr.id
            )));
        }
        self.destroy(&ctr).await?;
        pod.forget_container(&ctr.id);
        Ok(())
    }

    pub(crate) async fn do_container_status(
        &self,
        req: ContainerRef,
    ) -> HandlerResult<ContainerStatusResponse> {
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        let mut resp = ContainerStatusResponse {
            created_at: ctr.created_at,
            started_at: ctr.started_at(),
            ..Default::default()
        };
        match self.observe(&ctr).await? {
            Observed::Created => {
                resp.state = ContainerState::Created as i32;
                resp.pid = ctr.pid;
            }
            Observed::Running => {
                resp.state = ContainerState::Running as i32;
                resp.pid = ctr.pid;
                if !conmon_alive(ctr.conmon_pid) {
                    // conmon cannot adopt a running process: it stays
                    // running, and the status says what is lost.
                    resp.message = format!(
                        "unmonitored: conmon (pid {}) is gone; the container's output is no longer logged and its exit code will not be known",
                        ctr.conmon_pid.unwrap_or(0)
                    );
                }
            }
            Observed::Exited {
                exit_code,
                finished_at,
                oom_killed,
                reason,
                message,
            } => {
                resp.state = ContainerState::Exited as i32;
                resp.exit_code = exit_code;
                // The exit file's mtime comes from the coarse kernel clock
                // and may precede the start stamp by a few milliseconds.
                resp.finished_at = finished_at.max(resp.started_at);
                resp.reason = if !reason.is_empty() {
                    reason.as_str()
                } else if oom_killed {
                    "OOMKilled"
                } else if exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_string();
                resp.message = message;
            }
            Observed::Unknown(message) => {
                resp.state = ContainerState::Unknown as i32;
                resp.message = message;
            }
        }
        Ok(resp)
    }

    pub(crate) async fn do_exec_sync(
        &self,
        req: ExecSyncRequest,
    ) -> HandlerResult<ExecSyncResponse> {
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        if req.cmd.is_empty() {
            return Err(HandlerError::invalid_argument(format!(
                "exec in container {}: empty command",
                ctr.id
            )));
        }
        if req.timeout_seconds < 0 {
            return Err(HandlerError::invalid_argument(format!(
                "exec in container {}: negative timeout {}",
                ctr.id, req.timeout_seconds
            )));
        }
        if self.observe(&ctr).await? != Observed::Running {
            return Err(HandlerError::failed_precondition(format!(
                "handler {}: container {} is not running",
                self.config.name, ctr.id
            )));
        }
        // The exec'd process gets the container's user, env, cwd,
        // capabilities and limits; only the command differs.
        let spec = load_spec(&ctr.bundle)?;
        let mut process = spec.get("process").cloned().unwrap_or(Value::Null);
        let obj = process.as_object_mut().ok_or_else(|| {
            HandlerError::invalid_argument(format!("container {}: spec has no process", ctr.id))
        })?;
        obj.insert("args".into(), serde_json::json!(req.cmd));
        obj.insert("terminal".into(), Value::Bool(false));
        obj.remove("consoleSize");
        let process: oci_spec::runtime::Process = serde_json::from_value(process)
            .map_err(|e| self.err(format!("exec process spec of {}", ctr.id), e))?;
        let timeout =
            (req.timeout_seconds > 0).then(|| Duration::from_secs(req.timeout_seconds as u64));
        let started = Instant::now();
        let out = self
            .monitor()
            .exec_sync(&ExecSyncSpec {
                id: ctr.id.clone(),
                process,
                timeout,
                scratch_dir: ctr.exec_dir(),
            })
            .await;
        let out = match out {
            Ok(out) => out,
            // The runtime could not start the command (no such binary,
            // bad cwd): report it the way a shell would, as a failed
            // command with the runtime's words on stderr.
            Err(MonitorError::RuntimeFailed { message, .. }) => crate::monitor::ExecSyncOutput {
                stdout: Vec::new(),
                stderr: format!("{message}\n").into_bytes(),
                exit_code: exec_failure_code(&message),
                timed_out: false,
            },
            Err(e) => return Err(self.err(format!("exec in container {}", ctr.id), e)),
        };
        tracing::debug!(container = %ctr.id, exit_code = out.exit_code, timed_out = out.timed_out, elapsed_ms = started.elapsed().as_millis() as u64, "exec sync finished");
        Ok(ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            timed_out: out.timed_out,
        })
    }

    pub(crate) async fn do_update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        let Some(linux) = req.linux.as_ref() else {
            return Ok(());
        };
        let resources = crate::resources::oci_resources(linux)
            .map_err(|e| HandlerError::invalid_argument(format!("container {}: {e}", ctr.id)))?;
        match self.observe(&ctr).await? {
            Observed::Created | Observed::Running => {}
            other => {
                return Err(HandlerError::failed_precondition(format!(
                    "handler {}: cannot update resources of container {}: it is {other:?}",
                    self.config.name, ctr.id
                )));
            }
        }
        let file = tempfile::Builder::new()
            .prefix("resources-")
            .suffix(".json")
            .tempfile_in(&ctr.dir)
            .map_err(|e| self.err(format!("resources file for {}", ctr.id), e))?;
        std::fs::write(
            file.path(),
            serde_json::to_vec(&resources).unwrap_or_default(),
        )
        .map_err(|e| self.err(format!("write {}", file.path().display()), e))?;
        self.runtime()
            .update(&ctr.id, file.path())
            .await
            .map_err(|e| self.err(format!("update resources of container {}", ctr.id), e))?;
        tracing::info!(container = %ctr.id, resources = %resources, "container resources updated");
        Ok(())
    }

    pub(crate) async fn do_reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        let Some(log_path) = ctr.log_path.clone() else {
            return Ok(());
        };
        if !conmon_alive(ctr.conmon_pid) {
            return Err(HandlerError::failed_precondition(format!(
                "handler {}: container {} is not running (its conmon is gone); no log to reopen",
                self.config.name, ctr.id
            )));
        }
        let fifo = ctr.ctl_fifo();
        // conmon's control FIFO takes "<type> <height> <width>\n"; type 2
        // reopens the log files. Non-blocking open fails with ENXIO when
        // nobody reads it, instead of hanging.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)?;
            f.write_all(b"2 0 0\n")
        };
        write().map_err(|e| self.err(format!("write {}", fifo.display()), e))?;
        // conmon reopens asynchronously; the kubelet expects the new file
        // once this call returns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log_path.exists() {
            if Instant::now() >= deadline {
                return Err(self.err(
                    format!("reopen log of container {}", ctr.id),
                    format!("conmon did not recreate {} within 5s", log_path.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub(crate) async fn do_container_stats(
        &self,
        req: ContainerRef,
    ) -> HandlerResult<ContainerStatsResponse> {
        let (_, ctr) = self.container(&req.sandbox_id, &req.container_id)?;
        let cgroup = ctr.cgroup.as_deref().ok_or_else(|| {
            HandlerError::failed_precondition(format!(
                "container {} has no cgroupsPath in its spec",
                ctr.id
            ))
        })?;
        let stats = cgroupfs::stats(&self.mounts(), cgroup).ok_or_else(|| {
            HandlerError::failed_precondition(format!(
                "handler {}: cgroup {cgroup} of container {} does not exist",
                self.config.name, ctr.id
            ))
        })?;
        Ok(ContainerStatsResponse {
            timestamp: now_ns(),
            cpu_usage_core_nanoseconds: stats.cpu_usage_ns,
            memory_working_set_bytes: stats.memory_working_set_bytes,
            memory_usage_bytes: stats.memory_usage_bytes,
            memory_rss_bytes: stats.memory_rss_bytes,
        })
    }
}

/// Exit code for a command the runtime could not start: 127 when it was
/// not found (as shells report), 126 otherwise.
pub(crate) fn exec_failure_code(message: &str) -> i32 {
    let m = message.to_ascii_lowercase();
    if m.contains("not found") || m.contains("no such file") {
        127
    } else {
        126
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        check_id("x", "abc-DEF_1.2").unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(check_id("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_fields() {
        let spec: Value = serde_json::json!({
            "linux": {"cgroupsPath": "/pod/c"},
            "annotations": {"a": "b", "n": 1}
        });
        assert_eq!(spec_cgroup(&spec).as_deref(), Some("/pod/c"));
        assert_eq!(spec_annotations(&spec).len(), 1);
        assert_eq!(spec_cgroup(&serde_json::json!({})), None);
    }

    #[test]
    fn a_poisoned_map_lock_does_not_take_the_handler_down() {
        let pods = Pods::default();
        std::thread::scope(|scope| {
            let poisoner = scope.spawn(|| {
                let _held = pods.map.lock().unwrap();
                panic!("poisoning the pod map on purpose");
            });
            assert!(poisoner.join().is_err());
        });
        assert!(pods.map.is_poisoned());
        assert!(pods.get("p1").is_none());
        pods.forget("p1");
        assert!(lock_map(&pods.map).is_empty());
    }

    #[test]
    fn exec_failure_codes() {
        assert_eq!(
            exec_failure_code("exec: \"nope\": executable file not found in $PATH"),
            127
        );
        assert_eq!(exec_failure_code("permission denied"), 126);
    }
}
