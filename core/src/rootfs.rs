//! Container root filesystems: overlayfs over the image layers with a
//! per-container upper dir (or, with the `vfs` storage driver, a plain copy
//! of the layers: see [`vfs`]), and the shared minimal rootfs of infra
//! (pause) containers.
//!
//! Layer order: [`mount_overlay`] takes the layers **top-most first**, which
//! is exactly what `ImageManager::layer_dirs` returns and what overlayfs's
//! `lowerdir=` expects (the leftmost lower dir is the top one).
//!
//! Many layers: `mount(2)` takes the options as one page (4096 bytes), which
//! ~40 layer paths of the image store fill. When the classic option string
//! does not fit, the overlay is built with the new mount API instead
//! (`fsopen` + one `fsconfig("lowerdir+", dir)` per layer, Linux >= 6.8), which
//! has no total length limit. On older kernels such an image fails with
//! [`RootfsError::TooManyLayers`] naming the layer count.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};
use sha2::{Digest, Sha256};

pub mod vfs;

use crate::config::StorageDriver;

/// A container's prepared root filesystem.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Lower dirs, top-most first (the order of overlayfs `lowerdir`);
    /// empty with the vfs driver.
    pub lower_dirs: Vec<PathBuf>,
    /// Where the container's writes land: the overlay's upper dir, or with
    /// vfs the copy itself (= `mount_point`).
    pub upper_dir: PathBuf,
    /// The overlay's work dir; empty with vfs.
    pub work_dir: PathBuf,
    /// The root the container sees (`<container_dir>/rootfs`).
    pub mount_point: PathBuf,
}

/// Prepares `container_dir/rootfs` from `layers_top_first` with `driver`:
/// an overlay mount, or a copy of the layers (vfs). Blocking.
///
/// With `idmap` (a `hostUsers: false` pod) the overlay is built over
/// id-mapped clones of the layers, so the image's files keep their owners
/// inside the pod (on-disk uid N shows as uid N in the container), and
/// mounted where [`Idmap::mount_point`] says. The upper dir is not
/// id-mapped: the container's writes land there with their host ids, which
/// only this container reads; it belongs to the pod's root.
pub fn prepare(
    driver: StorageDriver,
    layers_top_first: &[PathBuf],
    container_dir: &Path,
    idmap: Option<&Idmap>,
) -> Result<Overlay, RootfsError> {
    match (driver, idmap) {
        (StorageDriver::Overlay, None) => mount_overlay(layers_top_first, container_dir),
        (StorageDriver::Overlay, Some(idmap)) => {
            mount_overlay_idmapped(layers_top_first, container_dir, idmap)
        }
        (StorageDriver::Vfs, None) => copy_rootfs(layers_top_first, container_dir),
        (StorageDriver::Vfs, Some(_)) => Err(RootfsError::Invalid(
            "pods in a user namespace need the overlay storage driver".into(),
        )),
    }
}

/// How to build the rootfs of a container in a user namespace.
#[derive(Debug, Clone, Copy)]
pub struct Idmap<'a> {
    /// The pod's pinned user namespace.
    pub userns: &'a Path,
    /// Where to mount the overlay: a path the runtime can reach from
    /// inside the user namespace (the daemon's root is private).
    pub mount_point: &'a Path,
    /// Host uid and gid of the pod's root, owner of the upper dir.
    pub root_owner: (u32, u32),
}

/// Where the id-mapped clones of the layers are attached while the overlay
/// is built; empty again afterwards.
const IDMAPPED_LAYERS_DIR: &str = "idmapped-layers";

/// [`mount_overlay`] over id-mapped clones of the layers. The clones are
/// detached once the overlay is mounted (overlayfs keeps private copies of
/// its layers' mounts), so nothing but the overlay stays mounted.
fn mount_overlay_idmapped(
    layers_top_first: &[PathBuf],
    container_dir: &Path,
    idmap: &Idmap,
) -> Result<Overlay, RootfsError> {
    let upper = container_dir.join("upper");
    fs::create_dir_all(&upper).map_err(io_err(format!("creating {}", upper.display())))?;
    let (uid, gid) = idmap.root_owner;
    std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {}", upper.display())))?;
    let staging = container_dir.join(IDMAPPED_LAYERS_DIR);
    let clones: Vec<PathBuf> = (0..layers_top_first.len())
        .map(|i| staging.join(i.to_string()))
        .collect();
    let result = (|| {
        for (layer, clone) in layers_top_first.iter().zip(&clones) {
            crate::sandbox::userns::idmapped_clone(layer, clone, idmap.userns).map_err(|e| {
                RootfsError::Invalid(format!("id-mapping layer {}: {e}", layer.display()))
            })?;
        }
        mount_overlay_at(&clones, container_dir, idmap.mount_point)
    })();
    for clone in &clones {
        if let Err(e) = crate::sandbox::userns::remove_idmapped_clone(clone) {
            tracing::warn!(clone = %clone.display(), error = %e, "cannot detach an id-mapped layer clone");
        }
    }
    let _ = fs::remove_dir(&staging);
    let mut overlay = result?;
    overlay.lower_dirs = layers_top_first.to_vec();
    Ok(overlay)
}

/// The vfs driver: `container_dir/rootfs` becomes a copy of the layers. A
/// rootfs left over from an earlier try (a crash mid-copy) is replaced.
fn copy_rootfs(layers_top_first: &[PathBuf], container_dir: &Path) -> Result<Overlay, RootfsError> {
    let mount_point = container_dir.join("rootfs");
    if is_mount_point(&mount_point)? {
        return Err(RootfsError::AlreadyMounted(mount_point));
    }
    fs::create_dir_all(container_dir)
        .map_err(io_err(format!("creating {}", container_dir.display())))?;
    match fs::remove_dir_all(&mount_point) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("removing {}", mount_point.display()))(e)),
    }
    fs::create_dir(&mount_point).map_err(io_err(format!("creating {}", mount_point.display())))?;
    // The root of the copy is what overlayfs shows as the root too: a fresh
    // root-owned 0755 directory (there it is the upper dir).
    fs::set_permissions(&mount_point, fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("chmod {}", mount_point.display())))?;
    let started = std::time::Instant::now();
    vfs::copy_layers(layers_top_first, &mount_point)?;
    tracing::debug!(
        rootfs = %mount_point.display(),
        layers = layers_top_first.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "layers copied (vfs)"
    );
    Ok(Overlay {
        lower_dirs: Vec::new(),
        upper_dir: mount_point.clone(),
        work_dir: PathBuf::new(),
        mount_point,
    })
}

/// Why a rootfs operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid rootfs request: {0}")]
    Invalid(String),
    #[error("{0} is already a mount point")]
    AlreadyMounted(PathBuf),
    #[error(
        "image has {count} layers: their paths exceed the mount option limit and the kernel lacks \
         overlayfs lowerdir+ (Linux >= 6.8): {reason}"
    )]
    TooManyLayers { count: usize, reason: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RootfsError {
    let context = context.into();
    move |source| RootfsError::Io { context, source }
}

fn errno_err(context: impl Into<String>) -> impl FnOnce(Errno) -> RootfsError {
    let context = context.into();
    move |e| RootfsError::Io {
        context,
        source: io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

/// `mount(2)` copies at most one page of option data.
const MOUNT_DATA_MAX: usize = 4095;

/// Mounts an overlay of `layers_top_first` (top-most layer first, as
/// `ImageManager::layer_dirs` returns them) at `container_dir/rootfs`, with
/// `container_dir/upper` and `container_dir/work` created as needed. An image
/// without layers gets an empty lower dir (`container_dir/empty`): overlayfs
/// always needs one.
pub fn mount_overlay(
    layers_top_first: &[PathBuf],
    container_dir: &Path,
) -> Result<Overlay, RootfsError> {
    mount_overlay_at(
        layers_top_first,
        container_dir,
        &container_dir.join("rootfs"),
    )
}

/// [`mount_overlay`] with the overlay mounted at `mount_point`.
fn mount_overlay_at(
    layers_top_first: &[PathBuf],
    container_dir: &Path,
    mount_point: &Path,
) -> Result<Overlay, RootfsError> {
    for dir in layers_top_first {
        let s = dir.to_string_lossy();
        // overlayfs splits lowerdir on ':' and the option string on ','.
        if s.contains([':', ',']) || !dir.is_absolute() {
            return Err(RootfsError::Invalid(format!(
                "layer dir {s} must be absolute and contain no ':' or ','"
            )));
        }
    }
    let upper_dir = container_dir.join("upper");
    let work_dir = container_dir.join("work");
    let mount_point = mount_point.to_path_buf();
    for dir in [&upper_dir, &work_dir, &mount_point] {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    let mut lower_dirs = layers_top_first.to_vec();
    if lower_dirs.is_empty() {
        let empty = container_dir.join("empty");
        fs::create_dir_all(&empty).map_err(io_err(format!("creating {}", empty.display())))?;
        lower_dirs.push(empty);
    }
    if is_mount_point(&mount_point)? {
        return Err(RootfsError::AlreadyMounted(mount_point));
    }

    let lower = lower_dirs
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper_dir.display(),
        work_dir.display()
    );
    if data.len() <= MOUNT_DATA_MAX {
        let data = CString::new(data)
            .map_err(|_| RootfsError::Invalid("NUL byte in an overlay path".into()))?;
        rustix::mount::mount(
            "overlay",
            &mount_point,
            "overlay",
            MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(errno_err(format!(
            "mounting overlay at {}",
            mount_point.display()
        )))?;
    } else {
        mount_overlay_fsconfig(&lower_dirs, &upper_dir, &work_dir, &mount_point)?;
    }
    tracing::debug!(
        mount_point = %mount_point.display(),
        layers = lower_dirs.len(),
        "overlay mounted"
    );
    Ok(Overlay {
        lower_dirs,
        upper_dir,
        work_dir,
        mount_point,
    })
}

/// Builds the overlay with the new mount API, one lower dir per `fsconfig`
/// call, so the number of layers is not bounded by one page of options.
fn mount_overlay_fsconfig(
    lower_dirs: &[PathBuf],
    upper_dir: &Path,
    work_dir: &Path,
    mount_point: &Path,
) -> Result<(), RootfsError> {
    let count = lower_dirs.len();
    let fs_fd = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| {
        RootfsError::TooManyLayers {
            count,
            reason: format!("fsopen: {e}"),
        }
    })?;
    for dir in lower_dirs {
        rustix::mount::fsconfig_set_string(&fs_fd, "lowerdir+", dir).map_err(|e| {
            RootfsError::TooManyLayers {
                count,
                reason: format!("fsconfig lowerdir+ {}: {e}", dir.display()),
            }
        })?;
    }
    rustix::mount::fsconfig_set_string(&fs_fd, "upperdir", upper_dir).map_err(errno_err(
        format!("fsconfig upperdir {}", upper_dir.display()),
    ))?;
    rustix::mount::fsconfig_set_string(&fs_fd, "workdir", work_dir).map_err(errno_err(format!(
        "fsconfig workdir {}",
        work_dir.display()
    )))?;
    rustix::mount::fsconfig_create(&fs_fd).map_err(errno_err("creating the overlay superblock"))?;
    let mnt = rustix::mount::fsmount(
        &fs_fd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(errno_err("fsmount overlay"))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        mount_point,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(errno_err(format!(
        "attaching overlay at {}",
        mount_point.display()
    )))
}

/// Whether `path` is the root of a mount: its device differs from its
/// parent's, or it is the same inode as its parent (the filesystem root).
fn is_mount_point(path: &Path) -> Result<bool, RootfsError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
    };
    let parent = path.join("..");
    let pmeta = fs::metadata(&parent).map_err(io_err(format!("stat {}", parent.display())))?;
    Ok(meta.dev() != pmeta.dev() || meta.ino() == pmeta.ino())
}

/// Unmounts a rootfs. Not mounted (or missing) is fine, so the call is
/// idempotent; stacked mounts are all removed. A mount still busy after a
/// few tries is detached lazily as a last resort, so a leaked process in
/// the container cannot make removal fail forever.
///
/// Blocking (it sleeps between tries): async callers run it on the blocking
/// pool.
// The sleep is fine: every caller runs this off the executor (see above).
#[allow(clippy::disallowed_methods)]
pub fn unmount(mount_point: &Path) -> Result<(), RootfsError> {
    let mut busy_tries = 0;
    loop {
        match rustix::mount::unmount(mount_point, UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            // Not a mount point (any more) or gone: done.
            Err(Errno::INVAL) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::BUSY) if busy_tries < 5 => {
                busy_tries += 1;
                std::thread::sleep(Duration::from_millis(20 * busy_tries));
            }
            Err(Errno::BUSY) => {
                tracing::warn!(mount_point = %mount_point.display(), "rootfs busy, detaching lazily");
                rustix::mount::unmount(mount_point, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
                    .map_err(errno_err(format!("detaching {}", mount_point.display())))?;
            }
            Err(e) => {
                return Err(errno_err(format!("unmounting {}", mount_point.display()))(
                    e,
                ));
            }
        }
    }
}

/// Builds (once per catatonit binary) the minimal rootfs of infra containers
/// under `dir` and returns its path: `dir/rootfs-<hash of the binary>`
/// holding `/catatonit` and the mount points the infra spec uses
/// (`/proc`, `/dev`, `/sys`, `/etc/{hostname,resolv.conf,hosts}`).
///
/// The rootfs is shared by every pod and mounted read-only by the infra
/// spec, so nothing writes into it. A changed binary (package upgrade) gets
/// a new directory; old ones stay for pods that still run on them. The tree
/// is built in a temporary directory and renamed into place, so concurrent
/// callers and crashes never leave a half-built rootfs behind the name.
pub fn prepare_infra_rootfs(dir: &Path, catatonit: &Path) -> Result<PathBuf, RootfsError> {
    let binary = read_file(catatonit)?;
    let hash = hex::encode(Sha256::digest(&binary));
    let rootfs = dir.join(format!("rootfs-{}", &hash[..16]));
    if rootfs.join("catatonit").is_file() {
        return Ok(rootfs);
    }
    // The rootfs-* dirs in it stay 0755 (they are the infra containers' /),
    // but nobody else needs to reach them through the daemon's root.
    crate::perms::ensure_private_dir(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), &hash[..16]));
    let _ = fs::remove_dir_all(&tmp);
    let build = || -> Result<(), RootfsError> {
        for d in ["proc", "dev", "sys", "etc"] {
            let p = tmp.join(d);
            fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        for f in ["etc/hostname", "etc/resolv.conf", "etc/hosts"] {
            let p = tmp.join(f);
            fs::write(&p, b"").map_err(io_err(format!("creating {}", p.display())))?;
        }
        let bin = tmp.join("catatonit");
        fs::write(&bin, &binary).map_err(io_err(format!("writing {}", bin.display())))?;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", bin.display())))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", tmp.display())))?;
        Ok(())
    };
    if let Err(e) = build() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, &rootfs) {
        Ok(()) => Ok(rootfs),
        // Another caller won the race: theirs is complete, drop ours.
        Err(_) if rootfs.join("catatonit").is_file() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(rootfs)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(io_err(format!(
                "renaming {} to {}",
                tmp.display(),
                rootfs.display()
            ))(e))
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, RootfsError> {
    let mut f = fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(io_err(format!("reading {}", path.display())))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infra_rootfs_is_built_once_and_versioned_by_binary() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("catatonit");
        fs::write(&bin, b"#!fake binary v1").unwrap();
        let dir = tmp.path().join("infra-rootfs");
        let a = prepare_infra_rootfs(&dir, &bin).unwrap();
        assert_eq!(fs::read(a.join("catatonit")).unwrap(), b"#!fake binary v1");
        let mode = fs::metadata(a.join("catatonit"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        for d in ["proc", "dev", "sys", "etc"] {
            assert!(a.join(d).is_dir(), "{d}");
        }
        assert!(a.join("etc/resolv.conf").is_file());
        // Same binary: same directory, no rebuild.
        let marker = a.join("etc/marker");
        fs::write(&marker, b"x").unwrap();
        assert_eq!(prepare_infra_rootfs(&dir, &bin).unwrap(), a);
        assert!(marker.exists());
        // Upgraded binary: a new directory.
        fs::write(&bin, b"#!fake binary v2").unwrap();
        let b = prepare_infra_rootfs(&dir, &bin).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read(b.join("catatonit")).unwrap(), b"#!fake binary v2");
        // No temporary directories left behind.
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn infra_rootfs_missing_binary_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = prepare_infra_rootfs(tmp.path(), &tmp.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_layer_paths_are_rejected_before_mounting() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["/a:b", "/a,b", "relative"] {
            let err = mount_overlay(&[PathBuf::from(bad)], tmp.path()).unwrap_err();
            assert!(matches!(err, RootfsError::Invalid(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn unmount_of_unmounted_or_missing_dir_is_ok() {
        let tmp = tempfile::tempdir().unwrap();
        unmount(tmp.path()).unwrap();
        unmount(&tmp.path().join("missing")).unwrap();
    }

    fn mounted(path: &Path) -> bool {
        let canon = fs::canonicalize(path).unwrap();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap()))
    }

    #[test]
    fn overlay_mounts_layers_in_order_with_whiteouts_and_cleans_up() {
        if !crius_testkit::require_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let top = tmp.path().join("top");
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::create_dir_all(&top).unwrap();
        fs::write(base.join("etc/who"), b"base").unwrap();
        fs::write(base.join("gone"), b"deleted by top").unwrap();
        fs::write(base.join("kept"), b"kept").unwrap();
        fs::create_dir_all(top.join("etc")).unwrap();
        fs::write(top.join("etc/who"), b"top").unwrap();
        // Overlayfs whiteout: a 0/0 character device hides "gone".
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let cdir = tmp.path().join("ctr");
        let ov = mount_overlay(&[top.clone(), base.clone()], &cdir).unwrap();
        assert_eq!(ov.lower_dirs, vec![top.clone(), base.clone()]);
        assert!(mounted(&ov.mount_point));
        let root = &ov.mount_point;
        assert_eq!(
            fs::read(root.join("etc/who")).unwrap(),
            b"top",
            "top layer wins"
        );
        assert_eq!(fs::read(root.join("kept")).unwrap(), b"kept");
        assert!(!root.join("gone").exists(), "whiteout hides the lower file");
        // Writes land in the upper dir, never in a layer.
        fs::write(root.join("new"), b"written").unwrap();
        fs::write(root.join("kept"), b"changed").unwrap();
        assert_eq!(fs::read(ov.upper_dir.join("new")).unwrap(), b"written");
        assert_eq!(fs::read(ov.upper_dir.join("kept")).unwrap(), b"changed");
        assert_eq!(fs::read(base.join("kept")).unwrap(), b"kept");
        assert!(!top.join("new").exists() && !base.join("new").exists());
        // Mounting twice is refused rather than stacked.
        let again = mount_overlay(&[top.clone(), base.clone()], &cdir).unwrap_err();
        assert!(matches!(again, RootfsError::AlreadyMounted(_)), "{again}");
        unmount(root).unwrap();
        assert!(!mounted(root));
        assert!(!root.join("kept").exists());
        unmount(root).unwrap();
    }

    #[test]
    fn overlay_with_no_layers_and_with_many_long_layers() {
        if !crius_testkit::require_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let empty = mount_overlay(&[], &tmp.path().join("c0")).unwrap();
        fs::write(empty.mount_point.join("f"), b"x").unwrap();
        unmount(&empty.mount_point).unwrap();

        // 80 layers with 100+ character paths: well past one page of options.
        let layers: Vec<PathBuf> = (0..80)
            .map(|i| {
                let d = tmp
                    .path()
                    .join(format!("layers/{i:03}-{}", "x".repeat(100)));
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join(format!("f{i}")), format!("{i}")).unwrap();
                fs::write(d.join("which"), format!("{i}")).unwrap();
                d
            })
            .collect();
        let total: usize = layers.iter().map(|l| l.as_os_str().len() + 1).sum();
        assert!(total > 4096);
        match mount_overlay(&layers, &tmp.path().join("c1")) {
            Ok(ov) => {
                let root = ov.mount_point.clone();
                assert_eq!(fs::read_to_string(root.join("f0")).unwrap(), "0");
                assert_eq!(fs::read_to_string(root.join("f79")).unwrap(), "79");
                // The first listed layer is the top one.
                assert_eq!(fs::read_to_string(root.join("which")).unwrap(), "0");
                unmount(&root).unwrap();
                assert!(!mounted(&root));
            }
            Err(RootfsError::TooManyLayers { count, reason }) => {
                // Only acceptable on kernels without lowerdir+.
                assert_eq!(count, 80);
                eprintln!("kernel lacks lowerdir+: {reason}");
                let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
                let mut parts = release.split(|c: char| !c.is_ascii_digit());
                let major: u32 = parts.next().unwrap().parse().unwrap();
                let minor: u32 = parts.next().unwrap().parse().unwrap();
                assert!(
                    (major, minor) < (6, 8),
                    "kernel {release} should support lowerdir+"
                );
            }
            Err(e) => panic!("{e}"),
        }
    }
}
