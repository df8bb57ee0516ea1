//! `PortForward` of [`OciHandler`]: one TCP connection to a port on the
//! pod's loopback, bridged to a unix socket of the core.
//!
//! A socket belongs to the network namespace it was created in. So a
//! short-lived thread of its own (never an executor or blocking-pool
//! thread, which would stay in the pod's namespace) enters the pod's netns
//! with `setns(CLONE_NEWNET)`, creates and connects the socket, hands the
//! descriptor back and ends. Host-network pods (no netns recorded) connect
//! on the host's loopback.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crius_shim_api::types::PortForwardRequest;
use crius_shim_api::{HandlerError, HandlerResult};
use tokio::net::UnixStream;

use crate::OciHandler;
use crate::ops::Observed;

/// Bound on connecting to the port inside the pod.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on the loopback (IPv4, then IPv6) of the network
/// namespace at `netns` (`None` = the caller's).
fn connect_in_netns(netns: Option<&Path>, port: u16) -> std::io::Result<TcpStream> {
    if let Some(path) = netns {
        let ns = std::fs::File::open(path)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("setns {}: {e}", path.display()),
            )
        })?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
        }
    }
}

/// Runs [`connect_in_netns`] on a dedicated thread that ends afterwards.
async fn connect_pod_port(netns: Option<PathBuf>, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("crius-portfwd".into())
        .spawn(move || {
            let _ = tx.send(connect_in_netns(netns.as_deref(), port));
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("port-forward connect thread died"))?
}

impl OciHandler {
    pub(crate) async fn do_port_forward(&self, req: PortForwardRequest) -> HandlerResult<()> {
        let port = u16::try_from(req.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                HandlerError::invalid_argument(format!("port {} is outside 1-65535", req.port))
            })?;
        if req.socket.is_empty() {
            return Err(HandlerError::invalid_argument(
                "port-forward: no socket given",
            ));
        }
        let pod = self.pod(&req.sandbox_id)?;
        if self.observe(&pod.infra).await? != Observed::Running {
            return Err(HandlerError::failed_precondition(format!(
                "handler {}: sandbox {} is not ready (its infra container is not running)",
                self.config.name, req.sandbox_id
            )));
        }
        let tcp = connect_pod_port(pod.netns_path.clone(), port)
            .await
            .map_err(|e| {
                HandlerError::failed_precondition(format!(
                    "port-forward to port {port} of sandbox {}: {e}",
                    req.sandbox_id
                ))
            })?;
        tcp.set_nonblocking(true)
            .map_err(|e| self.err("port-forward socket", e))?;
        let mut tcp =
            tokio::net::TcpStream::from_std(tcp).map_err(|e| self.err("port-forward socket", e))?;
        let mut unix = UnixStream::connect(&req.socket).await.map_err(|e| {
            HandlerError::invalid_argument(format!(
                "cannot connect to the port-forward socket {}: {e}",
                req.socket
            ))
        })?;
        let sandbox = req.sandbox_id.clone();
        tokio::spawn(async move {
            // copy_bidirectional shuts each write side down when its
            // reader reaches EOF, so half-closes pass through.
            let result = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
            tracing::debug!(pod_id = %sandbox, port, ?result, "port-forward connection ended");
        });
        Ok(())
    }
}
