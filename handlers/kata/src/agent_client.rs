//! Client for the guest agent (`handlers/kata/agent`): ttrpc over vsock,
//! directly (`vsock://CID:PORT`) or through a hybrid-vsock unix socket
//! (vhost-device-vsock / Firecracker style: `CONNECT <port>\n` → `OK <n>\n`).
//!
//! Conventions (mount tag, guest paths, EOF and exit-status encoding) are in
//! `handlers/kata/README.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crius_agent_proto::agent::{self, CreateContainerRequest, CreateSandboxRequest};
use crius_agent_proto::agent_ttrpc::AgentServiceClient;
use crius_agent_proto::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse, health_check_response,
};
use crius_agent_proto::health_ttrpc::HealthClient;
use crius_agent_proto::oci_json::{self, OciJsonError};
use crius_agent_proto::oci_spec::runtime::{LinuxResources, Process};
use crius_agent_proto::types;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::asynchronous::Client;
use ttrpc::asynchronous::transport::Socket;
use ttrpc::context::{self, Context};

pub use crius_agent_proto::AGENT_VSOCK_PORT;

/// Where the agent is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// Hybrid vsock: a unix socket served by vhost-device-vsock (or
    /// Firecracker/cloud-hypervisor), with a `CONNECT port` handshake.
    Hybrid { uds: PathBuf, port: u32 },
    /// Kernel vsock (`/dev/vhost-vsock` on the host).
    Vsock { cid: u32, port: u32 },
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Hybrid { uds, port } => write!(f, "hvsock://{}:{port}", uds.display()),
            AgentAddr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connect to agent at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("hybrid vsock handshake with {addr}: {reason}")]
    Handshake { addr: String, reason: String },
    #[error("agent did not answer at {addr} within {waited:?}: {last}")]
    NotReady {
        addr: String,
        waited: Duration,
        last: String,
    },
    #[error("agent {method}: {source}")]
    Rpc {
        method: &'static str,
        source: ttrpc::Error,
    },
    #[error("agent health check: status {0:?}")]
    Unhealthy(health_check_response::ServingStatus),
    #[error(transparent)]
    Spec(#[from] OciJsonError),
}

impl AgentError {
    /// The ttrpc status code when the agent answered with an error status.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Rpc {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => s.code.enum_value().ok(),
            _ => None,
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// A connected agent. Cheap to clone; clones share one ttrpc connection,
/// which multiplexes concurrent calls.
#[derive(Clone)]
pub struct AgentClient {
    agent: AgentServiceClient,
    health: HealthClient,
    timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Default deadline of non-blocking calls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects a hybrid-vsock unix socket to guest `port`. Returns the stream
/// positioned right after the `OK` line.
pub async fn connect_hybrid(uds: &std::path::Path, port: u32) -> Result<UnixStream> {
    let addr = uds.display().to_string();
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| AgentError::Connect {
            addr: addr.clone(),
            source,
        })?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|source| AgentError::Connect {
            addr: addr.clone(),
            source,
        })?;
    // Read byte by byte: anything after the newline already belongs to ttrpc.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        let n = stream
            .read(&mut b)
            .await
            .map_err(|source| AgentError::Connect {
                addr: addr.clone(),
                source,
            })?;
        if n == 0 {
            // vhost-device-vsock closes the socket when nothing listens on the port.
            return Err(AgentError::Handshake {
                addr,
                reason: format!("closed before OK (nothing listening on guest port {port}?)"),
            });
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 64 {
            return Err(AgentError::Handshake {
                addr,
                reason: "reply line too long".into(),
            });
        }
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK") {
        return Err(AgentError::Handshake {
            addr,
            reason: format!("unexpected reply {line:?}"),
        });
    }
    Ok(stream)
}

impl AgentClient {
    /// Connects once (no retry, no health check).
    pub async fn connect(addr: &AgentAddr) -> Result<Self> {
        let client = match addr {
            AgentAddr::Hybrid { uds, port } => {
                Client::new(Socket::new(connect_hybrid(uds, *port).await?))
            }
            AgentAddr::Vsock { cid, port } => {
                let a = format!("vsock://{cid}:{port}");
                Client::connect(&a).await.map_err(|e| AgentError::Connect {
                    addr: a.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
            }
        };
        Ok(AgentClient {
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Connects and runs `Check` until both succeed or `deadline` passes.
    /// Each attempt is bounded, so a VM that never boots fails in time.
    pub async fn wait_ready(addr: &AgentAddr, deadline: Duration) -> Result<Self> {
        let start = Instant::now();
        let mut last = String::from("no attempt");
        while start.elapsed() < deadline {
            let attempt = async {
                let c = Self::connect(addr)
                    .await?
                    .with_timeout(Duration::from_secs(2));
                c.check().await?;
                Ok::<_, AgentError>(c.with_timeout(DEFAULT_TIMEOUT))
            };
            match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "attempt timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(AgentError::NotReady {
            addr: addr.to_string(),
            waited: start.elapsed(),
            last,
        })
    }

    /// Sets the deadline of non-blocking calls.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The generated clients, for calls without a typed wrapper.
    pub fn raw(&self) -> (&AgentServiceClient, &HealthClient) {
        (&self.agent, &self.health)
    }

    fn ctx(&self) -> Context {
        context::with_timeout(self.timeout.as_nanos() as i64)
    }

    fn forever() -> Context {
        context::Context::default()
    }

    pub async fn check(&self) -> Result<()> {
        let r: HealthCheckResponse = self
            .health
            .check(self.ctx(), &CheckRequest::default())
            .await
            .map_err(|source| AgentError::Rpc {
                method: "Check",
                source,
            })?;
        match r.status.enum_value_or_default() {
            health_check_response::ServingStatus::SERVING => Ok(()),
            s => Err(AgentError::Unhealthy(s)),
        }
    }

    pub async fn version(&self) -> Result<VersionCheckResponse> {
        self.health
            .version(self.ctx(), &CheckRequest::default())
            .await
            .map_err(|source| AgentError::Rpc {
                method: "Version",
                source,
            })
    }

    pub async fn guest_details(&self) -> Result<agent::GuestDetailsResponse> {
        let req = agent::GuestDetailsRequest {
            mem_block_size: true,
            ..Default::default()
        };
        self.agent
            .get_guest_details(self.ctx(), &req)
            .await
            .map_err(|source| AgentError::Rpc {
                method: "GetGuestDetails",
                source,
            })
    }

    pub async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<()> {
        self.agent
            .create_sandbox(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "CreateSandbox",
                source,
            })
    }

    pub async fn destroy_sandbox(&self) -> Result<()> {
        self.agent
            .destroy_sandbox(self.ctx(), &agent::DestroySandboxRequest::default())
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "DestroySandbox",
                source,
            })
    }

    pub async fn create_container(&self, req: CreateContainerRequest) -> Result<()> {
        self.agent
            .create_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "CreateContainer",
                source,
            })
    }

    pub async fn start_container(&self, container_id: &str) -> Result<()> {
        let req = agent::StartContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        self.agent
            .start_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "StartContainer",
                source,
            })
    }

    /// Kills what still runs and deletes the container; `timeout_secs` bounds
    /// the wait for the processes to die (0 = agent default).
    pub async fn remove_container(&self, container_id: &str, timeout_secs: u32) -> Result<()> {
        let req = agent::RemoveContainerRequest {
            container_id: container_id.into(),
            timeout: timeout_secs,
            ..Default::default()
        };
        self.agent
            .remove_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "RemoveContainer",
                source,
            })
    }

    /// ExecProcess of `process` (sent as OCI JSON, see
    /// `crius_agent_proto::oci_json`).
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &Process,
    ) -> Result<()> {
        let req = oci_json::exec_process_request(container_id, exec_id, process)?;
        self.agent
            .exec_process(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "ExecProcess",
                source,
            })
    }

    /// `exec_id` empty: every process of the container.
    pub async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<()> {
        let req = agent::SignalProcessRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        self.agent
            .signal_process(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "SignalProcess",
                source,
            })
    }

    /// Blocks until the process exits; exit code or 128+signal.
    pub async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32> {
        let req = agent::WaitProcessRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.agent
            .wait_process(Self::forever(), &req)
            .await
            .map(|r| r.status)
            .map_err(|source| AgentError::Rpc {
                method: "WaitProcess",
                source,
            })
    }

    pub async fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> Result<u32> {
        let req = agent::WriteStreamRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            data: data.to_vec(),
            ..Default::default()
        };
        self.agent
            .write_stdin(Self::forever(), &req)
            .await
            .map(|r| r.len)
            .map_err(|source| AgentError::Rpc {
                method: "WriteStdin",
                source,
            })
    }

    fn read_req(container_id: &str, exec_id: &str, len: u32) -> agent::ReadStreamRequest {
        agent::ReadStreamRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            len,
            ..Default::default()
        }
    }

    /// Blocks until output is available; `None` at end of file.
    pub async fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>> {
        self.agent
            .read_stdout(Self::forever(), &Self::read_req(container_id, exec_id, len))
            .await
            .map(|r| (!r.data.is_empty()).then_some(r.data))
            .map_err(|source| AgentError::Rpc {
                method: "ReadStdout",
                source,
            })
    }

    /// Blocks until output is available; `None` at end of file.
    pub async fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>> {
        self.agent
            .read_stderr(Self::forever(), &Self::read_req(container_id, exec_id, len))
            .await
            .map(|r| (!r.data.is_empty()).then_some(r.data))
            .map_err(|source| AgentError::Rpc {
                method: "ReadStderr",
                source,
            })
    }

    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let req = agent::CloseStdinRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.agent
            .close_stdin(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "CloseStdin",
                source,
            })
    }

    pub async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        row: u32,
        column: u32,
    ) -> Result<()> {
        let req = agent::TtyWinResizeRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            row,
            column,
            ..Default::default()
        };
        self.agent
            .tty_win_resize(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "TtyWinResize",
                source,
            })
    }

    pub async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<agent::StatsContainerResponse> {
        let req = agent::StatsContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        self.agent
            .stats_container(self.ctx(), &req)
            .await
            .map_err(|source| AgentError::Rpc {
                method: "StatsContainer",
                source,
            })
    }

    /// UpdateContainer to `resources` (sent as OCI JSON).
    pub async fn update_container(
        &self,
        container_id: &str,
        resources: &LinuxResources,
    ) -> Result<()> {
        let req = oci_json::update_container_request(container_id, resources)?;
        self.agent
            .update_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "UpdateContainer",
                source,
            })
    }

    /// Brings `cpus` hot-plugged vCPUs (and any new memory) online in the
    /// guest, waiting until they are.
    pub async fn online_cpu_mem(&self, cpus: u32) -> Result<()> {
        let req = agent::OnlineCPUMemRequest {
            wait: true,
            nb_cpus: cpus,
            cpu_only: false,
            ..Default::default()
        };
        self.agent
            .online_cpu_mem(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "OnlineCPUMem",
                source,
            })
    }

    pub async fn pause_container(&self, container_id: &str) -> Result<()> {
        let req = agent::PauseContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        self.agent
            .pause_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "PauseContainer",
                source,
            })
    }

    pub async fn resume_container(&self, container_id: &str) -> Result<()> {
        let req = agent::ResumeContainerRequest {
            container_id: container_id.into(),
            ..Default::default()
        };
        self.agent
            .resume_container(self.ctx(), &req)
            .await
            .map(drop)
            .map_err(|source| AgentError::Rpc {
                method: "ResumeContainer",
                source,
            })
    }

    /// Blocks until a container is OOM-killed; returns its id.
    pub async fn get_oom_event(&self) -> Result<String> {
        self.agent
            .get_oom_event(Self::forever(), &agent::GetOOMEventRequest::default())
            .await
            .map(|e| e.container_id)
            .map_err(|source| AgentError::Rpc {
                method: "GetOOMEvent",
                source,
            })
    }

    pub async fn update_interface(&self, interface: types::Interface) -> Result<types::Interface> {
        let req = agent::UpdateInterfaceRequest {
            interface: Some(interface).into(),
            ..Default::default()
        };
        self.agent
            .update_interface(self.ctx(), &req)
            .await
            .map_err(|source| AgentError::Rpc {
                method: "UpdateInterface",
                source,
            })
    }

    pub async fn update_routes(&self, routes: Vec<types::Route>) -> Result<Vec<types::Route>> {
        let req = agent::UpdateRoutesRequest {
            routes: Some(agent::Routes {
                Routes: routes,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.agent
            .update_routes(self.ctx(), &req)
            .await
            .map(|r| r.Routes)
            .map_err(|source| AgentError::Rpc {
                method: "UpdateRoutes",
                source,
            })
    }
}

/// The guest mount point of the pod's shared directory.
pub const GUEST_SHARED_DIR: &str = "/run/crius/shared";
/// The 9p mount tag of the pod's shared directory.
pub const SHARED_MOUNT_TAG: &str = "crius";

/// The storage entry for CreateSandbox that mounts the pod's 9p share at
/// [`GUEST_SHARED_DIR`].
pub fn shared_9p_storage() -> agent::Storage {
    agent::Storage {
        driver: "9p".into(),
        source: SHARED_MOUNT_TAG.into(),
        fstype: "9p".into(),
        options: [
            "trans=virtio",
            "version=9p2000.L",
            "msize=262144",
            "cache=none",
        ]
        .map(String::from)
        .to_vec(),
        mount_point: GUEST_SHARED_DIR.into(),
        ..Default::default()
    }
}

/// Guest path of container `cid`'s rootfs under the share.
pub fn guest_rootfs(cid: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{cid}/rootfs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake hybrid-vsock endpoint answering the CONNECT line with `reply`.
    async fn fake_endpoint(dir: &std::path::Path, reply: &'static [u8]) -> PathBuf {
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 1024");
                let _ = s.write_all(reply).await;
                // Keep the stream open briefly, then hang up.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        path
    }

    #[tokio::test]
    async fn handshake_accepts_ok_and_leaves_the_rest_unread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fake_endpoint(dir.path(), b"OK 1073741824\nTTRPC").await;
        let mut s = connect_hybrid(&path, 1024).await.expect("handshake");
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"TTRPC", "bytes after the OK line belong to ttrpc");
    }

    #[tokio::test]
    async fn handshake_rejects_hangup_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fake_endpoint(dir.path(), b"").await;
        let err = connect_hybrid(&path, 1024).await.expect_err("hangup");
        assert!(matches!(err, AgentError::Handshake { .. }), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = fake_endpoint(dir.path(), b"NOPE\n").await;
        let err = connect_hybrid(&path, 1024).await.expect_err("garbage");
        assert!(err.to_string().contains("NOPE"), "{err}");
    }

    #[tokio::test]
    async fn wait_ready_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = AgentAddr::Hybrid {
            uds: dir.path().join("absent.sock"),
            port: AGENT_VSOCK_PORT,
        };
        let start = Instant::now();
        let err = AgentClient::wait_ready(&addr, Duration::from_millis(500))
            .await
            .expect_err("no agent");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(matches!(err, AgentError::NotReady { .. }), "{err}");
    }
}
