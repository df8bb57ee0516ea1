//! The agent's sandbox and container lifecycle: create, exec, remove, and
//! the sandbox's namespaces.

use super::*;

impl Agent {
    pub(super) async fn do_create_container(&self, req: CreateContainerRequest) -> Result<()> {
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
        tokio::fs::create_dir_all(&bundle).await.map_err(internal)?;
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
                let _ = tokio::fs::remove_dir_all(&bundle).await;
                Err(e)
            }
        }
    }

    pub(super) async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
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

    pub(super) async fn do_remove(&self, cid: &str, timeout: u32) -> Result<()> {
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
        let _ = tokio::fs::remove_dir_all(&c.bundle).await;
        self.table().remove(cid);
        tracing::info!(container = %cid, "container removed");
        Ok(())
    }

    pub(super) async fn do_create_sandbox(&self, req: CreateSandboxRequest) -> Result<()> {
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
            tokio::fs::create_dir_all("/etc").await.map_err(internal)?;
            tokio::fs::write("/etc/resolv.conf", text)
                .await
                .map_err(internal)?;
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

    pub(super) async fn do_destroy_sandbox(&self) -> Result<()> {
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
