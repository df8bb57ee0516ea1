//! The contract between the crius core and a runtime handler.
//!
//! A handler is registered under a name (the Kubernetes RuntimeClass
//! `handler`) and receives every pod, and every container of that pod, whose
//! `runtime_handler` names it. This crate is the only one a handler author
//! depends on.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a handler can do, reported to the kubelet in `Status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerFeatures {
    /// Recursive read-only mounts (`rro` mount option) are supported.
    pub recursive_read_only_mounts: bool,
    /// Pods may run in a user namespace (id-mapped mounts are supported).
    pub user_namespaces: bool,
}

/// Errors a handler reports to the core.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The handler cannot serve requests (missing binary, broken setup).
    #[error("handler {handler} is not ready: {reason}")]
    NotReady { handler: String, reason: String },
    /// The handler does not implement this operation yet.
    #[error("handler {handler} does not implement {operation}")]
    Unimplemented { handler: String, operation: String },
    /// Anything else, with context.
    #[error("handler {handler}: {message}")]
    Other { handler: String, message: String },
}

/// A runtime handler as the core sees it.
#[async_trait]
pub trait RuntimeHandler: Send + Sync {
    /// The name pods use to select this handler.
    fn name(&self) -> &str;
    /// Capabilities reported in `Status`.
    fn features(&self) -> HandlerFeatures;
    /// Checks that the handler can serve pods now (binaries present, helpers
    /// reachable). The error says what is missing.
    async fn check_ready(&self) -> Result<(), HandlerError>;
}
