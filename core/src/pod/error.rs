//! Typed errors of the pod and container lifecycle. They become
//! `tonic::Status` only at the RPC edge (`server::runtime`).

use crius_shim_api::HandlerError;

use crate::image::ImageError;
use crate::rootfs::RootfsError;
use crate::sandbox::{CgroupError, CniError, NetnsError};
use crate::spec::SpecError;

/// Everything that can go wrong running pods and containers.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The request is malformed (missing metadata, bad values).
    #[error("{0}")]
    InvalidArgument(String),
    /// The pod or container does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken by another pod or container of the same pod.
    #[error("{what} name {name:?} is already reserved by {id}")]
    AlreadyExists {
        what: &'static str,
        name: String,
        id: String,
    },
    /// The object is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A feature this daemon does not have (yet); the message says which.
    #[error("{0}")]
    Unimplemented(String),
    /// `runtime_handler` names no configured handler.
    #[error(transparent)]
    UnknownHandler(#[from] crate::handlers::UnknownHandler),
    /// The runtime handler failed; `context` says which operation.
    #[error("{context}: {source}")]
    Handler {
        context: String,
        #[source]
        source: HandlerError,
    },
    #[error("resolving image {image:?}: {source}")]
    Image {
        image: String,
        #[source]
        source: ImageError,
    },
    #[error("pod network: {0}")]
    Cni(#[from] CniError),
    #[error("network namespace: {0}")]
    Netns(#[from] NetnsError),
    #[error("pod cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("pod slice: {0}")]
    Systemd(#[from] crate::sandbox::systemd::SystemdError),
    #[error("rootfs: {0}")]
    Rootfs(#[from] RootfsError),
    #[error("OCI spec: {0}")]
    Spec(#[from] SpecError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A persisted record could not be read or written.
    #[error("record {path}: {message}")]
    Record { path: String, message: String },
    /// The command run by ExecSync did not finish in time.
    #[error("{0}")]
    DeadlineExceeded(String),
}

impl PodError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub fn handler(context: impl Into<String>, source: HandlerError) -> Self {
        Self::Handler {
            context: context.into(),
            source,
        }
    }
}

/// Result of pod and container operations.
pub type PodResult<T> = Result<T, PodError>;
