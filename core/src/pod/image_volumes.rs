//! Image volumes (KEP-4639): an image's layers mounted read-only into a
//! container, kept under the container's bundle.

use std::path::{Path, PathBuf};

use crius_proto::cri;

use super::PodManager;
use super::error::{PodError, PodResult};
use super::store::ContainerRecord;
use crate::image::{ImageError, ImageRecord};
use crate::rootfs;

impl PodManager {
    /// The pulled image `name` and its layer directories; `not_found` is
    /// the message when there is no such image.
    pub(super) fn image_with_layers(
        &self,
        name: &str,
        not_found: impl FnOnce() -> String,
    ) -> PodResult<(ImageRecord, Vec<PathBuf>)> {
        let image_error = |source| PodError::Image {
            image: name.to_string(),
            source,
        };
        let record = self.images.resolve(name).map_err(|e| match e {
            ImageError::NotFound(_) => PodError::NotFound(not_found()),
            other => image_error(other),
        })?;
        let layers = self.images.layer_dirs(&record.id).map_err(image_error)?;
        Ok((record, layers))
    }

    /// Mounts each image volume (`Mount.image`, KEP-4639) the request
    /// names: the image, which the kubelet pulled, as an overlay of its
    /// layers under `<bundle>/image-volumes/<n>` (its own writable layer
    /// keeps the image's layers untouched), bound read-only into the
    /// container at `image_sub_path` of it. Returns the config the spec is
    /// built from, with those mounts turned into read-only binds; VM
    /// handlers share them into the guest like any bind.
    pub(super) async fn mount_image_volumes(
        &self,
        rec: &mut ContainerRecord,
    ) -> PodResult<cri::ContainerConfig> {
        let mut config = rec.config.clone();
        for (index, m) in config.mounts.iter_mut().enumerate() {
            let Some(image) = m.image.as_ref().filter(|i| !i.image.is_empty()) else {
                continue;
            };
            let name = image.image.clone();
            // Its overlay would sit in the daemon's private root, out of
            // reach from inside the pod's user namespace.
            if self
                .store
                .pod(&rec.pod_id)
                .is_some_and(|p| p.userns_path.is_some())
            {
                return Err(PodError::Unimplemented(format!(
                    "image volume {name:?}: image volumes in pods with a user namespace \
                     (hostUsers: false) are not supported yet"
                )));
            }
            let (record, layers) = self.image_with_layers(&name, || {
                format!(
                    "image volume {name:?} (for {}) not found; pull it first",
                    m.container_path
                )
            })?;
            let sub_path = Path::new(&m.image_sub_path);
            if sub_path.is_absolute()
                || sub_path
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(PodError::InvalidArgument(format!(
                    "image volume {name:?}: image_sub_path {:?} must be a relative path \
                     without `..`",
                    crate::bounded::bounded(&m.image_sub_path)
                )));
            }
            rec.image_volume_ids.push(record.id.clone());
            // Recorded before mounting so a crash right after still unmounts.
            self.store.save_container(rec).await?;
            let dir = rec
                .bundle_dir
                .join(IMAGE_VOLUMES_DIR)
                .join(index.to_string());
            let overlay = self.prepare_rootfs(layers, dir, None).await?;
            let host = overlay.mount_point.join(sub_path);
            // The sub-path must stay inside the image (no symlink out).
            let resolved = tokio::fs::canonicalize(&host).await.map_err(|e| {
                PodError::InvalidArgument(format!(
                    "image volume {name:?}: image_sub_path {:?}: {e}",
                    crate::bounded::bounded(&m.image_sub_path)
                ))
            })?;
            if !resolved.starts_with(&overlay.mount_point) {
                return Err(PodError::InvalidArgument(format!(
                    "image volume {name:?}: image_sub_path {:?} leads out of the image",
                    crate::bounded::bounded(&m.image_sub_path)
                )));
            }
            m.host_path = resolved.display().to_string();
            m.image = None;
            m.image_sub_path.clear();
            m.readonly = true;
        }
        Ok(config)
    }
}

/// Where a container's image volumes are mounted, under its bundle dir.
const IMAGE_VOLUMES_DIR: &str = "image-volumes";

/// Unmounts every image volume of the container at `bundle_dir` (whatever
/// the record says: a crash may have come between mount and save).
pub(super) fn unmount_image_volumes(bundle_dir: &Path) -> PodResult<()> {
    let Ok(entries) = std::fs::read_dir(bundle_dir.join(IMAGE_VOLUMES_DIR)) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        rootfs::unmount(&entry.path().join("rootfs"))?;
    }
    Ok(())
}
