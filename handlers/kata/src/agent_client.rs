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

/// The typed wrappers of the agent's RPCs, one entry each:
/// `fn wrapper(args) -> Out = client.method["RpcName"](deadline, request) [=> map];`.
/// `deadline` is `ctx` (the client's timeout) or `forever`; `map` turns the
/// reply into `Out` (without it the reply is returned as is).
macro_rules! agent_rpcs {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty =
            $client:ident.$method:ident[$rpc:literal]($deadline:ident, $req:expr)
            $(=> $map:expr)?;
    )*) => {$(
        $(#[$doc])*
        pub async fn $name(&self, $($arg: $ty),*) -> Result<$out> {
            let req = $req;
            call($rpc, self.$client.$method(self.$deadline(), &req))
                .await
                $(.map($map))?
        }
    )*};
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

    /// No deadline: for calls that block until something happens.
    fn forever(&self) -> Context {
        context::Context::default()
    }

    pub async fn check(&self) -> Result<()> {
        let r: HealthCheckResponse = call(
            "Check",
            self.health.check(self.ctx(), &CheckRequest::default()),
        )
        .await?;
        match r.status.enum_value_or_default() {
            health_check_response::ServingStatus::SERVING => Ok(()),
            s => Err(AgentError::Unhealthy(s)),
        }
    }

    agent_rpcs! {
        fn version() -> VersionCheckResponse =
            health.version["Version"](ctx, CheckRequest::default());

        fn guest_details() -> agent::GuestDetailsResponse =
            agent.get_guest_details["GetGuestDetails"](ctx, agent::GuestDetailsRequest {
                mem_block_size: true,
                ..Default::default()
            });

        fn create_sandbox(req: CreateSandboxRequest) -> () =
            agent.create_sandbox["CreateSandbox"](ctx, req) => drop;

        fn destroy_sandbox() -> () =
            agent.destroy_sandbox["DestroySandbox"](ctx, agent::DestroySandboxRequest::default())
            => drop;

        fn create_container(req: CreateContainerRequest) -> () =
            agent.create_container["CreateContainer"](ctx, req) => drop;

        fn start_container(container_id: &str) -> () =
            agent.start_container["StartContainer"](ctx, for_container(container_id)) => drop;

        /// Kills what still runs and deletes the container; `timeout_secs` bounds
        /// the wait for the processes to die (0 = agent default).
        fn remove_container(container_id: &str, timeout_secs: u32) -> () =
            agent.remove_container["RemoveContainer"](ctx, agent::RemoveContainerRequest {
                timeout: timeout_secs,
                ..for_container(container_id)
            }) => drop;

        /// ExecProcess of `process` (sent as OCI JSON, see
        /// `crius_agent_proto::oci_json`).
        fn exec_process(container_id: &str, exec_id: &str, process: &Process) -> () =
            agent.exec_process["ExecProcess"](
                ctx,
                oci_json::exec_process_request(container_id, exec_id, process)?
            ) => drop;

        /// `exec_id` empty: every process of the container.
        fn signal_process(container_id: &str, exec_id: &str, signal: u32) -> () =
            agent.signal_process["SignalProcess"](ctx, agent::SignalProcessRequest {
                signal,
                ..for_process(container_id, exec_id)
            }) => drop;

        /// Blocks until the process exits; exit code or 128+signal.
        fn wait_process(container_id: &str, exec_id: &str) -> i32 =
            agent.wait_process["WaitProcess"](forever, for_process(container_id, exec_id))
            => |r| r.status;

        fn write_stdin(container_id: &str, exec_id: &str, data: &[u8]) -> u32 =
            agent.write_stdin["WriteStdin"](forever, agent::WriteStreamRequest {
                data: data.to_vec(),
                ..for_process(container_id, exec_id)
            }) => |r| r.len;

        /// Blocks until output is available; `None` at end of file.
        fn read_stdout(container_id: &str, exec_id: &str, len: u32) -> Option<Vec<u8>> =
            agent.read_stdout["ReadStdout"](forever, read_request(container_id, exec_id, len))
            => data_or_eof;

        /// Blocks until output is available; `None` at end of file.
        fn read_stderr(container_id: &str, exec_id: &str, len: u32) -> Option<Vec<u8>> =
            agent.read_stderr["ReadStderr"](forever, read_request(container_id, exec_id, len))
            => data_or_eof;

        fn close_stdin(container_id: &str, exec_id: &str) -> () =
            agent.close_stdin["CloseStdin"](ctx, for_process(container_id, exec_id)) => drop;

        fn tty_win_resize(container_id: &str, exec_id: &str, row: u32, column: u32) -> () =
            agent.tty_win_resize["TtyWinResize"](ctx, agent::TtyWinResizeRequest {
                row,
                column,
                ..for_process(container_id, exec_id)
            }) => drop;

        fn stats_container(container_id: &str) -> agent::StatsContainerResponse =
            agent.stats_container["StatsContainer"](ctx, for_container(container_id));

        /// UpdateContainer to `resources` (sent as OCI JSON).
        fn update_container(container_id: &str, resources: &LinuxResources) -> () =
            agent.update_container["UpdateContainer"](
                ctx,
                oci_json::update_container_request(container_id, resources)?
            ) => drop;

        /// Brings `cpus` hot-plugged vCPUs (and any new memory) online in the
        /// guest, waiting until they are.
        fn online_cpu_mem(cpus: u32) -> () =
            agent.online_cpu_mem["OnlineCPUMem"](ctx, agent::OnlineCPUMemRequest {
                wait: true,
                nb_cpus: cpus,
                cpu_only: false,
                ..Default::default()
            }) => drop;

        fn pause_container(container_id: &str) -> () =
            agent.pause_container["PauseContainer"](ctx, for_container(container_id)) => drop;

        fn resume_container(container_id: &str) -> () =
            agent.resume_container["ResumeContainer"](ctx, for_container(container_id)) => drop;

        /// Blocks until a container is OOM-killed; returns its id.
        fn get_oom_event() -> String =
            agent.get_oom_event["GetOOMEvent"](forever, agent::GetOOMEventRequest::default())
            => |e| e.container_id;

        fn update_interface(interface: types::Interface) -> types::Interface =
            agent.update_interface["UpdateInterface"](ctx, agent::UpdateInterfaceRequest {
                interface: Some(interface).into(),
                ..Default::default()
            });

        fn update_routes(routes: Vec<types::Route>) -> Vec<types::Route> =
            agent.update_routes["UpdateRoutes"](ctx, agent::UpdateRoutesRequest {
                routes: Some(agent::Routes {
                    Routes: routes,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            }) => |r| r.Routes;
    }
}

/// Awaits one agent RPC; an error names the RPC (`method`, as in the
/// agent's API) so a failure says which call it was.
async fn call<T>(method: &'static str, reply: impl Future<Output = ttrpc::Result<T>>) -> Result<T> {
    reply
        .await
        .map_err(|source| AgentError::Rpc { method, source })
}

fn read_request(container_id: &str, exec_id: &str, len: u32) -> agent::ReadStreamRequest {
    agent::ReadStreamRequest {
        len,
        ..for_process(container_id, exec_id)
    }
}

/// A read's data; the agent answers an empty read at end of file.
fn data_or_eof(reply: agent::ReadStreamResponse) -> Option<Vec<u8>> {
    (!reply.data.is_empty()).then_some(reply.data)
}

/// Requests that name a container (and nothing else, or defaults
/// besides).
trait ContainerRequest: Default {
    fn set_container(&mut self, container_id: &str);
}

/// Requests that name one process of a container.
trait ProcessRequest: ContainerRequest {
    fn set_exec(&mut self, exec_id: &str);
}

fn for_container<R: ContainerRequest>(container_id: &str) -> R {
    let mut req = R::default();
    req.set_container(container_id);
    req
}

fn for_process<R: ProcessRequest>(container_id: &str, exec_id: &str) -> R {
    let mut req: R = for_container(container_id);
    req.set_exec(exec_id);
    req
}

// The generated messages share field names, not a trait.
macro_rules! container_requests {
    ($($request:ident),* $(,)?) => {$(
        impl ContainerRequest for agent::$request {
            fn set_container(&mut self, container_id: &str) {
                self.container_id = container_id.into();
            }
        }
    )*};
}

macro_rules! process_requests {
    ($($request:ident),* $(,)?) => {
        container_requests!($($request),*);
        $(
            impl ProcessRequest for agent::$request {
                fn set_exec(&mut self, exec_id: &str) {
                    self.exec_id = exec_id.into();
                }
            }
        )*
    };
}

container_requests!(
    StartContainerRequest,
    RemoveContainerRequest,
    StatsContainerRequest,
    PauseContainerRequest,
    ResumeContainerRequest,
);
process_requests!(
    SignalProcessRequest,
    WaitProcessRequest,
    WriteStreamRequest,
    ReadStreamRequest,
    CloseStdinRequest,
    TtyWinResizeRequest,
);

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
