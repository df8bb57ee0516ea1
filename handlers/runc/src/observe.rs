//! How the handler learns what a container is doing, and how it rebuilds
//! its view of a pod after a daemon restart.
//!
//! A container's state comes from conmon's exit file first, then whether
//! its conmon lives, and only when conmon is gone from the runtime. conmon
//! dying first is never hidden (see the crate docs): a created container is
//! deleted and its end recorded (exit 255, reason `ConmonDied`), a stopped
//! one gets the same record, a running one stays running (its status says
//! unmonitored). The record lives next to conmon's `oom` marker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crius_shim_api::types::{RestoreSandboxRequest, RestoreSandboxResponse};
use crius_shim_api::{HandlerError, HandlerResult};

use crate::OciHandler;
use crate::monitor::{ContainerExit, read_exit};
use crate::ops::{Observed, Pod, check_id, load_spec, read_conmon_pid, spec_cgroup};
use crate::state::{
    Container, ContainerRecord, Layout, RECORD_VERSION, SandboxRecord, conmon_alive, now_ns,
    system_time_ns, write_once,
};

/// CRI reason of a container whose conmon died before it: the handler
/// recorded the end itself and the exit code is unknown.
pub(crate) const CONMON_DIED: &str = "ConmonDied";
/// Exit code reported when nobody could observe the real one.
pub(crate) const UNKNOWN_EXIT_CODE: i32 = 255;

/// Why and how the handler (not conmon) recorded a container's end, kept
/// next to conmon's `oom` marker in the persist dir.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RecordedEnd {
    reason: String,
    message: String,
}

fn end_file(ctr: &Container) -> PathBuf {
    ctr.persist_dir().join("exit-reason.json")
}

fn read_end(ctr: &Container) -> Option<RecordedEnd> {
    let bytes = std::fs::read(end_file(ctr)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl OciHandler {
    /// The container's state, cheaply: exit file first, then conmon, and
    /// only when conmon is gone the runtime.
    pub(crate) async fn observe(&self, ctr: &Container) -> HandlerResult<Observed> {
        let exit = read_exit(&ctr.exit_dir, &ctr.persist_dir(), &ctr.id)
            .map_err(|e| self.err(format!("container {}", ctr.id), e))?;
        if let Some(exit) = exit {
            return Ok(self.exited(ctr, exit));
        }
        if conmon_alive(ctr.conmon_pid) {
            return Ok(if ctr.started_at() > 0 {
                Observed::Running
            } else {
                Observed::Created
            });
        }
        // conmon may have written the exit file and exited between the
        // two looks: read it again before deciding conmon died first.
        if let Some(exit) = read_exit(&ctr.exit_dir, &ctr.persist_dir(), &ctr.id)
            .map_err(|e| self.err(format!("container {}", ctr.id), e))?
        {
            return Ok(self.exited(ctr, exit));
        }
        // conmon is gone without an exit file (killed, or the host
        // rebooted): ask the runtime.
        let state = self
            .runtime()
            .state(&ctr.id)
            .await
            .map_err(|e| self.err(format!("state of container {}", ctr.id), e))?;
        let conmon = ctr
            .conmon_pid
            .map(|p| format!("conmon (pid {p})"))
            .unwrap_or_else(|| "its conmon".to_string());
        Ok(match state.as_ref().map(|s| s.status.as_str()) {
            Some("created") | Some("creating") => {
                // Starting it now would run it with nobody holding its
                // stdio, log or exit code: it is ended here instead.
                tracing::warn!(handler = %self.config.name, container_id = %ctr.id, conmon_pid = ?ctr.conmon_pid,
                    "created container lost its conmon; deleting it (it never ran)");
                if let Err(e) = self.runtime().delete(&ctr.id).await {
                    return Err(self.err(format!("delete unmonitored container {}", ctr.id), e));
                }
                self.record_end(
                    ctr,
                    format!("{conmon} died before the container was started; the container was deleted without running"),
                )
            }
            Some("running") | Some("paused") => Observed::Running,
            Some(_) => self.record_end(
                ctr,
                format!("{conmon} died before the container exited; its exit code is unknown"),
            ),
            None => Observed::Unknown(format!(
                "container {} is unknown to {} and its monitor is gone",
                ctr.id,
                self.config.runtime_path.display()
            )),
        })
    }

    /// Records an end conmon could not record (exit code unknown), so later
    /// calls agree on it and on the finish time.
    fn record_end(&self, ctr: &Container, message: String) -> Observed {
        let end = RecordedEnd {
            reason: CONMON_DIED.to_string(),
            message: message.clone(),
        };
        // Written once: a status call and the exit watcher can both find
        // conmon gone, and the end (its time is the exit file's) must not
        // move when the second one records it again.
        let _ = std::fs::create_dir_all(ctr.persist_dir());
        let _ = write_once(
            &end_file(ctr),
            &serde_json::to_vec(&end).unwrap_or_default(),
        );
        let _ = std::fs::create_dir_all(&ctr.exit_dir);
        let _ = write_once(&ctr.exit_file(), UNKNOWN_EXIT_CODE.to_string().as_bytes());
        // Answered from the files, as every later call will be.
        if let Ok(Some(exit)) = read_exit(&ctr.exit_dir, &ctr.persist_dir(), &ctr.id) {
            return self.exited(ctr, exit);
        }
        Observed::Exited {
            exit_code: UNKNOWN_EXIT_CODE,
            finished_at: now_ns(),
            oom_killed: false,
            reason: end.reason,
            message,
        }
    }

    fn exited(&self, ctr: &Container, exit: ContainerExit) -> Observed {
        // conmon's marker is the primary source; a SIGKILL with the cgroup's
        // oom_kill counter raised is the fallback (conmon may miss the event
        // when the cgroup goes away at the same time).
        let oom_killed = exit.oom_killed
            || (exit.exit_code == 128 + libc::SIGKILL
                && ctr
                    .cgroup
                    .as_deref()
                    .and_then(|cg| Self::cgroup(cg).ok())
                    .is_some_and(|cg| cg.oom_kill_count() > 0));
        let end = read_end(ctr);
        Observed::Exited {
            exit_code: exit.exit_code,
            finished_at: system_time_ns(exit.finished_at),
            oom_killed,
            reason: end.as_ref().map(|e| e.reason.clone()).unwrap_or_default(),
            message: end.map(|e| e.message).unwrap_or_default(),
        }
    }

    pub(crate) async fn do_restore_sandbox(
        &self,
        req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        check_id("sandbox id", &req.sandbox_id)?;
        let layout = Layout::new(&req.state_dir);
        // The file in the state dir is the newest; handler_state is the
        // core's copy from RunSandbox. Neither exists after a crash between
        // the infra's create and the record write: the infra is then known
        // only to the runtime (by the sandbox id) and is rebuilt from what
        // the runtime says, so stop and remove still reach it.
        let recorded: Option<SandboxRecord> = tokio::fs::read(layout.sandbox_record())
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .or_else(|| serde_json::from_slice(&req.handler_state).ok());
        let sandbox = match recorded {
            Some(s) => s,
            None => {
                tracing::warn!(handler = %self.config.name, pod_id = %req.sandbox_id,
                    "no readable sandbox record; rebuilding the infra container from the runtime's state");
                self.sandbox_from_runtime(&req.sandbox_id, &layout).await
            }
        };
        if sandbox.sandbox_id != req.sandbox_id {
            return Err(HandlerError::invalid_argument(format!(
                "handler state belongs to sandbox {}, not {}",
                sandbox.sandbox_id, req.sandbox_id
            )));
        }
        let infra = Arc::new(Container::from_record(&sandbox.infra, &layout));
        let mut containers = HashMap::new();
        for rc in &req.containers {
            check_id("container id", &rc.container_id)?;
            let from_file =
                tokio::fs::read(layout.container_dir(&rc.container_id).join("record.json"))
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ContainerRecord>(&b).ok());
            let record = from_file
                .or_else(|| serde_json::from_slice(&rc.handler_state).ok())
                .unwrap_or_else(|| ContainerRecord {
                    // Nothing persisted (a crash inside CreateContainer):
                    // rebuild what the layout implies; status asks the
                    // runtime.
                    version: RECORD_VERSION,
                    id: rc.container_id.clone(),
                    sandbox_id: req.sandbox_id.clone(),
                    infra: false,
                    bundle: PathBuf::from(&rc.bundle_dir),
                    log_path: (!rc.log_path.is_empty()).then(|| PathBuf::from(&rc.log_path)),
                    cgroup: load_spec(Path::new(&rc.bundle_dir))
                        .ok()
                        .as_ref()
                        .and_then(spec_cgroup),
                    stop_signal: libc::SIGTERM,
                    created_at: 0,
                    started_at: 0,
                    pid: 0,
                    conmon_pid: read_conmon_pid(Path::new(&rc.bundle_dir)),
                    terminal: false,
                    stdin: false,
                    stdin_once: false,
                });
            let ctr = Container::from_record(&record, &layout);
            // Observing settles a container that lost its conmon: a created
            // one is deleted and recorded ended (it must never start
            // unmonitored), an exited one gets its end recorded.
            let observed = self.observe(&ctr).await;
            if ctr.started_at() == 0 && matches!(observed, Ok(Observed::Running)) {
                // Started, but the daemon died before recording it.
                ctr.set_started_at(ctr.created_at.max(1));
            }
            containers.insert(rc.container_id.clone(), Arc::new(ctr));
        }
        let ready = self.observe(&infra).await? == Observed::Running;
        let pod = Pod {
            id: req.sandbox_id.clone(),
            layout,
            netns_path: sandbox.netns_path.clone(),
            cgroup_parent: sandbox.cgroup_parent.clone(),
            infra,
            containers: std::sync::Mutex::new(containers),
            lifecycle: Default::default(),
        };
        tracing::info!(handler = %self.config.name, sandbox = %req.sandbox_id, ready, containers = req.containers.len(), "sandbox restored");
        self.pods.insert(pod);
        Ok(RestoreSandboxResponse { ready })
    }

    /// A sandbox record rebuilt from the runtime's view of the infra
    /// container (named by the sandbox id) when no record was persisted.
    async fn sandbox_from_runtime(&self, sandbox_id: &str, layout: &Layout) -> SandboxRecord {
        let state = self.runtime().state(sandbox_id).await.ok().flatten();
        let bundle = state
            .as_ref()
            .map(|s| s.bundle.clone())
            .filter(|b| !b.as_os_str().is_empty())
            .unwrap_or_default();
        let pid = state
            .as_ref()
            .and_then(|s| u32::try_from(s.pid).ok())
            .unwrap_or(0);
        let conmon_pid = (!bundle.as_os_str().is_empty())
            .then(|| read_conmon_pid(&bundle))
            .flatten();
        SandboxRecord {
            version: RECORD_VERSION,
            sandbox_id: sandbox_id.to_string(),
            state_dir: layout.root.clone(),
            infra: ContainerRecord {
                version: RECORD_VERSION,
                id: sandbox_id.to_string(),
                sandbox_id: sandbox_id.to_string(),
                infra: true,
                cgroup: load_spec(&bundle).ok().as_ref().and_then(spec_cgroup),
                bundle,
                log_path: None,
                stop_signal: libc::SIGKILL,
                created_at: 0,
                started_at: 0,
                pid,
                conmon_pid,
                terminal: false,
                stdin: false,
                stdin_once: false,
            },
            netns_path: None,
            cgroup_parent: None,
        }
    }
}
