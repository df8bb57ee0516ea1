//! Pods in user namespaces (`hostUsers: false`): what the pod asks for,
//! whether this node can do it, and the id-mapped volume mounts of its
//! containers. The namespaces themselves are made in
//! [`crate::sandbox::userns`].

use std::path::{Path, PathBuf};

use crius_proto::cri::{self, NamespaceMode};

use super::error::{PodError, PodResult};
use super::store::PodRecord;
use super::{PodManager, files};
use crate::config::StorageDriver;
use crate::sandbox::userns::{self, IdMappings, UsernsError};
use crate::spec::PodUserns;

/// Under the state dir: one directory per pod in a user namespace, holding
/// every path the runtime resolves from inside that namespace (container
/// rootfs mount points, id-mapped volume and infra rootfs clones, the pod's
/// files). The daemon's root is private (0700), which the pod's root, a
/// host uid of its own, cannot pass; this tree is `0711` down to the pod's
/// directory, which is `0710` with the pod's root group, so only that pod
/// gets in.
const USERNS_PODS_DIR: &str = "userns-pods";

/// Where a container's id-mapped volume clones are attached, under its
/// directory in the pod's user-namespace directory.
const IDMAPPED_VOLUMES_DIR: &str = "volumes";

/// The pod's id-mapped clone of the shared infra rootfs.
const INFRA_ROOTFS: &str = "infra-rootfs";

/// What a container's rootfs needs in a user-namespace pod.
pub(super) struct ContainerIdmap {
    pub userns: PathBuf,
    pub mount_point: PathBuf,
    pub root_owner: (u32, u32),
}

impl From<UsernsError> for PodError {
    fn from(e: UsernsError) -> Self {
        match e {
            UsernsError::Invalid(msg) => PodError::InvalidArgument(msg),
            other => PodError::io("user namespace", std::io::Error::other(other)),
        }
    }
}

fn mode(v: i32) -> Option<NamespaceMode> {
    NamespaceMode::try_from(v).ok()
}

/// The user namespace mappings a pod asks for: `None` for the host's user
/// namespace (mode NODE, or no mappings, which is what kubelets without the
/// feature send). Refuses what cannot work: other modes, half the mappings,
/// and a user namespace together with any host namespace (kubelet never
/// sends that; crius does not report `user_namespaces_host_network`).
pub(super) fn requested_mappings(config: &cri::PodSandboxConfig) -> PodResult<Option<IdMappings>> {
    let opts = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(userns) = opts.and_then(|o| o.userns_options.as_ref()) else {
        return Ok(None);
    };
    let bad = |msg: &str| Err(PodError::InvalidArgument(format!("RunPodSandbox: {msg}")));
    match mode(userns.mode) {
        Some(NamespaceMode::Node) => return Ok(None),
        Some(NamespaceMode::Pod) => {}
        _ => return bad("user namespace mode must be NODE or POD"),
    }
    if userns.uids.is_empty() && userns.gids.is_empty() {
        return Ok(None);
    }
    let opts = opts.cloned().unwrap_or_default();
    for (what, value) in [
        ("network", opts.network),
        ("pid", opts.pid),
        ("ipc", opts.ipc),
    ] {
        if mode(value) == Some(NamespaceMode::Node) {
            return bad(&format!(
                "a pod in a user namespace cannot use the host's {what} namespace"
            ));
        }
    }
    IdMappings::from_cri(&userns.uids, &userns.gids)
        .map(Some)
        .map_err(|e| PodError::InvalidArgument(format!("RunPodSandbox: {e}")))
}

impl PodRecord {
    /// The pod's pinned user namespace with its mappings; `None` for pods
    /// in the host's.
    pub fn userns(&self) -> Option<PodUserns> {
        let path = self.userns_path.clone()?;
        let mappings = requested_mappings(&self.config).ok().flatten()?;
        Some(PodUserns { path, mappings })
    }
}

impl PodManager {
    /// The pod's user-namespace directory (see [`USERNS_PODS_DIR`]).
    pub(super) fn userns_pod_dir(&self, pod_id: &str) -> PathBuf {
        self.config.state_dir.join(USERNS_PODS_DIR).join(pod_id)
    }

    /// Creates the pod's user-namespace directory, reachable by the pod's
    /// root only. Blocking.
    pub(super) fn create_userns_pod_dir(
        &self,
        pod_id: &str,
        maps: &IdMappings,
    ) -> PodResult<PathBuf> {
        let parent = self.config.state_dir.join(USERNS_PODS_DIR);
        crate::perms::ensure_dir(&parent, crate::perms::TRAVERSE_DIR)
            .and_then(|()| crate::perms::set_mode(&parent, crate::perms::TRAVERSE_DIR))
            .map_err(|e| PodError::io(format!("creating {}", parent.display()), e))?;
        let dir = parent.join(pod_id);
        let (_, gid) = maps.host_root();
        crate::perms::ensure_private_dir(&dir)
            .and_then(|()| std::os::unix::fs::chown(&dir, Some(0), Some(gid)))
            .and_then(|()| crate::perms::set_mode(&dir, 0o710))
            .map_err(|e| PodError::io(format!("creating {}", dir.display()), e))?;
        Ok(dir)
    }

    /// The infra container's rootfs for a pod in a user namespace: an
    /// id-mapped clone of the shared one in the pod's directory. Blocking.
    pub(super) fn userns_infra_rootfs(&self, pod: &PodRecord, shared: &Path) -> PodResult<PathBuf> {
        let userns = pod.userns_path.as_ref().ok_or_else(|| {
            PodError::FailedPrecondition(format!("pod {} has no user namespace", pod.id))
        })?;
        let clone = self.userns_pod_dir(&pod.id).join(INFRA_ROOTFS);
        if files::mounts_under(&clone).is_empty() {
            userns::idmapped_clone(shared, &clone, userns)?;
        }
        Ok(clone)
    }

    /// How to build the rootfs of `container_id` when its pod has a user
    /// namespace; `None` otherwise.
    pub(super) fn container_idmap(
        &self,
        pod: &PodRecord,
        container_id: &str,
    ) -> Option<ContainerIdmap> {
        let userns = pod.userns()?;
        Some(ContainerIdmap {
            mount_point: self
                .userns_pod_dir(&pod.id)
                .join(container_id)
                .join("rootfs"),
            root_owner: userns.mappings.host_root(),
            userns: userns.path,
        })
    }

    /// Whether pods can run in user namespaces here: the overlay storage
    /// driver, and a kernel that makes user namespaces and id-mapped mounts
    /// on the store's filesystem. Probed once; `Err` says why not.
    pub async fn userns_support(&self) -> Result<(), String> {
        if self.config.storage_driver != StorageDriver::Overlay {
            return Err("user namespaces need the overlay storage driver".into());
        }
        passable_by_pods(&self.config.state_dir)?;
        let root = self.config.root.clone();
        self.userns_probe
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || userns::probe(&root))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            })
            .await
            .clone()
    }

    /// Refuses a user-namespace pod this node or `handler` cannot run.
    pub(super) async fn check_userns_support(
        &self,
        handler: &dyn crius_shim_api::RuntimeHandler,
    ) -> PodResult<()> {
        if !handler.features().user_namespaces {
            return Err(PodError::InvalidArgument(format!(
                "RunPodSandbox: runtime handler {} does not run pods in user namespaces \
                 (hostUsers: false)",
                handler.name()
            )));
        }
        self.userns_support().await.map_err(|reason| {
            PodError::FailedPrecondition(format!(
                "RunPodSandbox: this node cannot run pods in user namespaces: {reason}"
            ))
        })
    }

    /// The container's mounts with id mappings replaced by id-mapped clones
    /// of their host paths (in the pod's user-namespace directory), so the container sees
    /// the files' owners as the kubelet made them. The mappings must be the
    /// pod's: kubelet always sends the pod's own.
    pub(super) async fn idmap_volumes(
        &self,
        container_id: &str,
        pod: &PodRecord,
        mut config: cri::ContainerConfig,
    ) -> PodResult<cri::ContainerConfig> {
        let userns = pod.userns();
        let container_dir = self.userns_pod_dir(&pod.id).join(container_id);
        for (index, m) in config.mounts.iter_mut().enumerate() {
            if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
                continue;
            }
            let Some(userns) = &userns else {
                return Err(PodError::InvalidArgument(format!(
                    "CreateContainer: mount {:?} has id mappings but the pod has no user namespace",
                    crate::bounded::bounded(&m.container_path)
                )));
            };
            if !userns
                .mappings
                .same_as_cri(&m.uid_mappings, &m.gid_mappings)
            {
                return Err(PodError::InvalidArgument(format!(
                    "CreateContainer: mount {:?}: id mappings other than the pod's are not supported",
                    crate::bounded::bounded(&m.container_path)
                )));
            }
            let source = PathBuf::from(&m.host_path);
            let clone = container_dir
                .join(IDMAPPED_VOLUMES_DIR)
                .join(index.to_string());
            let pin = userns.path.clone();
            let target = clone.clone();
            super::blocking("id-mapping a volume", move || {
                // Kubelet's host paths may be symlinks; the CRI says to
                // mount what they point at.
                let source = std::fs::canonicalize(&source).map_err(|e| {
                    PodError::InvalidArgument(format!(
                        "CreateContainer: mount host_path {}: {e}",
                        source.display()
                    ))
                })?;
                Ok(userns::idmapped_clone(&source, &target, &pin)?)
            })
            .await?;
            m.host_path = clone.display().to_string();
            m.uid_mappings.clear();
            m.gid_mappings.clear();
        }
        Ok(config)
    }
}

/// The pod's root reaches its directory under `state_dir` as "others":
/// every directory above it must let others pass (`o+x`).
fn passable_by_pods(state_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in state_dir.ancestors() {
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} (mode {:04o}) does not let other users pass, and pods in user namespaces \
                 reach their files under the state dir {} as other users",
                dir.display(),
                mode & 0o7777,
                state_dir.display()
            ));
        }
    }
    Ok(())
}

/// Detaches what a container has in its pod's user-namespace directory
/// (rootfs mount point, volume clones) and removes it. Blocking.
pub(super) fn remove_userns_container_dir(
    state_dir: &Path,
    pod_id: &str,
    container_id: &str,
) -> PodResult<()> {
    let dir = state_dir
        .join(USERNS_PODS_DIR)
        .join(pod_id)
        .join(container_id);
    if !dir.exists() {
        return Ok(());
    }
    files::remove_dir_safely(&dir)
}
