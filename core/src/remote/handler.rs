//! The handler contract served by a per-pod shim process: every call goes
//! to the pod's shim (see the module docs of `remote`).

use super::*;

#[async_trait]
impl RuntimeHandler for RemoteHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.info.capabilities.unwrap_or_default()
    }

    async fn check_ready(&self) -> HandlerResult<()> {
        if let Some((at, result)) = &*self.ready.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < READY_CACHE
        {
            return result.clone();
        }
        let result = one_shot(&self.exe, "check-ready", &self.name, &self.params_file)
            .await
            .map(|_| ());
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), result.clone()));
        result
    }

    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        let id = req.sandbox_id.clone();
        if let Ok(old) = self.shim(&id) {
            if !old.is_dead() {
                return Err(HandlerError::new(
                    crius_shim_api::ErrorKind::AlreadyExists,
                    format!("handler {}: pod {id} already has a running shim", self.name),
                ));
            }
            self.forget(&id);
        }
        let shim = Arc::new(self.start_shim(&req).await?);
        info!(handler = %self.name, pod = %id, pid = shim.pid, socket = %shim.socket.display(), "shim started");
        let answer = shim
            .call_within(
                method::RUN_SANDBOX,
                wire::encode(&req),
                self.run_sandbox_timeout,
            )
            .await
            .and_then(|bytes| {
                wire::decode_response::<RunSandboxResponse>(method::RUN_SANDBOX, &bytes)
            });
        match answer {
            Ok(mut response) => {
                *lock(&shim.handler_state) = response.handler_state.clone();
                response.handler_state = wrap_state(&shim, &response.handler_state);
                self.shims
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, shim);
                Ok(response)
            }
            Err(err) => {
                // RunSandbox must leave nothing behind.
                shim.terminate_now();
                let _ = tokio::fs::remove_file(&shim.socket).await;
                Err(err)
            }
        }
    }

    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.rpc_idempotent(&req.sandbox_id.clone(), method::STOP_SANDBOX, &req)
            .await
    }

    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let id = req.sandbox_id.clone();
        self.rpc_idempotent(&id, method::REMOVE_SANDBOX, &req)
            .await?;
        if let Some(shim) = self.forget(&id) {
            // The shim exits by itself after RemoveSandbox; make sure.
            shim.terminate().await;
            let _ = tokio::fs::remove_file(&shim.socket).await;
        }
        Ok(())
    }

    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        let shim = self.shim(&req.sandbox_id)?;
        if let Some(status) = shim.exit_status() {
            // The pod is not ready; say why instead of failing the status call.
            return Ok(SandboxStatusResponse {
                ready: false,
                info: [("shim".to_string(), format!("exited ({status})"))]
                    .into_iter()
                    .collect(),
            });
        }
        self.rpc(&req.sandbox_id.clone(), method::SANDBOX_STATUS, &req)
            .await
    }

    async fn restore_sandbox(
        &self,
        mut req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        let id = req.sandbox_id.clone();
        let state: ShimState = serde_json::from_slice(&req.handler_state).map_err(|e| {
            HandlerError::invalid_argument(format!(
                "handler {}: pod {id} has no usable shim state: {e}",
                self.name
            ))
        })?;
        req.handler_state = base64::engine::general_purpose::STANDARD
            .decode(&state.state)
            .map_err(|e| {
                HandlerError::invalid_argument(format!(
                    "handler {}: pod {id} has corrupt shim state: {e}",
                    self.name
                ))
            })?;
        let client = ShimClient::connect(&state.socket).await;
        let mut shim = Shim {
            sandbox_id: id.clone(),
            socket: state.socket,
            pid: state.pid,
            log: state.log,
            client: None,
            exited: Arc::new(Mutex::new(None)),
            ours: false,
            state_dir: req.state_dir.clone(),
            handler_state: Mutex::new(req.handler_state.clone()),
            containers: Mutex::new(
                req.containers
                    .iter()
                    .map(|c| (c.container_id.clone(), c.clone()))
                    .collect(),
            ),
        };
        let shim = match client {
            Ok(client) => {
                shim.client = Some(client);
                Arc::new(shim)
            }
            Err(err) => {
                warn!(handler = %self.name, pod = %id, "the pod's shim is gone after the restart: {err}");
                shim.mark_exited(&format!("gone after the daemon restart: {err}"));
                self.shims
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Arc::new(shim));
                return Ok(RestoreSandboxResponse { ready: false });
            }
        };
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), shim.clone());
        let answer = shim
            .call(method::RESTORE_SANDBOX, wire::encode(&req))
            .await?;
        wire::decode_response(method::RESTORE_SANDBOX, &answer)
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        let shim = self.shim(&req.sandbox_id)?;
        let answer = shim
            .call(method::CREATE_CONTAINER, wire::encode(&req))
            .await?;
        let response: CreateContainerResponse =
            wire::decode_response(method::CREATE_CONTAINER, &answer)?;
        let container = RestoreContainer {
            container_id: req.container_id.clone(),
            bundle_dir: req.bundle.map(|b| b.dir).unwrap_or_default(),
            log_path: req.log_path,
            handler_state: response.handler_state.clone(),
        };
        lock(&shim.containers).insert(req.container_id, container);
        Ok(response)
    }
    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::START_CONTAINER, &req)
            .await
    }
    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        // The handler waits up to the stop timeout before it answers.
        let grace = Duration::from_secs(u64::try_from(req.timeout_seconds).unwrap_or(0));
        self.rpc_idempotent_within(
            &req.sandbox_id.clone(),
            method::STOP_CONTAINER,
            &req,
            CALL_TIMEOUT + grace,
        )
        .await
    }
    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_idempotent(&req.sandbox_id.clone(), method::REMOVE_CONTAINER, &req)
            .await?;
        if let Ok(shim) = self.shim(&req.sandbox_id) {
            lock(&shim.containers).remove(&req.container_id);
        }
        Ok(())
    }
    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        self.rpc(&req.sandbox_id.clone(), method::CONTAINER_STATUS, &req)
            .await
    }
    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        // The command's own timeout (0 = none) comes on top of the call's.
        let timeout = match u64::try_from(req.timeout_seconds) {
            Ok(seconds) if seconds > 0 => CALL_TIMEOUT + Duration::from_secs(seconds),
            _ => WAIT_TIMEOUT,
        };
        let answer = self
            .shim(&req.sandbox_id)?
            .call_within(method::EXEC_SYNC, wire::encode(&req), timeout)
            .await?;
        wire::decode_response(method::EXEC_SYNC, &answer)
    }
    async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        self.rpc_unit(
            &req.sandbox_id.clone(),
            method::UPDATE_CONTAINER_RESOURCES,
            &req,
        )
        .await
    }
    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::REOPEN_CONTAINER_LOG, &req)
            .await
    }
    async fn container_stats(&self, req: ContainerRef) -> HandlerResult<ContainerStatsResponse> {
        self.rpc(&req.sandbox_id.clone(), method::CONTAINER_STATS, &req)
            .await
    }
    async fn exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        self.rpc(&req.sandbox_id.clone(), method::EXEC, &req).await
    }
    async fn attach(&self, req: AttachRequest) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::ATTACH, &req)
            .await
    }
    async fn resize_pty(&self, req: ResizePtyRequest) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::RESIZE_PTY, &req)
            .await
    }
    async fn kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        self.rpc_idempotent(&req.sandbox_id.clone(), method::KILL_PROCESS, &req)
            .await
    }
    async fn wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        self.rpc(&req.sandbox_id.clone(), method::WAIT, &req).await
    }
    async fn port_forward(&self, req: PortForwardRequest) -> HandlerResult<()> {
        self.rpc_unit(&req.sandbox_id.clone(), method::PORT_FORWARD, &req)
            .await
    }
    async fn sandbox_stats(&self, req: SandboxRef) -> HandlerResult<SandboxStatsResponse> {
        self.rpc(&req.sandbox_id.clone(), method::SANDBOX_STATS, &req)
            .await
    }
    async fn update_sandbox_resources(
        &self,
        req: UpdateSandboxResourcesRequest,
    ) -> HandlerResult<()> {
        self.rpc_unit(
            &req.sandbox_id.clone(),
            method::UPDATE_SANDBOX_RESOURCES,
            &req,
        )
        .await
    }
}
