//! Seccomp: the built-in RuntimeDefault profile and the CRI profile choice.
//!
//! The RuntimeDefault profile is a **denylist**: the default action is
//! ALLOW and a fixed set of syscalls that reach kernel state not isolated by
//! namespaces (keyrings, modules, kexec, reboot, clock, BPF/perf, mount API,
//! namespace creation, handle-based opens) fail with EPERM. Each rule is
//! lifted when the container holds the capability that makes the syscall
//! legitimate (CAP_SYS_ADMIN unlocks mount & co, CAP_SYS_MODULE module
//! loading, ...), so capability grants keep their meaning. An allowlist
//! would be tighter but must track every new syscall libc starts using;
//! a denylist never breaks ordinary workloads and still closes the
//! well-known escape and DoS paths. `clone3` returns ENOSYS without
//! CAP_SYS_ADMIN (its flags live in memory and cannot be filtered), so libc
//! falls back to `clone`, whose CLONE_NEWUSER flag is filtered.
//!
//! The filter names the native and compat architectures so 32-bit syscall
//! entry points are covered by the same rules.

use std::collections::HashSet;
use std::path::Path;

use crius_proto::cri::{SecurityProfile, security_profile::ProfileType};
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::SpecError;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// What a CRI security context asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeccompChoice {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// Reads the CRI choice: the `seccomp` field, else the deprecated
/// `seccomp_profile_path` (`runtime/default`, `docker/default`,
/// `unconfined`, `localhost/<path>`). Nothing set means unconfined, as in
/// the other CRI runtimes (the kubelet sends RuntimeDefault explicitly).
pub(crate) fn choice(
    profile: Option<&SecurityProfile>,
    deprecated_path: &str,
) -> Result<SeccompChoice, SpecError> {
    if let Some(p) = profile {
        return Ok(match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => SeccompChoice::RuntimeDefault,
            Ok(ProfileType::Unconfined) => SeccompChoice::Unconfined,
            Ok(ProfileType::Localhost) => SeccompChoice::Localhost(p.localhost_ref.clone()),
            Err(_) => {
                return Err(SpecError::InvalidArgument(format!(
                    "unknown seccomp profile type {}",
                    p.profile_type
                )));
            }
        });
    }
    Ok(match deprecated_path {
        "" | "unconfined" => SeccompChoice::Unconfined,
        "runtime/default" | "docker/default" => SeccompChoice::RuntimeDefault,
        other => match other.strip_prefix("localhost/") {
            Some(path) => SeccompChoice::Localhost(path.to_string()),
            None => {
                return Err(SpecError::InvalidArgument(format!(
                    "unknown seccomp profile {other:?}"
                )));
            }
        },
    })
}

/// The spec's seccomp section for a choice; `None` = unconfined.
pub(crate) fn profile(
    choice: &SeccompChoice,
    caps: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    match choice {
        SeccompChoice::Unconfined => Ok(None),
        SeccompChoice::RuntimeDefault => Ok(Some(runtime_default(caps))),
        SeccompChoice::Localhost(path) => load_localhost(Path::new(path)).map(Some),
    }
}

fn load_localhost(path: &Path) -> Result<LinuxSeccomp, SpecError> {
    if !path.is_absolute() {
        return Err(SpecError::InvalidArgument(format!(
            "seccomp localhost profile {} must be an absolute path",
            path.display()
        )));
    }
    let data = std::fs::read(path).map_err(|e| {
        SpecError::InvalidArgument(format!("seccomp localhost profile {}: {e}", path.display()))
    })?;
    serde_json::from_slice(&data).map_err(|e| {
        SpecError::InvalidArgument(format!(
            "seccomp localhost profile {} is not an OCI seccomp profile: {e}",
            path.display()
        ))
    })
}

fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "x86" => vec![Arch::ScmpArchX86],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "arm" => vec![Arch::ScmpArchArm],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        "powerpc64" => vec![Arch::ScmpArchPpc64le],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// Denied syscalls, each group lifted by any of the listed capabilities
/// (an empty list: always denied).
const DENIED: &[(&[Capability], &[&str])] = &[
    // Keyrings are not namespaced; obsolete or legacy-only calls.
    (
        &[],
        &[
            "add_key",
            "keyctl",
            "request_key",
            "uselib",
            "nfsservctl",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "vm86",
            "vm86old",
        ],
    ),
    (
        &[Capability::SysAdmin],
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "swapon",
            "swapoff",
            "setns",
            "unshare",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "setdomainname",
            "sethostname",
        ],
    ),
    (&[Capability::SysAdmin, Capability::Bpf], &["bpf"]),
    (
        &[Capability::SysAdmin, Capability::Perfmon],
        &["perf_event_open"],
    ),
    (
        &[Capability::SysBoot],
        &["reboot", "kexec_load", "kexec_file_load"],
    ),
    (
        &[Capability::SysModule],
        &["init_module", "finit_module", "delete_module"],
    ),
    (&[Capability::DacReadSearch], &["open_by_handle_at"]),
    (&[Capability::SysPtrace], &["userfaultfd"]),
    (&[Capability::SysPacct], &["acct"]),
    (
        &[Capability::SysTime],
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (&[Capability::Syslog], &["syslog"]),
];

/// The built-in RuntimeDefault profile for a container holding `caps`.
pub fn runtime_default(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let mut syscalls: Vec<LinuxSyscall> = Vec::new();
    let mut denied: Vec<String> = Vec::new();
    for (unlock, names) in DENIED {
        if unlock.iter().any(|c| caps.contains(c)) {
            continue;
        }
        denied.extend(names.iter().map(|s| s.to_string()));
    }
    syscalls.push(errno_rule(denied, EPERM, None));
    if !caps.contains(&Capability::SysAdmin) {
        syscalls.push(errno_rule(vec!["clone3".into()], ENOSYS, None));
        let arg: LinuxSeccompArg = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(CLONE_NEWUSER)
            .value_two(CLONE_NEWUSER)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .expect("complete seccomp arg");
        syscalls.push(errno_rule(vec!["clone".into()], EPERM, Some(vec![arg])));
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
        .expect("complete seccomp profile")
}

fn errno_rule(names: Vec<String>, errno: u32, args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno);
    if let Some(args) = args {
        b = b.args(args);
    }
    b.build().expect("complete syscall rule")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.args().is_none() && s.errno_ret() == Some(EPERM))
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn choice_from_cri_fields() {
        let p = |t: ProfileType, r: &str| SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        assert_eq!(
            choice(Some(&p(ProfileType::RuntimeDefault, "")), "").unwrap(),
            SeccompChoice::RuntimeDefault
        );
        assert_eq!(
            choice(Some(&p(ProfileType::Unconfined, "")), "runtime/default").unwrap(),
            SeccompChoice::Unconfined
        );
        assert_eq!(
            choice(Some(&p(ProfileType::Localhost, "/x.json")), "").unwrap(),
            SeccompChoice::Localhost("/x.json".into())
        );
        assert_eq!(choice(None, "").unwrap(), SeccompChoice::Unconfined);
        assert_eq!(
            choice(None, "runtime/default").unwrap(),
            SeccompChoice::RuntimeDefault
        );
        assert_eq!(
            choice(None, "localhost//p.json").unwrap(),
            SeccompChoice::Localhost("/p.json".into())
        );
        assert!(choice(None, "bogus").is_err());
    }

    #[test]
    fn default_profile_denies_dangerous_calls_unless_capable() {
        let none = HashSet::new();
        let p = runtime_default(&none);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert!(!p.architectures().as_ref().unwrap().is_empty());
        let d = denied(&p);
        for s in [
            "kexec_load",
            "open_by_handle_at",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "umount2",
            "pivot_root",
            "swapon",
            "swapoff",
            "reboot",
            "setns",
            "unshare",
        ] {
            assert!(d.contains(&s.to_string()), "{s} not denied");
        }
        assert!(!d.contains(&"read".to_string()));
        let rules = p.syscalls().as_ref().unwrap();
        let clone = rules
            .iter()
            .find(|r| r.names() == &vec!["clone".to_string()])
            .unwrap();
        assert_eq!(
            clone.args().as_ref().unwrap()[0].op(),
            LinuxSeccompOperator::ScmpCmpMaskedEq
        );
        let clone3 = rules
            .iter()
            .find(|r| r.names() == &vec!["clone3".to_string()])
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(ENOSYS));

        let admin: HashSet<_> = [Capability::SysAdmin].into();
        let p = runtime_default(&admin);
        let d = denied(&p);
        assert!(!d.contains(&"mount".to_string()) && !d.contains(&"bpf".to_string()));
        assert!(d.contains(&"keyctl".to_string()) && d.contains(&"init_module".to_string()));
        assert!(
            !p.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .any(|r| r.names().contains(&"clone3".to_string()))
        );
    }

    #[test]
    fn localhost_profile_is_loaded_and_validated() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("p.json");
        std::fs::write(&f, r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"}]}"#).unwrap();
        let p = profile(
            &SeccompChoice::Localhost(f.to_string_lossy().into()),
            &HashSet::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.syscalls().as_ref().unwrap()[0].names().len(), 2);
        for bad in [
            "relative.json".to_string(),
            tmp.path()
                .join("missing.json")
                .to_string_lossy()
                .into_owned(),
        ] {
            let e = profile(&SeccompChoice::Localhost(bad.clone()), &HashSet::new()).unwrap_err();
            assert!(matches!(e, SpecError::InvalidArgument(_)), "{bad}: {e}");
        }
        std::fs::write(&f, "not json").unwrap();
        assert!(matches!(
            profile(
                &SeccompChoice::Localhost(f.to_string_lossy().into()),
                &HashSet::new()
            ),
            Err(SpecError::InvalidArgument(_))
        ));
        assert!(
            profile(&SeccompChoice::Unconfined, &HashSet::new())
                .unwrap()
                .is_none()
        );
    }
}
