//! Modes of the daemon's own directories and files.
//!
//! Everything crius stores is root's business: unpacked layers keep their
//! setuid binaries and device nodes, container configs hold the workloads'
//! secrets (env), records name every pod. So directories are created 0700
//! and files holding container config 0600; a directory is 0711 only where a
//! non-root client must pass through it to reach something it is allowed to
//! use (the CRI socket's group, see [`TRAVERSE_DIR`]).
//!
//! Directories from older versions (created 0755 under the default umask)
//! are tightened when the daemon creates or opens them again.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Only root may list, enter or change it.
pub const PRIVATE_DIR: u32 = 0o700;
/// Others may pass through (to a name they know) but not list it: the state
/// dir holds the CRI socket by default, which members of the socket's group
/// must reach; every directory inside it is [`PRIVATE_DIR`].
pub const TRAVERSE_DIR: u32 = 0o711;
/// Readable and writable by root only (container config, records).
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` (and any missing parent, each with `mode`) and makes sure
/// `dir` itself has exactly `mode`: an existing directory with other bits
/// (e.g. 0755 from an older version) is tightened.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", dir.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)?;
        }
        Err(e) => return Err(e),
    }
    set_mode(dir, mode)
}

/// [`ensure_dir`] with [`PRIVATE_DIR`].
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    ensure_dir(dir, PRIVATE_DIR)
}

/// Sets the permission bits of `path` to `mode` unless they already are
/// (the umask does not apply to chmod).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    if meta.mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Creates (or truncates) `path` as a [`PRIVATE_FILE`]; an existing file
/// with wider bits is tightened before anything is written to it.
pub fn create_private_file(path: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(path)?;
    if file.metadata()?.mode() & 0o7777 != PRIVATE_FILE {
        file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
    }
    Ok(file)
}

/// What [`secure_top_dir`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopDirCheck {
    /// Created, or already had the wanted mode.
    Ok,
    /// Existed with a wider mode (the old mode); now has the wanted one.
    Tightened { old_mode: u32 },
}

/// Why a top-level directory (`root`, `state_dir`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopDirError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is owned by uid {owner}, not by the daemon's uid {euid}: another user could \
         replace what crius keeps there; chown it to root or choose another directory"
    )]
    WrongOwner { path: String, owner: u32, euid: u32 },
}

/// Prepares one of the daemon's top-level directories: created with `mode`
/// if missing; refused if owned by another user; otherwise set to exactly
/// `mode` (a group/world-writable or world-readable one from an older
/// version or a careless `mkdir` is repaired, and reported so the caller
/// can warn).
pub fn secure_top_dir(dir: &Path, mode: u32) -> Result<TopDirCheck, TopDirError> {
    let io_err = |source| TopDirError::Io {
        path: dir.display().to_string(),
        source,
    };
    let existed = match fs::symlink_metadata(dir) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(e)),
    };
    if !existed {
        ensure_dir(dir, mode).map_err(io_err)?;
        return Ok(TopDirCheck::Ok);
    }
    // Follows a symlink on purpose: an admin may point root at another disk.
    let meta = fs::metadata(dir).map_err(io_err)?;
    if !meta.is_dir() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        )));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(TopDirError::WrongOwner {
            path: dir.display().to_string(),
            owner: meta.uid(),
            euid,
        });
    }
    let old_mode = meta.mode() & 0o7777;
    if old_mode == mode {
        return Ok(TopDirCheck::Ok);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err)?;
    Ok(TopDirCheck::Tightened { old_mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn ensure_dir_creates_every_missing_level_private_and_tightens_existing() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        ensure_private_dir(&deep).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode_of(&tmp.path().join(p)), 0o700, "{p}");
        }
        let old = tmp.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&old).unwrap();
        assert_eq!(mode_of(&old), 0o700);
        ensure_dir(&old, TRAVERSE_DIR).unwrap();
        assert_eq!(mode_of(&old), 0o711);
    }

    #[test]
    fn ensure_dir_refuses_a_file_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, b"x").unwrap();
        assert!(ensure_private_dir(&f).is_err());
    }

    #[test]
    fn private_file_is_0600_even_when_it_existed_wider() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("config.json");
        fs::write(&f, b"old").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let mut file = create_private_file(&f).unwrap();
        io::Write::write_all(&mut file, b"new").unwrap();
        drop(file);
        assert_eq!(mode_of(&f), 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"new");
        let g = tmp.path().join("fresh.json");
        drop(create_private_file(&g).unwrap());
        assert_eq!(mode_of(&g), 0o600);
    }

    #[test]
    fn top_dir_is_created_or_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("fresh/root");
        assert_eq!(secure_top_dir(&fresh, 0o700).unwrap(), TopDirCheck::Ok);
        assert_eq!(mode_of(&fresh), 0o700);
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            secure_top_dir(&open, 0o711).unwrap(),
            TopDirCheck::Tightened { old_mode: 0o777 }
        );
        assert_eq!(mode_of(&open), 0o711);
        assert_eq!(secure_top_dir(&open, 0o711).unwrap(), TopDirCheck::Ok);
    }

    #[test]
    fn top_dir_of_another_user_is_refused() {
        if !crius_testkit::require_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = secure_top_dir(&theirs, 0o700).unwrap_err();
        assert!(
            matches!(err, TopDirError::WrongOwner { owner: 65534, .. }),
            "{err}"
        );
    }
}
