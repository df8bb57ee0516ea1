//! The ttrpc services: `grpc.AgentService` and `grpc.Health`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crius_agent_proto::agent::{self, *};
use crius_agent_proto::agent_ttrpc::AgentService;
use crius_agent_proto::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse, health_check_response,
};
use crius_agent_proto::health_ttrpc::Health;
use crius_agent_proto::oci_json;
use crius_agent_proto::types;
use protobuf::well_known_types::empty::Empty;
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::{Code, get_status};

use crate::reaper::{self, Reaper};
use crate::runc::{ProcStdio, Runc};
use crate::state::{Container, Process, Sandbox, bundle_dir};
use crate::stdio::{self, OutBuf, Stdin};
use crate::{cgroup, mount, network, spec};

/// Errors of the agent's operations, mapped to ttrpc status codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Internal(_) => Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(get_status(code, e.to_string()))
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

type Result<T> = std::result::Result<T, Error>;

/// Waits (at most 2 s) until `pid` is no longer `runc init`: `runc start`
/// returns before the init process execs the container's command, and a
/// signal in between reaches runc's Go runtime (exit 2) instead of the
/// command (a StopContainer right after start saw exit 2, not the
/// command's SIGTERM handling).
async fn exec_done(pid: u32) {
    let exe = format!("/proc/{pid}/exe");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        match tokio::fs::read_link(&exe).await {
            Ok(target) if target.to_string_lossy().contains("runc") => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes a file only root may read (a spec carries the container's env).
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| internal(format!("{}: {e}", path.display())))
}

/// How long a waited-for exec is kept for the host to read the rest of its
/// output (a background child may hold the pipes open for ever).
const EXEC_DRAIN: Duration = Duration::from_secs(10);

pub struct Agent {
    runc: Runc,
    reaper: Reaper,
    pod_pid_namespace: crate::pidns::PodPidNamespace,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    sandbox: tokio::sync::Mutex<Sandbox>,
    oom_tx: tokio::sync::mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl Agent {
    pub fn new(runc: Runc, reaper: Reaper) -> Arc<Self> {
        let (oom_tx, oom_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Agent {
            runc,
            reaper,
            pod_pid_namespace: Default::default(),
            containers: Mutex::new(HashMap::new()),
            sandbox: tokio::sync::Mutex::new(Sandbox::default()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container(&self, cid: &str) -> Result<Arc<Container>> {
        self.table()
            .get(cid)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {cid:?} not found")))
    }

    fn process(&self, cid: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(cid)?.process(exec_id).ok_or_else(|| {
            Error::NotFound(format!(
                "process {exec_id:?} of container {cid:?} not found"
            ))
        })
    }

    /// Polls every container's cgroup for new OOM kills.
    pub async fn watch_oom(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let containers: Vec<Arc<Container>> = self.table().values().cloned().collect();
            for c in containers {
                let kills = cgroup::oom_kills(&c.id);
                if kills > c.oom_seen.swap(kills, Ordering::SeqCst) {
                    tracing::info!(container = %c.id, kills, "OOM kill in container");
                    let _ = self.oom_tx.send(c.id.clone());
                }
            }
        }
    }

    /// Starts a process through `runc create` / `runc exec -d` with stdio the
    /// agent owns. `args` is the runc command line up to (not including)
    /// the container id.
    async fn spawn_process(
        &self,
        mut args: Vec<String>,
        cid: &str,
        dir: &Path,
        name: &str,
        terminal: bool,
    ) -> Result<Process> {
        let pid_file = dir.join(format!("{name}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        args.extend(["--pid-file".into(), pid_file.display().to_string()]);
        let log = dir.join(format!("{name}.runc.log"));
        let stdout = OutBuf::default();
        let (stdio, stdin_w, stderr) = if terminal {
            // Not in the bundle: `/run/crius/containers/<64-char id>/exec-<id>`
            // is too long for a unix socket path. runc's connection is
            // accepted (and the socket removed) before the spawn returns.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let sock = Path::new(crate::state::STATE_DIR)
                .join("console")
                .join(format!("{n}.sock"));
            args.extend(["--console-socket".into(), sock.display().to_string()]);
            (
                ProcStdio::Tty {
                    console_socket: sock,
                },
                None,
                OutBuf::closed(),
            )
        } else {
            let (in_r, in_w) = stdio::pipe().map_err(internal)?;
            let (out_r, out_w) = stdio::pipe().map_err(internal)?;
            let (err_r, err_w) = stdio::pipe().map_err(internal)?;
            stdout.spawn_pump(out_r);
            let stderr = OutBuf::default();
            stderr.spawn_pump(err_r);
            (
                ProcStdio::Pipes {
                    stdin: in_r,
                    stdout: out_w,
                    stderr: err_w,
                },
                Some(in_w),
                stderr,
            )
        };
        args.push(cid.into());
        let master = self
            .runc
            .spawn_detached(&args, stdio, &log)
            .await
            .map_err(internal)?;
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .map_err(|e| internal(format!("read {}: {e}", pid_file.display())))?
            .trim()
            .parse()
            .map_err(|e| internal(format!("pid file {}: {e}", pid_file.display())))?;
        let exit = self.reaper.watch(pid);
        let (stdin, tty) = match master {
            Some(m) => {
                let out = m.try_clone().map_err(internal)?;
                let input = m.try_clone().map_err(internal)?;
                stdout.spawn_pump(out);
                (Stdin::new(Some(input)), Some(m))
            }
            None => (Stdin::new(stdin_w), None),
        };
        Ok(Process {
            pid,
            exit,
            stdin,
            stdout,
            stderr,
            tty,
        })
    }

    async fn do_create_container(&self, req: CreateContainerRequest) -> Result<()> {
        let cid = req.container_id.clone();
        if cid.is_empty() || cid.contains('/') || cid.starts_with('.') {
            return Err(Error::InvalidArgument(format!(
                "invalid container id {cid:?}"
            )));
        }
        if self.table().contains_key(&cid) {
            return Err(Error::AlreadyExists(format!(
                "container {cid:?} already exists"
            )));
        }
        let mut oci = oci_json::spec_of(&req).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let bundle = bundle_dir(&cid);
        std::fs::create_dir_all(&bundle).map_err(internal)?;
        let mut mounts = Vec::new();
        let result = async {
            for s in &req.storages {
                mounts.push(mount::mount_storage(s).map_err(internal)?);
            }
            let pod_pid_namespace = if req.sandbox_pidns {
                Some(
                    self.pod_pid_namespace
                        .path(&self.reaper)
                        .await
                        .map_err(internal)?,
                )
            } else {
                None
            };
            spec::adapt(&mut oci, &cid, pod_pid_namespace.as_deref());
            for source in spec::propagated_sources(&oci) {
                mount::make_shared(&source).map_err(|e| {
                    internal(format!(
                        "making {} a shared mount for propagation: {e}",
                        source.display()
                    ))
                })?;
            }
            let sysctls = crate::sysctl::take(&mut oci).map_err(Error::InvalidArgument)?;
            crate::sysctl::apply(&sysctls)
                .await
                .map_err(Error::InvalidArgument)?;
            let root = oci
                .root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_default();
            if !root.is_dir() {
                return Err(Error::FailedPrecondition(format!(
                    "container rootfs {} is not a directory in the guest (is the pod share mounted?)",
                    root.display()
                )));
            }
            if let Some(missing) = spec::missing_hook(&oci, &root) {
                return Err(Error::FailedPrecondition(format!("container {cid}: {missing}")));
            }
            let config = serde_json::to_vec_pretty(&oci).map_err(internal)?;
            write_private(&bundle.join("config.json"), &config)?;
            let terminal = oci
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false);
            let args = vec!["create".into(), "--bundle".into(), bundle.display().to_string()];
            self.spawn_process(args, &cid, &bundle, "init", terminal).await
        }
        .await;
        match result {
            Ok(init) => {
                tracing::info!(container = %cid, pid = init.pid, "container created");
                let c = Container {
                    id: cid.clone(),
                    bundle,
                    init: Arc::new(init),
                    execs: Mutex::new(HashMap::new()),
                    mounts,
                    oom_seen: Default::default(),
                };
                self.table().insert(cid, Arc::new(c));
                Ok(())
            }
            Err(e) => {
                for m in mounts.iter().rev() {
                    mount::unmount(m);
                }
                let _ = self.runc.run(&["delete", "--force", &cid]).await;
                let _ = std::fs::remove_dir_all(&bundle);
                Err(e)
            }
        }
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        let exec_id = req.exec_id.clone();
        if exec_id.is_empty() || exec_id == c.id || exec_id.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "invalid exec id {exec_id:?}"
            )));
        }
        if c.process(&exec_id).is_some() {
            return Err(Error::AlreadyExists(format!(
                "exec {exec_id:?} already exists"
            )));
        }
        let process =
            oci_json::process_of(&req).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let process_file = c.bundle.join(format!("exec-{exec_id}.json"));
        write_private(
            &process_file,
            &serde_json::to_vec(&process).map_err(internal)?,
        )?;
        let terminal = process.terminal().unwrap_or(false);
        let args = vec![
            "exec".into(),
            "-d".into(),
            "--process".into(),
            process_file.display().to_string(),
        ];
        let p = self
            .spawn_process(args, &c.id, &c.bundle, &format!("exec-{exec_id}"), terminal)
            .await
            .inspect_err(|_| c.remove_exec_files(&exec_id))?;
        tracing::info!(container = %c.id, exec = %exec_id, pid = p.pid, "exec started");
        c.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(exec_id, Arc::new(p));
        Ok(())
    }

    async fn do_remove(&self, cid: &str, timeout: u32) -> Result<()> {
        let c = self.container(cid)?;
        if c.init.exited().is_none() {
            let _ = self.runc.run(&["kill", "--all", cid, "KILL"]).await;
            let limit = Duration::from_secs(if timeout == 0 { 10 } else { timeout as u64 });
            if tokio::time::timeout(limit, reaper::wait(c.init.exit.clone()))
                .await
                .is_err()
            {
                return Err(Error::Internal(format!(
                    "container {cid} did not die within {limit:?} of SIGKILL"
                )));
            }
        }
        self.runc
            .run(&["delete", "--force", cid])
            .await
            .map_err(internal)?;
        for m in c.mounts.iter().rev() {
            mount::unmount(m);
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.table().remove(cid);
        tracing::info!(container = %cid, "container removed");
        Ok(())
    }

    async fn do_create_sandbox(&self, req: CreateSandboxRequest) -> Result<()> {
        let mut sb = self.sandbox.lock().await;
        if let Some(id) = &sb.id
            && *id != req.sandbox_id
        {
            return Err(Error::AlreadyExists(format!(
                "the guest already runs sandbox {id:?}"
            )));
        }
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(internal)?;
        }
        if !req.dns.is_empty() {
            let text: String = req.dns.iter().map(|l| format!("{l}\n")).collect();
            std::fs::create_dir_all("/etc").map_err(internal)?;
            std::fs::write("/etc/resolv.conf", text).map_err(internal)?;
        }
        for m in &req.kernel_modules {
            let mut cmd = std::process::Command::new("modprobe");
            cmd.arg(&m.name).args(&m.parameters);
            let (code, out) = reaper::output(&self.reaper, cmd).await.map_err(internal)?;
            if code != 0 {
                return Err(Error::Internal(format!(
                    "modprobe {}: {}",
                    m.name,
                    out.trim()
                )));
            }
        }
        for s in &req.storages {
            let target = mount::mount_storage(s).map_err(internal)?;
            if !sb.mounts.contains(&target) {
                sb.mounts.push(target);
            }
        }
        sb.id = Some(req.sandbox_id.clone());
        tracing::info!(sandbox = %req.sandbox_id, hostname = %req.hostname, "sandbox created");
        Ok(())
    }

    async fn do_destroy_sandbox(&self) -> Result<()> {
        let ids: Vec<String> = self.table().keys().cloned().collect();
        let mut errors = Vec::new();
        for id in ids {
            if let Err(e) = self.do_remove(&id, 10).await {
                errors.push(e.to_string());
            }
        }
        let mut sb = self.sandbox.lock().await;
        for m in sb.mounts.drain(..).rev() {
            mount::unmount(&m);
        }
        sb.id = None;
        if !errors.is_empty() {
            return Err(Error::Internal(errors.join("; ")));
        }
        tracing::info!("sandbox destroyed");
        Ok(())
    }
}

fn empty(r: Result<()>) -> ttrpc::Result<Empty> {
    r.map(|_| Empty::new()).map_err(Into::into)
}

/// The ttrpc-facing wrapper (the generated trait takes `&self`).
#[derive(Clone)]
pub struct Service(pub Arc<Agent>);

#[async_trait::async_trait]
impl AgentService for Service {
    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        empty(self.0.do_create_container(req).await)
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let a = &self.0;
        empty(
            async {
                let c = a.container(&req.container_id)?;
                a.runc
                    .run(&["start", &req.container_id])
                    .await
                    .map_err(internal)?;
                exec_done(c.init.pid).await;
                tracing::info!(container = %req.container_id, "container started");
                Ok(())
            }
            .await,
        )
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        empty(self.0.do_remove(&req.container_id, req.timeout).await)
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        empty(self.0.do_exec(req).await)
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let a = &self.0;
        empty(
            async {
                let c = a.container(&req.container_id)?;
                let sig = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
                    Error::InvalidArgument(format!("invalid signal {}", req.signal))
                })?;
                if req.exec_id.is_empty() {
                    // SIGKILL to everything: the container's cgroup does it
                    // at once (cgroup v2 `cgroup.kill`), where starting runc
                    // costs a noticeable part of a second under TCG.
                    if sig == nix::sys::signal::Signal::SIGKILL {
                        let kill = cgroup::container_cgroup(&c.id).join("cgroup.kill");
                        if tokio::fs::write(&kill, "1").await.is_ok() {
                            return Ok(());
                        }
                    }
                    let n = req.signal.to_string();
                    a.runc
                        .run(&["kill", "--all", &c.id, &n])
                        .await
                        .map_err(internal)?;
                    return Ok(());
                }
                let p = a.process(&req.container_id, &req.exec_id)?;
                if p.exited().is_some() {
                    return Err(Error::NotFound(format!(
                        "process {} has exited",
                        req.exec_id
                    )));
                }
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), sig)
                    .map_err(internal)
            }
            .await,
        )
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let p = self.0.process(&req.container_id, &req.exec_id)?;
        let status = reaper::wait(p.exit.clone()).await;
        if let Ok(c) = self.0.container(&req.container_id)
            && !req.exec_id.is_empty()
            && req.exec_id != c.id
        {
            // As Kata's agent does, an exec is forgotten once its exit was
            // waited for: after the host read its output to the end (or
            // gave up on it), its record and files go.
            let exec_id = req.exec_id.clone();
            tokio::spawn(async move {
                let drained = async {
                    p.stdout.drained().await;
                    p.stderr.drained().await;
                };
                let _ = tokio::time::timeout(EXEC_DRAIN, drained).await;
                c.forget_exec(&exec_id);
            });
        }
        Ok(WaitProcessResponse {
            status,
            ..Default::default()
        })
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let a = &self.0;
        empty(
            async {
                let c = a.container(&req.container_id)?;
                let res = oci_json::resources_of(&req)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                let file = c.bundle.join("update.json");
                write_private(&file, &serde_json::to_vec(&res).map_err(internal)?)?;
                let f = file.display().to_string();
                a.runc
                    .run(&["update", "--resources", &f, &c.id])
                    .await
                    .map_err(internal)?;
                Ok(())
            }
            .await,
        )
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let c = self.0.container(&req.container_id)?;
        Ok(StatsContainerResponse {
            cgroup_stats: Some(cgroup::stats(&c.id)).into(),
            network_stats: cgroup::network_stats(),
            ..Default::default()
        })
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let a = &self.0;
        empty(
            async {
                a.container(&req.container_id)?;
                a.runc
                    .run(&["pause", &req.container_id])
                    .await
                    .map(drop)
                    .map_err(internal)
            }
            .await,
        )
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let a = &self.0;
        empty(
            async {
                a.container(&req.container_id)?;
                a.runc
                    .run(&["resume", &req.container_id])
                    .await
                    .map(drop)
                    .map_err(internal)
            }
            .await,
        )
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        let p = self.0.process(&req.container_id, &req.exec_id)?;
        let n = p.stdin.write(req.data).await.map_err(internal)?;
        Ok(WriteStreamResponse {
            len: n as u32,
            ..Default::default()
        })
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let p = self.0.process(&req.container_id, &req.exec_id)?;
        Ok(ReadStreamResponse {
            data: p.stdout.read(req.len as usize).await,
            ..Default::default()
        })
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        let p = self.0.process(&req.container_id, &req.exec_id)?;
        Ok(ReadStreamResponse {
            data: p.stderr.read(req.len as usize).await,
            ..Default::default()
        })
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let p = self.0.process(&req.container_id, &req.exec_id)?;
        empty(p.stdin.close(p.tty.is_some()).await.map_err(internal))
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let p = self.0.process(&req.container_id, &req.exec_id)?;
        let master: &OwnedFd = p.tty.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!("process {:?} has no terminal", req.exec_id))
        })?;
        empty(stdio::resize_pty(master, req.row as u16, req.column as u16).map_err(internal))
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<types::Interface> {
        let iface = req
            .interface
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("UpdateInterface without an interface".into()))?;
        Ok(network::update_interface(&self.0.reaper, iface)
            .await
            .map_err(internal)?)
    }

    async fn update_routes(
        &self,
        _: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> ttrpc::Result<Routes> {
        let routes = req
            .routes
            .as_ref()
            .map(|r| r.Routes.clone())
            .unwrap_or_default();
        let applied = network::update_routes(&self.0.reaper, &routes)
            .await
            .map_err(internal)?;
        Ok(Routes {
            Routes: applied,
            ..Default::default()
        })
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        empty(self.0.do_create_sandbox(req).await)
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        empty(self.0.do_destroy_sandbox().await)
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        let block = if req.mem_block_size {
            std::fs::read_to_string("/sys/devices/system/memory/block_size_bytes")
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0)
        } else {
            0
        };
        Ok(GuestDetailsResponse {
            mem_block_size_bytes: block,
            support_mem_hotplug_probe: req.mem_hotplug_probe
                && Path::new("/sys/devices/system/memory/probe").exists(),
            agent_details: Some(agent::AgentDetails {
                version: env!("CARGO_PKG_VERSION").into(),
                init_daemon: std::process::id() == 1,
                storage_handlers: mount::storage_handlers(),
                supports_seccomp: true,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    async fn online_cpu_mem(
        &self,
        _: &TtrpcContext,
        req: agent::OnlineCPUMemRequest,
    ) -> ttrpc::Result<Empty> {
        let onlined = crate::hotplug::online(req.nb_cpus, req.wait, req.cpu_only)
            .await
            .map_err(|e| ttrpc::Error::from(Error::FailedPrecondition(e)))?;
        tracing::info!(onlined, asked = req.nb_cpus, "hot-plugged CPUs online");
        Ok(Empty::new())
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        let mut rx = self.0.oom_rx.lock().await;
        match rx.recv().await {
            Some(cid) => Ok(OOMEvent {
                container_id: cid,
                ..Default::default()
            }),
            None => Err(Error::Internal("OOM watcher stopped".into()).into()),
        }
    }
}

#[async_trait::async_trait]
impl Health for Service {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> ttrpc::Result<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(
        &self,
        _: &TtrpcContext,
        _: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        Ok(VersionCheckResponse {
            grpc_version: "ttrpc".into(),
            agent_version: format!("crius-kata-agent {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }
}

// The generated service constructors take `Arc<dyn Trait>`.
pub fn services(agent: Arc<Agent>) -> HashMap<String, ttrpc::asynchronous::Service> {
    let svc = Arc::new(Service(agent));
    let mut all = crius_agent_proto::agent_ttrpc::create_agent_service(svc.clone());
    all.extend(crius_agent_proto::health_ttrpc::create_health(svc));
    all
}
