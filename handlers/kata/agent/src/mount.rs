//! Mounting the storages of CreateSandbox / CreateContainer.

use std::path::{Path, PathBuf};

use crius_agent_proto::agent::Storage;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

const DRIVERS: &[&str] = &["9p", "virtio-fs", "virtiofs", "tmpfs", "bind", "local", ""];

/// Storage drivers the agent accepts (reported in GetGuestDetails).
pub fn storage_handlers() -> Vec<String> {
    DRIVERS
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| d.to_string())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("storage driver {0:?} is not supported (supported: 9p, virtio-fs, tmpfs, bind, local)")]
    Driver(String),
    #[error("storage mount point {0:?} must be an absolute path")]
    MountPoint(String),
    #[error("mount {src} on {target} ({fstype}): {err}")]
    Mount {
        src: String,
        target: String,
        fstype: String,
        err: String,
    },
}

/// Splits mount options into flags and filesystem data.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Mounts one storage; returns the mount point (idempotent: an existing
/// mount of the same point is kept).
pub fn mount_storage(s: &Storage) -> Result<PathBuf, MountError> {
    if !DRIVERS.contains(&s.driver.as_str()) {
        return Err(MountError::Driver(s.driver.clone()));
    }
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute() {
        return Err(MountError::MountPoint(s.mount_point.clone()));
    }
    let err = |e: String| MountError::Mount {
        src: s.source.clone(),
        target: s.mount_point.clone(),
        fstype: s.fstype.clone(),
        err: e,
    };
    if is_mountpoint(&target) {
        return Ok(target);
    }
    std::fs::create_dir_all(&target).map_err(|e| err(e.to_string()))?;
    let (mut flags, data) = parse_options(&s.options);
    let fstype = match s.driver.as_str() {
        "virtio-fs" | "virtiofs" => "virtiofs".to_string(),
        "bind" => {
            flags |= MsFlags::MS_BIND;
            String::new()
        }
        _ => s.fstype.clone(),
    };
    let fstype_opt = (!fstype.is_empty()).then_some(fstype.as_str());
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    mount(
        Some(s.source.as_str()),
        &target,
        fstype_opt,
        flags,
        data_opt,
    )
    .map_err(|e| err(e.to_string()))?;
    tracing::info!(source = %s.source, target = %target.display(), fstype = %fstype, "mounted storage");
    Ok(target)
}

/// Lazily unmounts, ignoring "not mounted".
pub fn unmount(target: &Path) {
    if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
        tracing::debug!(target = %target.display(), error = %e, "unmount");
    }
}

/// Makes `path` a mount of its own with shared propagation (idempotent):
/// containers that bind it `rshared` or `rslave` then see each other's
/// mounts below it, as they would on a host path of a runc pod.
pub fn make_shared(path: &Path) -> nix::Result<()> {
    if !is_mountpoint(path) {
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )?;
    }
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = p.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "trans=virtio", "version=9p2000.L"]
            .map(String::from)
            .to_vec();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "trans=virtio,version=9p2000.L");
    }

    #[test]
    fn unknown_driver_is_refused() {
        let s = Storage {
            driver: "blk".into(),
            mount_point: "/x".into(),
            ..Default::default()
        };
        assert!(matches!(mount_storage(&s), Err(MountError::Driver(_))));
    }
}
