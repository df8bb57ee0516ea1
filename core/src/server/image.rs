//! CRI ImageService: thin RPCs over [`ImageManager`]. Typed image errors
//! become gRPC statuses here and nowhere else.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use crius_proto::cri;
use crius_proto::cri::image_service_server::ImageService;
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::image::{Credentials, ImageError, ImageManager, ImageRecord};

/// Images sent per `StreamImages` message.
const STREAM_CHUNK: usize = 100;

/// The ImageService implementation.
pub struct ImageServer {
    manager: Arc<ImageManager>,
}

impl ImageServer {
    pub fn new(manager: Arc<ImageManager>) -> Self {
        Self { manager }
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
        ImageError::Blocked { .. } => Status::permission_denied(message),
        ImageError::InUse { .. } => Status::failed_precondition(message),
        ImageError::Registry { .. } => Status::unavailable(message),
        // The request was fine but the image is not: its content was refused
        // (bad archive, unsafe path, wrong digest). Retrying cannot help
        // until the image changes, which is what FailedPrecondition says.
        root if is_bad_content(root) => Status::failed_precondition(crate::bounded::bound_message(
            format!("the image's content was refused: {message}"),
        )),
        ImageError::UnsupportedManifest { .. }
        | ImageError::DigestMismatch { .. }
        | ImageError::SizeMismatch { .. }
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
        | ImageError::InvalidConfig { .. }
        | ImageError::DiffIdMismatch { .. } => true,
        ImageError::Layer { source, .. } => !matches!(
            source.as_ref(),
            LayerError::Destination { .. } | LayerError::Io { .. }
        ),
        _ => false,
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
            .map(to_cri)
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
            .map(to_cri)
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
            Err(ImageError::NotFound(_)) => {
                return Ok(Response::new(cri::ImageStatusResponse::default()));
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
            image: Some(to_cri(&record)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name(req.image.as_ref(), "PullImage")?;
        let credentials = match req.auth.as_ref() {
            Some(auth) => Credentials::from_cri(auth).map_err(|e| status_of(&e))?,
            None => None,
        };
        match self.manager.pull(&name, credentials).await {
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

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let usage = self.manager.fs_usage().await.map_err(|e| status_of(&e))?;
        let timestamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let fs = cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: usage.mountpoint.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes_used,
            }),
        };
        // Container writable layers live under the same root for now.
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
