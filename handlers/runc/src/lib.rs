//! The OCI-runtime handler of crius: pods and containers run by an OCI
//! runtime binary (runc, crun, ...) under the conmon container monitor.
//!
//! One implementation serves every OCI runtime; a runtime is a configuration
//! ([`OciHandlerConfig`]) of binary path, state root and monitor. The crun
//! handler crate is such a configuration of this one.
//!
//! What the handler reports in `Status` comes from the runtime's own
//! `features` document (or a trial), never from its name or version; user
//! namespaces are the exception: the runtime only joins the pod's, which
//! every OCI runtime can.
//!
//! conmon dying before its container (kill -9, OOM) is reported, never
//! hidden: a container that still runs stays RUNNING with a status message
//! saying it is unmonitored (conmon cannot adopt a running process; its
//! output is no longer logged, its exit code will not be known); one that
//! ended is EXITED with exit code 255 and reason `ConmonDied`; a created
//! container without its conmon is deleted and reported the same way, so
//! it can never be started unmonitored. ExecSync does not use conmon (see
//! `execsync`).
//!
//! Interactive processes (exec, attach, resize, kill, wait) are described
//! in the `interactive` module: execs run as `<runtime> exec` children of
//! the handler with pipes or a pty the handler allocates; attach goes
//! through conmon's attach socket and control FIFO. Port-forward
//! (`portforward` module) connects inside the pod's network namespace
//! from a short-lived thread.

pub mod command;
pub mod crilog;
pub mod execsync;
mod fdio;
pub mod features;
mod interactive;
pub mod monitor;
mod observe;
mod ops;
mod pidfd;
mod portforward;
pub mod resources;
mod rro_probe;
pub mod runtime;
mod sandboxstats;
pub mod signal;
pub mod state;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crius_shim_api::types::{
    AttachRequest, Capabilities, ContainerRef, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, ExecRequest, ExecResponse, ExecSyncRequest,
    ExecSyncResponse, KillProcessRequest, PortForwardRequest, ProcessRef, ResizePtyRequest,
    RestoreSandboxRequest, RestoreSandboxResponse, RunSandboxRequest, RunSandboxResponse,
    SandboxRef, SandboxStatsResponse, SandboxStatusResponse, StopContainerRequest,
    UpdateContainerResourcesRequest, UpdateSandboxResourcesRequest, WaitResponse,
};
use crius_shim_api::{HandlerError, HandlerFeatures, HandlerResult, RuntimeHandler};

pub use command::{CommandRunner, TokioCommandRunner};
pub use features::{FeaturesParseError, parse_features};
pub use monitor::{
    Conmon, ContainerExit, ContainerMonitor, ExecSyncOutput, ExecSyncSpec, LaunchSpec, Launched,
    MonitorError, read_exit, wait_for_exit,
};
pub use runtime::{OciRuntime, RuntimeError, RuntimeState};

/// Upper bound for `features` / `--version`: a wedged binary must not hang
/// daemon start-up or a `Status` call.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default runc binary (Debian's package).
pub const RUNC_DEFAULT_RUNTIME_PATH: &str = "/usr/sbin/runc";
/// Default conmon binary (Debian's package).
pub const DEFAULT_MONITOR_PATH: &str = "/usr/bin/conmon";
/// Default state root crius gives runc; separate from runc's own default
/// (`/run/runc`) so crius never lists or deletes containers it did not make.
pub const RUNC_DEFAULT_RUNTIME_ROOT: &str = "/run/crius/runc";

/// Operator overrides of the probed features (`None` = use the probe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureOverrides {
    pub recursive_read_only_mounts: Option<bool>,
    pub user_namespaces: Option<bool>,
}

impl FeatureOverrides {
    /// The probed features with every set override applied.
    pub fn apply(&self, probed: HandlerFeatures) -> HandlerFeatures {
        HandlerFeatures {
            recursive_read_only_mounts: self
                .recursive_read_only_mounts
                .unwrap_or(probed.recursive_read_only_mounts),
            user_namespaces: self.user_namespaces.unwrap_or(probed.user_namespaces),
        }
    }
}

/// Configuration of one OCI-runtime handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciHandlerConfig {
    /// RuntimeClass handler name.
    pub name: String,
    /// The OCI runtime binary.
    pub runtime_path: PathBuf,
    /// State root passed to the runtime as `--root`.
    pub runtime_root: PathBuf,
    /// The conmon binary.
    pub monitor_path: PathBuf,
    /// Overrides of the probed features.
    pub feature_overrides: FeatureOverrides,
    /// The daemon runs the systemd cgroup driver: containers' cgroupsPath is
    /// `slice:prefix:name` and the runtime gets `--systemd-cgroup`.
    pub systemd_cgroup: bool,
}

/// A runc handler configuration with the given paths.
pub fn runc_config(
    name: impl Into<String>,
    runtime_path: impl Into<PathBuf>,
    runtime_root: impl Into<PathBuf>,
    monitor_path: impl Into<PathBuf>,
) -> OciHandlerConfig {
    OciHandlerConfig {
        name: name.into(),
        runtime_path: runtime_path.into(),
        runtime_root: runtime_root.into(),
        monitor_path: monitor_path.into(),
        feature_overrides: FeatureOverrides::default(),
        systemd_cgroup: false,
    }
}

/// A runc handler configuration with the Debian default paths.
pub fn runc_default_config(name: impl Into<String>) -> OciHandlerConfig {
    runc_config(
        name,
        RUNC_DEFAULT_RUNTIME_PATH,
        RUNC_DEFAULT_RUNTIME_ROOT,
        DEFAULT_MONITOR_PATH,
    )
}

/// Reconciles a runtime state root with the caller's records at start (see
/// [`OciRuntime::delete_unknown`]) and waits out the conmon of each deleted
/// container (killing one that does not exit), so nothing of them runs once
/// this returns. Returns the ids deleted.
pub async fn delete_unknown_containers(
    runtime: &OciRuntime,
    known: &(dyn Fn(&str) -> bool + Sync),
    owned: &(dyn Fn(&Path) -> bool + Sync),
) -> Vec<String> {
    let ids = runtime.list_ids();
    let deleted = runtime.delete_unknown(&ids, known, owned).await;
    futures::future::join_all(
        deleted.iter().map(|(_, bundle)| {
            ops::reap_conmon(ops::read_conmon_pid(bundle), ops::CONMON_EXIT_WAIT)
        }),
    )
    .await;
    deleted.into_iter().map(|(id, _)| id).collect()
}

/// Outcome of asking the runtime for its features document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureProbe {
    /// The runtime printed a features document; this is what it says.
    Reported(HandlerFeatures),
    /// No usable document (no `features` subcommand, binary missing, bad
    /// output); every feature is reported as unsupported unless overridden.
    Unavailable { reason: String },
    /// No document (`reason`), but the runtime was tried: recursive
    /// read-only mounts by creating a trial container (user namespaces are
    /// not tried and stay unsupported).
    Tried {
        reason: String,
        features: HandlerFeatures,
    },
}

impl FeatureProbe {
    /// Features as probed, before overrides.
    pub fn features(&self) -> HandlerFeatures {
        match self {
            FeatureProbe::Reported(f) | FeatureProbe::Tried { features: f, .. } => *f,
            FeatureProbe::Unavailable { .. } => HandlerFeatures::default(),
        }
    }
}

/// For a runtime without a features document: tries what can be tried
/// (see `rro_probe`). A trial that cannot run leaves the probe unavailable.
async fn try_features(config: &OciHandlerConfig, reason: &str) -> FeatureProbe {
    let work_parent = config
        .runtime_root
        .parent()
        .unwrap_or_else(|| Path::new("/tmp"));
    if let Err(e) = tokio::fs::create_dir_all(&config.runtime_root).await {
        return FeatureProbe::Unavailable {
            reason: format!(
                "{reason}; cannot create {}: {e}",
                config.runtime_root.display()
            ),
        };
    }
    match rro_probe::try_rro(&config.runtime_path, &config.runtime_root, work_parent).await {
        Ok(rro) => FeatureProbe::Tried {
            reason: reason.to_string(),
            features: HandlerFeatures {
                recursive_read_only_mounts: rro,
                user_namespaces: false,
            },
        },
        Err(e) => FeatureProbe::Unavailable {
            reason: format!("{reason}; trying rro failed: {e}"),
        },
    }
}

/// Runs `<runtime> features` and interprets the result.
pub async fn probe_features(runner: &dyn CommandRunner, runtime_path: &Path) -> FeatureProbe {
    let shown = runtime_path.display();
    let output =
        match tokio::time::timeout(PROBE_TIMEOUT, runner.output(runtime_path, &["features"])).await
        {
            Err(_) => {
                return FeatureProbe::Unavailable {
                    reason: format!("`{shown} features` did not finish within {PROBE_TIMEOUT:?}"),
                };
            }
            Ok(Err(e)) => {
                return FeatureProbe::Unavailable {
                    reason: format!("cannot run `{shown} features`: {e}"),
                };
            }
            Ok(Ok(output)) => output,
        };
    if !output.status.success() {
        // Runtimes without the subcommand (crun 1.8.1: "unknown command
        // features") exit non-zero; say what they printed.
        return FeatureProbe::Unavailable {
            reason: format!(
                "`{shown} features` failed ({}): {}",
                output.status,
                printed_message(&output)
            ),
        };
    }
    match parse_features(&output.stdout) {
        Ok(features) => FeatureProbe::Reported(features),
        Err(e) => FeatureProbe::Unavailable {
            reason: format!("`{shown} features`: {e}"),
        },
    }
}

/// The most useful text a failed command printed: stderr, else stdout.
fn printed_message(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        return stderr.to_string();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stdout = stdout.trim();
    if stdout.is_empty() {
        "no output".to_string()
    } else {
        stdout.to_string()
    }
}

/// Checks that `path` is a regular file with an execute bit.
fn check_executable(path: &Path, what: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{what} {} is not executable", path.display()));
    }
    Ok(())
}

/// A handler driving one OCI runtime binary under conmon.
pub struct OciHandler {
    config: OciHandlerConfig,
    runner: Arc<dyn CommandRunner>,
    probe: FeatureProbe,
    features: HandlerFeatures,
    pods: ops::Pods,
    execs: interactive::Execs,
}

impl std::fmt::Debug for OciHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciHandler")
            .field("config", &self.config)
            .field("probe", &self.probe)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

impl OciHandler {
    /// Builds the handler and probes the runtime's features. Never fails: a
    /// missing or broken binary shows up in [`RuntimeHandler::check_ready`].
    pub async fn new(config: OciHandlerConfig) -> OciHandler {
        Self::with_runner(config, Arc::new(TokioCommandRunner)).await
    }

    /// As [`OciHandler::new`], starting helper processes through `runner`.
    pub async fn with_runner(
        config: OciHandlerConfig,
        runner: Arc<dyn CommandRunner>,
    ) -> OciHandler {
        let mut probe = probe_features(runner.as_ref(), &config.runtime_path).await;
        if let FeatureProbe::Unavailable { reason } = &probe
            && config
                .feature_overrides
                .recursive_read_only_mounts
                .is_none()
            && config.runtime_path.is_file()
        {
            probe = try_features(&config, reason).await;
        }
        // User namespaces need nothing of a working runtime but joining one
        // by path: the core pins the pod's user namespace and id-maps the
        // rootfs and volumes itself, so the runtime's own id-mapped mount
        // support (what `features` reports) does not matter. A runtime that
        // could not be probed at all is claimed to support nothing.
        let features = config.feature_overrides.apply(HandlerFeatures {
            user_namespaces: !matches!(probe, FeatureProbe::Unavailable { .. }),
            ..probe.features()
        });
        match &probe {
            FeatureProbe::Reported(probed) => tracing::info!(
                handler = %config.name,
                runtime = %config.runtime_path.display(),
                probed_rro = probed.recursive_read_only_mounts,
                probed_userns = probed.user_namespaces,
                recursive_read_only_mounts = features.recursive_read_only_mounts,
                user_namespaces = features.user_namespaces,
                "runtime features probed"
            ),
            FeatureProbe::Unavailable { reason } => tracing::warn!(
                handler = %config.name,
                runtime = %config.runtime_path.display(),
                %reason,
                recursive_read_only_mounts = features.recursive_read_only_mounts,
                user_namespaces = features.user_namespaces,
                "runtime reports no features document; features not set by overrides are reported unsupported"
            ),
            FeatureProbe::Tried {
                reason,
                features: tried,
            } => tracing::info!(
                handler = %config.name,
                runtime = %config.runtime_path.display(),
                %reason,
                tried_rro = tried.recursive_read_only_mounts,
                recursive_read_only_mounts = features.recursive_read_only_mounts,
                user_namespaces = features.user_namespaces,
                "runtime reports no features document; recursive read-only mounts tried"
            ),
        }
        OciHandler {
            config,
            runner,
            probe,
            features,
            pods: ops::Pods::default(),
            execs: interactive::Execs::default(),
        }
    }

    /// The configuration this handler was built from.
    pub fn config(&self) -> &OciHandlerConfig {
        &self.config
    }

    /// What the features probe found, before overrides.
    pub fn feature_probe(&self) -> &FeatureProbe {
        &self.probe
    }

    /// The runner used to start the runtime and monitor.
    pub fn runner(&self) -> &Arc<dyn CommandRunner> {
        &self.runner
    }

    /// A client of this handler's runtime binary and state root.
    pub fn runtime(&self) -> OciRuntime {
        OciRuntime::new(
            &self.config.runtime_path,
            &self.config.runtime_root,
            self.runner.clone(),
        )
        .with_systemd_cgroup(self.config.systemd_cgroup)
    }

    /// The conmon monitor configured for this handler's runtime.
    pub fn monitor(&self) -> Conmon {
        Conmon {
            systemd_cgroup: self.config.systemd_cgroup,
            ..Conmon::new(
                &self.config.monitor_path,
                &self.config.runtime_path,
                &self.config.runtime_root,
            )
        }
    }

    fn not_ready(&self, reason: String) -> HandlerError {
        HandlerError::not_ready(&self.config.name, reason)
    }
}

/// `impl RuntimeHandler for OciHandler`: the methods answered here, then
/// one row per method that hands its request to the `do_` method doing the
/// work (in `ops`, `interactive`, `sandboxstats`).
macro_rules! runtime_handler {
    ({ $($own:tt)* } $($method:ident($req:ty) -> $resp:ty = $imp:ident;)*) => {
        #[async_trait]
        impl RuntimeHandler for OciHandler {
            $($own)*
            $(
                async fn $method(&self, req: $req) -> HandlerResult<$resp> {
                    self.$imp(req).await
                }
            )*
        }
    };
}

runtime_handler! {
    {
        fn name(&self) -> &str {
            &self.config.name
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities {
                recursive_read_only_mounts: self.features.recursive_read_only_mounts,
                user_namespaces: self.features.user_namespaces,
                needs_infra_container: true,
                // The infra process only holds namespaces: it can start
                // while CNI configures the netns.
                starts_without_network: true,
            }
        }

        async fn check_ready(&self) -> Result<(), HandlerError> {
            check_executable(&self.config.runtime_path, "OCI runtime")
                .map_err(|r| self.not_ready(r))?;
            check_executable(&self.config.monitor_path, "container monitor")
                .map_err(|r| self.not_ready(r))?;
            let runtime = self.config.runtime_path.display();
            let output = tokio::time::timeout(
                PROBE_TIMEOUT,
                self.runner
                    .output(&self.config.runtime_path, &["--version"]),
            )
            .await
            .map_err(|_| {
                self.not_ready(format!(
                    "`{runtime} --version` did not finish within {PROBE_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| self.not_ready(format!("cannot run `{runtime} --version`: {e}")))?;
            if !output.status.success() {
                return Err(self.not_ready(format!(
                    "`{runtime} --version` failed ({}): {}",
                    output.status,
                    printed_message(&output)
                )));
            }
            Ok(())
        }
    }
    // Sandboxes.
    run_sandbox(RunSandboxRequest) -> RunSandboxResponse = do_run_sandbox;
    remove_sandbox(SandboxRef) -> () = do_remove_sandbox;
    stop_sandbox(SandboxRef) -> () = do_stop_sandbox;
    sandbox_status(SandboxRef) -> SandboxStatusResponse = do_sandbox_status;
    restore_sandbox(RestoreSandboxRequest) -> RestoreSandboxResponse = do_restore_sandbox;
    sandbox_stats(SandboxRef) -> SandboxStatsResponse = do_sandbox_stats;
    update_sandbox_resources(UpdateSandboxResourcesRequest) -> () = do_update_sandbox_resources;
    // Containers.
    create_container(CreateContainerRequest) -> CreateContainerResponse = do_create_container;
    start_container(ContainerRef) -> () = do_start_container;
    remove_container(ContainerRef) -> () = do_remove_container;
    container_status(ContainerRef) -> ContainerStatusResponse = do_container_status;
    stop_container(StopContainerRequest) -> () = do_stop_container;
    update_container_resources(UpdateContainerResourcesRequest) -> () = do_update_container_resources;
    exec_sync(ExecSyncRequest) -> ExecSyncResponse = do_exec_sync;
    container_stats(ContainerRef) -> ContainerStatsResponse = do_container_stats;
    reopen_container_log(ContainerRef) -> () = do_reopen_container_log;
    // Processes in them.
    attach(AttachRequest) -> () = do_attach;
    resize_pty(ResizePtyRequest) -> () = do_resize_pty;
    wait(ProcessRef) -> WaitResponse = do_wait;
    kill_process(KillProcessRequest) -> () = do_kill_process;
    exec(ExecRequest) -> ExecResponse = do_exec;
    port_forward(PortForwardRequest) -> () = do_port_forward;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{ExitStatus, Output};
    use std::sync::Mutex;

    /// Answers by argument list; records every call.
    #[derive(Default)]
    struct FakeRunner {
        answers: HashMap<String, (i32, &'static str, &'static str)>,
        calls: Mutex<Vec<String>>,
    }

    impl FakeRunner {
        fn answer(
            mut self,
            args: &str,
            code: i32,
            stdout: &'static str,
            stderr: &'static str,
        ) -> Self {
            self.answers
                .insert(args.to_string(), (code, stdout, stderr));
            self
        }
    }

    #[async_trait]
    impl CommandRunner for FakeRunner {
        async fn output(&self, _program: &Path, args: &[&str]) -> io::Result<Output> {
            let key = args.join(" ");
            self.calls.lock().unwrap().push(key.clone());
            match self.answers.get(&key) {
                Some((code, out, err)) => Ok(Output {
                    status: ExitStatus::from_raw(code << 8),
                    stdout: out.as_bytes().to_vec(),
                    stderr: err.as_bytes().to_vec(),
                }),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
            }
        }
    }

    const FULL: &str =
        r#"{"mountOptions":["rro"],"linux":{"mountExtensions":{"idmap":{"enabled":true}}}}"#;

    fn config(dir: &Path) -> OciHandlerConfig {
        runc_config(
            "test",
            dir.join("runtime"),
            dir.join("root"),
            dir.join("monitor"),
        )
    }

    fn make_executable(path: &Path) {
        std::fs::write(path, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A temp dir with the named executables, and a runner answering
    /// `--version` with (exit code, stdout, stderr).
    fn ready_setup(
        executables: &[&str],
        version: (i32, &'static str, &'static str),
    ) -> (tempfile::TempDir, Arc<FakeRunner>) {
        let dir = tempfile::tempdir().unwrap();
        for name in executables {
            make_executable(&dir.path().join(name));
        }
        let (code, stdout, stderr) = version;
        let runner = FakeRunner::default().answer("--version", code, stdout, stderr);
        (dir, Arc::new(runner))
    }

    #[tokio::test]
    async fn features_from_document() {
        let runner = FakeRunner::default().answer("features", 0, FULL, "");
        let h = OciHandler::with_runner(config(Path::new("/nonexistent")), Arc::new(runner)).await;
        assert_eq!(
            h.features(),
            HandlerFeatures {
                recursive_read_only_mounts: true,
                user_namespaces: true
            }
        );
        assert!(matches!(h.feature_probe(), FeatureProbe::Reported(_)));
    }

    #[tokio::test]
    async fn no_features_subcommand_reports_nothing_and_says_why() {
        let runner = FakeRunner::default().answer("features", 1, "", "unknown command features");
        let h = OciHandler::with_runner(config(Path::new("/nonexistent")), Arc::new(runner)).await;
        assert_eq!(h.features(), HandlerFeatures::default());
        match h.feature_probe() {
            FeatureProbe::Unavailable { reason } => {
                assert!(reason.contains("unknown command features"), "{reason}")
            }
            other => panic!("unexpected probe {other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_features_output_reports_nothing() {
        let runner = FakeRunner::default().answer("features", 0, "not json", "");
        let h = OciHandler::with_runner(config(Path::new("/nonexistent")), Arc::new(runner)).await;
        assert_eq!(h.features(), HandlerFeatures::default());
        assert!(matches!(
            h.feature_probe(),
            FeatureProbe::Unavailable { .. }
        ));
    }

    #[tokio::test]
    async fn overrides_win_both_ways() {
        // An override turning a reported feature off, and one turning on a
        // feature the runtime could not report: both give the same result.
        let cases = [
            (
                FakeRunner::default().answer("features", 0, FULL, ""),
                FeatureOverrides {
                    recursive_read_only_mounts: Some(false),
                    user_namespaces: None,
                },
            ),
            (
                FakeRunner::default().answer("features", 1, "", "unknown command features"),
                FeatureOverrides {
                    recursive_read_only_mounts: None,
                    user_namespaces: Some(true),
                },
            ),
        ];
        for (runner, overrides) in cases {
            let mut cfg = config(Path::new("/nonexistent"));
            cfg.feature_overrides = overrides;
            let h = OciHandler::with_runner(cfg, Arc::new(runner)).await;
            assert_eq!(
                h.features(),
                HandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: true
                }
            );
        }
    }

    #[tokio::test]
    async fn missing_runtime_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        make_executable(&dir.path().join("monitor"));
        let h = OciHandler::with_runner(config(dir.path()), Arc::new(FakeRunner::default())).await;
        let err = h.check_ready().await.unwrap_err().to_string();
        assert!(
            err.contains("OCI runtime") && err.contains("runtime"),
            "{err}"
        );
        assert!(err.starts_with("handler test is not ready"), "{err}");
    }

    #[tokio::test]
    async fn missing_or_non_executable_monitor_is_not_ready() {
        let (dir, runner) = ready_setup(&["runtime"], (0, "runc version 1", ""));
        let h = OciHandler::with_runner(config(dir.path()), runner).await;
        let err = h.check_ready().await.unwrap_err().to_string();
        assert!(err.contains("container monitor"), "{err}");

        std::fs::write(dir.path().join("monitor"), b"x").unwrap();
        let err = h.check_ready().await.unwrap_err().to_string();
        assert!(err.contains("is not executable"), "{err}");
    }

    #[tokio::test]
    async fn failing_version_is_not_ready() {
        let (dir, runner) = ready_setup(&["runtime", "monitor"], (2, "", "libseccomp missing"));
        let h = OciHandler::with_runner(config(dir.path()), runner).await;
        let err = h.check_ready().await.unwrap_err().to_string();
        assert!(err.contains("libseccomp missing"), "{err}");
    }

    #[tokio::test]
    async fn ready_when_everything_is_there() {
        let (dir, runner) = ready_setup(&["runtime", "monitor"], (0, "runc version 1", ""));
        let h = OciHandler::with_runner(config(dir.path()), runner.clone()).await;
        h.check_ready().await.unwrap();
        assert_eq!(
            *runner.calls.lock().unwrap(),
            vec!["features".to_string(), "--version".to_string()]
        );
    }
}
