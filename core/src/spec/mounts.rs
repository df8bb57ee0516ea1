//! Mounts and devices of a container spec.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crius_proto::cri::{self, MountPropagation};
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    Mount, MountBuilder,
};

use super::{PodFiles, SpecError};

fn mount(dest: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source.into())
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("complete mount")
}

/// The kernel filesystems every container gets. Privileged containers see
/// /sys and the cgroup tree read-write.
pub(crate) fn standard(privileged: bool) -> Vec<Mount> {
    let ro = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro]),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro],
        ),
    ]
}

/// /dev/shm and the pod's /etc files. /dev/shm is the pod's shared tmpfs
/// when the core made one, else a private tmpfs.
pub(crate) fn pod_files(files: &PodFiles, readonly_rootfs: bool) -> Vec<Mount> {
    let mut out = Vec::new();
    match &files.shm_dir {
        Some(dir) => out.push(mount(
            "/dev/shm",
            "bind",
            dir,
            &["rbind", "rprivate", "nosuid", "noexec", "nodev"],
        )),
        None => out.push(mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )),
    }
    let etc = |dest: &str, src: &Option<PathBuf>, out: &mut Vec<Mount>| {
        if let Some(src) = src {
            let mut opts = vec!["rbind", "rprivate"];
            if readonly_rootfs {
                opts.push("ro");
            }
            out.push(mount(dest, "bind", src, &opts));
        }
    };
    etc("/etc/hostname", &files.hostname, &mut out);
    etc("/etc/resolv.conf", &files.resolv_conf, &mut out);
    etc("/etc/hosts", &files.hosts, &mut out);
    out
}

/// Propagation of the mount holding `path`: (shared, slave).
fn propagation_of(path: &Path) -> Result<(bool, bool), SpecError> {
    let entries = crius_shim_api::mountinfo::read_self().map_err(|source| SpecError::Io {
        context: "reading /proc/self/mountinfo".into(),
        source,
    })?;
    let mut best: Option<(usize, bool, bool)> = None;
    for entry in &entries {
        if !path.starts_with(&entry.mount_point) {
            continue;
        }
        let len = entry.mount_point.as_os_str().len();
        // Later lines with the same mount point are mounted on top.
        if best.is_none_or(|(l, _, _)| len >= l) {
            best = Some((len, entry.is_shared(), entry.is_slave()));
        }
    }
    Ok(best.map(|(_, s, m)| (s, m)).unwrap_or((false, false)))
}

/// How the CRI mounts want the rootfs propagation set.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CriMounts {
    pub mounts: Vec<Mount>,
    /// `rshared` when a bidirectional mount needs propagation out of the
    /// container, `rslave` for host-to-container, else runtime default.
    pub rootfs_propagation: Option<String>,
}

/// Converts the CRI mounts. The host path must exist (the kubelet creates
/// hostPath directories) and is resolved through symlinks; the container
/// path must be absolute. Mounts are ordered parents first.
pub(crate) fn cri_mounts(
    mounts: &[cri::Mount],
    rro_supported: bool,
) -> Result<CriMounts, SpecError> {
    let mut out: Vec<Mount> = Vec::new();
    let mut propagation: Option<&str> = None;
    for m in mounts {
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            // The pod manager mounts image volumes and hands over binds.
            return Err(SpecError::InvalidArgument(format!(
                "image volume at {:?} was not mounted",
                m.container_path
            )));
        }
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(SpecError::InvalidArgument(format!(
                "mount container path {:?} must be absolute",
                m.container_path
            )));
        }
        if m.host_path.is_empty() {
            return Err(SpecError::InvalidArgument(format!(
                "mount at {} has no host path",
                m.container_path
            )));
        }
        let host = std::fs::canonicalize(&m.host_path).map_err(|e| {
            SpecError::InvalidArgument(format!(
                "mount host path {} (for {}): {e}",
                m.host_path, m.container_path
            ))
        })?;
        let mut opts: Vec<String> = vec!["rbind".into()];
        let prop = MountPropagation::try_from(m.propagation).map_err(|_| {
            SpecError::InvalidArgument(format!("unknown mount propagation {}", m.propagation))
        })?;
        match prop {
            MountPropagation::PropagationPrivate => opts.push("rprivate".into()),
            MountPropagation::PropagationHostToContainer => {
                let (shared, slave) = propagation_of(&host)?;
                if !shared && !slave {
                    return Err(SpecError::InvalidArgument(format!(
                        "mount {} uses host-to-container propagation but its host mount is neither shared nor slave",
                        m.host_path
                    )));
                }
                opts.push("rslave".into());
                if propagation != Some("rshared") {
                    propagation = Some("rslave");
                }
            }
            MountPropagation::PropagationBidirectional => {
                let (shared, _) = propagation_of(&host)?;
                if !shared {
                    return Err(SpecError::InvalidArgument(format!(
                        "mount {} uses bidirectional propagation but its host mount is not shared",
                        m.host_path
                    )));
                }
                opts.push("rshared".into());
                propagation = Some("rshared");
            }
        }
        if m.recursive_read_only {
            if !rro_supported {
                return Err(SpecError::InvalidArgument(format!(
                    "mount {}: recursive read-only mounts are not supported by this runtime handler",
                    m.container_path
                )));
            }
            if !m.readonly || prop != MountPropagation::PropagationPrivate {
                return Err(SpecError::InvalidArgument(format!(
                    "mount {}: recursive read-only needs readonly and private propagation",
                    m.container_path
                )));
            }
            opts.push("rro".into());
        } else if m.readonly {
            opts.push("ro".into());
        }
        out.push(
            MountBuilder::default()
                .destination(&m.container_path)
                .typ("bind")
                .source(host)
                .options(opts)
                .build()
                .map_err(|e| SpecError::Build(e.to_string()))?,
        );
    }
    // Parents before children, otherwise stable.
    out.sort_by_key(|m| m.destination().components().count());
    Ok(CriMounts {
        mounts: out,
        rootfs_propagation: propagation.map(String::from),
    })
}

/// A device node and its cgroup rule, from a host device file.
fn device_of(
    container: &Path,
    meta: &std::fs::Metadata,
    perms: &str,
) -> Option<(LinuxDevice, LinuxDeviceCgroup)> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let (major, minor) = (
        rustix::fs::major(rdev) as i64,
        rustix::fs::minor(rdev) as i64,
    );
    let dev = LinuxDeviceBuilder::default()
        .path(container)
        .typ(typ)
        .major(major)
        .minor(minor)
        .file_mode(meta.mode() & 0o7777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .ok()?;
    let rule = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(typ)
        .major(major)
        .minor(minor)
        .access(perms.to_string())
        .build()
        .ok()?;
    Some((dev, rule))
}

fn walk_devices(
    host_dir: &Path,
    container_dir: &Path,
    perms: &str,
    skip: &[&str],
    out: &mut Vec<(LinuxDevice, LinuxDeviceCgroup)>,
) {
    let Ok(entries) = std::fs::read_dir(host_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name_s = name.to_string_lossy();
        let host = e.path();
        if skip.iter().any(|s| host == Path::new(s)) {
            continue;
        }
        // No symlinks: they alias real nodes found elsewhere.
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.is_dir() {
            walk_devices(&host, &container_dir.join(&*name_s), perms, skip, out);
        } else if let Some(d) = device_of(&container_dir.join(&*name_s), &meta, perms) {
            out.push(d);
        }
    }
}

/// The CRI devices: each host path (a device, or a directory of devices)
/// is stat'ed for type and numbers. Missing paths are invalid.
pub(crate) fn cri_devices(
    devices: &[cri::Device],
) -> Result<Vec<(LinuxDevice, LinuxDeviceCgroup)>, SpecError> {
    let mut out = Vec::new();
    for d in devices {
        if !d.container_path.starts_with('/') {
            return Err(SpecError::InvalidArgument(format!(
                "device container path {:?} must be absolute",
                d.container_path
            )));
        }
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(SpecError::InvalidArgument(format!(
                "device {} has invalid permissions {:?} (want a subset of rwm)",
                d.host_path, d.permissions
            )));
        }
        let host = Path::new(&d.host_path);
        let meta = std::fs::metadata(host)
            .map_err(|e| SpecError::InvalidArgument(format!("device {}: {e}", d.host_path)))?;
        if meta.is_dir() {
            let before = out.len();
            walk_devices(host, Path::new(&d.container_path), perms, &[], &mut out);
            if out.len() == before {
                return Err(SpecError::InvalidArgument(format!(
                    "device directory {} holds no devices",
                    d.host_path
                )));
            }
        } else {
            let dev = device_of(Path::new(&d.container_path), &meta, perms).ok_or_else(|| {
                SpecError::InvalidArgument(format!("{} is not a device", d.host_path))
            })?;
            out.push(dev);
        }
    }
    Ok(out)
}

/// Every device node of the host's /dev, for privileged containers (the
/// pseudo-filesystems under /dev and the console are the runtime's).
pub(crate) fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk_devices(
        Path::new("/dev"),
        Path::new("/dev"),
        "rwm",
        &[
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/dev/fd",
            "/dev/console",
            "/dev/.lxc",
            "/dev/.udev",
        ],
        &mut out,
    );
    out.into_iter().map(|(d, _)| d).collect()
}

/// `deny all`, the rule list every unprivileged container starts from.
pub(crate) fn deny_all() -> LinuxDeviceCgroup {
    LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .expect("complete device rule")
}

/// `allow all`, for privileged containers.
pub(crate) fn allow_all() -> LinuxDeviceCgroup {
    LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .access("rwm")
        .build()
        .expect("complete device rule")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(container: &str, host: &str) -> cri::Mount {
        cri::Mount {
            container_path: container.into(),
            host_path: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn cri_mount_options_and_order() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let mut ro = m("/data/sub", link.to_str().unwrap());
        ro.readonly = true;
        let rw = m("/data", a.to_str().unwrap());
        let out = cri_mounts(&[ro, rw], false).unwrap();
        assert_eq!(out.rootfs_propagation, None);
        assert_eq!(out.mounts[0].destination(), Path::new("/data"));
        assert_eq!(out.mounts[1].destination(), Path::new("/data/sub"));
        // Symlinked host path is resolved.
        assert_eq!(
            out.mounts[1].source().as_deref(),
            Some(std::fs::canonicalize(&a).unwrap().as_path())
        );
        assert_eq!(
            out.mounts[1].options().as_ref().unwrap(),
            &vec!["rbind".to_string(), "rprivate".into(), "ro".into()]
        );
        assert_eq!(
            out.mounts[0].options().as_ref().unwrap(),
            &vec!["rbind".to_string(), "rprivate".into()]
        );
        assert_eq!(out.mounts[0].typ().as_deref(), Some("bind"));
    }

    #[test]
    fn cri_mount_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().to_str().unwrap();
        let missing = tmp.path().join("missing");
        let e = cri_mounts(&[m("/x", missing.to_str().unwrap())], true).unwrap_err();
        assert!(matches!(e, SpecError::InvalidArgument(_)));
        assert!(e.to_string().contains(missing.to_str().unwrap()), "{e}");
        assert!(matches!(
            cri_mounts(&[m("relative/x", host)], true),
            Err(SpecError::InvalidArgument(_))
        ));
        assert!(matches!(
            cri_mounts(&[m("", host)], true),
            Err(SpecError::InvalidArgument(_))
        ));
        assert!(matches!(
            cri_mounts(&[m("/x", "")], true),
            Err(SpecError::InvalidArgument(_))
        ));
        let mut rro = m("/x", host);
        rro.readonly = true;
        rro.recursive_read_only = true;
        let e = cri_mounts(&[rro.clone()], false).unwrap_err();
        assert!(e.to_string().contains("recursive read-only"), "{e}");
        let ok = cri_mounts(&[rro.clone()], true).unwrap();
        let opts = ok.mounts[0].options().clone().unwrap();
        assert!(opts.contains(&"rro".to_string()) && !opts.contains(&"ro".to_string()));
        rro.readonly = false;
        assert!(cri_mounts(&[rro], true).is_err());
        let mut img = m("/x", host);
        img.image = Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        assert!(matches!(
            cri_mounts(&[img], true),
            Err(SpecError::InvalidArgument(_))
        ));
    }

    #[test]
    fn propagation_follows_the_host_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().to_str().unwrap();
        let (shared, slave) = propagation_of(&std::fs::canonicalize(tmp.path()).unwrap()).unwrap();
        let mut b = m("/x", host);
        b.propagation = MountPropagation::PropagationBidirectional as i32;
        let r = cri_mounts(&[b], true);
        if shared {
            let r = r.unwrap();
            assert_eq!(r.rootfs_propagation.as_deref(), Some("rshared"));
            assert!(
                r.mounts[0]
                    .options()
                    .as_ref()
                    .unwrap()
                    .contains(&"rshared".to_string())
            );
        } else {
            assert!(r.unwrap_err().to_string().contains("not shared"));
        }
        let mut h = m("/x", host);
        h.propagation = MountPropagation::PropagationHostToContainer as i32;
        let r = cri_mounts(&[h], true);
        if shared || slave {
            assert_eq!(r.unwrap().rootfs_propagation.as_deref(), Some("rslave"));
        } else {
            assert!(r.is_err());
        }
    }

    #[test]
    fn devices_from_host() {
        let d = cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        };
        let out = cri_devices(&[d]).unwrap();
        let (dev, rule) = &out[0];
        assert_eq!(dev.path(), Path::new("/dev/mynull"));
        assert_eq!(dev.typ(), LinuxDeviceType::C);
        assert_eq!((dev.major(), dev.minor()), (1, 3));
        assert!(rule.allow());
        assert_eq!((rule.major(), rule.minor()), (Some(1), Some(3)));
        assert_eq!(rule.access().as_deref(), Some("rw"));

        let bad = |host: &str, perms: &str, cpath: &str| {
            cri_devices(&[cri::Device {
                container_path: cpath.into(),
                host_path: host.into(),
                permissions: perms.into(),
            }])
        };
        assert!(matches!(
            bad("/dev/nonexistent-crius", "", "/dev/x"),
            Err(SpecError::InvalidArgument(_))
        ));
        assert!(matches!(
            bad("/dev/null", "rwx", "/dev/x"),
            Err(SpecError::InvalidArgument(_))
        ));
        assert!(matches!(
            bad("/dev/null", "", "dev/x"),
            Err(SpecError::InvalidArgument(_))
        ));
        assert!(matches!(
            bad("/etc/hostname", "", "/dev/x"),
            Err(SpecError::InvalidArgument(_))
        ));
        // Empty permissions mean rwm.
        let out = bad("/dev/zero", "", "/dev/z").unwrap();
        assert_eq!(out[0].1.access().as_deref(), Some("rwm"));
    }

    #[test]
    fn host_devices_include_null_but_not_pts() {
        let all = host_devices();
        assert!(all.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(!all.iter().any(|d| d.path().starts_with("/dev/pts")));
        assert!(!all.iter().any(|d| d.path() == Path::new("/dev/console")));
    }
}
