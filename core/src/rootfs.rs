//! Container root filesystems: overlayfs over the image layers with a
//! per-container upper dir, and the shared minimal rootfs of infra
//! containers.

use std::path::{Path, PathBuf};

/// A mounted overlay.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Lower dirs, top-most first (the order of overlayfs `lowerdir`).
    pub lower_dirs: Vec<PathBuf>,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    pub mount_point: PathBuf,
}

/// Why a rootfs operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid rootfs request: {0}")]
    Invalid(String),
}

/// Mounts an overlay of `layers_top_first` (as `ImageManager::layer_dirs`
/// returns them) at `container_dir/rootfs`, with `container_dir/{upper,work}`.
pub fn mount_overlay(_layers_top_first: &[PathBuf], _container_dir: &Path) -> Result<Overlay, RootfsError> {
    Err(RootfsError::Invalid("mount_overlay not implemented yet".into()))
}

/// Unmounts a rootfs; not mounted is fine.
pub fn unmount(_mount_point: &Path) -> Result<(), RootfsError> {
    Err(RootfsError::Invalid("unmount not implemented yet".into()))
}

/// Builds (once) the minimal rootfs of infra containers under `dir`.
pub fn prepare_infra_rootfs(_dir: &Path, _catatonit: &Path) -> Result<PathBuf, RootfsError> {
    Err(RootfsError::Invalid("prepare_infra_rootfs not implemented yet".into()))
}
