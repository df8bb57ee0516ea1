//! OCI runtime spec (config.json) generation from the CRI container/pod
//! config and the image config.
//!
//! Everything in the produced spec is set explicitly: the `oci-spec`
//! defaults (a youki shell with its own mounts and capabilities) are never
//! relied upon.
//!
//! Namespaces: containers join the pod's network namespace by path, and the
//! infra (pause) process's IPC, UTS and (pod pid mode) PID namespaces via
//! `/proc/<infra_pid>/ns/*`. Without an infra process they get fresh ones.
//! The mount namespace is always new; a cgroup namespace is added on a
//! unified cgroup v2 host.
//!
//! Sysctls belong to the namespaces of the pod: the infra spec carries
//! them, and container specs only when there is no infra process holding
//! the namespaces (then each container sets them in its own).

mod caps;
pub mod cdi;
pub mod hooks;
mod infra;
mod lsm;
mod mounts;
mod process;
mod resources;
mod seccomp;
mod sysctl;
mod user;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crius_proto::cri::{self, NamespaceMode, security_profile::ProfileType};
use oci_spec::runtime::{
    Capability, Linux, LinuxBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, PosixRlimitBuilder, PosixRlimitType, Process, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};

pub use infra::infra_spec;
use lsm::*;
use process::*;
use resources::*;
pub use resources::{MIN_MEMORY_LIMIT_BYTES, validate_resources};
pub use seccomp::runtime_default as runtime_default_seccomp;

/// Annotation keys the kubelet-facing runtimes put on OCI specs (shims and
/// VM handlers read them to tell pods from containers).
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_LOG_DIRECTORY: &str = "io.kubernetes.cri.sandbox-log-directory";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
    /// The image config's StopSignal, for handlers that stop containers
    /// (the OCI image-spec annotation key).
    pub const IMAGE_STOP_SIGNAL: &str = "org.opencontainers.image.stopSignal";
}

/// OCI spec version written into config.json.
pub const OCI_VERSION: &str = "1.0.2";
/// The pause process inside the infra rootfs (see `rootfs::prepare_infra_rootfs`).
pub const INFRA_COMMAND: &[&str] = &["/catatonit", "-P"];
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const NOFILE: u64 = 1_048_576;

const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where a container's namespaces come from.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    /// Pod network namespace (a pinned netns path); `None` = host network.
    pub netns_path: Option<PathBuf>,
    /// Pid of the pod's infra (pause) process: containers join
    /// `/proc/<pid>/ns/{ipc,uts}` (and `pid` when the pod's pid mode is
    /// POD). `None` = fresh namespaces, or the host's per NamespaceOption.
    pub infra_pid: Option<u32>,
    /// The pod's user namespace (`hostUsers: false`); `None` = the host's.
    pub userns: Option<PodUserns>,
}

/// A pod's pinned user namespace and its mappings, as every container of
/// the pod joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUserns {
    pub path: PathBuf,
    pub mappings: crate::sandbox::userns::IdMappings,
}

/// Adds the pod's user namespace to a spec: the namespace by path, and its
/// mappings, which runtimes need beside the path (runc finds the host ids
/// of the container's root in them to chown what it creates).
fn join_userns(namespaces: &mut Vec<LinuxNamespace>, userns: Option<&PodUserns>) {
    if let Some(u) = userns {
        namespaces.insert(0, ns(LinuxNamespaceType::User, Some(u.path.clone())));
    }
}

fn set_id_mappings(linux: &mut Linux, userns: Option<&PodUserns>) -> Result<(), SpecError> {
    let to_oci = |ranges: &[crate::sandbox::userns::IdRange]| {
        ranges
            .iter()
            .map(|r| {
                oci_spec::runtime::LinuxIdMappingBuilder::default()
                    .container_id(r.container_id)
                    .host_id(r.host_id)
                    .size(r.length)
                    .build()
                    .map_err(build_err)
            })
            .collect::<Result<Vec<_>, _>>()
    };
    match userns {
        Some(u) => {
            linux.set_uid_mappings(Some(to_oci(&u.mappings.uids)?));
            linux.set_gid_mappings(Some(to_oci(&u.mappings.gids)?));
        }
        None => {
            linux.set_uid_mappings(None);
            linux.set_gid_mappings(None);
        }
    }
    Ok(())
}

/// Files the core prepared in the pod's state dir, bind-mounted into every
/// container of the pod.
#[derive(Debug, Clone, Default)]
pub struct PodFiles {
    pub hostname: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    /// A directory (usually a tmpfs mounted by the core) bound at /dev/shm;
    /// `None` gives each container a private tmpfs.
    pub shm_dir: Option<PathBuf>,
}

/// Everything [`container_spec`] needs.
#[derive(Debug)]
pub struct ContainerSpecInput<'a> {
    pub container_id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a crius_proto::cri::ContainerConfig,
    pub sandbox_config: &'a crius_proto::cri::PodSandboxConfig,
    pub image: &'a crate::image::ContainerDefaults,
    /// The mounted rootfs (`<bundle>/rootfs`).
    pub rootfs: &'a Path,
    pub namespaces: &'a PodNamespaces,
    /// cgroupfs path of the container, e.g. `/kubepods/pod<uid>/crius-<cid>`.
    pub cgroups_path: &'a str,
    pub pod_files: &'a PodFiles,
    pub capabilities: &'a crius_shim_api::types::Capabilities,
    pub privileged_without_host_devices: bool,
    /// Lowest `oom_score_adj` a container may get (`restrict_oom_score_adj`);
    /// `None` passes the CRI's value through.
    pub min_oom_score_adj: Option<i32>,
}

/// Everything [`infra_spec`] needs.
#[derive(Debug)]
pub struct InfraSpecInput<'a> {
    pub sandbox_id: &'a str,
    pub sandbox_config: &'a crius_proto::cri::PodSandboxConfig,
    /// The shared infra rootfs (`rootfs::prepare_infra_rootfs`).
    pub rootfs: &'a Path,
    /// Pod network namespace; `None` = host network.
    pub netns_path: Option<&'a Path>,
    /// The pod's user namespace, when it has one.
    pub userns: Option<&'a PodUserns>,
    pub cgroups_path: &'a str,
    pub pod_files: &'a PodFiles,
}

/// Why a spec could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request asks for something invalid (bad mount, unknown user,
    /// unknown capability, non-namespaced sysctl, ...): a client error.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the OCI spec: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> SpecError {
    SpecError::Build(e.to_string())
}

fn mode(v: i32) -> Option<NamespaceMode> {
    NamespaceMode::try_from(v).ok()
}

fn ns(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => b.path(p),
        None => b,
    }
    .build()
    .expect("complete namespace")
}

/// Whether /sys/fs/cgroup is a unified cgroup v2 hierarchy.
fn cgroup_v2_unified() -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // f_type's width differs between architectures.
    #[allow(clippy::useless_conversion)]
    rustix::fs::statfs("/sys/fs/cgroup").is_ok_and(|s| i64::from(s.f_type) == CGROUP2_SUPER_MAGIC)
}

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn paths(cri: &[String], default: &[&str]) -> Vec<String> {
    if cri.is_empty() {
        default.iter().map(|s| s.to_string()).collect()
    } else {
        cri.to_vec()
    }
}

/// The annotations every spec of a pod carries: the request's own, then
/// (winning over a request key of the same name) the container type and
/// the pod's identity.
fn pod_annotations(
    own: &HashMap<String, String>,
    container_type: &str,
    sandbox_id: &str,
    pod: &cri::PodSandboxConfig,
) -> HashMap<String, String> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let mut ann = own.clone();
    for (k, v) in [
        (annotations::CONTAINER_TYPE, container_type.to_string()),
        (annotations::SANDBOX_ID, sandbox_id.to_string()),
        (annotations::SANDBOX_NAME, meta.name),
        (annotations::SANDBOX_NAMESPACE, meta.namespace),
        (annotations::SANDBOX_UID, meta.uid),
    ] {
        ann.insert(k.to_string(), v);
    }
    ann
}

/// Builds the OCI spec of a workload container.
pub fn container_spec(input: &ContainerSpecInput) -> Result<Spec, SpecError> {
    let cfg = input.config;
    let pod = input.sandbox_config;
    let sc = cfg.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let res = cfg.linux.as_ref().and_then(|l| l.resources.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let opts = sc
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();

    // Namespaces.
    let host_network =
        input.namespaces.netns_path.is_none() || mode(opts.network) == Some(NamespaceMode::Node);
    let host_ipc = mode(opts.ipc) == Some(NamespaceMode::Node);
    // The pod's user namespace is every container's: a container asking
    // for one of its own, or for one the pod does not have, is refused.
    if let Some(u) = &opts.userns_options
        && mode(u.mode) != Some(NamespaceMode::Node)
        && !(u.uids.is_empty() && u.gids.is_empty())
    {
        match &input.namespaces.userns {
            Some(pod_userns)
                if mode(u.mode) == Some(NamespaceMode::Pod)
                    && pod_userns.mappings.same_as_cri(&u.uids, &u.gids) => {}
            Some(_) => {
                return Err(SpecError::InvalidArgument(
                    "the container's user namespace must be the pod's (mode POD, same mappings)"
                        .into(),
                ));
            }
            None => {
                return Err(SpecError::InvalidArgument(
                    "the container asks for a user namespace but its pod has none".into(),
                ));
            }
        }
    }
    let infra_ns = |name: &str| {
        input
            .namespaces
            .infra_pid
            .map(|p| PathBuf::from(format!("/proc/{p}/ns/{name}")))
    };
    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, None)];
    if !host_network {
        namespaces.push(ns(
            LinuxNamespaceType::Network,
            input.namespaces.netns_path.clone(),
        ));
    }
    if !host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, infra_ns("ipc")));
    }
    // The pod's hostname lives in its UTS namespace; host-network pods use
    // the host's.
    let own_uts = !host_network && input.namespaces.infra_pid.is_none();
    if !host_network {
        namespaces.push(ns(LinuxNamespaceType::Uts, infra_ns("uts")));
    }
    match mode(opts.pid) {
        Some(NamespaceMode::Node) => {}
        Some(NamespaceMode::Pod) => namespaces.push(ns(LinuxNamespaceType::Pid, infra_ns("pid"))),
        Some(NamespaceMode::Container) => namespaces.push(ns(LinuxNamespaceType::Pid, None)),
        Some(NamespaceMode::Target) => {
            return Err(SpecError::InvalidArgument(
                "pid namespace mode TARGET is not supported".into(),
            ));
        }
        None => {
            return Err(SpecError::InvalidArgument(format!(
                "unknown pid namespace mode {}",
                opts.pid
            )));
        }
    }
    if cgroup_v2_unified() {
        namespaces.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    join_userns(&mut namespaces, input.namespaces.userns.as_ref());

    let hostname = if !pod.hostname.is_empty() {
        pod.hostname.clone()
    } else if host_network {
        host_hostname()
    } else {
        String::new()
    };

    let sysctls = sysctl::for_pod(pod, host_network, host_ipc)?;

    // Process.
    let args = process_args(cfg, input.image);
    if args.is_empty() {
        return Err(SpecError::InvalidArgument(
            "no command: neither the container config nor the image specify one".into(),
        ));
    }
    let cwd = if !cfg.working_dir.is_empty() {
        cfg.working_dir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    if !cwd.starts_with('/') {
        return Err(SpecError::InvalidArgument(format!(
            "working directory {cwd:?} must be absolute"
        )));
    }
    let user = user::resolve_user(input.rootfs, sc, &input.image.user)?;
    let cap_set: HashSet<Capability> = if privileged {
        caps::all()
    } else {
        let c = sc.and_then(|s| s.capabilities.as_ref());
        caps::effective_set(
            c.map(|c| c.add_capabilities.as_slice()).unwrap_or_default(),
            c.map(|c| c.drop_capabilities.as_slice())
                .unwrap_or_default(),
        )?
    };
    let ambient = sc
        .and_then(|s| s.capabilities.as_ref())
        .map(|c| c.add_ambient_capabilities.clone())
        .unwrap_or_default();
    let seccomp = seccomp::for_context(sc, &cap_set)?;
    let process_caps = caps::process_caps(cap_set, &ambient)?;
    let mut process = ProcessBuilder::default()
        .terminal(cfg.tty)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()
                .map_err(build_err)?,
        )
        .args(args)
        .env(merge_env(&input.image.env, &cfg.envs, &hostname))
        .cwd(cwd)
        .capabilities(process_caps)
        .rlimits(rlimits())
        .no_new_privileges(sc.is_some_and(|s| s.no_new_privs))
        .build()
        .map_err(build_err)?;
    process.set_apparmor_profile(apparmor_profile(sc, privileged)?);
    let label = if privileged {
        None
    } else {
        selinux_label(sc.and_then(|s| s.selinux_options.as_ref()))
    };
    process.set_selinux_label(label);
    // The CRI's value, raised to the floor when restricted; no negative
    // default is invented here.
    let oom_score_adj = res.map(|r| r.oom_score_adj as i32);
    process.set_oom_score_adj(
        oom_score_adj.map(|v| input.min_oom_score_adj.map_or(v, |floor| v.max(floor))),
    );

    // Mounts: kernel filesystems, pod files, then the CRI's; a CRI mount
    // replaces a default one at the same destination (the kubelet manages
    // /etc/hosts and may bind its own /dev/shm).
    let cri_mounts =
        mounts::cri_mounts(&cfg.mounts, input.capabilities.recursive_read_only_mounts)?;
    let taken: HashSet<PathBuf> = cri_mounts
        .mounts
        .iter()
        .map(|m| m.destination().clone())
        .collect();
    let mut all_mounts: Vec<Mount> = mounts::standard(privileged);
    all_mounts.extend(mounts::pod_files(input.pod_files, readonly_rootfs));
    all_mounts.retain(|m| !taken.contains(m.destination()));
    all_mounts.extend(cri_mounts.mounts);

    // Devices.
    let cri_devices = mounts::cri_devices(&cfg.devices)?;
    let (mut devices, mut rules) = (Vec::new(), Vec::new());
    if privileged {
        rules.push(mounts::allow_all());
        if !input.privileged_without_host_devices {
            devices = mounts::host_devices();
        }
    } else {
        rules.push(mounts::deny_all());
    }
    for (d, r) in cri_devices {
        devices.retain(|x: &oci_spec::runtime::LinuxDevice| x.path() != d.path());
        devices.push(d);
        if !privileged {
            rules.push(r);
        }
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources(res, rules)?)
        .cgroups_path(PathBuf::from(input.cgroups_path))
        .devices(devices)
        .build()
        .map_err(build_err)?;
    linux.set_masked_paths(Some(if privileged {
        Vec::new()
    } else {
        paths(
            sc.map(|s| s.masked_paths.as_slice()).unwrap_or_default(),
            DEFAULT_MASKED_PATHS,
        )
    }));
    linux.set_readonly_paths(Some(if privileged {
        Vec::new()
    } else {
        paths(
            sc.map(|s| s.readonly_paths.as_slice()).unwrap_or_default(),
            DEFAULT_READONLY_PATHS,
        )
    }));
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(cri_mounts.rootfs_propagation);
    linux.set_mount_label(None);
    linux.set_sysctl(
        if input.namespaces.infra_pid.is_none() && !sysctls.is_empty() {
            Some(sysctls)
        } else {
            None
        },
    );
    set_id_mappings(&mut linux, input.namespaces.userns.as_ref())?;

    let mut ann = pod_annotations(
        &cfg.annotations,
        annotations::CONTAINER_TYPE_CONTAINER,
        input.sandbox_id,
        pod,
    );
    for (k, v) in [
        (
            annotations::CONTAINER_NAME,
            cfg.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
        ),
        (
            annotations::IMAGE_NAME,
            cfg.image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
        ),
    ] {
        ann.insert(k.to_string(), v);
    }
    if !input.image.stop_signal.is_empty() {
        ann.insert(
            annotations::IMAGE_STOP_SIGNAL.to_string(),
            input.image.stop_signal.clone(),
        );
    }

    let hostname = (own_uts && !hostname.is_empty()).then_some(hostname);
    let spec = assemble(
        input.rootfs,
        readonly_rootfs,
        all_mounts,
        process,
        linux,
        ann,
        hostname,
    )?;
    tracing::debug!(
        container_id = input.container_id,
        sandbox_id = input.sandbox_id,
        "container spec built"
    );
    Ok(spec)
}

/// The spec of a container or a pod's infra container from its parts;
/// no domain name and no hooks (hooks are added from the hooks dirs).
pub(crate) fn assemble(
    rootfs: &Path,
    readonly_rootfs: bool,
    mounts: Vec<Mount>,
    process: Process,
    linux: Linux,
    annotations: HashMap<String, String>,
    hostname: Option<String>,
) -> Result<Spec, SpecError> {
    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(readonly_rootfs)
                .build()
                .map_err(build_err)?,
        )
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .annotations(annotations)
        .build()
        .map_err(build_err)?;
    spec.set_hostname(hostname);
    spec.set_domainname(None);
    spec.set_hooks(None);
    Ok(spec)
}

/// Writes `config.json` into `bundle_dir` (atomically: a temporary file
/// renamed into place) and returns the bytes written.
pub fn write_spec(bundle_dir: &Path, spec: &Spec) -> Result<Vec<u8>, SpecError> {
    let bytes = serde_json::to_vec_pretty(spec).map_err(build_err)?;
    let path = bundle_dir.join("config.json");
    let tmp = bundle_dir.join(".config.json.tmp");
    let io = |what: &str, p: &Path| {
        let context = format!("{what} {}", p.display());
        move |source| SpecError::Io { context, source }
    };
    // 0600: the spec holds the container's env, i.e. its secrets.
    crate::perms::create_private_file(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming into", &path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;
