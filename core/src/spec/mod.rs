//! OCI runtime spec (config.json) generation from the CRI container/pod
//! config and the image config.
//!
//! Skeleton: the public API is fixed; content is filled in incrementally.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// Where a container's namespaces come from.
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    /// Pod network namespace (a pinned netns path); `None` = host network.
    pub netns_path: Option<PathBuf>,
    /// Pid of the pod's infra (pause) process: containers join
    /// `/proc/<pid>/ns/{ipc,uts}` (and `pid` when the pod's pid mode is
    /// POD). `None` = fresh namespaces, or the host's per NamespaceOption.
    pub infra_pid: Option<u32>,
}

/// Files the core prepared in the pod's state dir, bind-mounted into every
/// container of the pod.
#[derive(Debug, Clone, Default)]
pub struct PodFiles {
    pub hostname: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    /// A directory (usually a tmpfs mounted by the core) bound at /dev/shm.
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
}

/// Everything [`infra_spec`] needs.
#[derive(Debug)]
pub struct InfraSpecInput<'a> {
    pub sandbox_id: &'a str,
    pub sandbox_config: &'a crius_proto::cri::PodSandboxConfig,
    pub rootfs: &'a Path,
    pub netns_path: Option<&'a Path>,
    pub cgroups_path: &'a str,
    pub pod_files: &'a PodFiles,
}

/// Why a spec could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request asks for something invalid (bad mount, unknown user, ...).
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

/// Builds the OCI spec of a workload container.
pub fn container_spec(_input: &ContainerSpecInput) -> Result<Spec, SpecError> {
    Err(SpecError::Build("container_spec not implemented yet".into()))
}

/// Builds the OCI spec of a pod's infra (pause) container.
pub fn infra_spec(_input: &InfraSpecInput) -> Result<Spec, SpecError> {
    Err(SpecError::Build("infra_spec not implemented yet".into()))
}

/// Writes `config.json` into `bundle_dir` and returns the bytes written.
pub fn write_spec(bundle_dir: &Path, spec: &Spec) -> Result<Vec<u8>, SpecError> {
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| SpecError::Build(e.to_string()))?;
    let path = bundle_dir.join("config.json");
    std::fs::write(&path, &bytes).map_err(|source| SpecError::Io {
        context: format!("writing {}", path.display()),
        source,
    })?;
    Ok(bytes)
}
