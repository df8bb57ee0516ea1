//! Fixtures shared by the runc handler's integration tests: binary paths,
//! prerequisites, cgroup mounts, pod bundles and request builders. Each
//! test binary includes it with `#[macro_use] mod common;`.

// Each test binary uses only a part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crius_shim_api::cri;
use crius_shim_api::types::{
    Bundle, ContainerRef, CreateContainerRequest, SandboxRef, StopContainerRequest,
};
use oci_spec::runtime::Spec;
use serde_json::{Value, json};

pub const CONMON: &str = "/usr/bin/conmon";
pub const BUSYBOX: &str = "/bin/busybox";
pub const CATATONIT: &str = "/usr/bin/catatonit";
pub const RUNC: &str = "/usr/sbin/runc";
pub const CRUN: &str = "/usr/bin/crun";

/// One `#[tokio::test]` for runc and one for crun per scenario, an
/// `async fn(runtime_path, tag)`; the tag names the test's pod, cgroups
/// and netns, so the two runtimes' tests never share them.
macro_rules! runtime_tests {
    ($($scenario:ident: $runc:ident($runc_tag:literal), $crun:ident($crun_tag:literal);)*) => {
        $(
            #[tokio::test]
            async fn $runc() {
                $scenario(common::RUNC, $runc_tag).await;
            }

            #[tokio::test]
            async fn $crun() {
                $scenario(common::CRUN, $crun_tag).await;
            }
        )*
    };
}

/// Why the tests cannot run here: not root, or one of `bins` missing.
pub fn missing_prerequisite(bins: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    bins.iter()
        .find(|b| !Path::new(b).exists())
        .map(|b| format!("{b} is not installed"))
}

/// The controllers of the hybrid `unified` cgroup2 mount when `runtime` is
/// crun and there are any: crun refuses hybrid cgroups then.
pub fn crun_hybrid_controllers(runtime: &str) -> Option<String> {
    if !runtime.ends_with("crun") {
        return None;
    }
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").ok()?;
    let controllers = controllers.trim();
    (!controllers.is_empty()).then(|| controllers.to_string())
}

/// Reports the skip of test `tag` when there is a `reason`; true then.
pub fn skipped(reason: Option<String>, tag: &str) -> bool {
    match reason {
        Some(reason) => {
            crius_testkit::skip(format!("{tag}: {reason}"));
            true
        }
        None => false,
    }
}

/// Mount points of every cgroup (v1 and v2) hierarchy.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mount_point = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

pub fn cref(sandbox: &str, id: &str) -> ContainerRef {
    ContainerRef {
        sandbox_id: sandbox.to_string(),
        container_id: id.to_string(),
    }
}

pub fn sref(sandbox: &str) -> SandboxRef {
    SandboxRef {
        sandbox_id: sandbox.to_string(),
    }
}

pub fn stop_request(sandbox: &str, id: &str, timeout_seconds: i64) -> StopContainerRequest {
    StopContainerRequest {
        sandbox_id: sandbox.to_string(),
        container_id: id.to_string(),
        timeout_seconds,
    }
}

/// The spec of a pod's process from oci-spec's default spec, and its
/// rootfs under `dir`: catatonit for the infra (`infra_pid` `None`, its
/// network namespace `netns` or a new one), else busybox with `applets`
/// joining the infra's namespaces the way the core's spec does.
pub fn pod_spec(
    dir: &Path,
    cgroups_path: &str,
    args: &[&str],
    infra_pid: Option<u32>,
    netns: Option<&str>,
    applets: &[&str],
) -> Value {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    if infra_pid.is_none() {
        std::fs::copy(CATATONIT, rootfs.join("catatonit")).unwrap();
    } else {
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in applets {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    let mut spec = serde_json::to_value(Spec::default()).unwrap();
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(["PATH=/bin", "TERM=xterm"]);
    spec["process"]["terminal"] = json!(false);
    spec["root"] = json!({"path": "rootfs", "readonly": false});
    spec["linux"]["cgroupsPath"] = json!(cgroups_path);
    spec["annotations"] = json!({});
    match infra_pid {
        None => {
            let network = match netns {
                Some(path) => json!({"type": "network", "path": path}),
                None => json!({"type": "network"}),
            };
            spec["linux"]["namespaces"] = json!([
                {"type": "pid"}, network, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
            ]);
        }
        Some(pid) => {
            spec.as_object_mut().unwrap().remove("hostname");
            spec["linux"]["namespaces"] = json!([
                {"type": "pid"},
                {"type": "mount"},
                {"type": "network", "path": format!("/proc/{pid}/ns/net")},
                {"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")},
                {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
            ]);
        }
    }
    spec
}

/// Writes `spec` as the bundle's config.json.
pub fn save_bundle(dir: &Path, spec: &Value) -> Bundle {
    let bytes = serde_json::to_vec_pretty(spec).unwrap();
    std::fs::write(dir.join("config.json"), &bytes).unwrap();
    Bundle {
        dir: dir.display().to_string(),
        oci_spec: bytes,
        rootfs: None,
    }
}

/// CreateContainer of `bundle` as container `id` (its name too), logging
/// to `log_path`.
pub fn create_request(
    sandbox: &str,
    id: &str,
    bundle: Bundle,
    log_path: &Path,
) -> CreateContainerRequest {
    CreateContainerRequest {
        sandbox_id: sandbox.to_string(),
        container_id: id.to_string(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: id.to_string(),
                attempt: 0,
            }),
            ..Default::default()
        }),
        bundle: Some(bundle),
        log_path: log_path.display().to_string(),
        sandbox_config: None,
    }
}
