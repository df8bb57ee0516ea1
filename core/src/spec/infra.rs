//! The spec of a pod's infra (pause) container.

use super::*;

/// Builds the OCI spec of a pod's infra (pause) container: `/catatonit -P`
/// as root without capabilities on the read-only shared infra rootfs,
/// holding new IPC and UTS namespaces (unless the pod uses the host's), a
/// new PID namespace unless the pod uses the host's, the pod network
/// namespace, the pod hostname and the pod sysctls.
pub fn infra_spec(input: &InfraSpecInput) -> Result<Spec, SpecError> {
    let pod = input.sandbox_config;
    let sc = pod.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let opts = sc
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let host_network =
        input.netns_path.is_none() || mode(opts.network) == Some(NamespaceMode::Node);
    let host_ipc = mode(opts.ipc) == Some(NamespaceMode::Node);
    let host_pid = mode(opts.pid) == Some(NamespaceMode::Node);

    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, None)];
    if !host_network {
        namespaces.push(ns(
            LinuxNamespaceType::Network,
            input.netns_path.map(Path::to_path_buf),
        ));
        namespaces.push(ns(LinuxNamespaceType::Uts, None));
    }
    if !host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, None));
    }
    if !host_pid {
        namespaces.push(ns(LinuxNamespaceType::Pid, None));
    }
    if cgroup_v2_unified() {
        namespaces.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    join_userns(&mut namespaces, input.userns);
    let sysctls = sysctl::for_pod(pod, host_network, host_ipc)?;

    let uid = match sc.and_then(|s| s.run_as_user.as_ref()) {
        Some(v) => u32::try_from(v.value).map_err(|_| {
            SpecError::InvalidArgument(format!("run_as_user {} out of range", v.value))
        })?,
        None => 0,
    };
    let gid = match sc.and_then(|s| s.run_as_group.as_ref()) {
        Some(v) => u32::try_from(v.value).map_err(|_| {
            SpecError::InvalidArgument(format!("run_as_group {} out of range", v.value))
        })?,
        None => 0,
    };
    let seccomp = seccomp::for_context(sc, &HashSet::new())?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(vec![gid])
                .build()
                .map_err(build_err)?,
        )
        .args(
            INFRA_COMMAND
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .env(vec![DEFAULT_PATH.to_string()])
        .cwd("/")
        .capabilities(caps::process_caps(HashSet::new(), &[])?)
        .rlimits(rlimits())
        .no_new_privileges(true)
        .build()
        .map_err(build_err)?;

    let mut all_mounts = mounts::standard(false);
    all_mounts.extend(mounts::pod_files(input.pod_files, true));

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources(None, vec![mounts::deny_all()])?)
        .cgroups_path(PathBuf::from(input.cgroups_path))
        .devices(Vec::new())
        .build()
        .map_err(build_err)?;
    linux.set_masked_paths(Some(
        DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
    ));
    linux.set_readonly_paths(Some(
        DEFAULT_READONLY_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    ));
    linux.set_seccomp(seccomp);
    linux.set_sysctl(if sysctls.is_empty() {
        None
    } else {
        Some(sysctls)
    });
    set_id_mappings(&mut linux, input.userns)?;

    let mut ann = pod_annotations(
        &pod.annotations,
        annotations::CONTAINER_TYPE_SANDBOX,
        input.sandbox_id,
        pod,
    );
    ann.insert(
        annotations::SANDBOX_LOG_DIRECTORY.to_string(),
        pod.log_directory.clone(),
    );

    let hostname = (!host_network && !pod.hostname.is_empty()).then(|| pod.hostname.clone());
    assemble(
        input.rootfs,
        true,
        all_mounts,
        process,
        linux,
        ann,
        hostname,
    )
}
