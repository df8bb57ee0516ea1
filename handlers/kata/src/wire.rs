//! The daemon ↔ VM shim protocol: the handler contract itself
//! (`crius.handler.v1` messages), one call per frame over a unix socket.
//!
//! Frame: a big-endian `u32` body length, then the body. A request body is
//! a `u8` method-name length, the method name (`RunSandbox`, ...) and the
//! protobuf-encoded request. A response body is a `u8` status (0 = ok,
//! 1 = error) and the protobuf-encoded response or `crius.handler.v1.Error`.
//! A connection carries one call; the client opens a new one per call, so
//! slow calls (RunSandbox, ExecSync) never block others.
//!
//! [`ShimTransport`] hides this so a ttrpc transport can replace it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crius_shim_api::prost::Message;
use crius_shim_api::types::{self, Empty};
use crius_shim_api::{HandlerError, HandlerResult, RuntimeHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Frames larger than this are refused (ExecSync output is the biggest).
const MAX_FRAME: usize = 64 << 20;

/// The shim-only call asking the shim to exit after RemoveSandbox.
pub const METHOD_SHUTDOWN: &str = "Shutdown";

/// Sends one call and returns the encoded response.
#[async_trait]
pub trait ShimTransport: Send + Sync {
    async fn call(
        &self,
        method: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> HandlerResult<Vec<u8>>;
}

/// [`ShimTransport`] over the length-prefixed unix socket protocol.
#[derive(Debug, Clone)]
pub struct UnixTransport {
    pub socket: PathBuf,
}

#[async_trait]
impl ShimTransport for UnixTransport {
    async fn call(
        &self,
        method: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> HandlerResult<Vec<u8>> {
        let call = async {
            let mut stream = UnixStream::connect(&self.socket).await.map_err(|err| {
                HandlerError::new(
                    crius_shim_api::ErrorKind::NotReady,
                    format!(
                        "VM shim at {} is not reachable: {err}",
                        self.socket.display()
                    ),
                )
            })?;
            let io = |err: std::io::Error| {
                HandlerError::internal(format!(
                    "{method} to VM shim {}: {err}",
                    self.socket.display()
                ))
            };
            let mut body = Vec::with_capacity(1 + method.len() + request.len());
            body.push(method.len() as u8);
            body.extend_from_slice(method.as_bytes());
            body.extend_from_slice(&request);
            write_frame(&mut stream, &body).await.map_err(io)?;
            let response = read_frame(&mut stream).await.map_err(io)?;
            match response.split_first() {
                Some((0, payload)) => Ok(payload.to_vec()),
                Some((1, payload)) => {
                    let error = types::Error::decode(payload).map_err(|err| {
                        HandlerError::internal(format!("bad error from VM shim: {err}"))
                    })?;
                    Err(HandlerError::from_wire(error))
                }
                _ => Err(HandlerError::internal(format!(
                    "malformed {method} response from VM shim"
                ))),
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(HandlerError::deadline_exceeded(format!(
                    "{method} to VM shim {} took longer than {timeout:?}",
                    self.socket.display()
                )))
            })
    }
}

/// Calls `method` with a typed request and decodes the typed response.
pub async fn call<Req: Message, Resp: Message + Default>(
    transport: &dyn ShimTransport,
    method: &str,
    request: &Req,
    timeout: Duration,
) -> HandlerResult<Resp> {
    let payload = transport
        .call(method, request.encode_to_vec(), timeout)
        .await?;
    Resp::decode(payload.as_slice())
        .map_err(|err| HandlerError::internal(format!("bad {method} response from VM shim: {err}")))
}

async fn write_frame(stream: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes is too large"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Serves `handler` on `listener` until `shutdown` is notified (by a
/// [`METHOD_SHUTDOWN`] call or the caller).
pub async fn serve(
    listener: UnixListener,
    handler: Arc<dyn RuntimeHandler>,
    shutdown: Arc<tokio::sync::Notify>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.notified() => return,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(error = %err, "accept on shim socket failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = serve_one(stream, handler, shutdown).await {
                tracing::debug!(error = %err, "shim connection ended with an error");
            }
        });
    }
}

async fn serve_one(
    mut stream: UnixStream,
    handler: Arc<dyn RuntimeHandler>,
    shutdown: Arc<tokio::sync::Notify>,
) -> std::io::Result<()> {
    let body = read_frame(&mut stream).await?;
    let (method, payload) = match body.split_first() {
        Some((&len, rest)) if rest.len() >= len as usize => {
            let (name, payload) = rest.split_at(len as usize);
            (String::from_utf8_lossy(name).into_owned(), payload.to_vec())
        }
        _ => return Err(std::io::Error::other("malformed request frame")),
    };
    tracing::debug!(%method, "shim call");
    let result = dispatch(handler.as_ref(), &method, &payload).await;
    let mut response = Vec::new();
    match &result {
        Ok(payload) => {
            response.push(0);
            response.extend_from_slice(payload);
        }
        Err(err) => {
            tracing::debug!(%method, error = %err, "shim call failed");
            response.push(1);
            response.extend_from_slice(&err.to_wire().encode_to_vec());
        }
    }
    write_frame(&mut stream, &response).await?;
    if method == METHOD_SHUTDOWN {
        shutdown.notify_one();
    }
    Ok(())
}

fn decode<T: Message + Default>(method: &str, payload: &[u8]) -> HandlerResult<T> {
    T::decode(payload)
        .map_err(|err| HandlerError::invalid_argument(format!("bad {method} request: {err}")))
}

async fn dispatch(
    handler: &dyn RuntimeHandler,
    method: &str,
    payload: &[u8],
) -> HandlerResult<Vec<u8>> {
    macro_rules! unary {
        ($call:ident) => {
            handler
                .$call(decode(method, payload)?)
                .await
                .map(|resp| resp.encode_to_vec())
        };
    }
    macro_rules! empty {
        ($call:ident) => {
            handler
                .$call(decode(method, payload)?)
                .await
                .map(|()| Empty {}.encode_to_vec())
        };
    }
    match method {
        "CheckReady" => handler
            .check_ready()
            .await
            .map(|()| Empty {}.encode_to_vec()),
        METHOD_SHUTDOWN => Ok(Empty {}.encode_to_vec()),
        "RunSandbox" => unary!(run_sandbox),
        "StopSandbox" => empty!(stop_sandbox),
        "RemoveSandbox" => empty!(remove_sandbox),
        "SandboxStatus" => unary!(sandbox_status),
        "RestoreSandbox" => unary!(restore_sandbox),
        "CreateContainer" => unary!(create_container),
        "StartContainer" => empty!(start_container),
        "StopContainer" => empty!(stop_container),
        "RemoveContainer" => empty!(remove_container),
        "ContainerStatus" => unary!(container_status),
        "ExecSync" => unary!(exec_sync),
        "UpdateContainerResources" => empty!(update_container_resources),
        "ReopenContainerLog" => empty!(reopen_container_log),
        "ContainerStats" => unary!(container_stats),
        other => Err(HandlerError::new(
            crius_shim_api::ErrorKind::Unimplemented,
            format!("VM shim does not know the method {other:?}"),
        )),
    }
}

/// Binds the shim socket at `path`, replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    UnixListener::bind(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_shim_api::ErrorKind;
    use crius_shim_api::types::{Capabilities, ContainerRef, ExecSyncRequest, ExecSyncResponse};

    struct Echo;

    #[async_trait]
    impl RuntimeHandler for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn check_ready(&self) -> HandlerResult<()> {
            Ok(())
        }
        async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
            Ok(ExecSyncResponse {
                stdout: req.cmd.join(" ").into_bytes(),
                exit_code: 3,
                ..Default::default()
            })
        }
        async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
            Err(HandlerError::not_found(format!(
                "container {} not found",
                req.container_id
            )))
        }
    }

    #[tokio::test]
    async fn calls_round_trip_values_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("shim.sock");
        let listener = bind(&socket).unwrap();
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let server = tokio::spawn(serve(listener, Arc::new(Echo), shutdown.clone()));
        let transport = UnixTransport { socket };
        let timeout = Duration::from_secs(5);

        let req = ExecSyncRequest {
            cmd: vec!["uname".into(), "-r".into()],
            ..Default::default()
        };
        let resp: ExecSyncResponse = call(&transport, "ExecSync", &req, timeout).await.unwrap();
        assert_eq!(
            (resp.stdout.as_slice(), resp.exit_code),
            (&b"uname -r"[..], 3)
        );

        let req = ContainerRef {
            sandbox_id: "p".into(),
            container_id: "c1".into(),
        };
        let err = call::<_, Empty>(&transport, "StartContainer", &req, timeout)
            .await
            .unwrap_err();
        assert_eq!(err, HandlerError::not_found("container c1 not found"));

        let err = call::<_, Empty>(&transport, "RunSandbox", &Empty {}, timeout)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unimplemented, "{err}");

        let err = call::<_, Empty>(&transport, "Bogus", &Empty {}, timeout)
            .await
            .unwrap_err();
        assert!(err.message.contains("Bogus"), "{err}");

        call::<_, Empty>(&transport, METHOD_SHUTDOWN, &Empty {}, timeout)
            .await
            .unwrap();
        tokio::time::timeout(timeout, server)
            .await
            .expect("server stops")
            .unwrap();
    }
}
