//! Pod sysctls: only namespaced ones are accepted, and only when the pod
//! owns the namespace they belong to.

use std::collections::HashMap;

use crius_proto::cri::PodSandboxConfig;

use super::SpecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Ipc,
    Net,
}

fn namespace_of(name: &str) -> Option<Ns> {
    if name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.")
    {
        Some(Ns::Ipc)
    } else if name.starts_with("net.") {
        Some(Ns::Net)
    } else {
        None
    }
}

/// Kubernetes accepts `a/b/c` as well as `a.b.c`; with slashes, dots are
/// part of a component (`net/ipv4/conf/eth0.100/forwarding`).
fn normalize(name: &str) -> String {
    if name.contains('/') && name.find('/') < name.find('.').or(Some(usize::MAX)) {
        name.chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect()
    } else {
        name.to_string()
    }
}

/// Validates the pod's sysctls and returns them keyed by their dotted
/// names. Non-namespaced names, `net.*` with the host network and IPC
/// sysctls with the host IPC namespace are refused.
/// The pod's sysctls (`linux.sysctls`), checked with `validate`.
pub(crate) fn for_pod(
    pod: &PodSandboxConfig,
    host_network: bool,
    host_ipc: bool,
) -> Result<HashMap<String, String>, SpecError> {
    match &pod.linux {
        Some(linux) => validate(&linux.sysctls, host_network, host_ipc),
        None => Ok(HashMap::new()),
    }
}

pub(crate) fn validate(
    sysctls: &HashMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<HashMap<String, String>, SpecError> {
    let mut out = HashMap::new();
    for (name, value) in sysctls {
        let key = normalize(name.trim());
        match namespace_of(&key) {
            None => {
                return Err(SpecError::InvalidArgument(format!(
                    "sysctl {name:?} is not namespaced and cannot be set for a pod"
                )));
            }
            Some(Ns::Net) if host_network => {
                return Err(SpecError::InvalidArgument(format!(
                    "sysctl {name:?} cannot be set on a pod using the host network"
                )));
            }
            Some(Ns::Ipc) if host_ipc => {
                return Err(SpecError::InvalidArgument(format!(
                    "sysctl {name:?} cannot be set on a pod using the host IPC namespace"
                )));
            }
            Some(_) => {
                out.insert(key, value.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[(&str, &str)]) -> HashMap<String, String> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn namespaced_sysctls_pass() {
        let ok = m(&[
            ("kernel.shm_rmid_forced", "1"),
            ("kernel.msgmax", "8192"),
            ("kernel.sem", "250 32000 100 128"),
            ("fs.mqueue.msg_max", "20"),
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("net/ipv4/conf/eth0.100/forwarding", "1"),
        ]);
        let out = validate(&ok, false, false).unwrap();
        assert_eq!(out.len(), 6);
        assert_eq!(out["net.ipv4.conf.eth0/100.forwarding"], "1");
        assert_eq!(out["kernel.sem"], "250 32000 100 128");
    }

    #[test]
    fn non_namespaced_and_host_namespace_sysctls_fail() {
        for bad in [
            "vm.swappiness",
            "kernel.hostname",
            "fs.file-max",
            "kernel.semx",
        ] {
            let e = validate(&m(&[(bad, "1")]), false, false).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert!(validate(&m(&[("net.core.somaxconn", "1024")]), true, false).is_err());
        assert!(validate(&m(&[("net.core.somaxconn", "1024")]), false, true).is_ok());
        assert!(validate(&m(&[("kernel.shmmax", "1")]), false, true).is_err());
        assert!(validate(&m(&[("kernel.shmmax", "1")]), true, false).is_ok());
    }
}
