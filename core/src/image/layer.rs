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

const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// Mode of directories the archive does not list but whose children it has.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: Mode,
    uid: Uid,
    gid: Gid,
    mtime: Timespec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

/// Mode and mtime of a directory, applied after all entries: creating
/// children changes a directory's mtime, and a read-only mode would stop
/// later entries (for a non-root unpacker).
struct DirFixup {
    path: Vec<u8>,
    dev: u64,
    ino: u64,
    mode: Mode,
    mtime: Timespec,
}

struct Unpacker<'o> {
    root: OwnedFd,
    opts: &'o UnpackOptions,
    dirs: Vec<DirFixup>,
    /// (dev, ino) -> index in `dirs`; a later entry for the same directory
    /// replaces the earlier one's metadata.
    dir_index: HashMap<(u64, u64), usize>,
    /// Normalised paths of skipped device nodes, so hardlinks to them are
    /// skipped too instead of failing on a missing target.
    skipped_paths: HashSet<Vec<u8>>,
    size: u64,
    entries: u64,
    skipped_devices: u64,
    last_path: Option<String>,
    buf: Vec<u8>,
}

impl<'o> Unpacker<'o> {
    fn new(root: OwnedFd, opts: &'o UnpackOptions) -> Self {
        Self {
            root,
            opts,
            dirs: Vec::new(),
            dir_index: HashMap::new(),
            skipped_paths: HashSet::new(),
            size: 0,
            entries: 0,
            skipped_devices: 0,
            last_path: None,
            buf: vec![0; 128 * 1024],
        }
    }

    /// Where in the archive we are, for stream errors.
    fn position(&self) -> String {
        match &self.last_path {
            Some(p) => format!("after entry {p:?}"),
            None => "before the first entry".into(),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw_path = entry.path_bytes().into_owned();
        let entry_path = String::from_utf8_lossy(&raw_path).into_owned();
        self.last_path = Some(entry_path.clone());

        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // Global PAX records carry nothing we apply (no global path or
            // time semantics are needed for layers).
            debug!(entry = %entry_path, "ignoring PAX global header");
            return Ok(());
        }
        self.entries += 1;

        let pax = read_pax(entry, &entry_path)?;
        if pax.gnu_sparse {
            return Err(LayerError::Unsupported {
                path: entry_path,
                reason: "PAX-format GNU sparse files".into(),
            });
        }
        let comps = split_path(&raw_path).map_err(|reason| LayerError::UnsafePath {
            path: entry_path.clone(),
            reason: reason.into(),
        })?;
        let meta = header_meta(entry.header(), pax, &entry_path)?;
        if !self.skipped_paths.is_empty() {
            // Whatever this entry is, a hardlink naming its path now means it.
            self.skipped_paths.remove(&comps.join(&b'/'));
        }

        // Whiteouts are recognised by name, whatever their entry type.
        if let Some(last) = comps.last()
            && last.starts_with(WHITEOUT_PREFIX)
        {
            let parent = &comps[..comps.len() - 1];
            if *last == WHITEOUT_OPAQUE {
                return self.opaque(parent, &entry_path);
            }
            if last.starts_with(WHITEOUT_META_PREFIX) {
                // Other AUFS meta entries (.wh..wh.plnk, .wh..wh.aufs) have
                // no meaning in an OCI layer.
                debug!(entry = %entry_path, "ignoring whiteout meta entry");
                return Ok(());
            }
            let name = &last[WHITEOUT_PREFIX.len()..];
            if name.is_empty() || name == b"." || name == b".." {
                return Err(LayerError::InvalidEntry {
                    path: entry_path,
                    reason: "whiteout without a valid target name".into(),
                });
            }
            return self.whiteout(parent, name, &entry_path);
        }

        // Old (pre-POSIX) archives mark directories as regular files whose
        // name ends in '/'.
        let old_style_dir = kind == tar::EntryType::Regular
            && entry.header().as_bytes()[156] == 0
            && raw_path.ends_with(b"/");
        match kind {
            tar::EntryType::Directory => self.directory(&comps, &meta, &entry_path),
            _ if old_style_dir => self.directory(&comps, &meta, &entry_path),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let (parent, name) = split_last(&comps, &entry_path)?;
                self.regular(parent, name, &meta, entry, &entry_path)
            }
            tar::EntryType::Symlink => {
                let (parent, name) = split_last(&comps, &entry_path)?;
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.symlink(parent, name, target, &meta, &entry_path)
            }
            tar::EntryType::Link => {
                let (parent, name) = split_last(&comps, &entry_path)?;
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.hardlink(parent, name, target, &entry_path)
            }
            tar::EntryType::Fifo => {
                let (parent, name) = split_last(&comps, &entry_path)?;
                self.special(parent, name, FileType::Fifo, 0, &meta, &entry_path)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let (parent, name) = split_last(&comps, &entry_path)?;
                let header = entry.header();
                let bad = |e: io::Error| LayerError::InvalidEntry {
                    path: entry_path.clone(),
                    reason: format!("device number: {e}"),
                };
                let major = header.device_major().map_err(bad)?.unwrap_or(0);
                let minor = header.device_minor().map_err(bad)?.unwrap_or(0);
                let is_whiteout = kind == tar::EntryType::Char && major == 0 && minor == 0;
                if !is_whiteout && !self.opts.allow_device_nodes {
                    warn!(
                        entry = %entry_path, major, minor,
                        "skipping device node: device nodes are not allowed for this image"
                    );
                    self.skipped_devices += 1;
                    self.skipped_paths.insert(comps.join(&b'/'));
                    return Ok(());
                }
                let file_type = if kind == tar::EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                let dev = rustix::fs::makedev(major, minor);
                self.special(parent, name, file_type, dev, &meta, &entry_path)
            }
            other => Err(LayerError::Unsupported {
                path: entry_path,
                reason: format!("tar entry type {:?}", char::from(other.as_byte())),
            }),
        }
    }

    /// Opens (creating missing directories, mode 0755) the directory `comps`
    /// inside the root. Symlinks on the way resolve as if the root were `/`.
    fn open_parent(&self, comps: &[&[u8]], entry_path: &str) -> Result<OwnedFd, LayerError> {
        match open_in_root(&self.root, &join(comps)) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(parent_error(entry_path, &join(comps), e)),
        }
        // Slow path: walk down and create what is missing.
        let mut cur = open_in_root(&self.root, b".")
            .map_err(|e| io_err(entry_path, "opening layer root", e))?;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            match open_in_root(&self.root, &prefix) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(parent_error(entry_path, &prefix, e)),
            }
            let name = comps[i];
            match rustix::fs::mkdirat(&cur, name, Mode::from_bits_truncate(IMPLICIT_DIR_MODE)) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    // It exists but does not resolve: a symlink whose target
                    // is missing inside the layer. Following it by creating
                    // the target is not something tar semantics promise.
                    return Err(LayerError::InvalidEntry {
                        path: entry_path.to_owned(),
                        reason: format!(
                            "parent {:?} is a symlink whose target does not exist in the layer",
                            String::from_utf8_lossy(&prefix)
                        ),
                    });
                }
                Err(e) => {
                    return Err(io_err(
                        entry_path,
                        format!("creating directory {:?}", String::from_utf8_lossy(&prefix)),
                        e,
                    ));
                }
            }
            let fd = rustix::fs::openat(
                &cur,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(entry_path, "opening created directory", e))?;
            // mkdirat's mode went through the umask; make it exact.
            rustix::fs::fchmod(&fd, Mode::from_bits_truncate(IMPLICIT_DIR_MODE))
                .map_err(|e| io_err(entry_path, "setting mode of created directory", e))?;
            cur = fd;
        }
        Ok(cur)
    }

    fn directory(
        &mut self,
        comps: &[&[u8]],
        meta: &Meta,
        entry_path: &str,
    ) -> Result<(), LayerError> {
        let fd = match comps.split_last() {
            // "./" or "/": metadata for the layer root itself.
            None => open_in_root(&self.root, b".")
                .map_err(|e| io_err(entry_path, "opening layer root", e))?,
            Some((name, parent)) => {
                let parent = self.open_parent(parent, entry_path)?;
                let mut make_opaque = false;
                match rustix::fs::statat(&parent, *name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if file_type(&st) == FileType::Directory => {}
                    Ok(st) => {
                        // A whiteout for this name in the same layer means
                        // "drop the lower content, then this directory":
                        // in overlay terms an opaque directory.
                        make_opaque = is_whiteout(&st);
                        rustix::fs::unlinkat(&parent, *name, AtFlags::empty())
                            .map_err(|e| io_err(entry_path, "removing existing entry", e))?;
                        mkdir_private(&parent, name, entry_path)?;
                    }
                    Err(Errno::NOENT) => mkdir_private(&parent, name, entry_path)?,
                    Err(e) => return Err(io_err(entry_path, "inspecting existing entry", e)),
                }
                let fd = rustix::fs::openat(
                    &parent,
                    *name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err(entry_path, "opening directory", e))?;
                if make_opaque {
                    set_opaque(&fd, entry_path)?;
                }
                fd
            }
        };
        if self.opts.preserve_ownership {
            rustix::fs::fchown(&fd, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(entry_path, "setting owner", e))?;
        }
        set_xattrs(&fd, &meta.xattrs, entry_path)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(entry_path, "stat", e))?;
        let (dev, ino) = inode_key(&st);
        let fixup = DirFixup {
            path: join(comps),
            dev,
            ino,
            mode: meta.mode,
            mtime: meta.mtime,
        };
        match self.dir_index.get(&(dev, ino)) {
            Some(&i) => self.dirs[i] = fixup,
            None => {
                self.dir_index.insert((dev, ino), self.dirs.len());
                self.dirs.push(fixup);
            }
        }
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        meta: &Meta,
        entry: &mut tar::Entry<'_, R>,
        entry_path: &str,
    ) -> Result<(), LayerError> {
        let parent = self.open_parent(parent, entry_path)?;
        replace_existing(&parent, name, entry_path)?;
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(entry_path, "creating file", e))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(LayerError::Archive {
                        context: format!("content of entry {entry_path:?}"),
                        source: e,
                    });
                }
            };
            file.write_all(&self.buf[..n]).map_err(|e| LayerError::Io {
                path: entry_path.to_owned(),
                op: "writing file content".into(),
                source: e,
            })?;
            self.size += n as u64;
        }
        // Order matters: chown clears set-id bits and file capabilities, so
        // ownership first, then mode, then xattrs.
        if self.opts.preserve_ownership {
            rustix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(entry_path, "setting owner", e))?;
        }
        rustix::fs::fchmod(&file, meta.mode).map_err(|e| io_err(entry_path, "setting mode", e))?;
        set_xattrs(&file, &meta.xattrs, entry_path)?;
        rustix::fs::futimens(&file, &meta.times())
            .map_err(|e| io_err(entry_path, "setting times", e))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        target: Option<Vec<u8>>,
        meta: &Meta,
        entry_path: &str,
    ) -> Result<(), LayerError> {
        // The target is stored verbatim: it is only ever followed inside the
        // root (by us with RESOLVE_IN_ROOT, later inside the container).
        let target = match target {
            Some(t) if !t.is_empty() => t,
            _ => {
                return Err(LayerError::InvalidEntry {
                    path: entry_path.to_owned(),
                    reason: "symlink without a target".into(),
                });
            }
        };
        let parent = self.open_parent(parent, entry_path)?;
        replace_existing(&parent, name, entry_path)?;
        rustix::fs::symlinkat(target.as_slice(), &parent, name)
            .map_err(|e| io_err(entry_path, "creating symlink", e))?;
        if self.opts.preserve_ownership {
            rustix::fs::chownat(
                &parent,
                name,
                Some(meta.uid),
                Some(meta.gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(entry_path, "setting owner", e))?;
        }
        rustix::fs::utimensat(&parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(entry_path, "setting times", e))?;
        Ok(())
    }

    fn hardlink(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        target: Option<Vec<u8>>,
        entry_path: &str,
    ) -> Result<(), LayerError> {
        let target = target.ok_or_else(|| LayerError::InvalidEntry {
            path: entry_path.to_owned(),
            reason: "hardlink without a target".into(),
        })?;
        let target_display = String::from_utf8_lossy(&target).into_owned();
        let target_comps = split_path(&target).map_err(|reason| LayerError::UnsafePath {
            path: entry_path.to_owned(),
            reason: format!("hardlink target {target_display:?} {reason}"),
        })?;
        if self.skipped_paths.contains(&target_comps.join(&b'/')) {
            debug!(entry = %entry_path, target = %target_display, "skipping hardlink to a skipped device node");
            return Ok(());
        }
        let Some((target_name, target_parent)) = target_comps.split_last() else {
            return Err(LayerError::InvalidEntry {
                path: entry_path.to_owned(),
                reason: format!("hardlink target {target_display:?} is the layer root"),
            });
        };
        let missing = || LayerError::InvalidEntry {
            path: entry_path.to_owned(),
            reason: format!("hardlink target {target_display:?} does not exist in the layer"),
        };
        let target_dir = match open_in_root(&self.root, &join(target_parent)) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(missing()),
            Err(e) => return Err(io_err(entry_path, "resolving hardlink target", e)),
        };
        let target_st =
            match rustix::fs::statat(&target_dir, *target_name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Err(missing()),
                Err(e) => return Err(io_err(entry_path, "inspecting hardlink target", e)),
            };
        if file_type(&target_st) == FileType::Directory {
            return Err(LayerError::InvalidEntry {
                path: entry_path.to_owned(),
                reason: format!("hardlink target {target_display:?} is a directory"),
            });
        }
        let parent = self.open_parent(parent, entry_path)?;
        if let Ok(st) = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
            && inode_key(&st) == inode_key(&target_st)
        {
            // Already the same inode (a link to itself, or a duplicate entry).
            return Ok(());
        }
        replace_existing(&parent, name, entry_path)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink
        // itself, never the file it points to.
        rustix::fs::linkat(&target_dir, *target_name, &parent, name, AtFlags::empty())
            .map_err(|e| io_err(entry_path, format!("linking to {target_display:?}"), e))?;
        Ok(())
    }

    fn special(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        file_type: FileType,
        dev: rustix::fs::Dev,
        meta: &Meta,
        entry_path: &str,
    ) -> Result<(), LayerError> {
        let parent = self.open_parent(parent, entry_path)?;
        replace_existing(&parent, name, entry_path)?;
        rustix::fs::mknodat(&parent, name, file_type, meta.mode, dev)
            .map_err(|e| io_err(entry_path, "creating special file", e))?;
        if self.opts.preserve_ownership {
            rustix::fs::chownat(
                &parent,
                name,
                Some(meta.uid),
                Some(meta.gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(entry_path, "setting owner", e))?;
        }
        // fchmodat cannot refuse to follow symlinks on older kernels, and a
        // device or fifo cannot be opened just to fchmod it. The name was
        // created by mknodat just above and we are the only writer in the
        // destination, so it is not a symlink.
        rustix::fs::chmodat(&parent, name, meta.mode, AtFlags::empty())
            .map_err(|e| io_err(entry_path, "setting mode", e))?;
        rustix::fs::utimensat(&parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(entry_path, "setting times", e))?;
        Ok(())
    }

    /// `.wh.<name>`: hide `<name>` of lower layers.
    fn whiteout(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        entry_path: &str,
    ) -> Result<(), LayerError> {
        let parent = self.open_parent(parent, entry_path)?;
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => rustix::fs::mknodat(
                &parent,
                name,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| io_err(entry_path, "creating whiteout device", e)),
            Ok(st) if file_type(&st) == FileType::Directory => {
                // Whiteouts only apply to lower layers, so a directory this
                // layer already created replaces the lower one entirely.
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err(entry_path, "opening whited-out directory", e))?;
                set_opaque(&fd, entry_path)
            }
            // A non-directory from this layer already hides the lower entry.
            Ok(_) => Ok(()),
            Err(e) => Err(io_err(entry_path, "inspecting whiteout target", e)),
        }
    }

    /// `.wh..wh..opq`: hide all lower content of the directory.
    fn opaque(&mut self, dir: &[&[u8]], entry_path: &str) -> Result<(), LayerError> {
        let fd = self.open_parent(dir, entry_path)?;
        set_opaque(&fd, entry_path)
    }

    /// Applies deferred directory modes and mtimes. A directory replaced or
    /// removed by a later entry is recognised by its inode and skipped.
    fn finish_directories(&mut self) -> Result<(), LayerError> {
        for fixup in &self.dirs {
            let entry_path = String::from_utf8_lossy(&fixup.path);
            let fd = match rustix::fs::openat2(
                &self.root,
                fixup.path.as_slice(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(io_err(&entry_path, "reopening directory", e)),
            };
            let st = rustix::fs::fstat(&fd).map_err(|e| io_err(&entry_path, "stat", e))?;
            if inode_key(&st) != (fixup.dev, fixup.ino) {
                continue;
            }
            rustix::fs::fchmod(&fd, fixup.mode)
                .map_err(|e| io_err(&entry_path, "setting mode", e))?;
            let times = Timestamps {
                last_access: fixup.mtime,
                last_modification: fixup.mtime,
            };
            rustix::fs::futimens(&fd, &times)
                .map_err(|e| io_err(&entry_path, "setting times", e))?;
        }
        Ok(())
    }
}

/// PAX records of one entry that we act on.
#[derive(Default)]
struct PaxInfo {
    xattrs: Vec<(CString, Vec<u8>)>,
    mtime: Option<Timespec>,
    gnu_sparse: bool,
}

fn read_pax<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    entry_path: &str,
) -> Result<PaxInfo, LayerError> {
    let mut info = PaxInfo::default();
    let Some(exts) = entry.pax_extensions().map_err(|e| LayerError::Archive {
        context: format!("PAX records of entry {entry_path:?}"),
        source: e,
    })?
    else {
        return Ok(info);
    };
    for ext in exts {
        let ext = ext.map_err(|e| LayerError::Archive {
            context: format!("PAX records of entry {entry_path:?}"),
            source: e,
        })?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            if xattr_allowed(name) {
                let name = CString::new(name).map_err(|_| LayerError::InvalidEntry {
                    path: entry_path.to_owned(),
                    reason: "xattr name contains a NUL byte".into(),
                })?;
                info.xattrs.push((name, ext.value_bytes().to_vec()));
            } else {
                debug!(
                    entry = %entry_path,
                    xattr = %String::from_utf8_lossy(name),
                    "ignoring xattr outside the allowed namespaces"
                );
            }
        } else if key == b"mtime" {
            info.mtime = parse_pax_time(ext.value_bytes());
        } else if key.starts_with(b"GNU.sparse.") {
            info.gnu_sparse = true;
        }
    }
    Ok(info)
}

/// Only file capabilities and user xattrs are applied. `trusted.*` (which
/// includes overlayfs' own metadata), `security.*` labels and ACLs are not
/// ours to take from an image; `user.overlay.*` is overlayfs metadata when
/// a filesystem is mounted with `userxattr`.
pub(crate) fn xattr_allowed(name: &[u8]) -> bool {
    name == b"security.capability"
        || (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
}

/// Parses a PAX time (`[-]seconds[.fraction]`).
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let negative = int.starts_with('-');
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10_i64.pow(8 - u32::try_from(i).ok()?);
    }
    if negative && nanos > 0 {
        Some(Timespec {
            tv_sec: secs.checked_sub(1)?,
            tv_nsec: 1_000_000_000 - nanos,
        })
    } else {
        Some(Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        })
    }
}

fn header_meta(header: &tar::Header, pax: PaxInfo, entry_path: &str) -> Result<Meta, LayerError> {
    let bad = |what: &str, e: io::Error| LayerError::InvalidEntry {
        path: entry_path.to_owned(),
        reason: format!("{what}: {e}"),
    };
    let old = header.as_old();
    let mode = blank_is_zero(&old.mode, header.mode()).map_err(|e| bad("mode", e))? & 0o7777;
    // The tar crate already applied PAX uid/gid records to the header.
    let uid = blank_is_zero(&old.uid, header.uid()).map_err(|e| bad("uid", e))?;
    let gid = blank_is_zero(&old.gid, header.gid()).map_err(|e| bad("gid", e))?;
    // u32::MAX is "no change" for chown, not an id.
    let id = |what: &str, v: u64| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| LayerError::InvalidEntry {
                path: entry_path.to_owned(),
                reason: format!("{what} {v} out of range"),
            })
    };
    let uid = id("uid", uid)?;
    let gid = id("gid", gid)?;
    let mtime = match pax.mtime {
        Some(t) => t,
        None => {
            let secs = blank_is_zero(&old.mtime, header.mtime()).map_err(|e| bad("mtime", e))?;
            Timespec {
                tv_sec: i64::try_from(secs).map_err(|_| LayerError::InvalidEntry {
                    path: entry_path.to_owned(),
                    reason: format!("mtime {secs} out of range"),
                })?,
                tv_nsec: 0,
            }
        }
    };
    Ok(Meta {
        mode: Mode::from_bits_truncate(mode),
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mtime,
        xattrs: pax.xattrs,
    })
}

/// Reads an empty (all NUL/space) numeric header field as 0, as Go's
/// archive/tar (which wrote most layers out there) does; the tar crate
/// refuses such fields.
fn blank_is_zero<T: Default>(field: &[u8], parsed: io::Result<T>) -> io::Result<T> {
    match parsed {
        Err(_) if field.iter().all(|b| *b == 0 || *b == b' ') => Ok(T::default()),
        other => other,
    }
}

/// Splits an entry name into components: `/` and `.` dropped (absolute
/// names become relative), `..` and NUL refused.
fn split_path(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    let mut comps = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("contains a `..` component"),
            c => comps.push(c),
        }
    }
    Ok(comps)
}

fn split_last<'a, 'b>(
    comps: &'b [&'a [u8]],
    entry_path: &str,
) -> Result<(&'b [&'a [u8]], &'a [u8]), LayerError> {
    match comps.split_last() {
        Some((name, parent)) => Ok((parent, name)),
        None => Err(LayerError::InvalidEntry {
            path: entry_path.to_owned(),
            reason: "non-directory entry names the layer root".into(),
        }),
    }
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    if comps.is_empty() {
        b".".to_vec()
    } else {
        comps.join(&b'/')
    }
}

/// Opens directory `path` beneath `root`, with `root` acting as `/` for every
/// symlink met on the way (absolute targets and `..` cannot leave it).
fn open_in_root(root: &OwnedFd, path: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

fn parent_error(entry_path: &str, prefix: &[u8], e: Errno) -> LayerError {
    let prefix = String::from_utf8_lossy(prefix);
    match e {
        Errno::NOTDIR => LayerError::InvalidEntry {
            path: entry_path.to_owned(),
            reason: format!("parent {prefix:?} is not a directory"),
        },
        e => io_err(entry_path, format!("opening parent {prefix:?}"), e),
    }
}

fn io_err(entry_path: &str, op: impl Into<String>, e: Errno) -> LayerError {
    LayerError::Io {
        path: entry_path.to_owned(),
        op: op.into(),
        source: e.into(),
    }
}

/// Creates a directory owner-only; its real mode is applied at the end.
fn mkdir_private(parent: &OwnedFd, name: &[u8], entry_path: &str) -> Result<(), LayerError> {
    rustix::fs::mkdirat(parent, name, Mode::from_bits_truncate(0o700))
        .map_err(|e| io_err(entry_path, "creating directory", e))
}

/// Later entries override earlier ones: removes whatever is at `name`
/// (a whole tree if it is a directory) so the new entry can be created.
fn replace_existing(parent: &OwnedFd, name: &[u8], entry_path: &str) -> Result<(), LayerError> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Ok(st) if file_type(&st) == FileType::Directory => remove_tree(parent, name)
            .map_err(|e| io_err(entry_path, "removing existing directory", e)),
        Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
            .map_err(|e| io_err(entry_path, "removing existing entry", e)),
        Err(e) => Err(io_err(entry_path, "inspecting existing entry", e)),
    }
}

/// Removes directory `name` and everything below it without following
/// symlinks (every step is relative to an fd opened with O_NOFOLLOW).
fn remove_tree(parent: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    {
        let mut iter = rustix::fs::Dir::read_from(&dir)?;
        while let Some(child) = iter.read() {
            let child = child?;
            let child_name = child.file_name().to_bytes();
            if child_name == b"." || child_name == b".." {
                continue;
            }
            children.push((child_name.to_vec(), child.file_type()));
        }
    }
    for (child, kind) in children {
        let kind = match kind {
            FileType::Unknown => file_type(&rustix::fs::statat(
                &dir,
                child.as_slice(),
                AtFlags::SYMLINK_NOFOLLOW,
            )?),
            k => k,
        };
        if kind == FileType::Directory {
            remove_tree(&dir, &child)?;
        } else {
            rustix::fs::unlinkat(&dir, child.as_slice(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

fn set_opaque(dir: &OwnedFd, entry_path: &str) -> Result<(), LayerError> {
    rustix::fs::fsetxattr(dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
        .map_err(|e| io_err(entry_path, format!("setting {OVERLAY_OPAQUE_XATTR}"), e))
}

/// Applies allowed xattrs. A filesystem without xattr support only loses
/// them (with a warning); any other failure fails the layer.
fn set_xattrs(
    fd: impl AsFd,
    xattrs: &[(CString, Vec<u8>)],
    entry_path: &str,
) -> Result<(), LayerError> {
    for (name, value) in xattrs {
        match rustix::fs::fsetxattr(fd.as_fd(), name.as_c_str(), value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP) => warn!(
                entry = %entry_path,
                xattr = %name.to_string_lossy(),
                "filesystem does not support this xattr; not applied"
            ),
            Err(e) => {
                return Err(io_err(
                    entry_path,
                    format!("setting xattr {}", name.to_string_lossy()),
                    e,
                ));
            }
        }
    }
    Ok(())
}

fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn is_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

// The field types of `Stat` differ between architectures.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn inode_key(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use tar::{EntryType, Header};

    const MTIME: u64 = 1_600_000_000;

    /// Builds archives entry by entry, writing names as raw header bytes so
    /// that malicious names (`..`, absolute) reach the unpacker unchanged.
    struct Tar {
        builder: tar::Builder<Vec<u8>>,
    }

    impl Tar {
        fn new() -> Self {
            Self {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        fn raw(
            &mut self,
            name: &[u8],
            kind: EntryType,
            mode: u32,
            link: &[u8],
            data: &[u8],
        ) -> &mut Self {
            self.raw_owned(name, kind, mode, link, data, (0, 0), (0, 0))
        }

        #[allow(clippy::too_many_arguments)]
        fn raw_owned(
            &mut self,
            name: &[u8],
            kind: EntryType,
            mode: u32,
            link: &[u8],
            data: &[u8],
            owner: (u64, u64),
            dev: (u32, u32),
        ) -> &mut Self {
            let mut h = Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_mtime(MTIME);
            h.set_uid(owner.0);
            h.set_gid(owner.1);
            h.set_size(data.len() as u64);
            h.set_device_major(dev.0)
                .expect("gnu header has device fields");
            h.set_device_minor(dev.1)
                .expect("gnu header has device fields");
            h.set_cksum();
            self.builder
                .append(&h, data)
                .expect("append to in-memory tar");
            self
        }

        fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
            self.raw(name.as_bytes(), EntryType::Directory, mode, b"", b"")
        }

        fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
            self.raw(name.as_bytes(), EntryType::Regular, mode, b"", data)
        }

        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(
                name.as_bytes(),
                EntryType::Symlink,
                0o777,
                target.as_bytes(),
                b"",
            )
        }

        fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(
                name.as_bytes(),
                EntryType::Link,
                0o644,
                target.as_bytes(),
                b"",
            )
        }

        fn device(&mut self, name: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
            self.raw_owned(
                name.as_bytes(),
                kind,
                0o666,
                b"",
                b"",
                (0, 0),
                (major, minor),
            )
        }

        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            self.builder
                .append_pax_extensions(records.iter().copied())
                .expect("append pax");
            self
        }

        fn finish(&mut self) -> Vec<u8> {
            let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
            builder.into_inner().expect("finish tar")
        }
    }

    struct Fixture {
        base: tempfile::TempDir,
        dest: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let base = tempfile::tempdir().expect("tempdir");
            let dest = base.path().join("root");
            std::fs::create_dir(&dest).expect("create dest");
            Self { base, dest }
        }

        fn unpack(&self, tar: &[u8], opts: &UnpackOptions) -> Result<UnpackedLayer, LayerError> {
            unpack_layer(tar, Compression::None, &self.dest, opts)
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.dest.join(rel)
        }
    }

    fn root_opts() -> UnpackOptions {
        UnpackOptions {
            allow_device_nodes: false,
            preserve_ownership: true,
        }
    }

    fn sha256_id(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    fn meta(p: &Path) -> std::fs::Metadata {
        std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        match rustix::fs::lgetxattr(p, name, &mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(Errno::NODATA) => None,
            Err(e) => panic!("getxattr {name} on {}: {e}", p.display()),
        }
    }

    #[test]
    fn media_types_map_to_compression() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                Compression::None,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Compression::Gzip,
            ),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt).expect(mt), want, "{mt}");
        }
        for bad in [
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "",
        ] {
            let err = Compression::from_media_type(bad).expect_err(bad);
            assert!(
                matches!(err, LayerError::UnsupportedMediaType(_)),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn basic_entry_types_round_trip() {
        let fx = Fixture::new();
        let mut t = Tar::new();
        t.dir("etc/", 0o750)
            .file("etc/hosts", 0o640, b"127.0.0.1 localhost\n")
            .symlink("etc/link", "hosts")
            .hardlink("etc/hard", "etc/hosts")
            .raw(b"etc/fifo", EntryType::Fifo, 0o620, b"", b"")
            .raw_owned(
                b"bin/su",
                EntryType::Regular,
                0o4755,
                b"",
                b"xx",
                (1234, 5678),
                (0, 0),
            )
            .file("implicit/deep/file", 0o600, b"x");
        let tar = t.finish();
        let out = fx.unpack(&tar, &root_opts()).expect("unpack");
        assert_eq!(out.size, 20 + 2 + 1);
        assert_eq!(out.entries, 7);
        assert_eq!(out.skipped_device_nodes, 0);

        let etc = meta(&fx.p("etc"));
        assert!(etc.is_dir());
        assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
        // Directory mtime is applied after its children were created.
        assert_eq!(etc.mtime() as u64, MTIME);

        let hosts = meta(&fx.p("etc/hosts"));
        assert!(hosts.is_file());
        assert_eq!(hosts.permissions().mode() & 0o7777, 0o640);
        assert_eq!(hosts.mtime() as u64, MTIME);
        assert_eq!(hosts.nlink(), 2);
        assert_eq!(
            std::fs::read(fx.p("etc/hosts")).expect("read"),
            b"127.0.0.1 localhost\n"
        );

        let hard = meta(&fx.p("etc/hard"));
        assert_eq!(hard.ino(), hosts.ino());

        let link = meta(&fx.p("etc/link"));
        assert!(link.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(fx.p("etc/link")).expect("readlink"),
            Path::new("hosts")
        );
        assert_eq!(link.mtime() as u64, MTIME);

        let fifo = meta(&fx.p("etc/fifo"));
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.permissions().mode() & 0o7777, 0o620);

        // Ownership applied before the mode, so the set-uid bit survives.
        let su = meta(&fx.p("bin/su"));
        assert_eq!((su.uid(), su.gid()), (1234, 5678));
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755);

        let implicit = meta(&fx.p("implicit/deep"));
        assert!(implicit.is_dir());
        assert_eq!(implicit.permissions().mode() & 0o7777, 0o755);
    }

    #[test]
    fn read_only_directory_still_receives_children() {
        let fx = Fixture::new();
        let tar = Tar::new()
            .dir("ro/", 0o555)
            .file("ro/f", 0o444, b"data")
            .finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert_eq!(meta(&fx.p("ro")).permissions().mode() & 0o7777, 0o555);
        assert_eq!(std::fs::read(fx.p("ro/f")).expect("read"), b"data");
    }

    #[test]
    fn diff_id_covers_whole_uncompressed_stream() {
        let mut tar = Tar::new()
            .dir("a/", 0o755)
            .file("a/b", 0o644, b"hello")
            .finish();
        // Writers pad to a record size; the padding is part of the diff_id.
        tar.extend_from_slice(&[0u8; 4096]);
        let want = sha256_id(&tar);

        let fx = Fixture::new();
        let out = fx.unpack(&tar, &root_opts()).expect("plain");
        assert_eq!(out.diff_id, want);
        assert_eq!(std::fs::read(fx.p("a/b")).expect("read"), b"hello");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip finish");
        let fx = Fixture::new();
        let out =
            unpack_layer(gz.as_slice(), Compression::Gzip, &fx.dest, &root_opts()).expect("gzip");
        assert_eq!(out.diff_id, want);
        assert_eq!(std::fs::read(fx.p("a/b")).expect("read"), b"hello");

        let zst = zstd::stream::encode_all(tar.as_slice(), 3).expect("zstd");
        let fx = Fixture::new();
        let out =
            unpack_layer(zst.as_slice(), Compression::Zstd, &fx.dest, &root_opts()).expect("zstd");
        assert_eq!(out.diff_id, want);
        assert_eq!(std::fs::read(fx.p("a/b")).expect("read"), b"hello");
    }

    #[test]
    fn corrupt_or_truncated_streams_fail() {
        let tar = Tar::new().file("f", 0o644, &[7u8; 5000]).finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).expect("gzip");
        let mut gz = gz.finish().expect("gzip finish");
        let mid = gz.len() / 2;
        gz[mid] ^= 0xff;
        let fx = Fixture::new();
        let err = unpack_layer(gz.as_slice(), Compression::Gzip, &fx.dest, &root_opts())
            .expect_err("corrupt gzip must fail");
        assert!(matches!(err, LayerError::Archive { .. }), "{err}");

        let fx = Fixture::new();
        let err = fx
            .unpack(&tar[..1024], &root_opts())
            .expect_err("truncated tar must fail");
        assert!(matches!(err, LayerError::Archive { .. }), "{err}");
    }

    #[test]
    fn whiteouts_become_overlay_char_devices() {
        let fx = Fixture::new();
        let tar = Tar::new()
            .dir("etc/", 0o755)
            .file("etc/.wh.passwd", 0o644, b"")
            .file(".wh.toplevel", 0o644, b"")
            .file("missing/parent/.wh.gone", 0o644, b"")
            .file(".wh..wh.plnk", 0o644, b"")
            .finish();
        let out = fx.unpack(&tar, &root_opts()).expect("unpack");
        assert_eq!(out.skipped_device_nodes, 0);
        for wh in ["etc/passwd", "toplevel", "missing/parent/gone"] {
            let m = meta(&fx.p(wh));
            assert!(m.file_type().is_char_device(), "{wh} is not a char device");
            assert_eq!(m.rdev(), 0, "{wh}");
        }
        assert!(!fx.p("etc/.wh.passwd").exists());
        assert!(!fx.p(".wh..wh.plnk").exists());
        assert!(!fx.p("plnk").exists());
    }

    #[test]
    fn opaque_marker_sets_overlay_xattr() {
        let fx = Fixture::new();
        let tar = Tar::new()
            .dir("var/", 0o755)
            .dir("var/cache/", 0o755)
            .file("var/cache/.wh..wh..opq", 0o644, b"")
            .file("var/cache/new", 0o644, b"n")
            .file("implicit/.wh..wh..opq", 0o644, b"")
            .finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert_eq!(
            xattr(&fx.p("var/cache"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            xattr(&fx.p("implicit"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(xattr(&fx.p("var"), OVERLAY_OPAQUE_XATTR), None);
        assert!(!fx.p("var/cache/.wh..wh..opq").exists());
        assert!(fx.p("var/cache/new").is_file());
    }

    #[test]
    fn whiteout_and_directory_in_same_layer_make_an_opaque_directory() {
        for order_whiteout_first in [true, false] {
            let fx = Fixture::new();
            let mut t = Tar::new();
            if order_whiteout_first {
                t.file(".wh.d", 0o644, b"").dir("d/", 0o755);
            } else {
                t.dir("d/", 0o755).file(".wh.d", 0o644, b"");
            }
            t.file("d/x", 0o644, b"x");
            let tar = t.finish();
            fx.unpack(&tar, &root_opts()).expect("unpack");
            assert!(meta(&fx.p("d")).is_dir());
            assert_eq!(
                xattr(&fx.p("d"), OVERLAY_OPAQUE_XATTR).as_deref(),
                Some(&b"y"[..]),
                "whiteout first: {order_whiteout_first}"
            );
            assert!(fx.p("d/x").is_file());
        }
        // A file in this layer already hides the lower one; the whiteout
        // must not replace it.
        let fx = Fixture::new();
        let tar = Tar::new()
            .file("f", 0o644, b"keep")
            .file(".wh.f", 0o644, b"")
            .finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert_eq!(std::fs::read(fx.p("f")).expect("read"), b"keep");
    }

    #[test]
    fn dotdot_names_are_rejected_and_nothing_lands_outside() {
        for name in [
            &b"../escape"[..],
            b"a/../../escape",
            b"/../escape",
            b"ok/..",
        ] {
            let fx = Fixture::new();
            let tar = Tar::new()
                .file("before", 0o644, b"b")
                .raw(name, EntryType::Regular, 0o644, b"", b"pwned")
                .finish();
            let err = fx.unpack(&tar, &root_opts()).expect_err("must be rejected");
            assert!(
                matches!(&err, LayerError::UnsafePath { path, .. } if path.as_bytes() == name),
                "{}: {err}",
                String::from_utf8_lossy(name)
            );
            assert!(!fx.base.path().join("escape").exists());
            assert!(
                err.to_string().contains(&*String::from_utf8_lossy(name)),
                "{err}"
            );
        }
    }

    #[test]
    fn absolute_names_land_inside() {
        let fx = Fixture::new();
        let tar = Tar::new()
            .raw(b"/etc/x", EntryType::Regular, 0o644, b"", b"inside")
            .raw(b"///./etc//y", EntryType::Regular, 0o644, b"", b"too")
            .finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert_eq!(std::fs::read(fx.p("etc/x")).expect("read"), b"inside");
        assert_eq!(std::fs::read(fx.p("etc/y")).expect("read"), b"too");
    }

    #[test]
    fn symlinked_parents_cannot_escape() {
        let fx = Fixture::new();
        let outside = fx.base.path().join("outside");
        std::fs::create_dir(&outside).expect("outside dir");
        let outside_str = outside.to_str().expect("utf-8 temp path");

        // Absolute symlink to an existing host directory: inside the root it
        // points at a path that does not exist, so the entry fails.
        let tar = Tar::new()
            .symlink("evil", outside_str)
            .file("evil/pwned", 0o644, b"pwned")
            .finish();
        let res = fx.unpack(&tar, &root_opts());
        assert!(
            !outside.join("pwned").exists(),
            "wrote through an absolute symlink"
        );
        if res.is_ok() {
            assert!(
                fx.p(&format!("{}/pwned", outside_str.trim_start_matches('/')))
                    .exists()
            );
        }

        // Symlinks to the host root, relative and absolute, followed by
        // entries aimed at a host path. That host path is a scratch directory,
        // so even a broken unpacker cannot damage the machine running the
        // test; a correct one lands everything inside the root.
        let fx2 = Fixture::new();
        let scratch = fx2.base.path().join("outside");
        std::fs::create_dir(&scratch).expect("scratch dir");
        let rel = scratch
            .strip_prefix("/")
            .expect("absolute temp path")
            .to_str()
            .expect("utf-8 temp path")
            .to_owned();
        let tar = Tar::new()
            .symlink("up", "../../../../../../../../../..")
            .file(&format!("up/{rel}/pwned2"), 0o644, b"pwned")
            .symlink("slash", "/")
            .file(&format!("slash/{rel}/pwned3"), 0o644, b"pwned")
            .finish();
        fx2.unpack(&tar, &root_opts())
            .expect("clamped symlinks stay inside");
        assert!(!scratch.join("pwned2").exists(), "escaped via ../..");
        assert!(!scratch.join("pwned3").exists(), "escaped via /");
        assert_eq!(
            std::fs::read(fx2.p(&format!("{rel}/pwned2"))).expect("landed inside"),
            b"pwned"
        );
        assert_eq!(
            std::fs::read(fx2.p(&format!("{rel}/pwned3"))).expect("landed inside"),
            b"pwned"
        );

        // Only now (resolution is proven to stay inside) the classic case.
        let fx3 = Fixture::new();
        let tar = Tar::new()
            .symlink("evil", "/")
            .file("evil/etc/passwd", 0o644, b"root::0:0::/:/bin/sh\n")
            .finish();
        fx3.unpack(&tar, &root_opts()).expect("lands inside");
        assert_eq!(
            std::fs::read(fx3.p("etc/passwd")).expect("landed inside"),
            b"root::0:0::/:/bin/sh\n"
        );
        let host = std::fs::read("/etc/passwd").unwrap_or_default();
        assert_ne!(host, b"root::0:0::/:/bin/sh\n");
    }

    #[test]
    fn entry_replacing_a_symlink_does_not_write_through_it() {
        let fx = Fixture::new();
        let victim = fx.base.path().join("victim");
        std::fs::write(&victim, b"original").expect("victim");
        let tar = Tar::new()
            .symlink("f", victim.to_str().expect("utf-8"))
            .file("f", 0o644, b"overwritten")
            .symlink("d", victim.to_str().expect("utf-8"))
            .dir("d/", 0o755)
            .finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"original");
        assert_eq!(std::fs::read(fx.p("f")).expect("f"), b"overwritten");
        assert!(meta(&fx.p("d")).is_dir());
    }

    #[test]
    fn hardlinks_cannot_reach_outside() {
        let fx = Fixture::new();
        let tar = Tar::new().hardlink("h", "../../etc/passwd").finish();
        let err = fx.unpack(&tar, &root_opts()).expect_err("must be rejected");
        assert!(matches!(err, LayerError::UnsafePath { .. }), "{err}");
        assert!(!fx.p("h").exists());

        // Through a symlinked parent the target resolves inside the root,
        // where it does not exist.
        let passwd_links = std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
        let fx = Fixture::new();
        let tar = Tar::new()
            .symlink("s", "/etc")
            .hardlink("h2", "s/passwd")
            .finish();
        let err = fx.unpack(&tar, &root_opts()).expect_err("must fail");
        assert!(matches!(err, LayerError::InvalidEntry { .. }), "{err}");
        assert!(!fx.p("h2").exists());
        assert_eq!(
            std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
            passwd_links
        );

        // A hardlink to a symlink links the symlink itself.
        let fx = Fixture::new();
        let tar = Tar::new()
            .symlink("s", "/etc/passwd")
            .hardlink("h3", "s")
            .finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert!(meta(&fx.p("h3")).file_type().is_symlink());
    }

    #[test]
    fn device_nodes_follow_the_option() {
        let tar = Tar::new()
            .device("dev/null", EntryType::Char, 1, 3)
            .device("dev/sda", EntryType::Block, 8, 0)
            .hardlink("dev/null2", "dev/null")
            .device("dev/wh", EntryType::Char, 0, 0)
            .finish();

        let fx = Fixture::new();
        let out = fx.unpack(&tar, &root_opts()).expect("skipped, not failed");
        assert_eq!(out.skipped_device_nodes, 2);
        assert!(!fx.p("dev/null").exists());
        assert!(!fx.p("dev/sda").exists());
        assert!(!fx.p("dev/null2").exists());
        // A 0/0 char device is a whiteout, not a usable device: kept.
        assert!(meta(&fx.p("dev/wh")).file_type().is_char_device());

        let fx = Fixture::new();
        let opts = UnpackOptions {
            allow_device_nodes: true,
            preserve_ownership: true,
        };
        let out = fx.unpack(&tar, &opts).expect("unpack");
        assert_eq!(out.skipped_device_nodes, 0);
        let null = meta(&fx.p("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(null.permissions().mode() & 0o7777, 0o666);
        let sda = meta(&fx.p("dev/sda"));
        assert!(sda.file_type().is_block_device());
        assert_eq!(sda.rdev(), rustix::fs::makedev(8, 0));
        assert_eq!(meta(&fx.p("dev/null2")).ino(), null.ino());
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let fx = Fixture::new();
        let tar = Tar::new()
            .file("a", 0o644, b"file")
            .dir("a/", 0o700)
            .dir("b/", 0o755)
            .file("b/child", 0o644, b"c")
            .dir("b/sub/", 0o755)
            .file("b/sub/deeper", 0o644, b"d")
            .file("b", 0o600, b"now a file")
            .file("c", 0o644, b"one")
            .file("c", 0o600, b"two")
            .dir("d/", 0o700)
            .dir("d/", 0o711)
            .finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert!(meta(&fx.p("a")).is_dir());
        assert_eq!(std::fs::read(fx.p("b")).expect("b"), b"now a file");
        assert_eq!(std::fs::read(fx.p("c")).expect("c"), b"two");
        assert_eq!(meta(&fx.p("c")).permissions().mode() & 0o7777, 0o600);
        assert_eq!(meta(&fx.p("d")).permissions().mode() & 0o7777, 0o711);
    }

    #[test]
    fn xattrs_from_pax_records() {
        // VFS_CAP_REVISION_2 with the effective flag, CAP_NET_RAW permitted.
        let mut cap = Vec::new();
        cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
        cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
        cap.extend_from_slice(&0u32.to_le_bytes());
        cap.extend_from_slice(&0u32.to_le_bytes());
        cap.extend_from_slice(&0u32.to_le_bytes());
        let fx = Fixture::new();
        let mut t = Tar::new();
        t.pax(&[
            ("SCHILY.xattr.user.note", b"hello"),
            ("SCHILY.xattr.trusted.evil", b"x"),
            ("SCHILY.xattr.user.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.security.capability", &cap),
        ])
        .raw_owned(
            b"bin/ping",
            EntryType::Regular,
            0o755,
            b"",
            b"elf",
            (0, 0),
            (0, 0),
        )
        .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir("notopaque/", 0o755);
        let tar = t.finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        let ping = fx.p("bin/ping");
        assert_eq!(xattr(&ping, "user.note").as_deref(), Some(&b"hello"[..]));
        assert_eq!(xattr(&ping, "trusted.evil"), None);
        assert_eq!(xattr(&ping, "user.overlay.redirect"), None);
        assert!(xattr(&ping, "security.capability").is_some());
        assert_eq!(xattr(&fx.p("notopaque"), OVERLAY_OPAQUE_XATTR), None);
    }

    #[test]
    fn long_names_and_pax_paths() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_mtime(MTIME);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, &long, &b"long"[..])
            .expect("gnu long name");
        b.append_pax_extensions([
            ("path", b"pax/name".as_slice()),
            ("mtime", b"1234567890.5".as_slice()),
        ])
        .expect("pax");
        let mut h = Header::new_ustar();
        h.set_path("short").expect("path");
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"pax"[..]).expect("append");
        let tar = b.into_inner().expect("finish");

        let fx = Fixture::new();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert_eq!(std::fs::read(fx.p(&long)).expect("long"), b"long");
        assert_eq!(std::fs::read(fx.p("pax/name")).expect("pax"), b"pax");
        assert!(!fx.p("short").exists());
        let m = meta(&fx.p("pax/name"));
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 500_000_000));
    }

    #[test]
    fn unsupported_or_invalid_entries_fail_clearly() {
        let fx = Fixture::new();
        let tar = Tar::new()
            .raw(b"vol", EntryType::new(b'V'), 0o644, b"", b"")
            .finish();
        let err = fx.unpack(&tar, &root_opts()).expect_err("unknown type");
        assert!(matches!(err, LayerError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("vol"), "{err}");

        let fx = Fixture::new();
        let tar = Tar::new()
            .raw(b"./", EntryType::Regular, 0o644, b"", b"x")
            .finish();
        let err = fx.unpack(&tar, &root_opts()).expect_err("file at the root");
        assert!(matches!(err, LayerError::InvalidEntry { .. }), "{err}");

        let fx = Fixture::new();
        let tar = Tar::new()
            .file("notdir", 0o644, b"")
            .file("notdir/child", 0o644, b"")
            .finish();
        let err = fx.unpack(&tar, &root_opts()).expect_err("file as parent");
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn root_directory_entry_sets_root_metadata() {
        let fx = Fixture::new();
        let tar = Tar::new().dir("./", 0o711).file("x", 0o644, b"").finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        let m = meta(&fx.dest);
        assert_eq!(m.permissions().mode() & 0o7777, 0o711);
        assert_eq!(m.mtime() as u64, MTIME);
    }

    #[test]
    fn pax_time_parsing() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("10"), Some((10, 0)));
        assert_eq!(t("10.25"), Some((10, 250_000_000)));
        assert_eq!(t("10.1234567891"), Some((10, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("x"), None);
        assert_eq!(t("1.x"), None);
    }
}
