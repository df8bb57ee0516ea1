//! Pod user namespaces (`hostUsers: false`).
//!
//! A container in a user namespace can only join the pod's network
//! namespace when that network namespace is *owned* by the same user
//! namespace: runtimes join the user namespace first, and from then on the
//! process has no capabilities over namespaces of the host's user
//! namespace (runc 1.1 fails with "setns into net namespace: Operation not
//! permitted"). So crius makes and pins both itself: a forked helper
//! unshares `CLONE_NEWUSER | CLONE_NEWNET` at once (the new network
//! namespace is then owned by the new user namespace), the daemon writes
//! the id maps from outside, bind-mounts both namespace files and lets the
//! helper exit. Containers join both by path, and the namespaces the
//! runtime creates for them (mount, pid, ipc, uts) are owned by the pod's
//! user namespace too, which is what mounting `/proc`, `/sys` and
//! `/dev/mqueue` inside needs.
//!
//! Files keep their on-disk owners: the image layers and the volumes that
//! come with id mappings are seen through id-mapped mounts
//! ([`idmapped_clone`]), so a file owned by host uid 0 shows as uid 0 in
//! the container.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork, pipe2};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use serde::{Deserialize, Serialize};

use super::netns::{self, NetNs, NetnsError};
use crate::path_io::PathIoError;

/// The most extents `/proc/<pid>/uid_map` takes (Linux >= 4.15).
const MAX_EXTENTS: usize = 340;

/// Errors of pod user namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// The requested mappings cannot be used (the caller's mistake).
    #[error("invalid user namespace mappings: {0}")]
    Invalid(String),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> UsernsError {
    move |source| UsernsError::Sys { op, source }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UsernsError {
    let f = PathIoError::of(op, path);
    move |e| UsernsError::Io(f(e))
}

/// One contiguous range of ids: `container_id..container_id+length` in the
/// pod are `host_id..host_id+length` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

/// A pod's uid and gid mappings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMappings {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

impl IdMappings {
    /// Checks CRI mappings: both lists given, each range non-empty and not
    /// overflowing, no two ranges overlapping on either side, container id
    /// 0 mapped (runtimes chown the container's devices to it), and never
    /// the host's root: a pod that maps host uid 0 would get root's files.
    pub fn from_cri(
        uids: &[crius_proto::cri::IdMapping],
        gids: &[crius_proto::cri::IdMapping],
    ) -> Result<Self, UsernsError> {
        let convert = |kind: &str, list: &[crius_proto::cri::IdMapping]| {
            let ranges: Vec<IdRange> = list
                .iter()
                .map(|m| IdRange {
                    container_id: m.container_id,
                    host_id: m.host_id,
                    length: m.length,
                })
                .collect();
            check_ranges(kind, &ranges).map(|()| ranges)
        };
        Ok(Self {
            uids: convert("uid", uids)?,
            gids: convert("gid", gids)?,
        })
    }

    /// Host uid and gid of the pod's root (container id 0, which
    /// [`IdMappings::from_cri`] makes sure is mapped).
    pub fn host_root(&self) -> (u32, u32) {
        let host = |ranges: &[IdRange]| {
            ranges
                .iter()
                .find(|r| r.container_id == 0)
                .map(|r| r.host_id)
                .unwrap_or(u32::MAX)
        };
        (host(&self.uids), host(&self.gids))
    }

    /// Whether these are the same mappings as `uids`/`gids` of a CRI mount.
    pub fn same_as_cri(
        &self,
        uids: &[crius_proto::cri::IdMapping],
        gids: &[crius_proto::cri::IdMapping],
    ) -> bool {
        let same = |ours: &[IdRange], theirs: &[crius_proto::cri::IdMapping]| {
            ours.len() == theirs.len()
                && ours.iter().zip(theirs).all(|(a, b)| {
                    a.container_id == b.container_id
                        && a.host_id == b.host_id
                        && a.length == b.length
                })
        };
        same(&self.uids, uids) && same(&self.gids, gids)
    }
}

fn check_ranges(kind: &str, ranges: &[IdRange]) -> Result<(), UsernsError> {
    let bad = |msg: String| Err(UsernsError::Invalid(format!("{kind} mappings: {msg}")));
    if ranges.is_empty() {
        return bad("none given".into());
    }
    if ranges.len() > MAX_EXTENTS {
        return bad(format!("{} ranges, at most {MAX_EXTENTS}", ranges.len()));
    }
    let end = |start: u32, len: u32| u64::from(start) + u64::from(len);
    for r in ranges {
        if r.length == 0 {
            return bad("a range of length 0".into());
        }
        if end(r.container_id, r.length) > u64::from(u32::MAX)
            || end(r.host_id, r.length) > u64::from(u32::MAX)
        {
            return bad(format!(
                "range {} {} {} overflows 32 bits",
                r.container_id, r.host_id, r.length
            ));
        }
        if r.host_id == 0 {
            return bad("the host's id 0 must not be mapped into a pod".into());
        }
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            let overlap =
                |x: u32, y: u32| u64::from(x) < end(y, b.length) && u64::from(y) < end(x, a.length);
            if overlap(a.container_id, b.container_id) || overlap(a.host_id, b.host_id) {
                return bad("two ranges overlap".into());
            }
        }
    }
    if !ranges.iter().any(|r| r.container_id == 0) {
        return bad("container id 0 is not mapped".into());
    }
    Ok(())
}

/// The `/proc/<pid>/{uid,gid}_map` text of `ranges`.
fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container_id, r.host_id, r.length))
        .collect()
}

/// Creates a user namespace with `maps` and a network namespace owned by
/// it, pinned at `<userns_dir>/<name>` and `<netns_dir>/<name>`. Nothing is
/// left behind on failure. Blocking (it forks and waits): async callers run
/// it on the blocking pool.
pub fn create_pod_namespaces(
    userns_dir: &Path,
    netns_dir: &Path,
    name: &str,
    maps: &IdMappings,
) -> Result<(PathBuf, NetNs), UsernsError> {
    crate::perms::ensure_private_dir(userns_dir).map_err(io_err("create directory", userns_dir))?;
    let userns_pin = userns_dir.join(name);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(UsernsError::Invalid(format!("bad namespace name {name:?}")));
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&userns_pin)
        .map_err(io_err("create", &userns_pin))?;
    let helper = match NamespaceHelper::spawn() {
        Ok(h) => h,
        Err(e) => {
            let _ = fs::remove_file(&userns_pin);
            return Err(e);
        }
    };
    let pinned = pin_from_helper(&helper, &userns_pin, netns_dir, name, maps);
    helper.finish();
    match pinned {
        Ok(netns) => Ok((userns_pin, netns)),
        Err(e) => {
            let _ = remove_path(&userns_pin);
            Err(e)
        }
    }
}

fn pin_from_helper(
    helper: &NamespaceHelper,
    userns_pin: &Path,
    netns_dir: &Path,
    name: &str,
    maps: &IdMappings,
) -> Result<NetNs, UsernsError> {
    let proc_dir = PathBuf::from(format!("/proc/{}", helper.pid));
    for (file, ranges) in [("uid_map", &maps.uids), ("gid_map", &maps.gids)] {
        let path = proc_dir.join(file);
        fs::write(&path, map_text(ranges)).map_err(io_err("write", &path))?;
    }
    mount(
        Some(&proc_dir.join("ns/user")),
        userns_pin,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("bind-mount the pod's user namespace"))?;
    Ok(NetNs::pin_existing(
        netns_dir,
        name,
        &proc_dir.join("ns/net"),
    )?)
}

/// A forked child sitting in fresh user and network namespaces until the
/// daemon has pinned them.
struct NamespaceHelper {
    pid: Pid,
    /// Closing it lets the child exit.
    go: Option<OwnedFd>,
}

impl NamespaceHelper {
    fn spawn() -> Result<Self, UsernsError> {
        let (ready_r, ready_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
        let (go_r, go_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
        // SAFETY: `unshare(CLONE_NEWUSER)` needs a single-threaded process,
        // hence the fork. The child only makes async-signal-safe system
        // calls through `libc` (close, prctl, unshare, write, read, _exit)
        // and allocates nothing, which is all a child of a multi-threaded
        // process may do.
        match unsafe { fork() }.map_err(sys("fork the namespace helper"))? {
            ForkResult::Child => {
                let ok: u8 = 1;
                let failed: u8 = 0;
                let mut byte = 0u8;
                // SAFETY: raw system calls on descriptors this process owns
                // and on stack buffers that outlive the calls.
                unsafe {
                    libc::close(ready_r.as_raw_fd());
                    libc::close(go_w.as_raw_fd());
                    // The helper must not outlive a daemon killed meanwhile.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    let status = if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0 {
                        &ok
                    } else {
                        &failed
                    };
                    libc::write(ready_w.as_raw_fd(), (status as *const u8).cast(), 1);
                    libc::read(go_r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                    libc::_exit(0);
                }
            }
            ForkResult::Parent { child } => {
                drop(ready_w);
                drop(go_r);
                let helper = NamespaceHelper {
                    pid: child,
                    go: Some(go_w),
                };
                let mut status = [0u8; 1];
                let read = nix::unistd::read(ready_r.as_fd(), &mut status);
                match read {
                    Ok(1) if status[0] == 1 => Ok(helper),
                    Ok(_) => {
                        helper.finish();
                        Err(UsernsError::Sys {
                            op: "unshare(CLONE_NEWUSER | CLONE_NEWNET) in the namespace helper",
                            source: Errno::EPERM,
                        })
                    }
                    Err(e) => {
                        helper.finish();
                        Err(sys("waiting for the namespace helper")(e))
                    }
                }
            }
        }
    }

    /// Lets the child exit (or kills it) and reaps it.
    fn finish(mut self) {
        drop(self.go.take());
        // Closing `go` ends the child's read; the kill only matters when
        // it is stuck elsewhere.
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// Unmounts and removes a user namespace pin; idempotent.
pub fn remove_path(path: &Path) -> Result<(), UsernsError> {
    Ok(netns::remove_path(path)?)
}

/// An id-mapped clone of `source` (recursive, so submounts are mapped too)
/// attached at `target`, which is created as an empty file or directory
/// like `source`. On-disk ids are seen through the user namespace pinned at
/// `userns`: on-disk id N is container id N. Blocking.
pub fn idmapped_clone(source: &Path, target: &Path, userns: &Path) -> Result<(), UsernsError> {
    let meta = fs::metadata(source).map_err(io_err("stat", source))?;
    if meta.is_dir() {
        fs::create_dir_all(target).map_err(io_err("create", target))?;
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map_err(io_err("create", target))?;
    }
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| sys("open_tree(OPEN_TREE_CLONE)")(Errno::from_raw(e.raw_os_error())))?;
    let userns_fd = File::open(userns).map_err(io_err("open", userns))?;
    set_idmap(&tree, &userns_fd).map_err(|e| match e {
        // The filesystem cannot be id-mapped: say which one.
        Errno::EINVAL | Errno::EPERM | Errno::EOPNOTSUPP => UsernsError::Invalid(format!(
            "{} is on a filesystem that does not support id-mapped mounts ({e})",
            source.display()
        )),
        e => sys("mount_setattr(MOUNT_ATTR_IDMAP)")(e),
    })?;
    rustix::mount::move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| sys("move_mount of an id-mapped clone")(Errno::from_raw(e.raw_os_error())))
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, {MOUNT_ATTR_IDMAP,
/// userns})`; rustix has no wrapper for it.
fn set_idmap(tree: &OwnedFd, userns: &File) -> Result<(), Errno> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: both descriptors are open for the duration of the call, the
    // path is a NUL-terminated static string and `attr` is a valid
    // `struct mount_attr` whose size is passed alongside.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(Errno::last()) }
}

/// Detaches an id-mapped clone made by [`idmapped_clone`] and removes its
/// mount point; idempotent.
pub fn remove_idmapped_clone(target: &Path) -> Result<(), UsernsError> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(sys("detaching an id-mapped clone")(e)),
    }
    let removed = if target.is_dir() {
        fs::remove_dir(target)
    } else {
        fs::remove_file(target)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", target)(e)),
    }
}

/// Whether this host can run pods in user namespaces the way crius does:
/// a user namespace can be made and a directory under `scratch_parent`
/// can be id-mapped through it. Blocking; leaves nothing behind.
pub fn probe(scratch_parent: &Path) -> Result<(), UsernsError> {
    let scratch = scratch_parent.join(format!(".userns-probe-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(scratch.join("src")).map_err(io_err("create", &scratch))?;
    let maps = IdMappings {
        uids: vec![IdRange {
            container_id: 0,
            host_id: 1 << 30,
            length: 65536,
        }],
        gids: vec![IdRange {
            container_id: 0,
            host_id: 1 << 30,
            length: 65536,
        }],
    };
    let result = (|| {
        let (pin, netns) = create_pod_namespaces(
            &scratch.join("userns"),
            &scratch.join("netns"),
            "probe",
            &maps,
        )?;
        let mapped = idmapped_clone(&scratch.join("src"), &scratch.join("dst"), &pin);
        let _ = remove_idmapped_clone(&scratch.join("dst"));
        let _ = remove_path(&pin);
        let _ = netns.remove();
        mapped
    })();
    // The netns dir was made a mount point of its own.
    let _ = nix::mount::umount2(&scratch.join("netns"), nix::mount::MntFlags::MNT_DETACH);
    let _ = fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri::IdMapping;

    fn m(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            container_id,
            host_id,
            length,
        }
    }

    #[test]
    fn mappings_kubelet_sends_are_accepted() {
        let maps = IdMappings::from_cri(&[m(0, 65536, 65536)], &[m(0, 65536, 65536)]).unwrap();
        assert_eq!(map_text(&maps.uids), "0 65536 65536\n");
        assert!(maps.same_as_cri(&[m(0, 65536, 65536)], &[m(0, 65536, 65536)]));
        assert!(!maps.same_as_cri(&[m(0, 131072, 65536)], &[m(0, 65536, 65536)]));
    }

    #[test]
    fn bad_mappings_are_refused_with_the_reason() {
        for (uids, gids, why) in [
            (vec![], vec![m(0, 65536, 65536)], "none given"),
            (vec![m(0, 65536, 0)], vec![m(0, 65536, 1)], "length 0"),
            (vec![m(0, 0, 65536)], vec![m(0, 65536, 1)], "host's id 0"),
            (
                vec![m(1, 65536, 10)],
                vec![m(0, 65536, 1)],
                "container id 0",
            ),
            (
                vec![m(0, 65536, 100), m(50, 200000, 10)],
                vec![m(0, 65536, 1)],
                "overlap",
            ),
            (
                vec![m(0, u32::MAX - 1, 10)],
                vec![m(0, 65536, 1)],
                "overflows",
            ),
        ] {
            let err = IdMappings::from_cri(&uids, &gids).unwrap_err().to_string();
            assert!(err.contains(why), "{err} lacks {why}");
        }
    }
}
