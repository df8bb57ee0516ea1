//! Safe unpacking of OCI layer tarballs into overlayfs lower directories.
//!
//! A layer tarball comes from a registry and is untrusted: its entry names,
//! link targets and the order of its entries are all attacker-controlled.
//! Everything it describes must land inside the destination directory, which
//! later becomes an overlayfs lower directory.
//!
//! How that is enforced:
//! - Entry names are split into components; `..` anywhere is an error, empty
//!   and `.` components are dropped, so absolute names become relative.
//! - The destination is opened once as a directory fd. The parent directory of
//!   every entry is opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//!   relative to that fd, so symlinks created by earlier entries (`evil -> /`,
//!   `evil -> ../../..`) resolve inside the destination, never outside it.
//! - The final component is created with `*at` calls on the parent fd that do
//!   not follow a symlink in that position (`mkdirat`, `openat(O_CREAT |
//!   O_EXCL | O_NOFOLLOW)`, `symlinkat`, `mknodat`, `linkat` without
//!   `AT_SYMLINK_FOLLOW`).
//! - Hardlink targets are resolved the same way, so a hardlink can only point
//!   at something this layer already put inside the destination.
//!
//! OCI whiteouts are converted to the overlayfs format: `.wh.<name>` becomes a
//! 0/0 character device `<name>`, `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory.
//!
//! Device nodes: with [`UnpackOptions::allow_device_nodes`] unset, character
//! and block devices are *skipped* (logged, counted in
//! [`UnpackedLayer::skipped_device_nodes`]) rather than failing the layer.
//! Base images legitimately ship a few nodes under `/dev`, the runtime mounts
//! its own `/dev` over them anyway, and refusing would make such images
//! unusable for non-root containers. A 0/0 character device is an overlayfs
//! whiteout, not a usable device, so it is always kept.
//!
//! The caller owns `dest` and is expected to be the only writer in it while
//! the unpack runs (it is a fresh directory under the store's `tmp/`).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, CWD, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps, Uid,
    XattrFlags,
};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

mod fsops;
mod pax;
#[cfg(test)]
mod tests;
mod unpacker;

pub(crate) use pax::xattr_allowed;
use unpacker::*;

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (possibly several concatenated members).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
}

impl Compression {
    /// Maps an OCI or Docker layer media type to its compression. Media type
    /// parameters (`; foo=bar`) are ignored. Anything that is not a tar layer
    /// (configs, foreign formats, encrypted layers, unknown types) is an error.
    pub fn from_media_type(media_type: &str) -> Result<Self, LayerError> {
        let essence = media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let compression = match essence.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            _ => return Err(LayerError::UnsupportedMediaType(media_type.to_owned())),
        };
        Ok(compression)
    }
}

/// How to unpack a layer.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Create character and block device nodes found in the layer. When
    /// false they are skipped with a warning (see the module docs); 0/0
    /// character devices (overlayfs whiteouts) are always created.
    pub allow_device_nodes: bool,
    /// Give entries the uid/gid recorded in the archive (needs root). When
    /// false everything is owned by the unpacking user.
    pub preserve_ownership: bool,
}

/// Result of a successful unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedLayer {
    /// `sha256:<hex>` of the whole uncompressed tar stream, trailer and
    /// padding included; compare with the image config's `rootfs.diff_ids`.
    pub diff_id: String,
    /// Bytes of regular file content written.
    pub size: u64,
    /// Archive entries processed (extension headers not counted).
    pub entries: u64,
    /// Character/block devices skipped because device nodes were not allowed.
    pub skipped_device_nodes: u64,
}

/// Why a layer could not be unpacked. The whole layer fails; the caller
/// removes the partially filled destination.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The media type is not a tar layer we can unpack.
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),

    /// The destination directory could not be opened.
    #[error("opening layer destination {}: {source}", path.display())]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The compressed or tar stream is malformed or truncated.
    #[error("reading layer archive ({context}): {source}")]
    Archive {
        context: String,
        #[source]
        source: io::Error,
    },

    /// An entry name or link target would place something outside the
    /// destination.
    #[error("layer entry {path:?}: unsafe path: {reason}")]
    UnsafePath { path: String, reason: String },

    /// An entry that is well-formed tar but cannot be unpacked here.
    #[error("layer entry {path:?}: unsupported: {reason}")]
    Unsupported { path: String, reason: String },

    /// An entry whose header or link data is invalid.
    #[error("layer entry {path:?}: invalid: {reason}")]
    InvalidEntry { path: String, reason: String },

    /// A filesystem operation for an entry failed.
    #[error("layer entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: String,
        #[source]
        source: io::Error,
    },
}

/// Unpacks the layer read from `reader` into `dest`, an existing empty
/// directory. Blocking; call it from `spawn_blocking`.
///
/// On error `dest` may hold a partial layer; nothing is ever written outside
/// it. The diff_id covers the complete decompressed stream: after the tar
/// end-of-archive marker the rest of the stream is read and hashed too.
pub fn unpack_layer(
    reader: impl Read,
    compression: Compression,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackedLayer, LayerError> {
    let root = rustix::fs::openat(
        CWD,
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerError::Destination {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;

    let decompressed: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(reader),
        // Multi-member: some tools write concatenated gzip members and the
        // stream is defined as their concatenation.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            Box::new(
                zstd::stream::read::Decoder::new(reader).map_err(|e| LayerError::Archive {
                    context: "starting zstd decoder".into(),
                    source: e,
                })?,
            )
        }
    };
    let mut archive = tar::Archive::new(HashingReader::new(decompressed));
    let mut unpacker = Unpacker::new(root, opts);
    {
        let entries = archive.entries().map_err(|e| LayerError::Archive {
            context: "at start".into(),
            source: e,
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| LayerError::Archive {
                context: unpacker.position(),
                source: e,
            })?;
            unpacker.entry(&mut entry)?;
        }
    }
    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| LayerError::Archive {
        context: "after the end-of-archive marker".into(),
        source: e,
    })?;
    unpacker.finish_directories()?;

    let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    debug!(
        dest = %dest.display(),
        %diff_id,
        size = unpacker.size,
        entries = unpacker.entries,
        skipped_device_nodes = unpacker.skipped_devices,
        "layer unpacked"
    );
    Ok(UnpackedLayer {
        diff_id,
        size: unpacker.size,
        entries: unpacker.entries,
        skipped_device_nodes: unpacker.skipped_devices,
    })
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
