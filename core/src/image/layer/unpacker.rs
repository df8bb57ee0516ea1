//! The tar walk: one archive entry at a time into the destination, with
//! OCI whiteouts turned into overlayfs ones and directory metadata applied
//! at the end.

use super::fsops::*;
use super::pax::*;
use super::*;

pub(super) const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
pub(super) const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub(super) const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
pub(super) const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// Mode of directories the archive does not list but whose children it has.
pub(super) const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Metadata of one entry, from its header and PAX records.
pub(super) struct Meta {
    pub(super) mode: Mode,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) mtime: Timespec,
    pub(super) xattrs: Vec<(CString, Vec<u8>)>,
}

impl Meta {
    pub(super) fn times(&self) -> Timestamps {
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

/// Mode and mtime of a directory, applied after all entries: creating
/// children changes a directory's mtime, and a read-only mode would stop
/// later entries (for a non-root unpacker).
pub(super) struct DirFixup {
    pub(super) path: Vec<u8>,
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) mode: Mode,
    pub(super) mtime: Timespec,
}

pub(super) struct Unpacker<'o> {
    pub(super) root: OwnedFd,
    pub(super) opts: &'o UnpackOptions,
    pub(super) dirs: Vec<DirFixup>,
    /// (dev, ino) -> index in `dirs`; a later entry for the same directory
    /// replaces the earlier one's metadata.
    pub(super) dir_index: HashMap<(u64, u64), usize>,
    /// Normalised paths of skipped device nodes, so hardlinks to them are
    /// skipped too instead of failing on a missing target.
    pub(super) skipped_paths: HashSet<Vec<u8>>,
    pub(super) size: u64,
    pub(super) entries: u64,
    pub(super) skipped_devices: u64,
    pub(super) last_path: Option<String>,
    pub(super) buf: Vec<u8>,
}

impl<'o> Unpacker<'o> {
    pub(super) fn new(root: OwnedFd, opts: &'o UnpackOptions) -> Self {
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
    pub(super) fn position(&self) -> String {
        match &self.last_path {
            Some(p) => format!("after entry {p:?}"),
            None => "before the first entry".into(),
        }
    }

    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
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
    pub(super) fn open_parent(
        &self,
        comps: &[&[u8]],
        entry_path: &str,
    ) -> Result<OwnedFd, LayerError> {
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

    pub(super) fn directory(
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

    pub(super) fn regular<R: Read>(
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

    /// The entry's owner, when ownership is kept; never through a symlink.
    fn chown_entry(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        meta: &Meta,
        entry_path: &str,
    ) -> Result<(), LayerError> {
        if self.opts.preserve_ownership {
            rustix::fs::chownat(
                parent,
                name,
                Some(meta.uid),
                Some(meta.gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(entry_path, "setting owner", e))?;
        }
        Ok(())
    }

    pub(super) fn symlink(
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
        self.chown_entry(&parent, name, meta, entry_path)?;
        set_entry_times(&parent, name, meta, entry_path)?;
        Ok(())
    }

    pub(super) fn hardlink(
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

    pub(super) fn special(
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
        self.chown_entry(&parent, name, meta, entry_path)?;
        // fchmodat cannot refuse to follow symlinks on older kernels, and a
        // device or fifo cannot be opened just to fchmod it. The name was
        // created by mknodat just above and we are the only writer in the
        // destination, so it is not a symlink.
        rustix::fs::chmodat(&parent, name, meta.mode, AtFlags::empty())
            .map_err(|e| io_err(entry_path, "setting mode", e))?;
        set_entry_times(&parent, name, meta, entry_path)?;
        Ok(())
    }

    /// `.wh.<name>`: hide `<name>` of lower layers.
    pub(super) fn whiteout(
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
    pub(super) fn opaque(&mut self, dir: &[&[u8]], entry_path: &str) -> Result<(), LayerError> {
        let fd = self.open_parent(dir, entry_path)?;
        set_opaque(&fd, entry_path)
    }

    /// Applies deferred directory modes and mtimes. A directory replaced or
    /// removed by a later entry is recognised by its inode and skipped.
    pub(super) fn finish_directories(&mut self) -> Result<(), LayerError> {
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

/// The entry's access and modification times; never through a symlink.
fn set_entry_times(
    parent: &OwnedFd,
    name: &[u8],
    meta: &Meta,
    entry_path: &str,
) -> Result<(), LayerError> {
    rustix::fs::utimensat(parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err(entry_path, "setting times", e))
}
