//! Direct calls of the OCI runtime binary (runc-compatible CLI) for the
//! operations conmon does not perform: start, state, kill, delete.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::command::CommandRunner;

/// Upper bound for one runtime command; runc/crun answer in milliseconds,
/// a hang means a wedged runtime and must not block the caller forever.
const RUNTIME_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed runtime command.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {message}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        message: String,
    },
    #[error("`{command}` printed an unreadable state: {source}")]
    BadState {
        command: String,
        source: serde_json::Error,
    },
}

/// The runtime's view of a container (`<runtime> state`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuntimeState {
    pub id: String,
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub bundle: PathBuf,
}

/// A runtime binary with its state root.
#[derive(Clone)]
pub struct OciRuntime {
    path: PathBuf,
    root: PathBuf,
    runner: Arc<dyn CommandRunner>,
    /// Pass `--systemd-cgroup`: containers' cgroupsPath is `slice:prefix:name`
    /// and the runtime makes their scopes through systemd.
    systemd_cgroup: bool,
}

impl std::fmt::Debug for OciRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciRuntime")
            .field("path", &self.path)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl OciRuntime {
    pub fn new(
        path: impl Into<PathBuf>,
        root: impl Into<PathBuf>,
        runner: Arc<dyn CommandRunner>,
    ) -> Self {
        Self {
            path: path.into(),
            root: root.into(),
            runner,
            systemd_cgroup: false,
        }
    }

    /// With the systemd cgroup driver (`--systemd-cgroup` on every call).
    pub fn with_systemd_cgroup(mut self, systemd_cgroup: bool) -> Self {
        self.systemd_cgroup = systemd_cgroup;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the runtime keeps state for `id` (its state directory
    /// `<root>/<id>` exists; the layout runc and crun share).
    pub fn has_state(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    async fn run(&self, args: &[&str]) -> Result<std::process::Output, RuntimeError> {
        let root_arg = format!("--root={}", self.root.display());
        let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
        full.push(&root_arg);
        if self.systemd_cgroup {
            full.push("--systemd-cgroup");
        }
        full.extend_from_slice(args);
        let command = format!("{} {}", self.path.display(), full.join(" "));
        tracing::debug!(%command, "running OCI runtime");
        let output = tokio::time::timeout(
            RUNTIME_COMMAND_TIMEOUT,
            self.runner.output(&self.path, &full),
        )
        .await
        .map_err(|_| RuntimeError::Timeout {
            command: command.clone(),
            timeout: RUNTIME_COMMAND_TIMEOUT,
        })?
        .map_err(|source| RuntimeError::Spawn {
            command: command.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(RuntimeError::Failed {
                command,
                status: output.status,
                message: crate::printed_message(&output),
            });
        }
        Ok(output)
    }

    /// Starts a created container (runs the user process).
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&["start", id]).await.map(drop)
    }

    /// The runtime's state of `id`, or `None` when the runtime does not know
    /// the container.
    pub async fn state(&self, id: &str) -> Result<Option<RuntimeState>, RuntimeError> {
        match self.run(&["state", id]).await {
            Ok(output) => {
                let state = serde_json::from_slice(&output.stdout).map_err(|source| {
                    RuntimeError::BadState {
                        command: format!("{} state {id}", self.path.display()),
                        source,
                    }
                })?;
                Ok(Some(state))
            }
            // Error texts differ between runtimes ("container does not
            // exist", "No such file or directory"); the state directory is
            // the reliable signal.
            Err(RuntimeError::Failed { .. }) if !self.has_state(id) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` (a number or a name such as `KILL`) to the container's
    /// init process, or with `all` to every process of the container.
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError> {
        if all {
            self.run(&["kill", "--all", id, signal]).await.map(drop)
        } else {
            self.run(&["kill", id, signal]).await.map(drop)
        }
    }

    /// Applies new resource limits from an OCI `LinuxResources` JSON file
    /// (`update --resources FILE`).
    pub async fn update(&self, id: &str, resources_file: &Path) -> Result<(), RuntimeError> {
        let file = resources_file.to_string_lossy();
        self.run(&["update", "--resources", &file, id])
            .await
            .map(drop)
    }

    /// Every container the runtime keeps state for: the directories of its
    /// state root (the layout runc and crun share). A missing root is empty.
    pub fn list_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect();
        ids.sort();
        ids
    }

    /// Reconciles the state root with the caller's records: every
    /// container in `ids` (a [`list_ids`](Self::list_ids) snapshot) that
    /// `known` does not claim, and whose bundle `owned` says is the
    /// caller's (so a root shared by mistake with another daemon loses
    /// nothing of that daemon's), is deleted (`delete --force`, which kills
    /// what still runs; its conmon, if any, then exits by itself). Returns
    /// the ids deleted with their bundles; failures are logged and left for
    /// the next start.
    pub async fn delete_unknown(
        &self,
        ids: &[String],
        known: &(dyn Fn(&str) -> bool + Sync),
        owned: &(dyn Fn(&Path) -> bool + Sync),
    ) -> Vec<(String, PathBuf)> {
        let unknown: Vec<&String> = ids.iter().filter(|id| !known(id)).collect();
        let deletes = unknown.iter().map(|id| async move {
            let bundle = match self.state(id).await {
                Ok(Some(state)) if owned(&state.bundle) => state.bundle,
                Ok(Some(state)) => {
                    tracing::warn!(runtime = %self.path.display(), container_id = %id, bundle = %state.bundle.display(),
                        "unknown container in the runtime root is not ours (its bundle is elsewhere); left alone");
                    return None;
                }
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(runtime = %self.path.display(), container_id = %id, error = %e,
                        "cannot read the state of an unknown container; left alone");
                    return None;
                }
            };
            match self.delete(id).await {
                Ok(()) => Some(((*id).clone(), bundle)),
                Err(e) => {
                    tracing::warn!(runtime = %self.path.display(), container_id = %id, error = %e,
                        "cannot delete a container crius has no record of");
                    None
                }
            }
        });
        futures::future::join_all(deletes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Deletes the container (killing it if it still runs). Deleting an
    /// unknown container succeeds, so callers can retry cleanup.
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run(&["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(RuntimeError::Failed { .. }) if !self.has_state(id) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::io;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{ExitStatus, Output};
    use std::sync::Mutex;

    struct Scripted {
        code: i32,
        stdout: &'static str,
        stderr: &'static str,
        calls: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl CommandRunner for Scripted {
        async fn output(&self, _program: &Path, args: &[&str]) -> io::Result<Output> {
            self.calls
                .lock()
                .unwrap()
                .push(args.iter().map(|a| a.to_string()).collect());
            Ok(Output {
                status: ExitStatus::from_raw(self.code << 8),
                stdout: self.stdout.into(),
                stderr: self.stderr.into(),
            })
        }
    }

    fn runtime(
        code: i32,
        stdout: &'static str,
        stderr: &'static str,
        root: &Path,
    ) -> (OciRuntime, Arc<Scripted>) {
        let s = Arc::new(Scripted {
            code,
            stdout,
            stderr,
            calls: Mutex::new(Vec::new()),
        });
        (OciRuntime::new("/usr/sbin/runc", root, s.clone()), s)
    }

    #[tokio::test]
    async fn state_parses_and_passes_root_first() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"ociVersion":"1.0.2","id":"c1","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"x","owner":""}"#;
        let (rt, calls) = runtime(0, json, "", dir.path());
        let st = rt.state("c1").await.unwrap().unwrap();
        assert_eq!(
            (st.id.as_str(), st.status.as_str(), st.pid),
            ("c1", "running", 42)
        );
        let expected_root = format!("--root={}", dir.path().display());
        assert_eq!(
            calls.calls.lock().unwrap()[0],
            vec![expected_root.as_str(), "state", "c1"]
        );
    }

    #[tokio::test]
    async fn unknown_container_state_is_none_and_delete_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, _) = runtime(1, "", "container does not exist", dir.path());
        assert_eq!(rt.state("gone").await.unwrap(), None);
        rt.delete("gone").await.unwrap();
    }

    #[tokio::test]
    async fn failure_of_a_known_container_is_an_error_with_message() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c1")).unwrap();
        let (rt, _) = runtime(1, "", "permission denied", dir.path());
        let err = rt.delete("c1").await.unwrap_err().to_string();
        assert!(
            err.contains("permission denied") && err.contains("delete --force c1"),
            "{err}"
        );
        assert!(rt.state("c1").await.is_err());
    }

    #[tokio::test]
    async fn kill_all_argument_order() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, calls) = runtime(0, "", "", dir.path());
        rt.kill("c1", "KILL", true).await.unwrap();
        rt.kill("c1", "15", false).await.unwrap();
        let calls = calls.calls.lock().unwrap();
        assert_eq!(calls[0][1..], ["kill", "--all", "c1", "KILL"]);
        assert_eq!(calls[1][1..], ["kill", "c1", "15"]);
        drop(calls);
    }

    #[tokio::test]
    async fn unknown_containers_are_deleted_known_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        for id in ["known", "stray", ".hidden"] {
            std::fs::create_dir(dir.path().join(id)).unwrap();
        }
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let state =
            r#"{"id":"stray","pid":1,"status":"stopped","bundle":"/ours/pods/p/containers/stray"}"#;
        let (rt, calls) = runtime(0, state, "", dir.path());
        let ids = rt.list_ids();
        assert_eq!(ids, vec!["known".to_string(), "stray".to_string()]);
        let deleted = rt
            .delete_unknown(&ids, &|id| id == "known", &|b| b.starts_with("/ours"))
            .await;
        assert_eq!(
            deleted,
            vec![(
                "stray".to_string(),
                PathBuf::from("/ours/pods/p/containers/stray")
            )]
        );
        {
            let calls = calls.calls.lock().unwrap();
            assert_eq!(calls.len(), 2);
            assert_eq!(calls[0][1..], ["state", "stray"]);
            assert_eq!(calls[1][1..], ["delete", "--force", "stray"]);
        }
        // Another daemon's container (bundle elsewhere) is left alone.
        let (rt, calls) = runtime(0, state, "", dir.path());
        let deleted = rt
            .delete_unknown(&ids, &|id| id == "known", &|b| b.starts_with("/theirs"))
            .await;
        assert!(deleted.is_empty());
        assert_eq!(calls.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn update_passes_the_resources_file() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, calls) = runtime(0, "", "", dir.path());
        rt.update("c1", Path::new("/s/r.json")).await.unwrap();
        assert_eq!(
            calls.calls.lock().unwrap()[0][1..],
            ["update", "--resources", "/s/r.json", "c1"]
        );
    }
}
