//! CheckpointContainer, CheckpointPod and RestorePod.
//!
//! Checkpointing an OCI container needs CRIU (`runc/crun checkpoint` drive
//! it) and a handler-contract operation to ask the handler for it, which
//! the contract (version 2) does not have yet. The requests are checked
//! first (bad input → `InvalidArgument`, unknown ids → `NotFound`, a
//! container that is not running → `FailedPrecondition`), then the answer
//! names what is missing, in this order:
//! - VM and plugin handlers: `Unimplemented` (a VM's memory is not
//!   checkpointed through CRIU on the host);
//! - OCI handlers without a usable CRIU: `FailedPrecondition` naming it
//!   (`criu` not found, or `criu check` failing with its first error, as on
//!   kernels whose vDSO layout CRIU 3.17 does not know);
//! - OCI handlers with a working CRIU: `Unimplemented` naming the missing
//!   handler-contract operation.
//!
//! Nothing is written at the requested location in any of these cases; the
//! functions cannot succeed yet (`Infallible`).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crius_proto::cri;
use tokio::sync::OnceCell;

use super::PodManager;
use super::error::{PodError, PodResult};
use super::store::PodState;
use crate::config::HandlerKind;

/// How long `criu check` may take.
const CRIU_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// The first error line of `criu check`, or `Ok` when CRIU works.
static CRIU: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether CRIU can checkpoint on this host (probed once per daemon).
async fn criu_usable() -> Result<PathBuf, String> {
    CRIU.get_or_init(|| async {
        let Some(criu) = find_on_path("criu") else {
            return Err("CRIU is not installed (no `criu` executable in PATH)".to_string());
        };
        let run = tokio::process::Command::new(&criu)
            .arg("check")
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(CRIU_CHECK_TIMEOUT, run).await {
            Err(_) => Err(format!(
                "`{} check` did not finish within {CRIU_CHECK_TIMEOUT:?}",
                criu.display()
            )),
            Ok(Err(e)) => Err(format!("cannot run `{} check`: {e}", criu.display())),
            Ok(Ok(out)) if out.status.success() => Ok(criu),
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stderr).into_owned()
                    + &String::from_utf8_lossy(&out.stdout);
                let first = text
                    .lines()
                    .find(|l| l.contains("Error"))
                    .or_else(|| text.lines().next())
                    .unwrap_or("no output");
                Err(format!(
                    "CRIU cannot checkpoint on this host: `{} check` failed ({}): {}",
                    criu.display(),
                    out.status,
                    crate::bounded::bounded(first.trim())
                ))
            }
        }
    })
    .await
    .clone()
}

/// `Unimplemented` with `message`.
fn unimplemented(rpc: &str, message: String) -> PodError {
    PodError::handler(
        rpc.to_string(),
        crius_shim_api::HandlerError::new(crius_shim_api::ErrorKind::Unimplemented, message),
    )
}

fn absolute(rpc: &str, what: &str, path: &str) -> PodResult<()> {
    if path.is_empty() {
        return Err(PodError::InvalidArgument(format!(
            "{rpc}: {what} is required"
        )));
    }
    if !Path::new(path).is_absolute() {
        return Err(PodError::InvalidArgument(format!(
            "{rpc}: {what} {:?} must be an absolute path",
            crate::bounded::bounded(path)
        )));
    }
    Ok(())
}

impl PodManager {
    /// What stops handler `handler` from checkpointing (see the module docs).
    async fn checkpoint_refusal(&self, rpc: &str, handler: &str) -> PodError {
        let kind = self.handler_kind(handler);
        match kind {
            Some(HandlerKind::Oci) => match criu_usable().await {
                Err(missing) => PodError::FailedPrecondition(format!(
                    "{rpc}: handler {handler} checkpoints through CRIU: {missing}"
                )),
                Ok(criu) => unimplemented(
                    rpc,
                    format!(
                        "CRIU ({}) works on this host, but the handler contract (version {}) \
                         has no checkpoint/restore operation for handler {handler} yet",
                        criu.display(),
                        crius_shim_api::CONTRACT_VERSION
                    ),
                ),
            },
            Some(other) => unimplemented(
                rpc,
                format!(
                    "handler {handler} (kind {other:?}) cannot checkpoint: only OCI handlers \
                     (CRIU on the host) could; a VM's or plugin's workload is out of its reach"
                ),
            ),
            None => unimplemented(
                rpc,
                format!("handler {handler} is not in the configuration"),
            ),
        }
    }

    /// CheckpointContainer.
    pub async fn checkpoint_container(
        &self,
        req: cri::CheckpointContainerRequest,
    ) -> PodResult<Infallible> {
        const RPC: &str = "CheckpointContainer";
        if req.container_id.is_empty() {
            return Err(PodError::InvalidArgument(format!(
                "{RPC}: container_id is required"
            )));
        }
        absolute(RPC, "location", &req.location)?;
        if req.timeout < 0 {
            return Err(PodError::InvalidArgument(format!(
                "{RPC}: timeout {} is negative",
                req.timeout
            )));
        }
        let c = self.container_record(&req.container_id)?;
        self.require_running(&c, RPC).await?;
        let pod = self
            .store
            .pod(&c.pod_id)
            .ok_or_else(|| PodError::NotFound(format!("pod sandbox {} not found", c.pod_id)))?;
        Err(self.checkpoint_refusal(RPC, &pod.handler).await)
    }

    /// CheckpointPod.
    pub async fn checkpoint_pod(&self, req: cri::CheckpointPodRequest) -> PodResult<Infallible> {
        const RPC: &str = "CheckpointPod";
        if req.pod_sandbox_id.is_empty() {
            return Err(PodError::InvalidArgument(format!(
                "{RPC}: pod_sandbox_id is required"
            )));
        }
        absolute(RPC, "output_path", &req.output_path)?;
        let pod = self.known_pod(&req.pod_sandbox_id)?;
        if pod.state != PodState::Ready {
            return Err(PodError::FailedPrecondition(format!(
                "{RPC}: pod sandbox {} is not ready",
                pod.id
            )));
        }
        for id in &req.container_ids {
            let c = self.container_record(id)?;
            if c.pod_id != pod.id {
                return Err(PodError::InvalidArgument(format!(
                    "{RPC}: container {} is not in pod sandbox {}",
                    c.id, pod.id
                )));
            }
        }
        Err(self.checkpoint_refusal(RPC, &pod.handler).await)
    }

    /// RestorePod.
    pub async fn restore_pod_from_checkpoint(
        &self,
        req: cri::RestorePodRequest,
    ) -> PodResult<Infallible> {
        const RPC: &str = "RestorePod";
        absolute(RPC, "checkpoint_path", &req.checkpoint_path)?;
        if req.config.is_none() {
            return Err(PodError::InvalidArgument(format!(
                "{RPC}: config is required"
            )));
        }
        let handler = self.handlers.resolve(&req.runtime_handler)?;
        let path = PathBuf::from(&req.checkpoint_path);
        let exists = super::blocking("looking at a checkpoint", move || Ok(path.exists())).await?;
        if !exists {
            return Err(PodError::NotFound(format!(
                "{RPC}: checkpoint {:?} does not exist",
                crate::bounded::bounded(&req.checkpoint_path)
            )));
        }
        Err(self.checkpoint_refusal(RPC, handler.name()).await)
    }
}
