//! Names of the systemd cgroup driver, and where they live in cgroupfs.
//!
//! With `cgroup_driver: systemd` a pod's `cgroup_parent` is a slice unit
//! name (`kubepods-besteffort-pod<uid>.slice`, as kubelet's systemd driver
//! sends it) and a container's OCI `cgroupsPath` is `slice:prefix:name`,
//! which runc and crun (`--systemd-cgroup`) turn into the transient scope
//! `<prefix>-<name>.scope` in that slice. The core hands handlers the
//! expanded cgroupfs path of the pod slice in `cgroup_parent`, so code that
//! reads or joins cgroups keeps working on paths; these functions make the
//! same expansion systemd makes, for readers of a container's cgroup.

use super::{CgroupError, validate_path};

/// The scope prefix crius gives containers (`crius-<id>.scope`).
pub const SCOPE_PREFIX: &str = "crius";

/// The slice of a pod that names none: `crius-pod<id>.slice`, under
/// `crius.slice`.
pub fn default_pod_slice(sandbox_id: &str) -> Result<String, CgroupError> {
    validate_slice(&format!("crius-pod{sandbox_id}.slice"))
}

/// Checks a slice unit name as systemd does: `<a>[-<b>…].slice` with unit
/// name characters, no empty dash-separated part.
pub fn validate_slice(name: &str) -> Result<String, CgroupError> {
    let bad = |reason| {
        Err(CgroupError::InvalidPath {
            path: name.to_string(),
            reason,
        })
    };
    let Some(stem) = name.strip_suffix(".slice") else {
        return bad("a systemd cgroup parent must be a slice unit name ending in .slice");
    };
    if name.len() > 255 {
        return bad("a unit name is at most 255 bytes");
    }
    if stem.is_empty() || stem == "-" {
        return bad("names the root slice");
    }
    if !stem
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-' | b'\\'))
    {
        return bad("has characters systemd does not allow in unit names");
    }
    if stem.split('-').any(str::is_empty) {
        return bad("has an empty '-'-separated part");
    }
    Ok(name.to_string())
}

/// The cgroup path of a slice relative to systemd's root, as systemd lays
/// slices out: `a-b-c.slice` is `/a.slice/a-b.slice/a-b-c.slice`.
pub fn slice_path(slice: &str) -> Result<String, CgroupError> {
    let slice = validate_slice(slice)?;
    let stem = &slice[..slice.len() - ".slice".len()];
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Ok(path)
}

/// A container's `cgroupsPath` for the systemd driver.
pub fn cgroups_path(slice: &str, container_id: &str) -> String {
    format!("{slice}:{SCOPE_PREFIX}:{container_id}")
}

/// The parts of a `slice:prefix:name` cgroupsPath, if `path` is one.
pub fn parse_cgroups_path(path: &str) -> Option<(&str, &str, &str)> {
    let mut parts = path.splitn(3, ':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    (!path.starts_with('/') && slice.ends_with(".slice") && !name.is_empty())
        .then_some((slice, prefix, name))
}

/// The cgroupfs path (under the hierarchy mounts) of a spec's cgroupsPath:
/// a `slice:prefix:name` one is expanded below `root` (systemd's own cgroup,
/// see [`manager_root`]); a plain path is checked and returned.
pub fn cgroupfs_path(root: &str, path: &str) -> Result<String, CgroupError> {
    match parse_cgroups_path(path) {
        Some((slice, prefix, name)) => {
            let scope = if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            validate_path(&format!(
                "{}{}/{scope}",
                root.trim_end_matches('/'),
                slice_path(slice)?
            ))
        }
        None => validate_path(path),
    }
}

/// [`cgroupfs_path`] below this PID namespace's systemd (read only for a
/// `slice:prefix:name` path).
pub fn resolve(path: &str) -> Result<String, CgroupError> {
    match parse_cgroups_path(path) {
        Some(_) => cgroupfs_path(&manager_root(), path),
        None => validate_path(path),
    }
}

/// The cgroupfs path of a slice below `root`.
pub fn slice_cgroupfs_path(root: &str, slice: &str) -> Result<String, CgroupError> {
    validate_path(&format!(
        "{}{}",
        root.trim_end_matches('/'),
        slice_path(slice)?
    ))
}

/// The cgroup systemd (PID 1 of this PID namespace) treats as its root: its
/// own cgroup without the trailing `/init.scope`. `/` on a host booted by
/// systemd; the container's cgroup when systemd runs in one without a cgroup
/// namespace. runc and crun expand slices below the same root.
pub fn manager_root() -> String {
    std::fs::read_to_string("/proc/1/cgroup")
        .map(|text| root_from_proc_cgroup(&text))
        .unwrap_or_default()
}

fn root_from_proc_cgroup(text: &str) -> String {
    let line = |want: &dyn Fn(&str) -> bool| {
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            want(controllers).then(|| path.to_string())
        })
    };
    let path = line(&|c| c == "name=systemd")
        .or_else(|| line(&|c| c.is_empty()))
        .unwrap_or_default();
    let path = path.strip_suffix("/init.scope").unwrap_or(&path);
    path.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_as_systemd_lays_them_out() {
        assert_eq!(slice_path("kubepods.slice").unwrap(), "/kubepods.slice");
        assert_eq!(
            slice_path("kubepods-besteffort-pod12.slice").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice"
        );
        for bad in [
            "-.slice",
            "kubepods",
            "/kubepods.slice",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a/b.slice",
            ".slice",
        ] {
            assert!(slice_path(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn container_paths_become_scopes_below_the_manager_root() {
        let p = cgroups_path("kubepods-pod1.slice", "abc");
        assert_eq!(p, "kubepods-pod1.slice:crius:abc");
        assert_eq!(
            cgroupfs_path("", &p).unwrap(),
            "/kubepods.slice/kubepods-pod1.slice/crius-abc.scope"
        );
        assert_eq!(
            cgroupfs_path("/ctr", &p).unwrap(),
            "/ctr/kubepods.slice/kubepods-pod1.slice/crius-abc.scope"
        );
        assert_eq!(
            cgroupfs_path("/x", "/crius/pod-1/crius-a").unwrap(),
            "/crius/pod-1/crius-a"
        );
        assert!(cgroupfs_path("", "../x").is_err());
        assert!(parse_cgroups_path("/a.slice:b:c").is_none());
    }

    #[test]
    fn the_manager_root_is_pid_1s_cgroup_without_init_scope() {
        let v1 =
            "9:name=systemd:/crius-sdtest/init.scope\n4:memory:/crius-sdtest/init.scope\n0::/x\n";
        assert_eq!(root_from_proc_cgroup(v1), "/crius-sdtest");
        assert_eq!(root_from_proc_cgroup("0::/init.scope\n"), "");
        assert_eq!(root_from_proc_cgroup("0::/\n"), "");
    }

    #[test]
    fn default_pod_slices_sit_under_crius_slice() {
        assert_eq!(
            slice_path(&default_pod_slice("ab12").unwrap()).unwrap(),
            "/crius.slice/crius-podab12.slice"
        );
    }
}
