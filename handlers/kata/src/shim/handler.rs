//! The handler contract as the pod's VM shim serves it: the sandbox is the
//! VM, containers run in it through the guest agent.

use super::*;

#[async_trait]
impl RuntimeHandler for PodShim {
    fn name(&self) -> &str {
        &self.config.handler
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ..Default::default()
        }
    }

    async fn check_ready(&self) -> HandlerResult<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(HandlerError::not_ready(
                &self.config.handler,
                problems.join("; "),
            ))
        }
    }

    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        self.claim(&req.sandbox_id, &req.state_dir)?;
        self.check_request(&req)?;
        self.check_ready().await?;
        let _lifecycle = self.lifecycle.lock().await;
        {
            let mut phase = self.phase.lock().await;
            if !matches!(*phase, Phase::Empty) {
                return Err(HandlerError::new(
                    ErrorKind::AlreadyExists,
                    format!("pod {} already ran its VM", req.sandbox_id),
                ));
            }
            *phase = Phase::Booting;
        }
        let (vm, agent, timings, net) = match self.boot(&req).await {
            Ok(booted) => booted,
            Err(err) => {
                *self.phase.lock().await = Phase::Empty;
                // Nothing of the VM may outlive a failed start, its socket
                // dir included (the core may not send RemoveSandbox).
                self.layout().remove_socket_dir();
                return Err(err);
            }
        };
        let state = VmState {
            qemu_pid: vm.qemu_pid(),
            helper_pids: vm.pids().into_iter().skip(1).collect(),
            socket_dir: vm.layout.socket_dir.clone(),
            boot_ms: timings.sandbox_ready.as_millis() as u64,
            guest_cid: self.guest_cid(),
        };
        *self.phase.lock().await = Phase::Running(Box::new(Running {
            vm,
            agent,
            timings,
            net,
        }));
        Ok(RunSandboxResponse {
            handler_state: serde_json::to_vec(&state).unwrap_or_default(),
            infra_pid: 0,
        })
    }

    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        if self.pod.get().is_none() {
            // Never ran here: nothing to stop.
            return Ok(());
        }
        self.check_pod(&req.sandbox_id)?;
        self.stop_vm("the pod was stopped").await;
        Ok(())
    }

    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        if self.pod.get().is_none() {
            return Ok(());
        }
        self.check_pod(&req.sandbox_id)?;
        self.stop_vm("the pod was removed").await;
        let layout = self.layout();
        let mut ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(id, _)| id)
            .collect();
        self.pod_volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Unmounts and directory removals, on the blocking pool.
        let released = tokio::task::spawn_blocking(move || {
            let shared = layout.shared_dir();
            // A shim that took over from a dead one knows the containers
            // only from the shared dir: release whatever is there.
            if let Ok(entries) = std::fs::read_dir(&shared) {
                ids.extend(
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|name| name != VOLUMES),
                );
            }
            for id in ids {
                unshare_container(&shared, &id);
            }
            unshare_pod_volumes(&shared);
            let _ = std::fs::remove_dir(&shared);
            layout.remove_socket_dir();
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(pod_id = %req.sandbox_id, "releasing the pod's shared dir: {e}");
        }
        Ok(())
    }

    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        self.check_pod(&req.sandbox_id)?;
        // Status only reports: a VM found dead is not torn down here (the
        // stop that follows does that); its containers are recorded as
        // ended with it, which is what they are.
        let mut phase = self.phase.lock().await;
        let died = match &mut *phase {
            Phase::Running(running) => running.vm.exited().map(|e| format!("the VM died: {e}")),
            _ => None,
        };
        let mut info = std::collections::HashMap::new();
        let ready = match &*phase {
            Phase::Empty => false,
            Phase::Booting => {
                info.insert("reason".to_string(), "the VM is booting".to_string());
                false
            }
            Phase::Running(_) if died.is_some() => {
                info.insert("reason".to_string(), died.clone().unwrap_or_default());
                false
            }
            Phase::Running(running) => {
                info.insert("qemuPid".to_string(), running.vm.qemu_pid().to_string());
                let t = &running.timings;
                info.insert(
                    "vm_start_ms".to_string(),
                    t.vm_start.as_millis().to_string(),
                );
                info.insert(
                    "agent_ready_ms".to_string(),
                    t.agent_ready.as_millis().to_string(),
                );
                info.insert(
                    "sandbox_ready_ms".to_string(),
                    t.sandbox_ready.as_millis().to_string(),
                );
                let start = self
                    .last_container_start_ms
                    .load(std::sync::atomic::Ordering::Relaxed);
                if start > 0 {
                    info.insert("container_start_ms".to_string(), start.to_string());
                }
                true
            }
            Phase::Stopped { reason } => {
                info.insert("reason".to_string(), reason.clone());
                false
            }
        };
        drop(phase);
        if let Some(reason) = died
            && self.containers_gone(&reason) > 0
        {
            tracing::warn!(pod_id = %req.sandbox_id, %reason, "VM gone");
        }
        Ok(SandboxStatusResponse { ready, info })
    }

    async fn restore_sandbox(
        &self,
        req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        if self.pod.get().is_none() {
            // A fresh shim for a pod whose shim died (and its VM with it).
            self.claim(&req.sandbox_id, &req.state_dir)?;
            self.adopt_dead_pod(&req);
            return Ok(RestoreSandboxResponse { ready: false });
        }
        // The shim kept running across the daemon restart: its state is
        // current, so restoring is reporting it.
        let status = self
            .sandbox_status(SandboxRef {
                sandbox_id: req.sandbox_id,
            })
            .await?;
        Ok(RestoreSandboxResponse {
            ready: status.ready,
        })
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        self.check_pod(&req.sandbox_id)?;
        self.first_create_began
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        let cid = req.container_id.clone();
        if self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&cid)
        {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!("container {cid} already exists"),
            ));
        }
        let agent = self.agent().await?;
        let bundle = req.bundle.clone().unwrap_or_default();
        let mut spec: crius_agent_proto::oci_spec::runtime::Spec =
            serde_json::from_slice(&bundle.oci_spec).map_err(|err| {
                HandlerError::invalid_argument(format!("container {cid}: bad OCI spec: {err}"))
            })?;
        let rootfs = bundle
            .rootfs
            .as_ref()
            .map(|r| PathBuf::from(&r.mount_point))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(&bundle.dir).join("rootfs"));
        let shared_dir = self.layout().shared_dir();
        let shares = adapt_spec(&mut spec, &cid, &rootfs, &shared_dir);
        let log = if req.log_path.is_empty() {
            None
        } else {
            Some(Arc::new(
                CriLog::open(std::path::Path::new(&req.log_path)).map_err(|err| {
                    HandlerError::internal(format!(
                        "container {cid}: cannot open log {}: {err}",
                        req.log_path
                    ))
                })?,
            ))
        };
        let result = async {
            let limits = crate::resize::Limits::of(
                req.config
                    .as_ref()
                    .and_then(|c| c.linux.as_ref())
                    .and_then(|l| l.resources.as_ref()),
            );
            self.resize_for_container(&cid, Some(limits)).await?;
            for share in &shares {
                let mut pod_volumes = self.pod_volumes.lock().unwrap_or_else(|e| e.into_inner());
                if share.pod_wide && pod_volumes.contains(&share.target) {
                    // Mounted for an earlier container of the pod.
                    continue;
                }
                mount_share(share).map_err(|err| {
                    HandlerError::internal(format!("container {cid}: sharing with the VM: {err}"))
                })?;
                if share.pod_wide {
                    pod_volumes.insert(share.target.clone());
                }
            }
            let mut request = crius_agent_proto::oci_json::create_container_request(&cid, &spec)
                .map_err(|err| HandlerError::internal(format!("container {cid}: {err}")))?;
            request.sandbox_pidns = crate::boot::shares_pod_pid_namespace(&req);
            agent.create_container(request).await.map_err(|err| {
                agent_err(
                    &format!("container {cid}: guest agent CreateContainer"),
                    err,
                )
            })
        }
        .await;
        if let Err(err) = result {
            unshare_container(&shared_dir, &cid);
            return Err(err);
        }
        let stdio = req
            .config
            .as_ref()
            .map(|c| StdioConfig {
                stdin: c.stdin,
                stdin_once: c.stdin_once,
                tty: c.tty,
            })
            .unwrap_or_default();
        let container = Arc::new(Container::new(
            cid.clone(),
            spec,
            log,
            Status {
                state: ContainerState::Created as i32,
                created_at: now_nanos(),
                ..Default::default()
            },
            stdio,
        ));
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cid, container);
        Ok(CreateContainerResponse {
            handler_state: Vec::new(),
        })
    }

    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        if !c.status().is(ContainerState::Created) {
            return Err(HandlerError::failed_precondition(format!(
                "container {} is not in the created state",
                c.id
            )));
        }
        let agent = self.agent().await?;
        let started = Instant::now();
        agent.start_container(&c.id).await.map_err(|err| {
            agent_err(
                &format!("container {}: guest agent StartContainer", c.id),
                err,
            )
        })?;
        c.update(|s| {
            s.state = ContainerState::Running as i32;
            s.started_at = now_nanos();
        });
        let start_ms = started.elapsed().as_millis() as u64;
        tracing::info!(container = %c.id, start_ms, "container started in the VM");
        // The first container only: that is the pod start the bench measures
        // (from its CreateContainer reaching the shim until it runs).
        if let Some(began) = *self
            .first_create_began
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            let _ = self.last_container_start_ms.compare_exchange(
                0,
                began.elapsed().as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let stdout = tokio::spawn(copy_output(agent.clone(), c.clone(), Stream::Stdout));
        let stderr = tokio::spawn(copy_output(agent.clone(), c.clone(), Stream::Stderr));
        let oom = self.oom_killed.clone();
        tokio::spawn(async move {
            let result = agent.wait_process(&c.id, "").await;
            // The output is complete once both copiers saw EOF.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = stdout.await;
                let _ = stderr.await;
            })
            .await;
            match result {
                Ok(code) => {
                    // The OOM event may trail the exit a little.
                    let mut oom_killed = false;
                    for _ in 0..(if code == SIGKILL_EXIT { 10 } else { 1 }) {
                        oom_killed = oom.lock().unwrap_or_else(|e| e.into_inner()).remove(&c.id);
                        if oom_killed {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let reason = match (oom_killed, code) {
                        (true, _) => "OOMKilled",
                        (false, 0) => "Completed",
                        _ => "Error",
                    };
                    tracing::info!(container = %c.id, exit_code = code, reason, "container exited");
                    c.set_exited(code, reason, "");
                }
                Err(err) => {
                    tracing::warn!(container = %c.id, error = %err, "lost the container's process");
                    c.set_exited(
                        SIGKILL_EXIT,
                        "Error",
                        &format!("lost contact with the guest agent: {err}"),
                    );
                }
            }
        });
        Ok(())
    }

    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        let status = c.status();
        if status.is(ContainerState::Exited) {
            return Ok(());
        }
        if status.is(ContainerState::Created) {
            c.set_exited(0, "Completed", "stopped before it started");
            return Ok(());
        }
        let agent = self.agent().await?;
        if req.timeout_seconds > 0 {
            // The stop signal goes to the container's init only (as runc
            // and the kubelet expect: the process decides how to stop its
            // children); SIGKILL at the deadline goes to every process.
            let signal = stop_signal(&c.spec);
            if let Err(err) = agent.signal_process(&c.id, &c.id, signal).await {
                tracing::debug!(container = %c.id, error = %err, "stop signal failed");
            }
            if c.wait_exited(Duration::from_secs(req.timeout_seconds as u64))
                .await
            {
                return Ok(());
            }
        }
        if let Err(err) = agent.signal_process(&c.id, "", libc::SIGKILL as u32).await {
            tracing::debug!(container = %c.id, error = %err, "SIGKILL failed");
        }
        if c.wait_exited(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(HandlerError::deadline_exceeded(format!(
                "container {} did not exit 10 s after SIGKILL",
                c.id
            )))
        }
    }

    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.check_pod(&req.sandbox_id)?;
        let Some(c) = self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&req.container_id)
            .cloned()
        else {
            return Ok(());
        };
        if c.status().is(ContainerState::Running) {
            return Err(HandlerError::failed_precondition(format!(
                "container {} is still running",
                c.id
            )));
        }
        // The VM keeps its size (it only grows); the container no longer
        // counts towards the next resize.
        self.sizing.lock().await.containers.remove(&c.id);
        if let Ok(agent) = self.agent().await
            && let Err(err) = agent.remove_container(&c.id, 10).await
        {
            return Err(agent_err(
                &format!("container {}: guest agent RemoveContainer", c.id),
                err,
            ));
        }
        unshare_container(&self.layout().shared_dir(), &c.id);
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        Ok(())
    }

    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        Ok(c.status().to_response())
    }

    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        self.do_exec_sync(req).await
    }

    async fn exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        self.do_exec(req).await
    }

    async fn attach(&self, req: AttachRequest) -> HandlerResult<()> {
        self.do_attach(req).await
    }

    async fn resize_pty(&self, req: ResizePtyRequest) -> HandlerResult<()> {
        self.do_resize_pty(req).await
    }

    async fn kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        self.do_kill_process(req).await
    }

    async fn wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        self.do_wait(req).await
    }

    async fn port_forward(&self, req: PortForwardRequest) -> HandlerResult<()> {
        self.do_port_forward(req).await
    }

    async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        self.do_update_container_resources(req).await
    }

    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        if let Some(log) = &c.log {
            log.reopen().map_err(|err| {
                HandlerError::internal(format!("container {}: reopening its log: {err}", c.id))
            })?;
        }
        Ok(())
    }

    async fn container_stats(&self, req: ContainerRef) -> HandlerResult<ContainerStatsResponse> {
        self.do_container_stats(req).await
    }

    async fn update_sandbox_resources(
        &self,
        req: UpdateSandboxResourcesRequest,
    ) -> HandlerResult<()> {
        self.check_pod(&req.sandbox_id)?;
        self.resize_for_pod(crate::resize::Limits::of(req.resources.as_ref()))
            .await
    }
}
