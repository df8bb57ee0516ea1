//! `hello`: an example third-party crius runtime handler.
//!
//! It depends on `crius-shim-api` only, implements [`RuntimeHandler`] by
//! driving `runc` directly (no conmon), and is built two ways from this one
//! implementation:
//!
//! - a plugin library (`libhandler_hello.so`, `export_handler!` below),
//!   configured with `plugin: {mode: library}`;
//! - a shim executable (`handler-hello-shim`, `src/bin`), configured with
//!   `plugin: {mode: process}`.
//!
//! The pod's infra container runs with `runc run --detach`; each container
//! runs under a `runc run` child of the handler, which exits with the
//! container's exit status, and whose output the handler writes to the CRI
//! log file. It declares user-namespace support so `Status` shows it.
//!
//! Options (`plugin.options` in the config):
//! - `runtime`: the runc binary (default `/usr/sbin/runc`).
//! - `fault`: fault injection for tests of the host: `panic:<Method>` panics
//!   in that method, `abort:<Method>` aborts the process (shim mode only!),
//!   `hang:StartContainer` never answers StartContainer (the host's call
//!   timeout must).
//!
//! Interactive processes (the `exec` module): `Exec` without a terminal,
//! with stdin/stdout/stderr on the core's sockets, `Wait` and `KillProcess`
//! on execs. Exec with a terminal, `Attach`, `ResizePty`, `PortForward` and
//! `Wait` on a main process answer `Unimplemented` by name.

mod exec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crius_shim_api::types::{
    Capabilities, ContainerRef, ContainerState, ContainerStatusResponse, CreateContainerRequest,
    CreateContainerResponse, ExecRequest, ExecResponse, ExecSyncRequest, ExecSyncResponse,
    KillProcessRequest, ProcessRef, RestoreSandboxRequest, RestoreSandboxResponse,
    RunSandboxRequest, RunSandboxResponse, SandboxRef, SandboxStatusResponse, StopContainerRequest,
    WaitResponse,
};
use crius_shim_api::{HandlerError, HandlerParams, HandlerResult, RuntimeHandler};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// One container the handler started (or will start).
struct Container {
    sandbox_id: String,
    bundle: PathBuf,
    log_path: String,
    created_at: i64,
    /// (started_at, pid) once running.
    started: Mutex<Option<(i64, u32)>>,
    /// (finished_at, exit code) once its `runc run` exited.
    finished: Arc<Mutex<Option<(i64, i32)>>>,
}

/// The example handler.
pub struct HelloHandler {
    name: String,
    runc: PathBuf,
    root: PathBuf,
    fault: Option<(String, String)>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    execs: exec::Execs,
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

impl HelloHandler {
    /// The constructor both the plugin and the shim use.
    pub fn new(params: HandlerParams) -> HandlerResult<Self> {
        let state_dir = if params.state_dir.is_empty() {
            "/run/crius/hello".to_string()
        } else {
            params.state_dir.clone()
        };
        let fault = params.option_str("fault").and_then(|f| {
            let (kind, method) = f.split_once(':')?;
            Some((kind.to_string(), method.to_string()))
        });
        let runc = params
            .option_str("runtime")
            .map_or_else(|| PathBuf::from("/usr/sbin/runc"), PathBuf::from);
        Ok(Self {
            name: params.name,
            runc,
            root: Path::new(&state_dir).join("runc"),
            fault,
            containers: Mutex::new(HashMap::new()),
            execs: exec::Execs::default(),
        })
    }

    /// Fault injection (see the crate docs).
    fn fault(&self, method: &str) {
        if let Some((kind, at)) = &self.fault
            && at == method
        {
            match kind.as_str() {
                "panic" => panic!("hello: injected panic in {method}"),
                "abort" => {
                    eprintln!("hello: injected abort in {method}");
                    std::process::abort()
                }
                _ => {}
            }
        }
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root").arg(&self.root).stdin(Stdio::null());
        cmd
    }

    /// Runs a short runc command; its stderr becomes the error message.
    async fn runc_ok(&self, args: &[&str]) -> HandlerResult<Vec<u8>> {
        let out = self.runc().args(args).output().await.map_err(|e| {
            HandlerError::internal(format!("hello: running {}: {e}", self.runc.display()))
        })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(HandlerError::internal(format!(
                "hello: runc {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Runs a runc command that leaves a detached container behind. The
    /// container inherits runc's stdio, so no pipes (they would never
    /// close): stderr goes to a file read back on failure.
    async fn runc_detached(&self, args: &[&str]) -> HandlerResult<()> {
        let internal = |e: std::io::Error| {
            HandlerError::internal(format!("hello: running {}: {e}", self.runc.display()))
        };
        let err_path = self
            .root
            .join(format!("runc-{}.stderr", args.last().unwrap_or(&"run")));
        let err_file = std::fs::File::create(&err_path).map_err(internal)?;
        let status = self
            .runc()
            .args(args)
            .stdout(Stdio::null())
            .stderr(err_file)
            .status()
            .await
            .map_err(internal)?;
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&err_path);
        if status.success() {
            Ok(())
        } else {
            Err(HandlerError::internal(format!(
                "hello: runc {} failed: {}",
                args.join(" "),
                stderr.trim()
            )))
        }
    }

    /// `runc state` of a container: (status, pid), `None` if runc does not know it.
    async fn state(&self, id: &str) -> Option<(String, u32)> {
        let out = self.runc_ok(&["state", id]).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        let field = |key: &str| -> Option<String> {
            let start = text.find(&format!("\"{key}\""))? + key.len() + 2;
            let rest = text[start..].trim_start().strip_prefix(':')?.trim_start();
            let end = rest.find([',', '\n', '}'])?;
            Some(rest[..end].trim().trim_matches('"').to_string())
        };
        Some((field("status")?, field("pid")?.parse().unwrap_or(0)))
    }

    fn container(&self, id: &str) -> HandlerResult<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| HandlerError::not_found(format!("hello: container {id} not found")))
    }

    fn pod_containers(&self, sandbox_id: &str) -> Vec<String> {
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        containers
            .iter()
            .filter(|(_, c)| c.sandbox_id == sandbox_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Kills and deletes a runc container; absent containers are fine.
    async fn destroy(&self, id: &str) {
        let _ = self.runc_ok(&["kill", id, "KILL"]).await;
        let _ = self.runc_ok(&["delete", "--force", id]).await;
    }
}

/// Copies one output stream of a container into the CRI log file.
async fn copy_to_log(stream: impl AsyncRead + Unpin, tag: &'static str, log_path: String) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if log_path.is_empty() {
            continue;
        }
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, false);
        // Opened per line, so a rotated file (ReopenContainerLog) is picked up.
        if let Ok(mut file) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .await
        {
            let _ = file
                .write_all(format!("{stamp} {tag} F {line}\n").as_bytes())
                .await;
        }
    }
}

#[async_trait]
impl RuntimeHandler for HelloHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recursive_read_only_mounts: false,
            user_namespaces: true,
            needs_infra_container: true,
            // Capabilities the contract adds later stay off for this handler.
            ..Default::default()
        }
    }

    async fn check_ready(&self) -> HandlerResult<()> {
        self.fault("CheckReady");
        if !self.runc.is_file() {
            return Err(HandlerError::not_ready(
                &self.name,
                format!("{} is not installed", self.runc.display()),
            ));
        }
        Ok(())
    }

    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        self.fault("RunSandbox");
        let infra = req.infra.ok_or_else(|| {
            HandlerError::invalid_argument("hello: RunSandbox without an infra bundle")
        })?;
        tokio::fs::create_dir_all(&self.root).await.map_err(|e| {
            HandlerError::internal(format!("hello: creating {}: {e}", self.root.display()))
        })?;
        let pid_file = Path::new(&infra.dir).join("hello-infra.pid");
        let pid_arg = pid_file.display().to_string();
        let run = self
            .runc_detached(&[
                "run",
                "--detach",
                "--bundle",
                &infra.dir,
                "--pid-file",
                &pid_arg,
                &req.sandbox_id,
            ])
            .await;
        if let Err(err) = run {
            self.destroy(&req.sandbox_id).await;
            return Err(err);
        }
        let pid = tokio::fs::read_to_string(&pid_file)
            .await
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        Ok(RunSandboxResponse {
            handler_state: b"hello".to_vec(),
            infra_pid: pid,
        })
    }

    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.fault("StopSandbox");
        for id in self.pod_containers(&req.sandbox_id) {
            let _ = self.runc_ok(&["kill", &id, "KILL"]).await;
        }
        let _ = self.runc_ok(&["kill", &req.sandbox_id, "KILL"]).await;
        Ok(())
    }

    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.fault("RemoveSandbox");
        for id in self.pod_containers(&req.sandbox_id) {
            self.destroy(&id).await;
            self.containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        self.destroy(&req.sandbox_id).await;
        Ok(())
    }

    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        let state = self.state(&req.sandbox_id).await;
        let ready = state
            .as_ref()
            .is_some_and(|(status, _)| status == "running");
        let mut info = HashMap::new();
        info.insert("handler".to_string(), "hello".to_string());
        if let Some((status, pid)) = state {
            info.insert("infra".to_string(), format!("{status} (pid {pid})"));
        }
        Ok(SandboxStatusResponse { ready, info })
    }

    async fn restore_sandbox(
        &self,
        req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        for c in req.containers {
            let container = Container {
                sandbox_id: req.sandbox_id.clone(),
                bundle: PathBuf::from(c.bundle_dir),
                log_path: c.log_path,
                created_at: 0,
                started: Mutex::new(None),
                finished: Arc::new(Mutex::new(None)),
            };
            // A shim that outlived the daemon still knows its containers.
            self.containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(c.container_id)
                .or_insert(Arc::new(container));
        }
        let ready = self
            .state(&req.sandbox_id)
            .await
            .is_some_and(|(status, _)| status == "running");
        Ok(RestoreSandboxResponse { ready })
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        self.fault("CreateContainer");
        let bundle = req.bundle.ok_or_else(|| {
            HandlerError::invalid_argument("hello: CreateContainer without a bundle")
        })?;
        // runc creates and starts in one step (`runc run`), at StartContainer;
        // until then the container exists only here.
        let container = Container {
            sandbox_id: req.sandbox_id,
            bundle: PathBuf::from(bundle.dir),
            log_path: req.log_path,
            created_at: now_nanos(),
            started: Mutex::new(None),
            finished: Arc::new(Mutex::new(None)),
        };
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.container_id, Arc::new(container));
        Ok(CreateContainerResponse {
            handler_state: Vec::new(),
        })
    }

    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.fault("StartContainer");
        if matches!(&self.fault, Some((kind, at)) if kind == "hang" && at == "StartContainer") {
            std::future::pending::<()>().await;
        }
        let container = self.container(&req.container_id)?;
        if let Some(dir) = Path::new(&container.log_path).parent()
            && !container.log_path.is_empty()
        {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        // The pid file tells a container that ran and exited at once apart
        // from one runc could not start.
        let pid_file = container.bundle.join("hello.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut child = self
            .runc()
            .arg("run")
            .arg("--bundle")
            .arg(&container.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&req.container_id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HandlerError::internal(format!("hello: starting runc run: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(copy_to_log(s, "stdout", container.log_path.clone())));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(copy_to_log(s, "stderr", container.log_path.clone())));
        let finished = container.finished.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status.code().unwrap_or(137),
                Err(_) => -1,
            };
            for task in [stdout, stderr].into_iter().flatten() {
                let _ = task.await;
            }
            *finished.lock().unwrap_or_else(|e| e.into_inner()) = Some((now_nanos(), code));
        });
        // Running once runc reports it (or it already finished).
        for _ in 0..200 {
            if container
                .finished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
            {
                break;
            }
            if let Some((status, pid)) = self.state(&req.container_id).await
                && status != "creating"
            {
                *container.started.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((now_nanos(), pid));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let finished = *container.finished.lock().unwrap_or_else(|e| e.into_inner());
        match finished {
            Some((_, code)) if !pid_file.exists() => Err(HandlerError::internal(format!(
                "hello: runc could not start container {} (exit {code}); see its log {}",
                req.container_id, container.log_path
            ))),
            _ => {
                *container.started.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((now_nanos(), 0));
                Ok(())
            }
        }
    }

    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        self.fault("StopContainer");
        let id = &req.container_id;
        let container = self.container(id).ok();
        // Stopped once its `runc run` reported the exit (containers of an
        // earlier process: once runc no longer runs it).
        let stopped = async || match &container {
            Some(c)
                if c.started
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some() =>
            {
                c.finished
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some()
            }
            _ => !matches!(self.state(id).await, Some((status, _)) if status == "running"),
        };
        if req.timeout_seconds > 0 {
            let _ = self.runc_ok(&["kill", id, "TERM"]).await;
            let deadline = tokio::time::Instant::now()
                + Duration::from_secs(req.timeout_seconds.unsigned_abs());
            while tokio::time::Instant::now() < deadline {
                if stopped().await {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = self.runc_ok(&["kill", id, "KILL"]).await;
        for _ in 0..100 {
            if stopped().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(HandlerError::deadline_exceeded(format!(
            "hello: container {id} did not stop after SIGKILL"
        )))
    }

    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.fault("RemoveContainer");
        self.destroy(&req.container_id).await;
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.container_id);
        Ok(())
    }

    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        let container = self.container(&req.container_id)?;
        let started = *container.started.lock().unwrap_or_else(|e| e.into_inner());
        let finished = *container.finished.lock().unwrap_or_else(|e| e.into_inner());
        let mut status = ContainerStatusResponse {
            created_at: container.created_at,
            ..Default::default()
        };
        match (started, finished) {
            (_, Some((finished_at, code))) => {
                status.set_state(ContainerState::Exited);
                status.started_at = started.map_or(finished_at, |s| s.0);
                status.finished_at = finished_at;
                status.exit_code = code;
                status.reason = if code == 0 { "Completed" } else { "Error" }.to_string();
            }
            (Some((started_at, pid)), None) => {
                status.set_state(ContainerState::Running);
                status.started_at = started_at;
                status.pid = pid;
            }
            // Created here and not started yet.
            (None, None) if container.created_at != 0 => status.set_state(ContainerState::Created),
            // Restored after a restart: only runc knows, and `runc run`
            // deletes the container when it exits.
            (None, None) => match self.state(&req.container_id).await {
                Some((state, pid)) if state == "running" => {
                    status.set_state(ContainerState::Running);
                    status.pid = pid;
                }
                _ => {
                    status.set_state(ContainerState::Exited);
                    status.exit_code = -1;
                    status.reason = "Unknown".to_string();
                    status.message =
                        "the exit status was lost with the handler's restart".to_string();
                }
            },
        }
        Ok(status)
    }

    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        self.fault("ExecSync");
        let mut cmd = self.runc();
        cmd.arg("exec")
            .arg(&req.container_id)
            .args(&req.cmd)
            .kill_on_drop(true);
        let run = cmd.output();
        let output = if req.timeout_seconds > 0 {
            match tokio::time::timeout(Duration::from_secs(req.timeout_seconds.unsigned_abs()), run)
                .await
            {
                Ok(output) => output,
                Err(_) => {
                    return Ok(ExecSyncResponse {
                        exit_code: -1,
                        timed_out: true,
                        ..Default::default()
                    });
                }
            }
        } else {
            run.await
        }
        .map_err(|e| HandlerError::internal(format!("hello: runc exec: {e}")))?;
        Ok(ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.status.code().unwrap_or(-1),
            timed_out: false,
        })
    }

    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        // The log is opened per line; nothing to reopen.
        self.container(&req.container_id).map(|_| ())
    }

    async fn exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        self.fault("Exec");
        self.do_exec(req).await
    }

    async fn wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        self.do_wait(req).await
    }

    async fn kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        self.do_kill_process(req).await
    }
}

crius_shim_api::export_handler!(HelloHandler, HelloHandler::new);
