//! Path splitting and the `*at` operations that keep every write inside
//! the destination directory.

use super::unpacker::*;
use super::*;

/// Splits an entry name into components: `/` and `.` dropped (absolute
/// names become relative), `..` and NUL refused.
pub(super) fn split_path(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
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

pub(super) fn split_last<'a, 'b>(
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

pub(super) fn join(comps: &[&[u8]]) -> Vec<u8> {
    if comps.is_empty() {
        b".".to_vec()
    } else {
        comps.join(&b'/')
    }
}

/// Opens directory `path` beneath `root`, with `root` acting as `/` for every
/// symlink met on the way (absolute targets and `..` cannot leave it).
pub(super) fn open_in_root(root: &OwnedFd, path: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

pub(super) fn parent_error(entry_path: &str, prefix: &[u8], e: Errno) -> LayerError {
    let prefix = String::from_utf8_lossy(prefix);
    match e {
        Errno::NOTDIR => LayerError::InvalidEntry {
            path: entry_path.to_owned(),
            reason: format!("parent {prefix:?} is not a directory"),
        },
        e => io_err(entry_path, format!("opening parent {prefix:?}"), e),
    }
}

pub(super) fn io_err(entry_path: &str, op: impl Into<String>, e: Errno) -> LayerError {
    LayerError::Io {
        path: entry_path.to_owned(),
        op: op.into(),
        source: e.into(),
    }
}

/// Creates a directory owner-only; its real mode is applied at the end.
pub(super) fn mkdir_private(
    parent: &OwnedFd,
    name: &[u8],
    entry_path: &str,
) -> Result<(), LayerError> {
    rustix::fs::mkdirat(parent, name, Mode::from_bits_truncate(0o700))
        .map_err(|e| io_err(entry_path, "creating directory", e))
}

/// Later entries override earlier ones: removes whatever is at `name`
/// (a whole tree if it is a directory) so the new entry can be created.
pub(super) fn replace_existing(
    parent: &OwnedFd,
    name: &[u8],
    entry_path: &str,
) -> Result<(), LayerError> {
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
pub(super) fn remove_tree(parent: &OwnedFd, name: &[u8]) -> Result<(), Errno> {
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

pub(super) fn set_opaque(dir: &OwnedFd, entry_path: &str) -> Result<(), LayerError> {
    rustix::fs::fsetxattr(dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
        .map_err(|e| io_err(entry_path, format!("setting {OVERLAY_OPAQUE_XATTR}"), e))
}

/// Applies allowed xattrs. A filesystem without xattr support only loses
/// them (with a warning); any other failure fails the layer.
pub(super) fn set_xattrs(
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

pub(super) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

pub(super) fn is_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

// The field types of `Stat` differ between architectures.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
pub(super) fn inode_key(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}
