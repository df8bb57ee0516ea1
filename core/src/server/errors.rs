//! The CRI edge of pod and container failures: which gRPC code a
//! [`PodError`] is, and lifecycle operations that outlive their caller.

use tonic::Status;

use crate::pod::PodError;

/// The gRPC status of a pod/container failure. An unknown runtime handler
/// is `InvalidArgument` (the request names something that does not exist
/// in this daemon's configuration), with the known names in the message.
pub fn pod_status(err: PodError) -> Status {
    use crius_shim_api::ErrorKind;
    let message = crate::bounded::bound_message(err.to_string());
    match &err {
        PodError::InvalidArgument(_) | PodError::UnknownHandler(_) => {
            Status::invalid_argument(message)
        }
        PodError::NotFound(_) => Status::not_found(message),
        PodError::AlreadyExists { .. } => Status::already_exists(message),
        PodError::FailedPrecondition(_) => Status::failed_precondition(message),
        PodError::Unimplemented(_) => Status::unimplemented(message),
        PodError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
        PodError::Handler { source, .. } => match source.kind {
            ErrorKind::Internal => Status::internal(message),
            ErrorKind::NotFound => Status::not_found(message),
            ErrorKind::InvalidArgument => Status::invalid_argument(message),
            ErrorKind::FailedPrecondition => Status::failed_precondition(message),
            ErrorKind::Unimplemented => Status::unimplemented(message),
            ErrorKind::NotReady => Status::unavailable(message),
            ErrorKind::DeadlineExceeded => Status::deadline_exceeded(message),
            ErrorKind::AlreadyExists => Status::already_exists(message),
        },
        PodError::Image { source, .. } => match source.root() {
            crate::image::ImageError::NotFound(_) => Status::not_found(message),
            crate::image::ImageError::InvalidReference { .. } => Status::invalid_argument(message),
            _ => Status::internal(message),
        },
        PodError::Spec(crate::spec::SpecError::InvalidArgument(_)) => {
            Status::invalid_argument(message)
        }
        PodError::Cgroup(crate::sandbox::CgroupError::InvalidPath { .. }) => {
            Status::invalid_argument(message)
        }
        // The node's systemd is gone: not the request's fault, and retrying
        // later may work.
        PodError::Systemd(crate::sandbox::systemd::SystemdError::Connect(_)) => {
            Status::unavailable(message)
        }
        _ => Status::internal(message),
    }
}

/// Runs a lifecycle operation in a task of its own: if the caller gives up
/// (the kubelet's deadline passes, the connection drops), the operation
/// still finishes or rolls back instead of stopping half-way.
pub(super) async fn detached<T, F>(fut: F) -> Result<T, Status>
where
    F: std::future::Future<Output = Result<T, PodError>> + Send + 'static,
    T: Send + 'static,
{
    use tracing::Instrument as _;
    match tokio::spawn(fut.in_current_span()).await {
        Ok(result) => result.map_err(pod_status),
        Err(e) => Err(Status::internal(format!("lifecycle task failed: {e}"))),
    }
}
