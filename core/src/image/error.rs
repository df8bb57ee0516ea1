//! Typed errors of the image service. They are converted to gRPC statuses
//! only at the RPC edge (`server::image`).

use std::sync::Arc;

use super::layer::LayerError;

/// Everything that can go wrong pulling, storing, looking up or removing
/// images. `Clone` (sources behind `Arc`) because one pull's result is shared
/// by every caller that asked for the same image at the same time.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// The image name or reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// No local image matches the reference.
    #[error("image {0:?} not found")]
    NotFound(String),

    /// An id prefix matches more than one image.
    #[error("image id prefix {prefix:?} is ambiguous: matches {matches:?}")]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },

    /// The image cannot be removed while containers use it.
    #[error("image {image} is in use by container(s) {}", containers.join(", "))]
    InUse {
        image: String,
        containers: Vec<String>,
    },

    /// The registry refused our credentials (or wants some).
    #[error("registry {endpoint} denied access: {message}")]
    Unauthorized { endpoint: String, message: String },

    /// The registry has no such repository, tag or manifest.
    #[error("{reference} not found in registry {endpoint}: {message}")]
    ManifestNotFound {
        reference: String,
        endpoint: String,
        message: String,
    },

    /// Any other registry or transport failure.
    #[error("registry {endpoint}: {message}")]
    Registry { endpoint: String, message: String },

    /// The registry is `blocked` in the configuration and has no mirrors.
    #[error("registry {registry} is blocked by the configuration and has no mirrors")]
    Blocked { registry: String },

    /// A manifest or index we cannot use.
    #[error("unsupported manifest for {reference}: {reason}")]
    UnsupportedManifest { reference: String, reason: String },

    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// The image or one of its layers is larger than the configuration
    /// allows (`image.max_layer_size`, `image.max_image_size`).
    #[error("{what} is larger than {limit_name} ({limit} bytes)")]
    TooLarge {
        what: String,
        limit_name: &'static str,
        limit: u64,
    },

    /// Content was longer or shorter than its descriptor says.
    #[error("size mismatch for blob {digest}: descriptor says {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    /// The image config is malformed or inconsistent with the manifest.
    #[error("invalid image config {digest}: {reason}")]
    InvalidConfig { digest: String, reason: String },

    /// Unpacking a layer failed (bad archive, unsafe path, ...).
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: Arc<LayerError>,
    },

    /// An unpacked layer's content does not match the config's diff_id.
    #[error("layer {digest} unpacked to diff_id {actual}, but the image config expects {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },

    /// The registry sent no bytes for `image.pull_progress_timeout_seconds`
    /// (while `what` downloaded, or before it answered the request).
    #[error(
        "{what} from {endpoint} stalled: no bytes for {seconds} s \
         (image.pull_progress_timeout_seconds) after {received} bytes"
    )]
    Stalled {
        what: String,
        endpoint: String,
        seconds: u64,
        received: u64,
    },

    /// `image.pinned_images` pins the image: it is never removed.
    /// The node's signature policy refuses the image.
    #[error(
        "image {image} is refused by the signature policy ({source_of}): {requirement}: {reason}"
    )]
    Rejected {
        image: String,
        /// The policy file and scope the requirement came from.
        source_of: String,
        /// The requirement that failed (`reject`, `signedBy`, ...).
        requirement: &'static str,
        reason: String,
    },

    /// The signature policy or signature-store configuration is unusable.
    #[error("{0}")]
    Trust(#[from] super::trust::TrustError),

    #[error("image {image} is pinned by image.pinned_images and is not removed")]
    Pinned { image: String },

    /// Pulling failed at every endpoint; `source` is the last endpoint's error.
    #[error("pulling {image} failed (tried {}): {source}", tried.join(", "))]
    PullFailed {
        image: String,
        tried: Vec<String>,
        #[source]
        source: Box<ImageError>,
    },

    /// A local filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A stored record or blob could not be (de)serialized.
    #[error("{context}: {message}")]
    Corrupt { context: String, message: String },

    /// A background task died (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImageError {
    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// The error that decides how the failure is reported: for a failed pull
    /// that is the last endpoint's error.
    pub fn root(&self) -> &ImageError {
        match self {
            Self::PullFailed { source, .. } => source.root(),
            other => other,
        }
    }
}

/// Shorthand for attaching context to I/O results.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
