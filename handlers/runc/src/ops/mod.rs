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

use crius_shim_api::cgroupfs::{CgroupError, CgroupLayout, PodCgroup};
use crius_shim_api::types::{
    ContainerRef, ContainerState, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse,
    RunSandboxRequest, RunSandboxResponse, SandboxRef, SandboxStatusResponse, StopContainerRequest,
    UpdateContainerResourcesRequest,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerResult};
use oci_spec::runtime::{Process, Spec};

use crate::monitor::{ContainerMonitor, ExecSyncSpec, LaunchSpec, MonitorError};
use crate::state::{
    Container, ContainerRecord, Layout, RECORD_VERSION, SandboxRecord, conmon_alive, now_ns,
    write_atomic,
};
use crate::{OciHandler, signal};

mod container;
mod sandbox;
#[cfg(test)]
mod tests;

pub(crate) use container::exec_failure_code;

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

/// The process spec of an exec in `ctr`: the container's own (user, env,
/// cwd, capabilities, limits) with only the command, the terminal and the
/// console size (width, height; `None` drops it) replaced.
pub(crate) fn exec_process(
    ctr: &Container,
    cmd: &[String],
    terminal: bool,
    console_size: Option<(u16, u16)>,
) -> HandlerResult<Process> {
    let spec = load_spec(&ctr.bundle)?;
    let mut process = spec.process().clone().ok_or_else(|| {
        HandlerError::invalid_argument(format!("container {}: spec has no process", ctr.id))
    })?;
    process.set_args(Some(cmd.to_vec()));
    process.set_terminal(Some(terminal));
    let size = console_size
        .map(|(width, height)| {
            oci_spec::runtime::BoxBuilder::default()
                .width(u64::from(width))
                .height(u64::from(height))
                .build()
        })
        .transpose()
        .map_err(|e| HandlerError::invalid_argument(format!("console size: {e}")))?;
    process.set_console_size(size);
    Ok(process)
}

/// The CRI reason of an exit: the handler's own (`reason`) when it set
/// one, else derived from the OOM kill and the exit code.
pub(crate) fn exit_reason(reason: &str, oom_killed: bool, exit_code: i32) -> &str {
    if !reason.is_empty() {
        reason
    } else if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// IDs become file names and runtime container names.
pub(crate) use crius_shim_api::checks::id as check_id;

/// Reads the bundle's config.json (written by the core) as a typed spec.
pub(crate) fn load_spec(bundle: &Path) -> HandlerResult<Spec> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| {
        HandlerError::invalid_argument(format!("cannot read OCI spec {}: {e}", path.display()))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        HandlerError::invalid_argument(format!(
            "OCI spec {} is not a valid runtime spec: {e}",
            path.display()
        ))
    })
}

pub(crate) fn spec_cgroup(spec: &Spec) -> Option<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.display().to_string())
        .filter(|s| !s.is_empty())
}

fn spec_annotations(spec: &Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

/// Whether the spec's process has a terminal (the runtime then expects a
/// console socket).
fn spec_terminal(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
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

    /// The cgroup at `path` (a spec's cgroupsPath or a pod cgroup). The
    /// layout is read from mountinfo each time rather than kept: it is
    /// small, and reading it never goes stale after a remount.
    /// A systemd `slice:prefix:name` path is the scope's cgroupfs path.
    pub(crate) fn cgroup(path: &str) -> Result<PodCgroup, CgroupError> {
        let path = crius_shim_api::cgroupfs::systemd::resolve(path)?;
        PodCgroup::open(&CgroupLayout::detect()?, &path)
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
        if self.config.systemd_cgroup {
            // `kill --all` finds the processes through the container's v1
            // devices cgroup; under systemd a container's init can sit in
            // the slice's devices cgroup instead of its scope's (seen with
            // runc 1.1.5 and systemd 252 on a pod's infra container), and
            // would be missed. The init itself always gets the signal.
            self.signal(ctr, libc::SIGKILL, false).await?;
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
            if let Err(e) = tokio::fs::create_dir_all(&dir).await {
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
}
