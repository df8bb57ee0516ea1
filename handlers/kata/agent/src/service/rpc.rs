//! The ttrpc services (Kata's `AgentService` and `Health`) over the agent.

use super::*;

/// The ttrpc-facing wrapper (the generated trait takes `&self`).
#[derive(Clone)]
pub struct Service(pub Arc<Agent>);

/// What a handler's value becomes on the wire: `()` is protobuf's `Empty`,
/// anything else is the reply message itself.
trait Reply<R> {
    fn reply(self) -> R;
}

impl Reply<Empty> for () {
    fn reply(self) -> Empty {
        Empty::new()
    }
}

impl<T> Reply<T> for T {
    fn reply(self) -> T {
        self
    }
}

/// Awaits a handler and maps its error to the ttrpc status of its kind
/// (`From<Error> for ttrpc::Error`).
async fn serve<T: Reply<R>, R>(handled: impl Future<Output = Result<T>>) -> ttrpc::Result<R> {
    Ok(handled.await?.reply())
}

/// Implements a generated ttrpc service trait for [`Service`]: each RPC is
/// `fn rpc(Request) -> Reply = handler;`, `handler` an async
/// `fn(&Agent, Request) -> Result<T>` with `T` a [`Reply`].
macro_rules! serve_rpcs {
    ($service:ident { $(fn $rpc:ident($request:ty) -> $reply:ty = $handler:path;)* }) => {
        #[async_trait::async_trait]
        impl $service for Service {
            $(
                async fn $rpc(&self, _: &TtrpcContext, req: $request) -> ttrpc::Result<$reply> {
                    serve($handler(&self.0, req)).await
                }
            )*
        }
    };
}

serve_rpcs!(AgentService {
    fn create_container(CreateContainerRequest) -> Empty = Agent::do_create_container;
    fn start_container(StartContainerRequest) -> Empty = Agent::start_container;
    fn remove_container(RemoveContainerRequest) -> Empty = Agent::remove_container;
    fn exec_process(ExecProcessRequest) -> Empty = Agent::do_exec;
    fn signal_process(SignalProcessRequest) -> Empty = Agent::signal_process;
    fn wait_process(WaitProcessRequest) -> WaitProcessResponse = Agent::wait_process;
    fn update_container(UpdateContainerRequest) -> Empty = Agent::update_container;
    fn stats_container(StatsContainerRequest) -> StatsContainerResponse = Agent::stats_container;
    fn pause_container(PauseContainerRequest) -> Empty = Agent::pause_container;
    fn resume_container(ResumeContainerRequest) -> Empty = Agent::resume_container;
    fn write_stdin(WriteStreamRequest) -> WriteStreamResponse = Agent::write_stdin;
    fn read_stdout(ReadStreamRequest) -> ReadStreamResponse = Agent::read_stdout;
    fn read_stderr(ReadStreamRequest) -> ReadStreamResponse = Agent::read_stderr;
    fn close_stdin(CloseStdinRequest) -> Empty = Agent::close_stdin;
    fn tty_win_resize(TtyWinResizeRequest) -> Empty = Agent::tty_win_resize;
    fn update_interface(UpdateInterfaceRequest) -> types::Interface = Agent::update_interface;
    fn update_routes(UpdateRoutesRequest) -> Routes = Agent::update_routes;
    fn create_sandbox(CreateSandboxRequest) -> Empty = Agent::do_create_sandbox;
    fn destroy_sandbox(DestroySandboxRequest) -> Empty = Agent::destroy_sandbox;
    fn get_guest_details(GuestDetailsRequest) -> GuestDetailsResponse = Agent::get_guest_details;
    fn online_cpu_mem(agent::OnlineCPUMemRequest) -> Empty = Agent::online_cpu_mem;
    fn get_oom_event(GetOOMEventRequest) -> OOMEvent = Agent::get_oom_event;
});

serve_rpcs!(Health {
    fn check(CheckRequest) -> HealthCheckResponse = Agent::check;
    fn version(CheckRequest) -> VersionCheckResponse = Agent::version;
});

/// The RPC handlers that are not a lifecycle step of their own.
impl Agent {
    /// `runc <verb> <cid>` for a container the agent knows.
    async fn runc_on_container(&self, verb: &str, cid: &str) -> Result<()> {
        self.container(cid)?;
        self.runc
            .run(&[verb, cid])
            .await
            .map(drop)
            .map_err(internal)
    }

    async fn start_container(&self, req: StartContainerRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        let before = exe_identity(c.init.pid).await;
        self.runc
            .run(&["start", &req.container_id])
            .await
            .map_err(internal)?;
        exec_done(c.init.pid, before).await;
        tracing::info!(container = %req.container_id, "container started");
        Ok(())
    }

    async fn remove_container(&self, req: RemoveContainerRequest) -> Result<()> {
        self.do_remove(&req.container_id, req.timeout).await
    }

    async fn signal_process(&self, req: SignalProcessRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("invalid signal {}", req.signal)))?;
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
            self.runc
                .run(&["kill", "--all", &c.id, &n])
                .await
                .map_err(internal)?;
            return Ok(());
        }
        let p = self.process(&req.container_id, &req.exec_id)?;
        if p.exited().is_some() {
            return Err(Error::NotFound(format!(
                "process {} has exited",
                req.exec_id
            )));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), sig).map_err(internal)
    }

    async fn wait_process(&self, req: WaitProcessRequest) -> Result<WaitProcessResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let status = reaper::wait(p.exit.clone()).await;
        if let Ok(c) = self.container(&req.container_id)
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

    async fn update_container(&self, req: UpdateContainerRequest) -> Result<()> {
        let c = self.container(&req.container_id)?;
        let res =
            oci_json::resources_of(&req).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let file = c.bundle.join("update.json");
        write_private(&file, &serde_json::to_vec(&res).map_err(internal)?)?;
        let f = file.display().to_string();
        self.runc
            .run(&["update", "--resources", &f, &c.id])
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn stats_container(&self, req: StatsContainerRequest) -> Result<StatsContainerResponse> {
        let c = self.container(&req.container_id)?;
        Ok(StatsContainerResponse {
            cgroup_stats: Some(cgroup::stats(&c.id)).into(),
            network_stats: cgroup::network_stats(),
            ..Default::default()
        })
    }

    async fn pause_container(&self, req: PauseContainerRequest) -> Result<()> {
        self.runc_on_container("pause", &req.container_id).await
    }

    async fn resume_container(&self, req: ResumeContainerRequest) -> Result<()> {
        self.runc_on_container("resume", &req.container_id).await
    }

    async fn write_stdin(&self, req: WriteStreamRequest) -> Result<WriteStreamResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let n = p.stdin.write(req.data).await.map_err(internal)?;
        Ok(WriteStreamResponse {
            len: n as u32,
            ..Default::default()
        })
    }

    async fn read_stdout(&self, req: ReadStreamRequest) -> Result<ReadStreamResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        Ok(ReadStreamResponse {
            data: p.stdout.read(req.len as usize).await,
            ..Default::default()
        })
    }

    async fn read_stderr(&self, req: ReadStreamRequest) -> Result<ReadStreamResponse> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        Ok(ReadStreamResponse {
            data: p.stderr.read(req.len as usize).await,
            ..Default::default()
        })
    }

    async fn close_stdin(&self, req: CloseStdinRequest) -> Result<()> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        p.stdin.close(p.tty.is_some()).await.map_err(internal)
    }

    async fn tty_win_resize(&self, req: TtyWinResizeRequest) -> Result<()> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let master: &OwnedFd = p.tty.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!("process {:?} has no terminal", req.exec_id))
        })?;
        stdio::resize_pty(master, req.row as u16, req.column as u16).map_err(internal)
    }

    async fn update_interface(&self, req: UpdateInterfaceRequest) -> Result<types::Interface> {
        let iface = req
            .interface
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("UpdateInterface without an interface".into()))?;
        network::update_interface(iface).await.map_err(internal)
    }

    async fn update_routes(&self, req: UpdateRoutesRequest) -> Result<Routes> {
        let routes = req
            .routes
            .as_ref()
            .map(|r| r.Routes.clone())
            .unwrap_or_default();
        let applied = network::update_routes(&routes).await.map_err(internal)?;
        Ok(Routes {
            Routes: applied,
            ..Default::default()
        })
    }

    async fn destroy_sandbox(&self, _: DestroySandboxRequest) -> Result<()> {
        self.do_destroy_sandbox().await
    }

    async fn get_guest_details(&self, req: GuestDetailsRequest) -> Result<GuestDetailsResponse> {
        let block = if req.mem_block_size {
            tokio::fs::read_to_string("/sys/devices/system/memory/block_size_bytes")
                .await
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

    async fn online_cpu_mem(&self, req: agent::OnlineCPUMemRequest) -> Result<()> {
        let onlined = crate::hotplug::online(req.nb_cpus, req.wait, req.cpu_only)
            .await
            .map_err(Error::FailedPrecondition)?;
        tracing::info!(onlined, asked = req.nb_cpus, "hot-plugged CPUs online");
        Ok(())
    }

    async fn get_oom_event(&self, _: GetOOMEventRequest) -> Result<OOMEvent> {
        let mut rx = self.oom_rx.lock().await;
        match rx.recv().await {
            Some(cid) => Ok(OOMEvent {
                container_id: cid,
                ..Default::default()
            }),
            None => Err(Error::Internal("OOM watcher stopped".into())),
        }
    }

    async fn check(&self, _: CheckRequest) -> Result<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(&self, _: CheckRequest) -> Result<VersionCheckResponse> {
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
