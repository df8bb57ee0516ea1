//! Adapts the host's OCI spec to the guest (see handlers/kata/README.md).

use serde_json::Value;

/// Guest mount point of the pod's shared directory.
pub const SHARED_DIR: &str = "/run/crius/shared";

/// Rewrites `spec` (config.json as JSON) for container `cid`:
/// rootfs path, namespaces, cgroup path, hooks.
pub fn adapt(spec: &mut Value, cid: &str, sandbox_pidns: bool) {
    let root = spec["root"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !root.starts_with('/') {
        let rel = if root.is_empty() {
            "rootfs"
        } else {
            root.as_str()
        };
        spec["root"]["path"] = Value::from(format!("{SHARED_DIR}/{cid}/{rel}"));
    }
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("hooks");
        // Containers share the VM's UTS namespace, whose hostname
        // CreateSandbox set; runc refuses a hostname without a private one.
        obj.remove("hostname");
    }
    if spec.get("linux").is_none_or(|l| !l.is_object()) {
        spec["linux"] = serde_json::json!({});
    }
    let linux = &mut spec["linux"];
    linux["cgroupsPath"] = Value::from(format!("/crius/{cid}"));
    let mut namespaces: Vec<Value> = linux["namespaces"].as_array().cloned().unwrap_or_default();
    namespaces.retain(|n| {
        let t = n["type"].as_str().unwrap_or_default();
        // The VM is the pod: containers share its network, IPC and UTS.
        !(matches!(t, "network" | "ipc" | "uts") || (t == "pid" && sandbox_pidns))
    });
    for n in &mut namespaces {
        if let Some(o) = n.as_object_mut() {
            // Host namespace paths mean nothing in the guest.
            o.remove("path");
        }
    }
    if !namespaces.iter().any(|n| n["type"] == "mount") {
        namespaces.push(serde_json::json!({"type": "mount"}));
    }
    linux["namespaces"] = Value::Array(namespaces);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adapt_rewrites_root_namespaces_and_cgroup() {
        let mut spec = json!({
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
        });
        adapt(&mut spec, "c1", false);
        assert_eq!(spec["root"]["path"], "/run/crius/shared/c1/rootfs");
        assert!(spec.get("hooks").is_none());
        assert!(spec.get("hostname").is_none());
        assert_eq!(spec["linux"]["cgroupsPath"], "/crius/c1");
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "mount"}, {"type": "cgroup"}])
        );

        let mut abs = json!({"root": {"path": "/run/crius/shared/c2/rootfs"}, "linux": {"namespaces": [{"type": "pid"}]}});
        adapt(&mut abs, "c2", true);
        assert_eq!(abs["root"]["path"], "/run/crius/shared/c2/rootfs");
        assert_eq!(abs["linux"]["namespaces"], json!([{"type": "mount"}]));
    }
}
