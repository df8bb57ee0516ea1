//! Pod sandboxes: the infra container under conmon, its status, stop and
//! removal.

use super::*;

impl OciHandler {
    pub(crate) async fn do_run_sandbox(
        &self,
        req: RunSandboxRequest,
    ) -> HandlerResult<RunSandboxResponse> {
        check_id("sandbox id", &req.sandbox_id)?;
        if req.state_dir.is_empty() || !Path::new(&req.state_dir).is_absolute() {
            return Err(HandlerError::invalid_argument(format!(
                "sandbox {}: state_dir {:?} must be an absolute path",
                req.sandbox_id, req.state_dir
            )));
        }
        let infra = req
            .infra
            .as_ref()
            .filter(|b| !b.dir.is_empty())
            .ok_or_else(|| {
                HandlerError::invalid_argument(format!(
                    "sandbox {}: handler {} needs an infra container bundle",
                    req.sandbox_id, self.config.name
                ))
            })?;
        let bundle = PathBuf::from(&infra.dir);
        let spec = load_spec(&bundle)?;
        if self.pods.get(&req.sandbox_id).is_some() || self.runtime().has_state(&req.sandbox_id) {
            return Err(HandlerError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "handler {}: sandbox {} already exists",
                    self.config.name, req.sandbox_id
                ),
            ));
        }
        let layout = Layout::new(&req.state_dir);
        let name = req
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| format!("{}_{}_infra", m.namespace, m.name))
            .unwrap_or_else(|| format!("{}_infra", req.sandbox_id));
        let record = ContainerRecord {
            version: RECORD_VERSION,
            id: req.sandbox_id.clone(),
            sandbox_id: req.sandbox_id.clone(),
            infra: true,
            bundle: bundle.clone(),
            log_path: None,
            cgroup: spec_cgroup(&spec),
            stop_signal: libc::SIGKILL,
            created_at: now_ns(),
            started_at: 0,
            pid: 0,
            conmon_pid: None,
            terminal: false,
            stdin: false,
            stdin_once: false,
        };
        let infra_log = layout.infra_dir().join("infra.log");
        let ctr = match self
            .launch(
                &layout,
                record,
                name,
                Some(infra_log),
                Some(INFRA_LOG_SIZE_MAX),
                false,
                false,
                false,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                for entry in layout.owned_entries() {
                    remove_path(&entry);
                }
                return Err(e);
            }
        };
        let sandbox = SandboxRecord {
            version: RECORD_VERSION,
            sandbox_id: req.sandbox_id.clone(),
            state_dir: layout.root.clone(),
            infra: ctr.record(),
            netns_path: (!req.netns_path.is_empty()).then(|| PathBuf::from(&req.netns_path)),
            cgroup_parent: (!req.cgroup_parent.is_empty()).then(|| req.cgroup_parent.clone()),
        };
        let bytes =
            serde_json::to_vec(&sandbox).map_err(|e| self.err("encode sandbox record", e))?;
        if let Err(e) = write_atomic(&layout.sandbox_record(), &bytes) {
            let _ = self.destroy(&ctr).await;
            for entry in layout.owned_entries() {
                remove_path(&entry);
            }
            return Err(self.err(format!("persist sandbox {}", req.sandbox_id), e));
        }
        let infra_pid = ctr.pid;
        let pod = Pod {
            id: req.sandbox_id.clone(),
            layout,
            netns_path: sandbox.netns_path.clone(),
            cgroup_parent: sandbox.cgroup_parent.clone(),
            infra: Arc::new(ctr),
            containers: Default::default(),
            lifecycle: Default::default(),
        };
        self.pods.insert(pod);
        Ok(RunSandboxResponse {
            handler_state: bytes,
            infra_pid,
        })
    }

    pub(crate) async fn do_stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let Some(pod) = self.pods.get(&req.sandbox_id) else {
            return Ok(());
        };
        let _pod_guard = pod.lifecycle.lock().await;
        // Every process of the pod: containers first (the kubelet stopped
        // them with their grace periods already), then the infra.
        for ctr in pod.all_containers() {
            let _guard = ctr.lifecycle.lock().await;
            self.stop(&ctr, Duration::ZERO).await?;
        }
        let _guard = pod.infra.lifecycle.lock().await;
        self.stop(&pod.infra, Duration::ZERO).await
    }

    pub(crate) async fn do_remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let Some(pod) = self.pods.get(&req.sandbox_id) else {
            // Unknown here, but the runtime may still hold the infra (named
            // by the sandbox id) of a pod whose restore never reached us.
            check_id("sandbox id", &req.sandbox_id)?;
            if self.runtime().has_state(&req.sandbox_id) {
                self.runtime().delete(&req.sandbox_id).await.map_err(|e| {
                    self.err(format!("delete infra of sandbox {}", req.sandbox_id), e)
                })?;
            }
            return Ok(());
        };
        let _pod_guard = pod.lifecycle.lock().await;
        for ctr in pod.all_containers() {
            let _guard = ctr.lifecycle.lock().await;
            self.stop(&ctr, Duration::ZERO).await?;
            self.destroy(&ctr).await?;
            pod.forget_container(&ctr.id);
        }
        {
            let _guard = pod.infra.lifecycle.lock().await;
            self.stop(&pod.infra, Duration::ZERO).await?;
            self.destroy(&pod.infra).await?;
        }
        for entry in pod.layout.owned_entries() {
            remove_path(&entry);
        }
        self.pods.forget(&pod.id);
        tracing::info!(handler = %self.config.name, sandbox = %pod.id, "sandbox removed");
        Ok(())
    }

    pub(crate) async fn do_sandbox_status(
        &self,
        req: SandboxRef,
    ) -> HandlerResult<SandboxStatusResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        let observed = self.observe(&pod.infra).await?;
        let mut info = HashMap::new();
        info.insert("infraPid".to_string(), pod.infra.pid.to_string());
        info.insert(
            "runtime".to_string(),
            self.config.runtime_path.display().to_string(),
        );
        info.insert("infraState".to_string(), format!("{observed:?}"));
        Ok(SandboxStatusResponse {
            ready: observed == Observed::Running,
            info,
        })
    }
}
