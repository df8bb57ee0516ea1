//! The ttrpc services (Kata's `AgentService` and `Health`) over the agent.

use super::*;

fn empty(r: Result<()>) -> ttrpc::Result<Empty> {
    r.map(|_| Empty::new()).map_err(Into::into)
}

/// The ttrpc-facing wrapper (the generated trait takes `&self`).
#[derive(Clone)]
pub struct Service(pub Arc<Agent>);

impl Service {
    /// `runc <verb> <cid>` for a container the agent knows.
    async fn runc_on_container(&self, verb: &str, cid: &str) -> Result<()> {
        self.0.container(cid)?;
        self.0
            .runc
            .run(&[verb, cid])
            .await
            .map(drop)
            .map_err(internal)
    }
}

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
        empty(self.runc_on_container("pause", &req.container_id).await)
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        empty(self.runc_on_container("resume", &req.container_id).await)
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
