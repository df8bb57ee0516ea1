//! The contract as (method name, encoded request) → encoded response: what
//! crosses the plugin ABI and the ttrpc socket. [`dispatch`] is the serving
//! side used by both; hosts encode with [`encode`] and decode answers with
//! [`decode_response`].

use crate::prost::Message;
use crate::types::{
    AttachRequest, ContainerRef, CreateContainerRequest, Empty, ExecRequest, ExecSyncRequest,
    InfoResponse, KillProcessRequest, PortForwardRequest, ProcessRef, ResizePtyRequest,
    RestoreSandboxRequest, RunSandboxRequest, SandboxRef, StopContainerRequest,
    UpdateContainerResourcesRequest, UpdateSandboxResourcesRequest,
};
use crate::{HandlerError, HandlerResult, RuntimeHandler};

/// ttrpc service name of the contract.
pub const SERVICE: &str = "crius.handler.v1.Handler";

/// Method names, as in the proto `service Handler`.
pub mod method {
    pub const INFO: &str = "Info";
    pub const CHECK_READY: &str = "CheckReady";
    pub const RUN_SANDBOX: &str = "RunSandbox";
    pub const STOP_SANDBOX: &str = "StopSandbox";
    pub const REMOVE_SANDBOX: &str = "RemoveSandbox";
    pub const SANDBOX_STATUS: &str = "SandboxStatus";
    pub const RESTORE_SANDBOX: &str = "RestoreSandbox";
    pub const CREATE_CONTAINER: &str = "CreateContainer";
    pub const START_CONTAINER: &str = "StartContainer";
    pub const STOP_CONTAINER: &str = "StopContainer";
    pub const REMOVE_CONTAINER: &str = "RemoveContainer";
    pub const CONTAINER_STATUS: &str = "ContainerStatus";
    pub const EXEC_SYNC: &str = "ExecSync";
    pub const UPDATE_CONTAINER_RESOURCES: &str = "UpdateContainerResources";
    pub const REOPEN_CONTAINER_LOG: &str = "ReopenContainerLog";
    pub const CONTAINER_STATS: &str = "ContainerStats";
    pub const EXEC: &str = "Exec";
    pub const ATTACH: &str = "Attach";
    pub const RESIZE_PTY: &str = "ResizePty";
    pub const KILL_PROCESS: &str = "KillProcess";
    pub const WAIT: &str = "Wait";
    pub const PORT_FORWARD: &str = "PortForward";
    pub const SANDBOX_STATS: &str = "SandboxStats";
    pub const UPDATE_SANDBOX_RESOURCES: &str = "UpdateSandboxResources";

    /// Every method, in proto order.
    pub const ALL: [&str; 24] = [
        INFO,
        CHECK_READY,
        RUN_SANDBOX,
        STOP_SANDBOX,
        REMOVE_SANDBOX,
        SANDBOX_STATUS,
        RESTORE_SANDBOX,
        CREATE_CONTAINER,
        START_CONTAINER,
        STOP_CONTAINER,
        REMOVE_CONTAINER,
        CONTAINER_STATUS,
        EXEC_SYNC,
        UPDATE_CONTAINER_RESOURCES,
        REOPEN_CONTAINER_LOG,
        CONTAINER_STATS,
        EXEC,
        ATTACH,
        RESIZE_PTY,
        KILL_PROCESS,
        WAIT,
        PORT_FORWARD,
        SANDBOX_STATS,
        UPDATE_SANDBOX_RESOURCES,
    ];
}

/// Encodes a message for the wire.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Decodes what a handler answered to `method`; garbage is the handler's
/// fault, so it becomes an `Internal` error naming the method.
pub fn decode_response<M: Message + Default>(method: &str, bytes: &[u8]) -> HandlerResult<M> {
    M::decode(bytes).map_err(|e| {
        HandlerError::internal(format!(
            "the handler's {method} response is not valid protobuf: {e}"
        ))
    })
}

fn decode_request<M: Message + Default>(method: &str, bytes: &[u8]) -> HandlerResult<M> {
    M::decode(bytes).map_err(|e| {
        HandlerError::invalid_argument(format!("the {method} request is not valid protobuf: {e}"))
    })
}

/// Serves one call: decodes the request of `method`, runs it on `handler`
/// and encodes the response. `version` is reported by `Info`.
pub async fn dispatch(
    handler: &dyn RuntimeHandler,
    version: &str,
    name: &str,
    payload: &[u8],
) -> HandlerResult<Vec<u8>> {
    // One arm per method: decode the request type, call, encode the answer
    // (methods answering `()` answer `Empty` on the wire).
    macro_rules! call {
        ($req:ty, $fn:ident) => {
            Ok(encode(
                &handler.$fn(decode_request::<$req>(name, payload)?).await?,
            ))
        };
        ($req:ty, $fn:ident, empty) => {{
            handler.$fn(decode_request::<$req>(name, payload)?).await?;
            Ok(encode(&Empty {}))
        }};
    }
    match name {
        method::INFO => Ok(encode(&InfoResponse {
            name: handler.name().to_string(),
            version: version.to_string(),
            capabilities: Some(handler.capabilities()),
            contract_version: crate::CONTRACT_VERSION,
        })),
        method::CHECK_READY => {
            handler.check_ready().await?;
            Ok(encode(&Empty {}))
        }
        method::RUN_SANDBOX => call!(RunSandboxRequest, run_sandbox),
        method::STOP_SANDBOX => call!(SandboxRef, stop_sandbox, empty),
        method::REMOVE_SANDBOX => call!(SandboxRef, remove_sandbox, empty),
        method::SANDBOX_STATUS => call!(SandboxRef, sandbox_status),
        method::RESTORE_SANDBOX => call!(RestoreSandboxRequest, restore_sandbox),
        method::CREATE_CONTAINER => call!(CreateContainerRequest, create_container),
        method::START_CONTAINER => call!(ContainerRef, start_container, empty),
        method::STOP_CONTAINER => call!(StopContainerRequest, stop_container, empty),
        method::REMOVE_CONTAINER => call!(ContainerRef, remove_container, empty),
        method::CONTAINER_STATUS => call!(ContainerRef, container_status),
        method::EXEC_SYNC => call!(ExecSyncRequest, exec_sync),
        method::UPDATE_CONTAINER_RESOURCES => {
            call!(
                UpdateContainerResourcesRequest,
                update_container_resources,
                empty
            )
        }
        method::REOPEN_CONTAINER_LOG => call!(ContainerRef, reopen_container_log, empty),
        method::CONTAINER_STATS => call!(ContainerRef, container_stats),
        method::EXEC => call!(ExecRequest, exec),
        method::ATTACH => call!(AttachRequest, attach, empty),
        method::RESIZE_PTY => call!(ResizePtyRequest, resize_pty, empty),
        method::KILL_PROCESS => call!(KillProcessRequest, kill_process, empty),
        method::WAIT => call!(ProcessRef, wait),
        method::PORT_FORWARD => call!(PortForwardRequest, port_forward, empty),
        method::SANDBOX_STATS => call!(SandboxRef, sandbox_stats),
        method::UPDATE_SANDBOX_RESOURCES => {
            call!(
                UpdateSandboxResourcesRequest,
                update_sandbox_resources,
                empty
            )
        }
        other => Err(HandlerError::new(
            crate::ErrorKind::Unimplemented,
            format!(
                "handler {} does not know the method {other:?}",
                handler.name()
            ),
        )),
    }
}

/// Text of a caught panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::TestHandler;
    use crate::types::SandboxStatusResponse;

    const ECHO: TestHandler = TestHandler("echo");

    #[tokio::test]
    async fn dispatch_decodes_calls_and_encodes() {
        let info: InfoResponse = decode_response(
            "Info",
            &dispatch(&ECHO, "1.2.3", method::INFO, &[]).await.unwrap(),
        )
        .unwrap();
        assert_eq!(info.name, "echo");
        assert_eq!(info.version, "1.2.3");
        assert!(info.capabilities.unwrap().user_namespaces);

        let req = encode(&SandboxRef {
            sandbox_id: "p1".into(),
        });
        let status: SandboxStatusResponse = decode_response(
            "SandboxStatus",
            &dispatch(&ECHO, "", method::SANDBOX_STATUS, &req)
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(status.ready);
        assert_eq!(status.info["id"], "p1");

        let req = encode(&SandboxRef {
            sandbox_id: "gone".into(),
        });
        let err = dispatch(&ECHO, "", method::SANDBOX_STATUS, &req)
            .await
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::NotFound);

        let err = dispatch(&ECHO, "", method::RUN_SANDBOX, &[])
            .await
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Unimplemented);

        let err = dispatch(&ECHO, "", method::SANDBOX_STATUS, &[0xff, 0xff])
            .await
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::InvalidArgument, "{err}");

        let err = dispatch(&ECHO, "", "Nope", &[]).await.unwrap_err();
        assert!(err.message.contains("\"Nope\""), "{err}");
    }
}
