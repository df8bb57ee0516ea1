//! Containers: create, start, stop, remove, status, ExecSync, resources,
//! log reopening and stats.

use super::*;

impl OciHandler {
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
        let terminal = spec_terminal(&spec);
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
                resp.reason = exit_reason(&reason, oom_killed, exit_code).to_string();
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
        let process = exec_process(&ctr, &req.cmd, false, None)?;
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
        tokio::fs::write(
            file.path(),
            serde_json::to_vec(&resources).unwrap_or_default(),
        )
        .await
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
        let write = async {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .await?;
            f.write_all(b"2 0 0\n").await?;
            f.flush().await
        };
        write
            .await
            .map_err(|e| self.err(format!("write {}", fifo.display()), e))?;
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
        let path = cgroup.to_string();
        let stats = tokio::task::spawn_blocking(move || Self::cgroup(&path).map(|cg| cg.stats()))
            .await
            .map_err(|e| self.err("container stats task", e))?
            .map_err(|e| self.err(format!("cgroup {cgroup} of container {}", ctr.id), e))?
            .ok_or_else(|| {
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
