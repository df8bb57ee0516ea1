//! The `vfs` storage driver: a container's root filesystem as a plain
//! directory holding a full copy of its image's layers, for hosts where
//! overlayfs cannot be mounted (nested inside another overlay, some
//! container-in-container setups). Slower to create and bigger on disk than
//! overlayfs, and the copy *is* the writable layer.
//!
//! The layers in the store are in overlayfs format (see `image::layer`): a
//! 0/0 character device is a whiteout, `trusted.overlay.opaque=y` on a
//! directory hides everything below it. [`copy_layers`] applies them bottom
//! up so the result is what the overlay mount would show:
//! - a whiteout removes whatever lower layers put at its path;
//! - an opaque directory replaces the lower directory's contents;
//! - a directory over a non-directory (or the reverse) replaces it;
//! - anything else replaces the lower entry, keeping hardlinks that share an
//!   inode inside one layer.
//!
//! Safety of the paths: the destination is a fresh directory nobody else
//! writes to while it is built (no container runs yet). Every entry is
//! looked at with `lstat` and replaced rather than followed, and the walk
//! goes parents first, so each parent of a path it writes is a real
//! directory this walk made or checked: a symlink a layer put at `etc`
//! (`etc -> /`) is removed before a higher layer's `etc/passwd` is written,
//! never written through.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::{RootfsError, errno_err, io_err};

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Copies `layers_top_first` (the order `ImageManager::layer_dirs` returns)
/// into the empty directory `dest`, bottom layer first, applying whiteouts.
/// Blocking: callers run it on the blocking pool.
pub fn copy_layers(layers_top_first: &[PathBuf], dest: &Path) -> Result<(), RootfsError> {
    for layer in layers_top_first.iter().rev() {
        let mut links = HashMap::new();
        merge_dir(layer, dest, &mut links)?;
    }
    Ok(())
}

/// The inodes of the current layer already copied (hardlinked files): the
/// source's (device, inode) → where its first copy went.
type Links = HashMap<(u64, u64), PathBuf>;

fn merge_dir(src: &Path, dst: &Path, links: &mut Links) -> Result<(), RootfsError> {
    let entries = fs::read_dir(src).map_err(io_err(format!("reading {}", src.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("reading {}", src.display())))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta =
            fs::symlink_metadata(&from).map_err(io_err(format!("stat {}", from.display())))?;
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            // A whiteout: the path is deleted in this layer.
            remove_any(&to)?;
            continue;
        }
        if kind.is_dir() {
            match fs::symlink_metadata(&to) {
                Ok(existing) if existing.is_dir() => {
                    if is_opaque(&from) {
                        clear_dir(&to)?;
                    }
                }
                Ok(_) => {
                    remove_any(&to)?;
                    make_dir(&to)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&to)?,
                Err(e) => return Err(io_err(format!("stat {}", to.display()))(e)),
            }
            merge_dir(&from, &to, links)?;
            // After the children, so their creation does not change the
            // directory's times again.
            copy_metadata(&from, &to, &meta)?;
            continue;
        }
        remove_any(&to)?;
        if kind.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    fs::hard_link(first, &to).map_err(io_err(format!(
                        "linking {} to {}",
                        to.display(),
                        first.display()
                    )))?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), to.clone());
            }
            copy_file(&from, &to)?;
        } else if kind.is_symlink() {
            let target =
                fs::read_link(&from).map_err(io_err(format!("reading link {}", from.display())))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(io_err(format!("creating symlink {}", to.display())))?;
        } else if kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
            let file_type = if kind.is_fifo() {
                FileType::Fifo
            } else if kind.is_char_device() {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            rustix::fs::mknodat(
                CWD,
                &to,
                file_type,
                Mode::from_raw_mode(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(errno_err(format!("mknod {}", to.display())))?;
        } else {
            // Sockets: the unpacker never makes them; nothing to copy.
            continue;
        }
        copy_metadata(&from, &to, &meta)?;
    }
    Ok(())
}

fn make_dir(path: &Path) -> Result<(), RootfsError> {
    fs::create_dir(path).map_err(io_err(format!("creating {}", path.display())))
}

fn copy_file(from: &Path, to: &Path) -> Result<(), RootfsError> {
    let mut src = fs::File::open(from).map_err(io_err(format!("opening {}", from.display())))?;
    // create_new is O_CREAT|O_EXCL: it never follows a symlink at `to`.
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_err(format!("creating {}", to.display())))?;
    // std's copy uses copy_file_range, which reflinks or copies in the kernel.
    io::copy(&mut src, &mut dst).map_err(io_err(format!(
        "copying {} to {}",
        from.display(),
        to.display()
    )))?;
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 8];
    OPAQUE_XATTRS.iter().any(
        |name| matches!(rustix::fs::lgetxattr(dir, *name, &mut buf), Ok(n) if &buf[..n] == b"y"),
    )
}

/// Owner, then mode (chown clears set-id bits), xattrs and times; never
/// following a symlink.
fn copy_metadata(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), RootfsError> {
    rustix::fs::chownat(
        CWD,
        to,
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(errno_err(format!("chown {}", to.display())))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err(format!("chmod {}", to.display())))?;
    }
    copy_xattrs(from, to)?;
    let times = Timestamps {
        last_access: timespec(meta.atime(), meta.atime_nsec()),
        last_modification: timespec(meta.mtime(), meta.mtime_nsec()),
    };
    rustix::fs::utimensat(CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno_err(format!("setting times of {}", to.display())))
}

fn timespec(secs: i64, nanos: i64) -> Timespec {
    Timespec {
        tv_sec: secs,
        tv_nsec: nanos as _,
    }
}

/// The xattrs the unpacker keeps (file capabilities and `user.*`), never
/// overlayfs' own markers, which mean nothing outside an overlay.
fn copy_xattrs(from: &Path, to: &Path) -> Result<(), RootfsError> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::llistxattr(from, &mut names) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(Errno::RANGE) => {
            names = vec![0u8; 64 * 1024];
            rustix::fs::llistxattr(from, &mut names)
                .map_err(errno_err(format!("listing xattrs of {}", from.display())))?
        }
        Err(e) => {
            return Err(errno_err(format!("listing xattrs of {}", from.display()))(
                e,
            ));
        }
    };
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !crate::image::layer::xattr_allowed(name) {
            continue;
        }
        let cname = CString::new(name).expect("split at NUL");
        let mut value = vec![0u8; 64 * 1024];
        let n = rustix::fs::lgetxattr(from, cname.as_c_str(), &mut value).map_err(errno_err(
            format!(
                "reading xattr {} of {}",
                String::from_utf8_lossy(name),
                from.display()
            ),
        ))?;
        rustix::fs::lsetxattr(to, cname.as_c_str(), &value[..n], XattrFlags::empty()).map_err(
            errno_err(format!(
                "setting xattr {} on {}",
                String::from_utf8_lossy(name),
                to.display()
            )),
        )?;
    }
    Ok(())
}

/// Removes whatever is at `path` (a directory with its contents); nothing
/// there is fine.
fn remove_any(path: &Path) -> Result<(), RootfsError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).map_err(io_err(format!("removing {}", path.display())))
        }
        Ok(_) => fs::remove_file(path).map_err(io_err(format!("removing {}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("stat {}", path.display()))(e)),
    }
}

fn clear_dir(dir: &Path) -> Result<(), RootfsError> {
    let entries = fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
        remove_any(&entry.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiteout(path: &Path) {
        rustix::fs::mknodat(
            CWD,
            path,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn layers_merge_like_the_overlay_would_show_them() {
        if !crius_testkit::require_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let mid = tmp.path().join("mid");
        let top = tmp.path().join("top");
        for d in [&base, &mid, &top] {
            fs::create_dir_all(d).unwrap();
        }
        // base: files, a dir to make opaque, a symlink dir, a setuid binary,
        // two hardlinked names.
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::write(base.join("etc/who"), b"base").unwrap();
        fs::write(base.join("etc/gone"), b"whited out").unwrap();
        fs::create_dir_all(base.join("opaque/sub")).unwrap();
        fs::write(base.join("opaque/old"), b"hidden by mid").unwrap();
        std::os::unix::fs::symlink("/", base.join("escape")).unwrap();
        fs::write(base.join("suid"), b"#!").unwrap();
        rustix::fs::chownat(
            CWD,
            base.join("suid"),
            Some(rustix::fs::Uid::from_raw(1000)),
            Some(rustix::fs::Gid::from_raw(1000)),
            AtFlags::empty(),
        )
        .unwrap();
        fs::set_permissions(base.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(base.join("link-a"), b"shared").unwrap();
        fs::hard_link(base.join("link-a"), base.join("link-b")).unwrap();
        // mid: a whiteout, an opaque dir, a dir where base has a symlink.
        fs::create_dir_all(mid.join("etc")).unwrap();
        whiteout(&mid.join("etc/gone"));
        fs::create_dir_all(mid.join("opaque")).unwrap();
        rustix::fs::lsetxattr(
            mid.join("opaque"),
            "trusted.overlay.opaque",
            b"y",
            XattrFlags::empty(),
        )
        .unwrap();
        fs::write(mid.join("opaque/new"), b"mid").unwrap();
        fs::create_dir_all(mid.join("escape")).unwrap();
        fs::write(mid.join("escape/inside"), b"not on the host").unwrap();
        // top: a file replacing a lower one, a whiteout of a whole dir.
        fs::create_dir_all(top.join("etc")).unwrap();
        fs::write(top.join("etc/who"), b"top").unwrap();
        whiteout(&top.join("opaque"));
        fs::create_dir_all(top.join("opaque2")).unwrap();

        let dest = tmp.path().join("rootfs");
        fs::create_dir(&dest).unwrap();
        copy_layers(&[top.clone(), mid.clone(), base.clone()], &dest).unwrap();

        assert_eq!(fs::read(dest.join("etc/who")).unwrap(), b"top");
        assert!(!dest.join("etc/gone").exists());
        assert!(!dest.join("opaque").exists(), "whited out by top");
        assert!(dest.join("opaque2").is_dir());
        let escape = fs::symlink_metadata(dest.join("escape")).unwrap();
        assert!(escape.is_dir(), "the directory replaced the symlink");
        assert_eq!(
            fs::read(dest.join("escape/inside")).unwrap(),
            b"not on the host"
        );
        assert!(!Path::new("/inside").exists());
        let suid = fs::metadata(dest.join("suid")).unwrap();
        assert_eq!((suid.uid(), suid.gid()), (1000, 1000));
        assert_eq!(
            suid.mode() & 0o7777,
            0o4755,
            "set-id bits survive the chown"
        );
        let (a, b) = (
            fs::metadata(dest.join("link-a")).unwrap(),
            fs::metadata(dest.join("link-b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "hardlinks stay one inode");
        // No overlayfs marker in the copy; the layers are untouched.
        let mut buf = [0u8; 8];
        assert!(
            rustix::fs::lgetxattr(dest.join("etc"), "trusted.overlay.opaque", &mut buf).is_err()
        );
        assert_eq!(fs::read(base.join("etc/who")).unwrap(), b"base");
        assert!(base.join("etc/gone").exists());
    }

    #[test]
    fn opaque_dir_replaces_the_lower_contents() {
        if !crius_testkit::require_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let top = tmp.path().join("top");
        fs::create_dir_all(base.join("d/deep")).unwrap();
        fs::write(base.join("d/old"), b"old").unwrap();
        fs::create_dir_all(top.join("d")).unwrap();
        rustix::fs::lsetxattr(
            top.join("d"),
            "trusted.overlay.opaque",
            b"y",
            XattrFlags::empty(),
        )
        .unwrap();
        fs::write(top.join("d/new"), b"new").unwrap();
        let dest = tmp.path().join("rootfs");
        fs::create_dir(&dest).unwrap();
        copy_layers(&[top, base], &dest).unwrap();
        let names: Vec<_> = fs::read_dir(dest.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["new".to_string()]);
    }
}
