//! Persistent, named network namespaces.
//!
//! A pod's network namespace must outlive any process in it (the pause
//! process can die and be restarted, CNI DEL must be able to run after it is
//! gone), so it is pinned by bind-mounting the namespace file onto a regular
//! file, `<dir>/<name>`, the way `ip netns add` does. The directory itself is
//! made a shared mount point so the pin propagates into mount namespaces that
//! are created later (containers that bind-mount the directory see the netns
//! files as real namespaces, not empty files).
//!
//! The namespace is created by `unshare(CLONE_NEWNET)` in a short-lived
//! dedicated thread: only that thread changes namespace and it exits
//! afterwards, so no daemon or tokio worker thread ever ends up in a pod's
//! namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::path_io::PathIoError;

/// `f_type` of the nsfs pseudo filesystem (`NSFS_MAGIC` in linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Errors from network namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("network namespace {path} already exists")]
    AlreadyExists { path: PathBuf },
    #[error("{path} is not a network namespace")]
    NotANetns { path: PathBuf },
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error("the thread working in the network namespace panicked")]
    ThreadPanicked,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NetnsError {
    PathIoError::of(op, path)
}

/// A pinned network namespace, identified by the path of its bind mount.
///
/// Dropping a `NetNs` does not remove the namespace; call [`NetNs::remove`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
    /// Inode of the namespace (what `/proc/<pid>/ns/net` links to), for logs
    /// and for comparing namespaces.
    inode: u64,
}

/// Serialises the "make the directory a shared mount point" step so two
/// concurrent creates never stack two bind mounts of the directory onto
/// itself.
static DIR_SETUP: Mutex<()> = Mutex::new(());

impl NetNs {
    /// Creates a new network namespace pinned at `<dir>/<name>`.
    ///
    /// `dir` is created if needed and turned into a shared mount point (bound
    /// onto itself first when it is not a mount point yet). Fails with
    /// [`NetnsError::AlreadyExists`] when `<dir>/<name>` exists; nothing is
    /// left behind on failure.
    pub fn create(dir: &Path, name: &str) -> Result<NetNs, NetnsError> {
        let path = reserve_pin(dir, name)?;
        let target = path.clone();
        let pinned = std::thread::Builder::new()
            .name("crius-netns".into())
            .spawn(move || -> Result<(), NetnsError> {
                // Only this thread moves to the new namespace; it ends right
                // after the bind mount, which keeps the namespace alive.
                unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                    op: "unshare(CLONE_NEWNET)",
                    source,
                })?;
                bind_pin(Path::new("/proc/thread-self/ns/net"), &target)
            })
            .map_err(io_err("spawn namespace thread", &path))?
            .join()
            .unwrap_or(Err(NetnsError::ThreadPanicked));
        finish_pin(path, pinned)
    }

    /// Pins the existing network namespace `source` (a `/proc/<pid>/ns/net`
    /// of a process that made it) at `<dir>/<name>`, with the same directory
    /// setup and failure cleanup as [`NetNs::create`]. Used for namespaces
    /// that must be owned by a pod's user namespace.
    pub fn pin_existing(dir: &Path, name: &str, source: &Path) -> Result<NetNs, NetnsError> {
        let path = reserve_pin(dir, name)?;
        let pinned = bind_pin(source, &path);
        finish_pin(path, pinned)
    }

    /// Opens an existing pinned namespace (after a daemon restart), checking
    /// that `path` really is a mounted network namespace.
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        let file = File::open(path).map_err(io_err("open", path))?;
        if !is_nsfs(&file) {
            return Err(NetnsError::NotANetns {
                path: path.to_path_buf(),
            });
        }
        let inode = file.metadata().map_err(io_err("stat", path))?.ino();
        // Other namespace types (mnt, uts, ...) are on nsfs too.
        check_net_type(path, file)?;
        Ok(NetNs {
            path: path.to_path_buf(),
            inode,
        })
    }

    /// Where the namespace is pinned (what CNI gets as `CNI_NETNS` and the
    /// OCI spec as the network namespace path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Inode number of the namespace.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Runs `f` on a fresh thread that has joined this namespace, so the
    /// caller's thread never changes namespace. Sockets created by `f` live
    /// in the pod's namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = File::open(&self.path).map_err(io_err("open", &self.path))?;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T, NetnsError> {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Sys {
                        op: "setns(CLONE_NEWNET)",
                        source,
                    }
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or(Err(NetnsError::ThreadPanicked))
        })
    }

    /// Sets the loopback interface up inside the namespace (the kernel then
    /// adds 127.0.0.1/8 and ::1 itself). This replaces the CNI `loopback`
    /// plugin, the way CRI-O brings up `lo` outside the configured network.
    pub fn bring_up_loopback(&self) -> Result<(), NetnsError> {
        self.run(set_lo_up)?
    }

    /// Unmounts and deletes the pin. The namespace itself goes away once no
    /// process is left in it.
    pub fn remove(self) -> Result<(), NetnsError> {
        remove_path(&self.path)
    }
}

/// Validates `name`, prepares `dir` and creates the empty pin file
/// `<dir>/<name>`. O_EXCL makes a concurrent create of the same name fail
/// instead of both mounting onto one file.
fn reserve_pin(dir: &Path, name: &str) -> Result<PathBuf, NetnsError> {
    validate_name(name)?;
    crate::perms::ensure_private_dir(dir).map_err(io_err("create directory", dir))?;
    make_shared_mount_point(dir)?;
    let path = dir.join(name);
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => Ok(path),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(NetnsError::AlreadyExists { path })
        }
        Err(e) => Err(io_err("create", &path)(e)),
    }
}

/// Bind-mounts the namespace file `source` onto the pin file `target`.
fn bind_pin(source: &Path, target: &Path) -> Result<(), NetnsError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NetnsError::Sys {
        op: "bind-mount the new network namespace",
        source,
    })
}

/// Checks the pin made at `path`; removes it on any failure.
fn finish_pin(path: PathBuf, pinned: Result<(), NetnsError>) -> Result<NetNs, NetnsError> {
    if let Err(e) = pinned {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    match NetNs::open(&path) {
        Ok(ns) => {
            tracing::debug!(path = %ns.path.display(), inode = ns.inode, "created network namespace");
            Ok(ns)
        }
        Err(e) => {
            let _ = remove_path(&path);
            Err(e)
        }
    }
}

/// Unmounts (lazily) and unlinks a namespace pin. A missing path or a file
/// that is not mounted any more is not an error, so this is idempotent.
pub fn remove_path(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (already unmounted); ENOENT: gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(source) => {
            return Err(NetnsError::Sys {
                op: "umount network namespace",
                source,
            });
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", path)(e)),
    }
    tracing::debug!(path = %path.display(), "removed network namespace");
    Ok(())
}

/// Whether `path` is a mounted network namespace.
pub fn is_netns(path: &Path) -> bool {
    NetNs::open(path).is_ok()
}

fn validate_name(name: &str) -> Result<(), NetnsError> {
    let bad = |reason| {
        Err(NetnsError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("is a relative path component");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("contains '/' or NUL");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    Ok(())
}

fn is_nsfs(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|st| st.f_type == NSFS_MAGIC)
}

/// Confirms the nsfs file is a *network* namespace: setns() with
/// CLONE_NEWNET fails with EINVAL for any other namespace type. Done on a
/// throwaway thread because on success the thread switches namespace.
fn check_net_type(path: &Path, file: File) -> Result<(), NetnsError> {
    let ok = std::thread::scope(|s| {
        s.spawn(move || setns(file.as_fd(), CloneFlags::CLONE_NEWNET).is_ok())
            .join()
            .unwrap_or(false)
    });
    if ok {
        Ok(())
    } else {
        Err(NetnsError::NotANetns {
            path: path.to_path_buf(),
        })
    }
}

/// Makes `dir` a mount point with shared propagation, like `ip netns` does
/// for /run/netns.
fn make_shared_mount_point(dir: &Path) -> Result<(), NetnsError> {
    let _guard = DIR_SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => return Ok(()),
        // EINVAL: not a mount point yet.
        Err(Errno::EINVAL) => {}
        Err(source) => {
            return Err(NetnsError::Sys {
                op: "make the netns directory shared",
                source,
            });
        }
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|source| NetnsError::Sys {
        op: "bind the netns directory onto itself",
        source,
    })?;
    make_shared().map_err(|source| NetnsError::Sys {
        op: "make the netns directory shared",
        source,
    })
}

/// SIOCGIFFLAGS/SIOCSIFFLAGS on `lo`, from the calling thread's namespace.
fn set_lo_up() -> Result<(), NetnsError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    // SAFETY: plain socket(2) call with constant arguments; the result is
    // checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(NetnsError::Sys {
            op: "socket for loopback setup",
            source: Errno::last(),
        });
    }
    // SAFETY: `raw` is a freshly created descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is a valid socket and `req` a valid ifreq naming "lo";
    // SIOCGIFFLAGS writes only ifr_flags inside it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(NetnsError::Sys {
            op: "SIOCGIFFLAGS lo",
            source: Errno::last(),
        });
    }
    // SAFETY: ifr_ifru is a union; SIOCGIFFLAGS just filled its flags member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP as libc::c_short);
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(NetnsError::Sys {
            op: "SIOCSIFFLAGS lo",
            source: Errno::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::testutil::{is_mounted, require_root};

    #[test]
    fn rejects_bad_names() {
        let dir = Path::new("/nonexistent-crius-dir");
        for name in ["", ".", "..", "a/b", "x\0y"] {
            assert!(
                matches!(
                    NetNs::create(dir, name),
                    Err(NetnsError::InvalidName { .. })
                ),
                "{name:?} accepted"
            );
        }
        assert!(
            !dir.exists(),
            "validation must happen before touching the filesystem"
        );
    }

    #[test]
    fn open_rejects_plain_file_and_other_ns_types() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("plain");
        fs::write(&f, b"").unwrap();
        assert!(matches!(NetNs::open(&f), Err(NetnsError::NotANetns { .. })));
        assert!(matches!(
            NetNs::open(&tmp.path().join("missing")),
            Err(NetnsError::Io(_))
        ));
        // A UTS namespace file is on nsfs but is not a net namespace.
        if Path::new("/proc/self/ns/uts").exists() {
            assert!(matches!(
                NetNs::open(Path::new("/proc/self/ns/uts")),
                Err(NetnsError::NotANetns { .. })
            ));
        }
    }

    #[test]
    fn remove_path_is_idempotent_on_missing() {
        let tmp = tempfile::tempdir().unwrap();
        remove_path(&tmp.path().join("nothing")).unwrap();
        // umount2 needs CAP_SYS_ADMIN even to learn that nothing is mounted.
        if !require_root() {
            return;
        }
        let f = tmp.path().join("unmounted");
        fs::write(&f, b"").unwrap();
        remove_path(&f).unwrap();
        assert!(!f.exists());
    }

    #[test]
    fn create_open_run_remove() {
        if !require_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("netns");
        let ns = NetNs::create(&dir, "pod-a").unwrap();
        let path = ns.path().to_path_buf();
        assert_eq!(path, dir.join("pod-a"));
        assert!(is_mounted(&path), "pin not in mountinfo");

        let own = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(ns.inode(), own, "new namespace must differ from ours");
        assert_eq!(fs::metadata(&path).unwrap().ino(), ns.inode());

        // Creating the same name again fails and leaves the first intact.
        assert!(matches!(
            NetNs::create(&dir, "pod-a"),
            Err(NetnsError::AlreadyExists { .. })
        ));
        let reopened = NetNs::open(&path).unwrap();
        assert_eq!(reopened, ns);

        // Code run inside sees the namespace, and our thread stays put.
        let inside = ns
            .run(|| fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
            .unwrap();
        assert_eq!(inside, ns.inode());
        assert_eq!(fs::metadata("/proc/thread-self/ns/net").unwrap().ino(), own);

        // Loopback: down in a fresh namespace, up afterwards.
        // /sys/class/net shows the namespace sysfs was mounted from, so ask
        // the kernel with an ioctl from inside instead.
        let lo_flags = |ns: &NetNs| ns.run(lo_flags_here).unwrap();
        assert_eq!(lo_flags(&ns) & libc::IFF_UP, 0, "lo starts down");
        ns.bring_up_loopback().unwrap();
        assert_ne!(lo_flags(&ns) & libc::IFF_UP, 0, "lo is up");

        // A second namespace is distinct.
        let other = NetNs::create(&dir, "pod-b").unwrap();
        assert_ne!(other.inode(), ns.inode());
        other.remove().unwrap();

        ns.remove().unwrap();
        assert!(!path.exists());
        assert!(!is_mounted(&path), "pin still mounted");
        remove_path(&path).unwrap();

        // Leave no mount of the directory behind.
        umount2(&dir, MntFlags::MNT_DETACH).unwrap();
        assert!(!is_mounted(&dir));
    }

    fn lo_flags_here() -> i32 {
        // SAFETY: see set_lo_up; same calls, read-only.
        unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(s >= 0);
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name[0] = b'l' as libc::c_char;
            req.ifr_name[1] = b'o' as libc::c_char;
            assert!(libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) >= 0);
            libc::close(s);
            req.ifr_ifru.ifru_flags as i32
        }
    }
}
