//! Tearing a pod down: one path for a failed RunPodSandbox,
//! StopPodSandbox/RemovePodSandbox and a pod left half-made by a crash. It
//! undoes exactly what the pod's record says exists, every step tried and
//! the first error returned.

use std::path::Path;
use std::time::Duration;

use crius_shim_api::RuntimeHandler;
use crius_shim_api::types;
use tracing::warn;

use super::error::{PodError, PodResult};
use super::store::PodRecord;
use super::{PodManager, files, is_gone};
use crate::sandbox::{Attachment, CgroupError, CniNetwork, CniRequest, PodCgroup, netns};

/// SIGKILLs every pid in `pids`: `None` when there was none, else how many
/// signals were delivered (a pid may have exited in between).
fn kill_all(pids: &[i32]) -> Option<u32> {
    if pids.is_empty() {
        return None;
    }
    let delivered = pids
        .iter()
        // A pid <= 0 would signal a process group or everything: never.
        .filter(|&&pid| {
            pid > 0
                && nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
        })
        .count();
    Some(u32::try_from(delivered).unwrap_or(u32::MAX))
}

impl PodManager {
    /// Stops and removes everything the record says exists, then the pod
    /// directory. Tries every step; returns the first error.
    pub(super) async fn teardown_pod(
        &self,
        rec: &mut PodRecord,
        handler: &dyn RuntimeHandler,
    ) -> PodResult<()> {
        let mut first: Option<PodError> = None;
        if let Err(e) = self.stop_pod_resources(rec, handler).await {
            first.get_or_insert(e);
        }
        for c in self.store.containers_of(&rec.id) {
            match self.remove_container_resources(&c, handler).await {
                Ok(()) => self.publish_removed(&c).await,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if rec.handler_started {
            match handler
                .remove_sandbox(types::SandboxRef {
                    sandbox_id: rec.id.clone(),
                })
                .await
            {
                Ok(()) => rec.handler_started = false,
                Err(e) if is_gone(&e) => rec.handler_started = false,
                Err(e) => {
                    first.get_or_insert(PodError::handler(
                        format!("removing pod {} in handler {}", rec.id, rec.handler),
                        e,
                    ));
                }
            }
        }
        let userns_dir = self.userns_pod_dir(&rec.id);
        if let Err(e) = super::blocking("removing a pod's user-namespace directory", move || {
            files::remove_dir_safely(&userns_dir)
        })
        .await
        {
            first.get_or_insert(e);
        }
        if let Err(e) = self.remove_pod_cgroup(rec).await {
            first.get_or_insert(e);
        }
        if first.is_none() {
            let dir = rec.dir.clone();
            if let Err(e) = super::blocking("removing a pod directory", move || {
                files::remove_dir_safely(&dir)
            })
            .await
            {
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Removes the pod cgroup in every hierarchy. Processes still in it at
    /// this point escaped the handler (or their handler is gone): they are
    /// killed first, since a pod being removed must not leave anything
    /// running and a cgroup with processes cannot be removed. Nothing here
    /// blocks the executor: the cgroupfs work runs on the blocking pool and
    /// the waits are async.
    async fn remove_pod_cgroup(&self, rec: &PodRecord) -> PodResult<()> {
        /// Kill rounds (a process may fork while being killed) and the wait
        /// between them for the kernel to take the killed ones out.
        const KILL_ROUNDS: u32 = 50;
        const KILL_WAIT: Duration = Duration::from_millis(20);
        /// The kernel can report EBUSY for a moment after the last process
        /// of a cgroup exited: removal is retried this often, this far apart.
        const REMOVE_RETRIES: u32 = 20;
        const REMOVE_RETRY_WAIT: Duration = Duration::from_millis(25);

        let cgroup = PodCgroup::open(&self.cgroups, &rec.cgroup_path)?;
        let mut killed = 0;
        for _ in 0..KILL_ROUNDS {
            let dirs = cgroup.dirs();
            let round = super::blocking("killing processes left in a pod cgroup", move || {
                Ok(kill_all(&files::cgroup_pids(&dirs)))
            })
            .await?;
            let Some(round) = round else { break };
            killed += round;
            tokio::time::sleep(KILL_WAIT).await;
        }
        if killed > 0 {
            warn!(pod_id = %rec.id, killed, "killed processes left in the pod cgroup");
        }
        if let Some(slice) = &rec.systemd_slice {
            if !rec.slice_owned {
                // kubelet's slice: kubelet removes it (and what it made in
                // the hierarchies systemd does not manage).
                return Ok(());
            }
            let systemd = crate::sandbox::systemd::Systemd::connect().await?;
            systemd.stop_unit(slice).await?;
            // What is left are the directories made beside systemd's
            // (v1 hierarchies without unit properties, such as cpuset).
        }
        let mut attempt = 0;
        loop {
            let cg = cgroup.clone();
            match super::blocking("removing a pod cgroup", move || Ok(cg.remove())).await? {
                Ok(()) => return Ok(()),
                Err(CgroupError::Busy { .. }) if attempt < REMOVE_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(REMOVE_RETRY_WAIT).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stops the pod's processes and releases its network and shm. Leaves
    /// the cgroup, records and directories. Idempotent.
    pub(super) async fn stop_pod_resources(
        &self,
        rec: &mut PodRecord,
        handler: &dyn RuntimeHandler,
    ) -> PodResult<()> {
        let mut first: Option<PodError> = None;
        // All at once: each is a kill and a wait for its exit, which in a
        // VM handler means a runtime call in the guest; one after the other
        // a pod of a few containers outgrows a CRI client's 2 s timeout.
        let pod_id = rec.id.as_str();
        let stops = self
            .store
            .containers_of(pod_id)
            .into_iter()
            .filter(|c| c.handler_created)
            .map(|c| async move {
                let req = types::StopContainerRequest {
                    sandbox_id: pod_id.to_string(),
                    container_id: c.id.clone(),
                    timeout_seconds: 0,
                };
                (c.id, handler.stop_container(req).await)
            });
        for (id, result) in futures::future::join_all(stops).await {
            if let Err(e) = result
                && !is_gone(&e)
            {
                first.get_or_insert(PodError::handler(format!("stopping container {id}"), e));
            }
        }
        if rec.handler_started {
            match handler
                .stop_sandbox(types::SandboxRef {
                    sandbox_id: rec.id.clone(),
                })
                .await
            {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => {
                    first.get_or_insert(PodError::handler(
                        format!("stopping pod {} in handler {}", rec.id, rec.handler),
                        e,
                    ));
                }
            }
        }
        if rec.cni_attached {
            match self.detach_network(rec).await {
                Ok(()) => rec.cni_attached = false,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if let Some(path) = rec.netns_path.clone() {
            match netns::remove_path(&path) {
                Ok(()) => rec.netns_path = None,
                Err(e) => {
                    first.get_or_insert(e.into());
                }
            }
        }
        // After the netns it owns.
        if let Some(path) = rec.userns_path.clone() {
            match crate::sandbox::userns::remove_path(&path) {
                Ok(()) => rec.userns_path = None,
                Err(e) => {
                    first.get_or_insert(e.into());
                }
            }
        }
        if rec.shm_mounted
            && let Some(shm) = rec.shm_dir.clone()
        {
            match files::unmount(&shm) {
                Ok(()) => rec.shm_mounted = false,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// CNI DEL with the recorded attachment; without a record (a crash
    /// between ADD and the record write) DEL with the current network and
    /// no previous result, which host-local and bridge accept.
    async fn detach_network(&self, rec: &PodRecord) -> PodResult<()> {
        let Some(record) = rec.cni_record.as_deref() else {
            return Ok(());
        };
        let cni = self.live_config().cni.clone();
        if Attachment::teardown(record, &cni.bin_dirs, None).await? {
            return Ok(());
        }
        let network = match CniNetwork::load(&cni) {
            Ok(n) => n,
            Err(e) => {
                warn!(pod_id = %rec.id, error = %e, "no CNI network to run DEL with; nothing recorded as attached");
                return Ok(());
            }
        };
        let meta = rec.metadata();
        let netns = rec
            .netns_path
            .clone()
            .unwrap_or_else(|| Path::new("/nonexistent").to_path_buf());
        let request = CniRequest {
            pod_namespace: meta.namespace,
            pod_name: meta.name,
            pod_uid: meta.uid,
            ..CniRequest::new(rec.id.clone(), netns)
        };
        // Best effort: without a record, ADD may never have run; a plugin
        // that cannot DEL must not keep the pod from being removed.
        if let Err(e) = network.del(&request, None).await {
            warn!(pod_id = %rec.id, error = %e, "CNI DEL without an attachment record failed");
        }
        Ok(())
    }
}
