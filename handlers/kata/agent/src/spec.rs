//! Adapts the host's OCI spec to the guest (see handlers/kata/README.md).
//!
//! The spec arrives as `oci-spec` types (`crius_agent_proto::oci_json`) and
//! leaves as `config.json` for the guest's runc; only what must change
//! inside the VM is touched, everything else (hooks, hostname, seccomp, …)
//! reaches runc as the host built it.

use std::path::{Path, PathBuf};

use crius_agent_proto::oci_spec::runtime::{
    Hook, Linux, LinuxNamespace, LinuxNamespaceType, Root, Spec,
};

/// Guest mount point of the pod's shared directory.
pub const SHARED_DIR: &str = "/run/crius/shared";

/// The VM's UTS namespace (the agent is PID 1), which is the pod's:
/// containers join it, so runc sets the spec's hostname there.
pub const POD_UTS_NAMESPACE: &str = "/proc/1/ns/uts";

/// Rewrites `spec` for container `cid`: rootfs path, namespaces, cgroup
/// path. `pod_pid_namespace` is the pod's shared PID namespace when the
/// pod asks for one; otherwise a container that has a PID namespace entry
/// gets a fresh one.
pub fn adapt(spec: &mut Spec, cid: &str, pod_pid_namespace: Option<&Path>) {
    // Not `Default`: oci-spec's defaults are a full example config.
    let mut root = spec
        .root()
        .clone()
        .or_else(|| serde_json::from_value::<Root>(serde_json::json!({"path": ""})).ok())
        .unwrap_or_default();
    if !root.path().is_absolute() {
        let rel = if root.path().as_os_str().is_empty() {
            PathBuf::from("rootfs")
        } else {
            root.path().clone()
        };
        root.set_path(Path::new(SHARED_DIR).join(cid).join(rel));
    }
    spec.set_root(Some(root));

    let mut linux = spec
        .linux()
        .clone()
        .or_else(|| serde_json::from_value::<Linux>(serde_json::json!({})).ok())
        .unwrap_or_default();
    linux.set_cgroups_path(Some(PathBuf::from(format!("/crius/{cid}"))));
    let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| {
        // The VM is the pod: containers share its network and IPC (and
        // join its UTS namespace, below).
        !matches!(
            n.typ(),
            LinuxNamespaceType::Network | LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts
        )
    });
    for n in &mut namespaces {
        // Host namespace paths mean nothing in the guest.
        n.set_path(None);
    }
    // Never the VM's PID namespace, where the agent runs.
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    namespaces.push(namespace(
        LinuxNamespaceType::Pid,
        pod_pid_namespace.map(Path::to_path_buf),
    ));
    if !namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Mount)
    {
        namespaces.push(namespace(LinuxNamespaceType::Mount, None));
    }
    // Joining the pod's UTS namespace (rather than inheriting it) lets runc
    // apply `hostname`/`domainname`, which it refuses without a UTS entry.
    namespaces.push(namespace(
        LinuxNamespaceType::Uts,
        Some(PathBuf::from(POD_UTS_NAMESPACE)),
    ));
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// Guest directory of the pod-wide shares (one per host path mounted with
/// propagation; the host side is `handlers/kata/src/container.rs`).
pub const POD_VOLUMES_DIR: &str = "/run/crius/shared/volumes";

/// Sources of the spec's mounts that ask for propagation and come from a
/// pod-wide share: each must be a shared mount in the guest.
pub fn propagated_sources(spec: &Spec) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| {
            m.options()
                .iter()
                .flatten()
                .any(|o| matches!(o.as_str(), "rshared" | "shared" | "rslave" | "slave"))
        })
        .filter_map(|m| m.source().clone())
        .filter(|s| s.starts_with(POD_VOLUMES_DIR) && s != Path::new(POD_VOLUMES_DIR))
        .filter(|s| !s.components().any(|c| c == std::path::Component::ParentDir))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path);
    n
}

/// The hook whose binary does not exist where runc will run it: the
/// runtime-namespace hooks in the guest, `createContainer`/`startContainer`
/// inside the container's rootfs `root`. Hooks are the host's business to
/// choose; a host path the guest lacks is refused by name rather than
/// dropped (host hooks do not run in a VM).
pub fn missing_hook(spec: &Spec, root: &Path) -> Option<String> {
    let hooks = spec.hooks().as_ref()?;
    // Where runc runs each stage: true = inside the container.
    let stages: [(&str, &Option<Vec<Hook>>, bool); 6] = [
        ("prestart", hooks.prestart(), false),
        ("createRuntime", hooks.create_runtime(), false),
        ("createContainer", hooks.create_container(), true),
        ("startContainer", hooks.start_container(), true),
        ("poststart", hooks.poststart(), false),
        ("poststop", hooks.poststop(), false),
    ];
    for (stage, list, in_container) in stages {
        for hook in list.iter().flatten() {
            let (present, place) = if in_container {
                // An entry is enough: a symlink in the rootfs may be
                // absolute, which only resolves inside the container.
                let path = root.join(hook.path().strip_prefix("/").unwrap_or(hook.path()));
                (path.symlink_metadata().is_ok(), "the container's rootfs")
            } else {
                (hook.path().exists(), "the guest image")
            };
            if !present {
                return Some(format!(
                    "{stage} hook {} is not in {place} (hooks run inside the VM)",
                    hook.path().display()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn adapt_rewrites_root_namespaces_and_cgroup_and_keeps_the_rest() {
        let mut s = spec(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "hostname": "pod",
            "hooks": {"prestart": [{"path": "/usr/bin/x"}]},
            "linux": {
                "cgroupsPath": "kubepods-x.slice:crio:abc",
                "namespaces": [
                    {"type": "pid"}, {"type": "network", "path": "/var/run/netns/p"},
                    {"type": "ipc", "path": "/proc/5/ns/ipc"}, {"type": "uts"}, {"type": "mount"},
                    {"type": "cgroup", "path": "/proc/5/ns/cgroup"}
                ]
            }
        }));
        adapt(&mut s, "c1", None);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["root"]["path"], "/run/crius/shared/c1/rootfs");
        assert_eq!(v["hooks"]["prestart"][0]["path"], "/usr/bin/x");
        assert_eq!(v["hostname"], "pod");
        assert_eq!(v["linux"]["cgroupsPath"], "/crius/c1");
        assert_eq!(
            v["linux"]["namespaces"],
            json!([{"type": "mount"}, {"type": "cgroup"}, {"type": "pid"},
                   {"type": "uts", "path": "/proc/1/ns/uts"}])
        );

        let mut abs = spec(json!({"ociVersion": "1.0.2",
            "root": {"path": "/run/crius/shared/c2/rootfs"},
            "linux": {"namespaces": [{"type": "pid"}]}}));
        adapt(&mut abs, "c2", Some(Path::new("/proc/9/ns/pid")));
        let v = serde_json::to_value(&abs).unwrap();
        assert_eq!(v["root"]["path"], "/run/crius/shared/c2/rootfs");
        assert_eq!(
            v["linux"]["namespaces"],
            json!([{"type": "pid", "path": "/proc/9/ns/pid"}, {"type": "mount"},
                   {"type": "uts", "path": "/proc/1/ns/uts"}])
        );
    }

    #[test]
    fn hooks_missing_in_the_guest_are_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/hook"), "").unwrap();
        let ok = spec(json!({"ociVersion": "1.0.2", "hooks": {
            "startContainer": [{"path": "/bin/hook"}],
            "createRuntime": [{"path": "/bin/sh"}]}}));
        assert_eq!(missing_hook(&ok, root.path()), None);
        let host = spec(json!({"ociVersion": "1.0.2", "hooks": {
            "prestart": [{"path": "/usr/libexec/no-such-host-hook"}]}}));
        let msg = missing_hook(&host, root.path()).unwrap();
        assert!(
            msg.contains("prestart hook /usr/libexec/no-such-host-hook"),
            "{msg}"
        );
        let inside = spec(json!({"ociVersion": "1.0.2", "hooks": {
            "createContainer": [{"path": "/bin/sh"}]}}));
        let msg = missing_hook(&inside, root.path()).unwrap();
        assert!(msg.contains("container's rootfs"), "{msg}");
    }
}
