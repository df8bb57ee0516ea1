//! Pod sysctls inside the VM.
//!
//! The VM is the pod: its network and IPC namespaces are the ones every
//! container of the pod shares. runc refuses a namespaced sysctl for a
//! namespace the container does not create itself ("not allowed in host
//! network namespace"), so the agent takes the pod's sysctls out of each
//! container's spec and writes them to the VM's `/proc/sys` once, before the
//! container is created. Only sysctls of namespaces the pod owns are taken;
//! anything else is refused (the daemon already refuses them for every
//! handler; this keeps the guest safe from another caller).

use std::path::PathBuf;

use crius_agent_proto::oci_spec::runtime::Spec;

/// Prefixes of the sysctls in the pod's network and IPC
/// namespaces, the set Kubernetes calls namespaced.
const NAMESPACED: &[&str] = &[
    "net.",
    "kernel.shm",
    "kernel.msg",
    "kernel.sem",
    "fs.mqueue.",
];

/// A sysctl to apply: its name and its file under `/proc/sys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub name: String,
    pub path: PathBuf,
    pub value: String,
}

/// Removes the sysctls from `spec` and returns them, checked; `Err` names
/// the first one the VM cannot apply for the pod.
pub fn take(spec: &mut Spec) -> Result<Vec<Sysctl>, String> {
    let Some(linux) = spec.linux_mut() else {
        return Ok(Vec::new());
    };
    let Some(map) = linux.sysctl_mut().take() else {
        return Ok(Vec::new());
    };
    let mut out: Vec<Sysctl> = map
        .into_iter()
        .map(|(name, value)| check(&name).map(|path| Sysctl { name, path, value }))
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Checks `name` and returns its file. Kubernetes accepts both spellings:
/// `net.ipv4.conf.eth0.forwarding` and, where a component itself holds a
/// dot, `net/ipv4/conf/eth0.100/forwarding`.
fn check(name: &str) -> Result<PathBuf, String> {
    let dotted = name.replace('/', ".");
    let is_namespaced = NAMESPACED.iter().any(|p| dotted.starts_with(p));
    if !is_namespaced {
        return Err(format!(
            "sysctl {name:?} is not in the pod's network or IPC namespace and cannot be set for a kata pod"
        ));
    }
    let relative = if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    };
    let valid = relative.split('/').all(|c| {
        !c.is_empty()
            && c != "."
            && c != ".."
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
    });
    if !valid || name.len() > 256 {
        return Err(format!("invalid sysctl name {name:?}"));
    }
    Ok(PathBuf::from("/proc/sys").join(relative))
}

/// Writes each sysctl. A name the guest kernel lacks is the caller's error.
pub async fn apply(sysctls: &[Sysctl]) -> Result<(), String> {
    for s in sysctls {
        if let Err(err) = tokio::fs::write(&s.path, s.value.as_bytes()).await {
            return Err(if err.kind() == std::io::ErrorKind::NotFound {
                format!("sysctl {:?} does not exist in the guest kernel", s.name)
            } else {
                format!("sysctl {:?} = {:?}: {err}", s.name, s.value)
            });
        }
        tracing::debug!(name = %s.name, value = %s.value, "pod sysctl applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sysctls: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"sysctl": sysctls}
        }))
        .unwrap()
    }

    #[test]
    fn namespaced_sysctls_leave_the_spec_with_their_proc_paths() {
        let mut s = spec(serde_json::json!({
            "net.ipv4.ip_unprivileged_port_start": "0",
            "kernel.shm_rmid_forced": "1",
            "fs.mqueue.msg_max": "20",
            "net/ipv4/conf/eth0.100/forwarding": "1",
            "kernel.sem": "250 32000 32 128",
        }));
        let taken = take(&mut s).unwrap();
        assert!(s.linux().as_ref().unwrap().sysctl().is_none());
        let paths: Vec<_> = taken.iter().map(|t| t.path.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/proc/sys/fs/mqueue/msg_max",
                "/proc/sys/kernel/sem",
                "/proc/sys/kernel/shm_rmid_forced",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start",
                "/proc/sys/net/ipv4/conf/eth0.100/forwarding",
            ]
        );
    }

    #[test]
    fn other_and_malformed_sysctls_are_refused() {
        for name in [
            "vm.overcommit_memory",
            "kernel.hostname",
            "net.ipv4/../../kernel/core_pattern",
            "net..x",
        ] {
            let mut s = spec(serde_json::json!({ name: "1" }));
            assert!(take(&mut s).is_err(), "{name} accepted");
        }
    }
}
