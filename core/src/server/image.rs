//! CRI ImageService: thin RPCs over [`ImageManager`]. Typed image errors
//! become gRPC statuses here and nowhere else.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crius_proto::cri;
use crius_proto::cri::image_service_server::ImageService;
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::fsusage::{UsageCache, mount_point_of};
use crate::image::{Credentials, ImageError, ImageManager, ImageRecord};
use crate::pod::PodManager;

/// Images sent per `StreamImages` message.
const STREAM_CHUNK: usize = 100;

/// How long ImageFsInfo serves one walk of the image store before a
/// background walk refreshes it (the store changes only by pulls, removals
/// and GC; the kubelet's image GC polls about every 10 s).
const IMAGE_FS_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The ImageService implementation.
pub struct ImageServer {
    manager: Arc<ImageManager>,
    /// For ImageFsInfo's container filesystem (the writable layers).
    pods: Option<Arc<PodManager>>,
    image_fs: Arc<UsageCache>,
}

impl ImageServer {
    pub fn new(manager: Arc<ImageManager>) -> Self {
        Self {
            manager,
            pods: None,
            image_fs: Arc::new(UsageCache::new(IMAGE_FS_TTL)),
        }
    }

    /// Reports the writable layers of `pods` as the container filesystem
    /// in ImageFsInfo (without, it reports the image filesystem only).
    pub fn with_pods(mut self, pods: Arc<PodManager>) -> Self {
        self.pods = Some(pods);
        self
    }
}

fn fs_usage(timestamp: i64, mountpoint: &Path, bytes: u64, inodes: u64) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value { value: bytes }),
        inodes_used: Some(cri::UInt64Value { value: inodes }),
    }
}

/// Maps image errors to statuses: what the client got wrong, what is
/// missing, what it may not do, and what failed on the way.
pub fn status_of(err: &ImageError) -> Status {
    let message = crate::bounded::bound_message(err.to_string());
    match err.root() {
        ImageError::InvalidReference { .. } | ImageError::Ambiguous { .. } => {
            Status::invalid_argument(message)
        }
        ImageError::NotFound(_) | ImageError::ManifestNotFound { .. } => Status::not_found(message),
        ImageError::Unauthorized { .. } => Status::unauthenticated(message),
        ImageError::Blocked { .. } | ImageError::Rejected { .. } => {
            Status::permission_denied(message)
        }
        // The node's policy files are broken: not the request's fault.
        ImageError::Trust(_) => Status::failed_precondition(message),
        ImageError::InUse { .. } | ImageError::Pinned { .. } => {
            Status::failed_precondition(message)
        }
        // The request was fine; the image is in a format crius does not pull.
        ImageError::UnsupportedManifest { .. } => Status::failed_precondition(message),
        ImageError::Registry { .. } => Status::unavailable(message),
        // The registry stopped sending (image.pull_progress_timeout_seconds).
        ImageError::Stalled { .. } => Status::deadline_exceeded(message),
        // The request was fine but the image is not: its content was refused
        // (bad archive, unsafe path, wrong digest). Retrying cannot help
        // until the image changes, which is what FailedPrecondition says.
        root if is_bad_content(root) => Status::failed_precondition(crate::bounded::bound_message(
            format!("the image's content was refused: {message}"),
        )),
        ImageError::DigestMismatch { .. }
        | ImageError::SizeMismatch { .. }
        | ImageError::TooLarge { .. }
        | ImageError::InvalidConfig { .. }
        | ImageError::Layer { .. }
        | ImageError::DiffIdMismatch { .. }
        | ImageError::PullFailed { .. }
        | ImageError::Io { .. }
        | ImageError::Corrupt { .. }
        | ImageError::Internal(_) => Status::internal(message),
    }
}

/// Errors that say the pulled content itself is unusable (as opposed to
/// our disk or a background task failing).
fn is_bad_content(err: &ImageError) -> bool {
    use crate::image::LayerError;
    match err {
        ImageError::UnsupportedManifest { .. }
        | ImageError::DigestMismatch { .. }
        | ImageError::SizeMismatch { .. }
        | ImageError::TooLarge { .. }
        | ImageError::InvalidConfig { .. }
        | ImageError::DiffIdMismatch { .. } => true,
        ImageError::Layer { source, .. } => !matches!(
            source.as_ref(),
            LayerError::Destination { .. } | LayerError::Io { .. }
        ),
        _ => false,
    }
}

/// How long a call may take by its `grpc-timeout`, less a margin so the
/// answer (DeadlineExceeded) is ours and not the transport's (which answers
/// an expired deadline with Cancelled).
fn answer_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    let margin = (timeout / 10).min(std::time::Duration::from_millis(250));
    Some(timeout - margin)
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl ImageServer {
    /// The CRI view of an image, `pinned` by `image.pinned_images`.
    fn cri_image(&self, record: &ImageRecord) -> cri::Image {
        let mut image = to_cri(record);
        image.pinned = image.pinned || self.manager.is_pinned(record);
        image
    }
}

fn to_cri(record: &ImageRecord) -> cri::Image {
    cri::Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid: record.uid.map(|value| cri::Int64Value { value }),
        username: record.username.clone(),
        spec: Some(cri::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: record.pinned,
    }
}

fn image_name(spec: Option<&cri::ImageSpec>, rpc: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(image) if !image.is_empty() => Ok(image.to_string()),
        _ => Err(Status::invalid_argument(format!(
            "{rpc}: image spec with an image name is required"
        ))),
    }
}

fn filter_of(filter: Option<&cri::ImageFilter>) -> Option<&str> {
    filter
        .and_then(|f| f.image.as_ref())
        .map(|s| s.image.as_str())
        .filter(|s| !s.is_empty())
}

type ImageStream = Pin<Box<dyn Stream<Item = Result<cri::StreamImagesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ImageService for ImageServer {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let req = request.into_inner();
        let images = self
            .manager
            .list(filter_of(req.filter.as_ref()))
            .iter()
            .map(|record| self.cri_image(record))
            .collect();
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    type StreamImagesStream = ImageStream;

    async fn stream_images(
        &self,
        request: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let req = request.into_inner();
        let images: Vec<cri::Image> = self
            .manager
            .list(filter_of(req.filter.as_ref()))
            .iter()
            .map(|record| self.cri_image(record))
            .collect();
        let chunks: Vec<Result<cri::StreamImagesResponse, Status>> = images
            .chunks(STREAM_CHUNK)
            .map(|c| Ok(cri::StreamImagesResponse { images: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image.as_ref(), "ImageStatus")?;
        let record = match self.manager.resolve(&name) {
            Ok(record) => record,
            // The kubelet expects an empty response, not an error, for an
            // image that is not present.
            // An image being pulled says how far the pull is (verbose).
            Err(ImageError::NotFound(_)) => {
                let mut info = HashMap::new();
                if req.verbose
                    && let Some(blobs) = self.manager.pull_progress(&name)
                {
                    let progress = serde_json::json!({ "blobs": blobs });
                    info.insert("pullProgress".to_string(), progress.to_string());
                }
                return Ok(Response::new(cri::ImageStatusResponse {
                    image: None,
                    info,
                }));
            }
            Err(e) => return Err(status_of(&e)),
        };
        let mut info = HashMap::new();
        if req.verbose {
            let image_spec = match self.manager.config_json(&record).await {
                Some(config) => config,
                None => serde_json::to_value(&record.config).unwrap_or_default(),
            };
            let verbose = serde_json::json!({
                "id": record.id,
                "repoTags": record.repo_tags,
                "repoDigests": record.repo_digests,
                "manifestDigest": record.manifest_digest,
                "indexDigest": record.index_digest,
                "size": record.size,
                "layers": record.layers,
                "pulledAt": record.pulled_at,
                "labels": record.config.config.labels,
                "imageSpec": image_spec,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(self.cri_image(&record)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let deadline = answer_deadline(request.metadata());
        let req = request.into_inner();
        let name = image_name(req.image.as_ref(), "PullImage")?;
        let credentials = match req.auth.as_ref() {
            Some(auth) => Credentials::from_cri(auth).map_err(|e| status_of(&e))?,
            None => None,
        };
        // The pod's namespace picks a per-namespace signature policy.
        let namespace = req
            .sandbox_config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| m.namespace.clone())
            .filter(|ns| !ns.is_empty());
        let started = std::time::Instant::now();
        let pull = self.manager.pull(&name, credentials, namespace.as_deref());
        let result = match deadline {
            None => pull.await,
            Some(deadline) => match tokio::time::timeout(deadline, pull).await {
                Ok(result) => result,
                Err(_) => {
                    // The download goes on for other callers of the same
                    // image (or a retry), as when a client goes away.
                    warn!(image = %name, "PullImage did not finish within the request's deadline");
                    return Err(Status::deadline_exceeded(crate::bounded::bound_message(
                        format!(
                            "PullImage {name}: the pull did not finish within the request's deadline; it goes on in the background"
                        ),
                    )));
                }
            },
        };
        crate::metrics::global().image_pull(
            result.is_ok(),
            started.elapsed(),
            result.as_ref().map_or(0, |r| r.size),
        );
        match result {
            Ok(record) => Ok(Response::new(cri::PullImageResponse {
                image_ref: record.id,
            })),
            Err(e) => {
                warn!(image = %name, error = %e, "PullImage failed");
                Err(status_of(&e))
            }
        }
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image.as_ref(), "RemoveImage")?;
        match self.manager.remove(&name).await {
            Ok(()) => Ok(Response::new(cri::RemoveImageResponse {})),
            // Removing an absent image succeeds: the kubelet retries removals.
            Err(ImageError::NotFound(_)) => {
                info!(image = %name, "RemoveImage: image not present");
                Ok(Response::new(cri::RemoveImageResponse {}))
            }
            Err(e) => Err(status_of(&e)),
        }
    }

    /// ImageFsInfo: the image filesystem (the store under `root`) and the
    /// container filesystem (the writable layers under the state dir),
    /// each with the mount point of the filesystem holding it and the bytes
    /// and inodes crius uses there. Both come from cached walks (see
    /// [`crate::fsusage`]), so a call never walks a tree.
    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let root = self.manager.root().to_path_buf();
        let usage = self.image_fs.usage(&root).await.map_err(|e| {
            Status::internal(format!(
                "ImageFsInfo: measuring the image store {}: {e}",
                root.display()
            ))
        })?;
        let image_fs = fs_usage(
            usage.timestamp,
            &mount_point_of(&root),
            usage.bytes,
            usage.inodes,
        );
        let container_filesystems = match &self.pods {
            Some(pods) => {
                let layers = pods.writable_layers_usage().await;
                vec![fs_usage(
                    layers.timestamp,
                    &pods.container_fs_mountpoint(),
                    layers.bytes,
                    layers.inodes,
                )]
            }
            None => Vec::new(),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![image_fs],
            container_filesystems,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        use std::time::Duration;
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "12", "123456789S", "-1S", "1x"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        let too_large = ImageError::TooLarge {
            what: "layer x".into(),
            limit_name: "image.max_layer_size",
            limit: 1,
        };
        assert_eq!(
            status_of(&too_large).code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn errors_map_to_the_documented_codes() {
        use tonic::Code;
        let not_found = ImageError::NotFound("x".into());
        assert_eq!(status_of(&not_found).code(), Code::NotFound);
        let bad = ImageError::InvalidReference {
            reference: "X".into(),
            reason: "upper".into(),
        };
        assert_eq!(status_of(&bad).code(), Code::InvalidArgument);
        let in_use = ImageError::InUse {
            image: "i".into(),
            containers: vec!["c".into()],
        };
        assert_eq!(status_of(&in_use).code(), Code::FailedPrecondition);
        let pull = ImageError::PullFailed {
            image: "i".into(),
            tried: vec!["https://r/x".into()],
            source: Box::new(ImageError::Unauthorized {
                endpoint: "r".into(),
                message: "no".into(),
            }),
        };
        let status = status_of(&pull);
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(
            status.message().contains("https://r/x"),
            "{}",
            status.message()
        );
        let corrupt = ImageError::PullFailed {
            image: "i".into(),
            tried: vec!["e".into()],
            source: Box::new(ImageError::DigestMismatch {
                what: "blob a".into(),
                expected: "sha256:a".into(),
                actual: "sha256:b".into(),
            }),
        };
        let status = status_of(&corrupt);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("content was refused"));
        assert!(status.message().contains("expected sha256:a, got sha256:b"));
    }

    #[test]
    fn records_convert_with_uid_only_when_numeric() {
        let mut record = ImageRecord {
            id: format!("sha256:{}", "a".repeat(64)),
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec![],
            size: 42,
            uid: Some(1000),
            username: String::new(),
            pinned: false,
            manifest_digest: String::new(),
            index_digest: None,
            manifests: vec![],
            layers: vec![],
            config: Default::default(),
            pulled_at: String::new(),
        };
        let image = to_cri(&record);
        assert_eq!(image.uid, Some(cri::Int64Value { value: 1000 }));
        assert_eq!(image.size, 42);
        record.uid = None;
        record.username = "nobody".into();
        let image = to_cri(&record);
        assert_eq!(image.uid, None);
        assert_eq!(image.username, "nobody");
    }
}
