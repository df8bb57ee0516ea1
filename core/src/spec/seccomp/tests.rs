use super::*;

/// Names allowed without argument conditions.
fn allowed(p: &LinuxSeccomp) -> Vec<String> {
    p.syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|s| s.args().is_none() && s.action() == LinuxSeccompAction::ScmpActAllow)
        .flat_map(|s| s.names().clone())
        .collect()
}

#[test]
fn allow_lists_are_sorted_and_disjoint() {
    let mut sorted = ALLOWED.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ALLOWED, "ALLOWED is sorted and has no duplicates");
    let conditional = ALLOWED_WITH_CAP
        .iter()
        .flat_map(|(_, names)| names.iter())
        .chain(ALLOWED_ON_ARCH.iter().flat_map(|(_, names)| names.iter()));
    for name in conditional {
        assert!(
            !ALLOWED.contains(name),
            "{name} is both unconditional and conditional"
        );
    }
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
fn default_profile_is_default_deny_with_capability_conditional_groups() {
    let none = HashSet::new();
    let p = runtime_default(&none);
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(p.default_errno_ret(), Some(EPERM));
    assert!(!p.architectures().as_ref().unwrap().is_empty());
    let a = allowed(&p);
    for s in [
        "read",
        "write",
        "openat",
        "execve",
        "futex",
        "clock_gettime",
        "ptrace",
    ] {
        assert!(a.contains(&s.to_string()), "{s} is allowed");
    }
    for s in [
        "kexec_load",
        "open_by_handle_at",
        "init_module",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "add_key",
        "mount",
        "umount2",
        "pivot_root",
        "swapon",
        "reboot",
        "setns",
        "unshare",
        "kcmp",
        "mbind",
        "clone",
        "clone3",
        "socket",
        "personality",
    ] {
        assert!(
            !a.contains(&s.to_string()),
            "{s} is not unconditionally allowed"
        );
    }
    let rules = p.syscalls().as_ref().unwrap();
    let clone = rules
        .iter()
        .find(|r| r.names() == &vec!["clone".to_string()])
        .unwrap();
    let clone_arg = clone.args().as_ref().unwrap()[0];
    assert_eq!(clone_arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
    assert_eq!(
        (clone_arg.value(), clone_arg.value_two()),
        (0x7E02_0000, Some(0))
    );
    let clone3 = rules
        .iter()
        .find(|r| r.names() == &vec!["clone3".to_string()])
        .unwrap();
    assert_eq!(clone3.errno_ret(), Some(ENOSYS));
    let socket = rules
        .iter()
        .find(|r| r.names() == &vec!["socket".to_string()])
        .unwrap();
    assert_eq!(
        socket.args().as_ref().unwrap()[0].op(),
        LinuxSeccompOperator::ScmpCmpNe
    );

    let admin: HashSet<_> = [Capability::SysAdmin].into();
    let p = runtime_default(&admin);
    let a = allowed(&p);
    for s in ["mount", "bpf", "unshare", "setns", "clone", "clone3"] {
        assert!(a.contains(&s.to_string()), "{s} allowed with CAP_SYS_ADMIN");
    }
    assert!(!a.contains(&"init_module".to_string()) && !a.contains(&"keyctl".to_string()));
    assert!(
        !p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.errno_ret() == Some(ENOSYS)),
        "no clone3 ENOSYS rule with CAP_SYS_ADMIN"
    );
    let ptrace: HashSet<_> = [Capability::SysPtrace].into();
    assert!(allowed(&runtime_default(&ptrace)).contains(&"kcmp".to_string()));
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
