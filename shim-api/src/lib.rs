//! The contract between the crius core and a runtime handler.
//!
//! A handler is registered under a name (the Kubernetes RuntimeClass
//! `handler`) and receives every pod, and every container of that pod, whose
//! `runtime_handler` names it. This crate is the only one a handler author
//! depends on.
//!
//! Division of work (see `proto/handler/v1/handler.proto`): the core prepares
//! image rootfs, OCI specs (`config.json`), the pod network namespace (CNI),
//! the pod cgroup and persists pod/container records; the handler runs the
//! workload and reports its state. The message types are generated from the
//! proto so that the same values cross the in-process trait, the plugin C ABI
//! and out-of-process shims unchanged.

pub use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod abi;
pub mod cgroupfs;
pub mod checks;
pub mod mountinfo;
mod params;
#[cfg(feature = "plugin")]
pub mod plugin;
#[cfg(feature = "shim")]
pub mod shim;
pub mod wire;

pub use params::HandlerParams;

/// CRI `runtime.v1` messages referenced by the contract.
pub use crius_proto::cri;
/// Messages of the handler contract (`crius.handler.v1`).
pub use crius_proto::handler as types;
/// The protobuf runtime used to (de)serialize [`types`].
pub use crius_proto::prost;

use types::{
    AttachRequest, Capabilities, ContainerRef, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, ErrorCode, ExecRequest, ExecResponse,
    ExecSyncRequest, ExecSyncResponse, KillProcessRequest, PortForwardRequest, ProcessRef,
    ResizePtyRequest, RestoreSandboxRequest, RestoreSandboxResponse, RunSandboxRequest,
    RunSandboxResponse, SandboxRef, SandboxStatsResponse, SandboxStatusResponse,
    StopContainerRequest, UpdateContainerResourcesRequest, UpdateSandboxResourcesRequest,
    WaitResponse,
};

/// Version of the handler contract this crate implements: the methods and
/// messages of `proto/handler/v1/handler.proto`. Reported by `Info`
/// (`InfoResponse.contract_version`); the core refuses shims and plugins of
/// another version with an error naming both.
pub const CONTRACT_VERSION: u32 = 2;

/// What a handler can do, reported to the kubelet in `Status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerFeatures {
    /// Recursive read-only mounts (`rro` mount option) are supported.
    pub recursive_read_only_mounts: bool,
    /// Pods may run in a user namespace. For handlers that take the core's
    /// OCI specs, the spec names the pod's user namespace by path (the core
    /// pins it, and the network namespace it owns) with its mappings, and
    /// the rootfs and volumes arrive already id-mapped; the core reports
    /// the feature only where it can do its part.
    pub user_namespaces: bool,
}

/// Kind of a handler failure; maps one-to-one onto a gRPC status code at the
/// CRI edge and onto [`types::ErrorCode`] across process/ABI boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Internal,
    NotFound,
    InvalidArgument,
    FailedPrecondition,
    Unimplemented,
    NotReady,
    DeadlineExceeded,
    AlreadyExists,
}

impl From<ErrorCode> for ErrorKind {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Internal => ErrorKind::Internal,
            ErrorCode::NotFound => ErrorKind::NotFound,
            ErrorCode::InvalidArgument => ErrorKind::InvalidArgument,
            ErrorCode::FailedPrecondition => ErrorKind::FailedPrecondition,
            ErrorCode::Unimplemented => ErrorKind::Unimplemented,
            ErrorCode::NotReady => ErrorKind::NotReady,
            ErrorCode::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            ErrorCode::AlreadyExists => ErrorKind::AlreadyExists,
        }
    }
}

impl From<ErrorKind> for ErrorCode {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Internal => ErrorCode::Internal,
            ErrorKind::NotFound => ErrorCode::NotFound,
            ErrorKind::InvalidArgument => ErrorCode::InvalidArgument,
            ErrorKind::FailedPrecondition => ErrorCode::FailedPrecondition,
            ErrorKind::Unimplemented => ErrorCode::Unimplemented,
            ErrorKind::NotReady => ErrorCode::NotReady,
            ErrorKind::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
        }
    }
}

/// A handler failure: what kind, and a message that says what went wrong
/// (it reaches the kubelet's events, so it names the pod/container/binary).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub kind: ErrorKind,
    pub message: String,
}

impl HandlerError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::DeadlineExceeded, message)
    }
    /// The handler cannot serve requests (missing binary, broken setup).
    pub fn not_ready(handler: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::NotReady,
            format!("handler {handler} is not ready: {reason}"),
        )
    }
    /// The handler does not implement `operation` (yet); says so by name.
    pub fn unimplemented(handler: &str, operation: &str) -> Self {
        Self::new(
            ErrorKind::Unimplemented,
            format!("handler {handler} does not implement {operation}"),
        )
    }
    /// The error as it crosses a process or ABI boundary.
    pub fn to_wire(&self) -> types::Error {
        types::Error {
            code: ErrorCode::from(self.kind) as i32,
            message: self.message.clone(),
        }
    }
    /// An error received across a boundary; unknown codes become `Internal`.
    pub fn from_wire(error: types::Error) -> Self {
        let kind = ErrorCode::try_from(error.code)
            .map(ErrorKind::from)
            .unwrap_or(ErrorKind::Internal);
        Self {
            kind,
            message: error.message,
        }
    }
}

/// Result of every handler operation.
pub type HandlerResult<T> = Result<T, HandlerError>;

/// A runtime handler as the core sees it. Built-in handlers (runc, crun,
/// kata) and third-party ones (plugins, out-of-process shims) all implement
/// exactly this trait.
///
/// Calls for one pod come in CRI order (RunSandbox, CreateContainer,
/// StartContainer, ..., StopSandbox, RemoveSandbox), but calls for different
/// pods and containers run concurrently. Stop and Remove calls must be
/// idempotent: the core retries them after failures and restarts.
#[async_trait]
pub trait RuntimeHandler: Send + Sync {
    /// The name pods use to select this handler.
    fn name(&self) -> &str;
    /// What the handler is and can do; must not change while loaded.
    fn capabilities(&self) -> Capabilities;
    /// Features reported in `Status` (derived from [`Self::capabilities`]).
    fn features(&self) -> HandlerFeatures {
        let caps = self.capabilities();
        HandlerFeatures {
            recursive_read_only_mounts: caps.recursive_read_only_mounts,
            user_namespaces: caps.user_namespaces,
        }
    }
    /// Checks that the handler can serve pods now (binaries present, helpers
    /// reachable). The error says what is missing.
    async fn check_ready(&self) -> HandlerResult<()>;

    /// Starts the pod: the infra container, a VM, ... Must leave nothing
    /// behind when it fails.
    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "RunSandbox"))
    }
    /// Stops every process of the pod. Idempotent.
    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "StopSandbox"))
    }
    /// Releases everything the handler holds for the pod. Idempotent; the
    /// core calls it after [`Self::stop_sandbox`] and the removal of every
    /// container.
    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "RemoveSandbox"))
    }
    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "SandboxStatus"))
    }
    /// Reattaches to a pod after a daemon restart.
    async fn restore_sandbox(
        &self,
        req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "RestoreSandbox"))
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "CreateContainer"))
    }
    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "StartContainer"))
    }
    /// Stops the container honouring the timeout. Idempotent.
    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "StopContainer"))
    }
    /// Removes a stopped (or never started) container. Idempotent.
    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "RemoveContainer"))
    }
    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "ContainerStatus"))
    }
    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "ExecSync"))
    }
    async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(
            self.name(),
            "UpdateContainerResources",
        ))
    }
    /// Reopens the container's CRI log file after the kubelet rotated it.
    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(
            self.name(),
            "ReopenContainerLog",
        ))
    }
    async fn container_stats(&self, req: ContainerRef) -> HandlerResult<ContainerStatsResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "ContainerStats"))
    }

    /// Starts an interactive process in a running container with its stdio
    /// on the sockets of `req.stdio` (connect to each before answering).
    /// The core calls [`Self::wait`] for every exec it started; the handler
    /// may forget the exec once `wait` has answered.
    async fn exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "Exec"))
    }
    /// Connects the sockets of `req.stdio` to the container's main process.
    async fn attach(&self, req: AttachRequest) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "Attach"))
    }
    /// Resizes the terminal of an exec (or of the main process).
    async fn resize_pty(&self, req: ResizePtyRequest) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "ResizePty"))
    }
    /// Signals an exec (or the main process). A process that already exited
    /// is not an error.
    async fn kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "KillProcess"))
    }
    /// Waits for a process to exit (answers at once if it has). Never times
    /// out by itself; the core cancels the call when it stops caring.
    async fn wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "Wait"))
    }
    /// Bridges one connection to a port of the pod (see the proto).
    async fn port_forward(&self, req: PortForwardRequest) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "PortForward"))
    }
    async fn sandbox_stats(&self, req: SandboxRef) -> HandlerResult<SandboxStatsResponse> {
        let _ = req;
        Err(HandlerError::unimplemented(self.name(), "SandboxStats"))
    }
    async fn update_sandbox_resources(
        &self,
        req: UpdateSandboxResourcesRequest,
    ) -> HandlerResult<()> {
        let _ = req;
        Err(HandlerError::unimplemented(
            self.name(),
            "UpdateSandboxResources",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate's test handler, named by its field: ready, with user
    /// namespaces; SandboxStatus answers ready for any pod but `gone` (not
    /// found); every other operation is the trait's default.
    pub(crate) struct TestHandler(pub(crate) &'static str);

    #[async_trait]
    impl RuntimeHandler for TestHandler {
        fn name(&self) -> &str {
            self.0
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                user_namespaces: true,
                ..Default::default()
            }
        }
        async fn check_ready(&self) -> HandlerResult<()> {
            Ok(())
        }
        async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
            if req.sandbox_id == "gone" {
                return Err(HandlerError::not_found("pod gone not found"));
            }
            Ok(SandboxStatusResponse {
                ready: true,
                info: [("id".to_string(), req.sandbox_id)].into_iter().collect(),
            })
        }
    }

    const MINIMAL: TestHandler = TestHandler("minimal");

    #[tokio::test]
    async fn unimplemented_operations_name_themselves() {
        let err = MINIMAL
            .run_sandbox(RunSandboxRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unimplemented);
        assert_eq!(err.message, "handler minimal does not implement RunSandbox");
        assert!(MINIMAL.features().user_namespaces);
        assert!(!MINIMAL.features().recursive_read_only_mounts);
    }

    #[test]
    fn errors_round_trip_the_wire() {
        let err = HandlerError::not_found("container abc not found");
        assert_eq!(HandlerError::from_wire(err.to_wire()), err);
        let unknown = types::Error {
            code: 99,
            message: "x".into(),
        };
        assert_eq!(HandlerError::from_wire(unknown).kind, ErrorKind::Internal);
    }
}
