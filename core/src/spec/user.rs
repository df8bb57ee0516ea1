//! The container process's uid, gid and supplementary groups, from the CRI
//! security context or the image's `User`, resolved against the container's
//! own `/etc/passwd` and `/etc/group`.
//!
//! Those files are read with `openat2(RESOLVE_IN_ROOT)`: symlinks (absolute
//! or `..`) resolve inside the rootfs as they would in the container, so an
//! image cannot make the daemon read host files.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use crius_proto::cri::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::SpecError;

/// Larger passwd/group files are refused rather than read into memory.
const MAX_DB_SIZE: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Primary gid first, then groups listing the user, then the CRI's
    /// supplemental groups; no duplicates.
    pub additional_gids: Vec<u32>,
}

#[derive(Debug)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads `<rootfs>/<rel>` with every path component resolved inside
/// `rootfs`. A missing file (or a non-regular one) reads as `None`.
fn read_in_root(rootfs: &Path, rel: &str) -> Result<Option<String>, SpecError> {
    let io = |e: Errno, what: &str| SpecError::Io {
        context: format!("{what} {}/{rel}", rootfs.display()),
        source: std::io::Error::from_raw_os_error(e.raw_os_error()),
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e, "opening rootfs for"))?;
    // O_NONBLOCK: a FIFO planted at /etc/passwd must not hang the daemon.
    let fd: OwnedFd = match rustix::fs::openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
        Err(e) => return Err(io(e, "opening")),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io(e, "stat"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    if st.st_size as u64 > MAX_DB_SIZE {
        return Err(SpecError::InvalidArgument(format!(
            "/{rel} in the image is larger than {MAX_DB_SIZE} bytes"
        )));
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_DB_SIZE)
        .read_to_end(&mut buf)
        .map_err(|source| SpecError::Io {
            context: format!("reading {}/{rel}", rootfs.display()),
            source,
        })?;
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn id_from_i64(v: i64, what: &str) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| SpecError::InvalidArgument(format!("{what} {v} is out of range")))
}

/// Resolves the user the container runs as.
///
/// Precedence: `run_as_user`, then `run_as_username`, then the image's
/// `User` (`uid`, `uid:gid`, `name`, `name:group`, `uid:group`); empty means
/// root. `run_as_group` overrides the gid in every case. A numeric uid
/// without a passwd entry gets gid 0; a name that does not resolve is an
/// error.
pub(crate) fn resolve_user(
    rootfs: &Path,
    sc: Option<&LinuxContainerSecurityContext>,
    image_user: &str,
) -> Result<ResolvedUser, SpecError> {
    // Read lazily: most containers run numeric users and need no lookups,
    // but supplementary groups need the name, so passwd is read anyway when
    // present (it is small).
    let passwd = read_in_root(rootfs, "etc/passwd")?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_in_root(rootfs, "etc/group")?
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let by_uid = |uid: u32| passwd.iter().find(|e| e.uid == uid);
    let by_name = |name: &str| passwd.iter().find(|e| e.name == name);

    let run_as_user = sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value);
    let run_as_username = sc.map(|s| s.run_as_username.as_str()).unwrap_or_default();
    // A group for "whatever user the image says" is ambiguous (the image's
    // user may name its own group); the CRI requires a user with it.
    if sc.is_some_and(|s| s.run_as_group.is_some())
        && run_as_user.is_none()
        && run_as_username.is_empty()
    {
        return Err(SpecError::InvalidArgument(
            "run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }

    let (uid, mut gid, name): (u32, u32, Option<String>) = if let Some(v) = run_as_user {
        let uid = id_from_i64(v, "run_as_user")?;
        match by_uid(uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone())),
            None => (uid, 0, None),
        }
    } else if !run_as_username.is_empty() {
        let e = by_name(run_as_username).ok_or_else(|| {
            SpecError::InvalidArgument(format!(
                "run_as_username {run_as_username:?} not found in the image's /etc/passwd"
            ))
        })?;
        (e.uid, e.gid, Some(e.name.clone()))
    } else {
        let (user, group) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        let (uid, mut gid, name) = if user.is_empty() {
            (0, 0, by_uid(0).map(|e| e.name.clone()))
        } else if let Ok(uid) = user.parse::<u32>() {
            match by_uid(uid) {
                Some(e) => (uid, e.gid, Some(e.name.clone())),
                None => (uid, 0, None),
            }
        } else {
            let e = by_name(user).ok_or_else(|| {
                SpecError::InvalidArgument(format!(
                    "image user {user:?} not found in the image's /etc/passwd"
                ))
            })?;
            (e.uid, e.gid, Some(e.name.clone()))
        };
        if let Some(g) = group.filter(|g| !g.is_empty()) {
            gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => groups
                    .iter()
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| {
                        SpecError::InvalidArgument(format!(
                            "image group {g:?} not found in the image's /etc/group"
                        ))
                    })?,
            };
        }
        (uid, gid, name)
    };
    if let Some(g) = sc.and_then(|s| s.run_as_group.as_ref()) {
        gid = id_from_i64(g.value, "run_as_group")?;
    }

    let strict =
        sc.is_some_and(|s| s.supplemental_groups_policy == SupplementalGroupsPolicy::Strict as i32);
    let mut additional_gids = vec![gid];
    if !strict && let Some(name) = &name {
        for g in &groups {
            if g.members.iter().any(|m| m == name) {
                additional_gids.push(g.gid);
            }
        }
    }
    for g in sc
        .map(|s| s.supplemental_groups.as_slice())
        .unwrap_or_default()
    {
        additional_gids.push(id_from_i64(*g, "supplemental group")?);
    }
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|g| seen.insert(*g));
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri::Int64Value;
    use std::fs;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1::/:/bin/false\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root,app\n\
        app:x:1000:\n\
        audio:x:29:app\n\
        staff:x:50:daemon\n";

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/passwd"), PASSWD).unwrap();
        fs::write(d.path().join("etc/group"), GROUP).unwrap();
        d
    }

    fn sc() -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext::default()
    }

    #[test]
    fn empty_image_user_is_root_with_its_groups() {
        let r = rootfs();
        let u = resolve_user(r.path(), None, "").unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![0, 10]
            }
        );
    }

    #[test]
    fn image_user_forms() {
        let r = rootfs();
        let u = resolve_user(r.path(), None, "app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![1000, 10, 29]);
        let u = resolve_user(r.path(), None, "1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let u = resolve_user(r.path(), None, "app:audio").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 29));
        let u = resolve_user(r.path(), None, "1000:50").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert_eq!(u.additional_gids, vec![50, 10, 29]);
        // Unknown numeric uid: gid 0, no groups.
        let u = resolve_user(r.path(), None, "4242").unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![0]
            }
        );
        let u = resolve_user(r.path(), None, "4242:4343").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4343));
    }

    #[test]
    fn unknown_names_are_invalid() {
        let r = rootfs();
        for user in ["nobody", "app:nogroup"] {
            let err = resolve_user(r.path(), None, user).unwrap_err();
            assert!(
                matches!(err, SpecError::InvalidArgument(_)),
                "{user}: {err}"
            );
        }
        let mut s = sc();
        s.run_as_username = "ghost".into();
        let err = resolve_user(r.path(), Some(&s), "").unwrap_err();
        assert!(err.to_string().contains("ghost"), "{err}");
    }

    #[test]
    fn a_group_without_a_user_is_invalid() {
        let r = rootfs();
        let mut s = sc();
        s.run_as_group = Some(Int64Value { value: 7 });
        let err = resolve_user(r.path(), Some(&s), "app").unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("run_as_group"), "{err}");
        s.run_as_username = "app".into();
        assert_eq!(resolve_user(r.path(), Some(&s), "").unwrap().gid, 7);
    }

    #[test]
    fn cri_security_context_wins_over_image() {
        let r = rootfs();
        let mut s = sc();
        s.run_as_user = Some(Int64Value { value: 1 });
        let u = resolve_user(r.path(), Some(&s), "app").unwrap();
        assert_eq!((u.uid, u.gid), (1, 1));
        assert_eq!(u.additional_gids, vec![1, 50]);
        s.run_as_group = Some(Int64Value { value: 7 });
        s.supplemental_groups = vec![99, 7, 1000];
        let u = resolve_user(r.path(), Some(&s), "app").unwrap();
        assert_eq!((u.uid, u.gid), (1, 7));
        assert_eq!(u.additional_gids, vec![7, 50, 99, 1000]);

        let mut s = sc();
        s.run_as_username = "app".into();
        let u = resolve_user(r.path(), Some(&s), "root").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));

        // Strict: no /etc/group memberships, only the CRI's groups.
        s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
        s.supplemental_groups = vec![5];
        let u = resolve_user(r.path(), Some(&s), "").unwrap();
        assert_eq!(u.additional_gids, vec![1000, 5]);

        let mut s = sc();
        s.run_as_user = Some(Int64Value { value: -1 });
        assert!(matches!(
            resolve_user(r.path(), Some(&s), ""),
            Err(SpecError::InvalidArgument(_))
        ));
    }

    #[test]
    fn no_passwd_numeric_ok_names_fail() {
        let r = tempfile::tempdir().unwrap();
        let u = resolve_user(r.path(), None, "123:456").unwrap();
        assert_eq!(
            u,
            ResolvedUser {
                uid: 123,
                gid: 456,
                additional_gids: vec![456]
            }
        );
        assert!(resolve_user(r.path(), None, "app").is_err());
    }

    #[test]
    fn symlinked_passwd_is_confined_to_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("passwd"), "evil:x:4242:4242::/:/bin/sh\n").unwrap();
        let root = tmp.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        // Absolute symlink to a host file and a ../ escape: both resolve
        // inside the rootfs, where nothing exists.
        std::os::unix::fs::symlink(outside.join("passwd"), root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../outside/passwd", root.join("etc/group"))
            .unwrap();
        let err = resolve_user(&root, None, "evil").unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument(_)), "{err}");

        // The same absolute target inside the rootfs is what gets read.
        let inside = root.join(outside.strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        fs::write(inside.join("passwd"), "good:x:77:78::/:/bin/sh\n").unwrap();
        assert!(resolve_user(&root, None, "evil").is_err());
        let u = resolve_user(&root, None, "good").unwrap();
        assert_eq!((u.uid, u.gid), (77, 78));
    }

    #[test]
    fn fifo_passwd_does_not_hang() {
        let r = tempfile::tempdir().unwrap();
        fs::create_dir_all(r.path().join("etc")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.path().join("etc/passwd"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let u = resolve_user(r.path(), None, "5").unwrap();
        assert_eq!(u.uid, 5);
    }
}
