//! A container as the shim tracks it, and how its bundle is exposed to the
//! guest: the rootfs and every bind-mount source are bind-mounted under the
//! pod's shared directory, and the OCI spec is rewritten to the guest paths
//! (see handlers/kata/README.md).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crius_agent_proto::oci_spec::runtime::{Mount, Root, Spec};
use crius_shim_api::types::{ContainerState, ContainerStatusResponse};

use crate::agent_client::{GUEST_SHARED_DIR, guest_rootfs};

/// One host path bind-mounted into the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    pub source: PathBuf,
    /// Where it appears under the pod's shared dir on the host.
    pub target: PathBuf,
    pub recursive: bool,
    /// One share for the whole pod (under `volumes/`), mounted once and
    /// kept until the pod is removed: see [`VOLUMES`].
    pub pod_wide: bool,
}

/// Directory of the pod-wide shares under the shared dir. A bind mount
/// with propagation (`rshared`/`shared`, `rslave`/`slave`: Kubernetes'
/// Bidirectional and HostToContainer) only propagates between containers
/// that mount the same guest mount, so each such host path is shared once
/// per pod, at `volumes/<hash of the path>`, for every container that
/// mounts it; the agent makes that guest path a shared mount.
pub const VOLUMES: &str = "volumes";

fn propagates(mount: &Mount) -> bool {
    mount
        .options()
        .iter()
        .flatten()
        .any(|o| matches!(o.as_str(), "rshared" | "shared" | "rslave" | "slave"))
}

/// A stable name for a host path (FNV-1a, 64 bits): the same source gives
/// the same pod-wide share in every container.
fn volume_name(source: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.as_os_str().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| matches!(o.as_str(), "bind" | "rbind"))
}

/// Rewrites the host's OCI spec for the guest and lists the host paths that
/// must be shared for it: the rootfs (first) and each bind-mount source.
/// Everything else (hooks, hostname, …) goes to the guest as built; the
/// agent places namespaces and cgroups and checks that hooks exist there.
pub fn adapt_spec(spec: &mut Spec, cid: &str, rootfs: &Path, shared_dir: &Path) -> Vec<ShareMount> {
    let container_share = shared_dir.join(cid);
    let mut shares = vec![ShareMount {
        source: rootfs.to_path_buf(),
        target: container_share.join("rootfs"),
        recursive: false,
        pod_wide: false,
    }];
    let mut root = spec.root().clone().unwrap_or_else(|| {
        let mut r = Root::default();
        r.set_readonly(None);
        r
    });
    root.set_path(PathBuf::from(guest_rootfs(cid)));
    spec.set_root(Some(root));
    if let Some(mounts) = spec.mounts_mut() {
        for (index, mount) in mounts.iter_mut().enumerate() {
            if !is_bind(mount) {
                continue;
            }
            let Some(source) = mount.source().clone() else {
                continue;
            };
            let recursive = mount.options().iter().flatten().any(|o| o == "rbind");
            let (target, guest) = if propagates(mount) {
                let name = format!("{VOLUMES}/{}", volume_name(&source));
                (shared_dir.join(&name), format!("{GUEST_SHARED_DIR}/{name}"))
            } else {
                let name = format!("mounts/{index}");
                (
                    container_share.join(&name),
                    format!("{GUEST_SHARED_DIR}/{cid}/{name}"),
                )
            };
            shares.push(ShareMount {
                pod_wide: propagates(mount),
                source,
                target,
                recursive,
            });
            mount.set_source(Some(PathBuf::from(guest)));
        }
    }
    shares
}

/// Bind-mounts `share` (creating the target as a file or directory like its
/// source).
pub fn mount_share(share: &ShareMount) -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    let meta = std::fs::metadata(&share.source).map_err(|err| {
        std::io::Error::new(err.kind(), format!("{}: {err}", share.source.display()))
    })?;
    if let Some(parent) = share.target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if meta.is_dir() {
        std::fs::create_dir_all(&share.target)?;
    } else if !share.target.exists() {
        std::fs::File::create(&share.target)?;
    }
    let mut flags = MsFlags::MS_BIND;
    if share.recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(
        Some(&share.source),
        &share.target,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|err| {
        std::io::Error::other(format!(
            "bind-mounting {} at {}: {err}",
            share.source.display(),
            share.target.display()
        ))
    })
}

/// Unmounts (lazily, the guest may still hold files open) and removes a
/// container's directory under the share. Idempotent.
pub fn unshare_container(shared_dir: &Path, cid: &str) {
    use nix::mount::{MntFlags, umount2};
    let dir = shared_dir.join(cid);
    let mut targets = vec![dir.join("rootfs")];
    if let Ok(entries) = std::fs::read_dir(dir.join("mounts")) {
        targets.extend(entries.flatten().map(|e| e.path()));
    }
    for target in &targets {
        // Repeat: a path may carry stacked mounts.
        while umount2(target, MntFlags::MNT_DETACH).is_ok() {}
    }
    for target in targets.iter().rev() {
        let _ = std::fs::remove_dir(target).or_else(|_| std::fs::remove_file(target));
    }
    let _ = std::fs::remove_dir(dir.join("mounts"));
    let _ = std::fs::remove_dir(&dir);
}

/// Unmounts and removes the pod-wide shares (at pod removal, when no
/// container uses them any more). Idempotent.
pub fn unshare_pod_volumes(shared_dir: &Path) {
    use nix::mount::{MntFlags, umount2};
    let dir = shared_dir.join(VOLUMES);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for target in entries.flatten().map(|e| e.path()) {
        while umount2(&target, MntFlags::MNT_DETACH).is_ok() {}
        // Never recursive: an unmount that failed leaves host data here.
        let _ = std::fs::remove_dir(&target).or_else(|_| std::fs::remove_file(&target));
    }
    let _ = std::fs::remove_dir(&dir);
}

/// The CRI-visible state of a container.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub state: i32,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

impl Status {
    pub fn to_response(&self) -> ContainerStatusResponse {
        ContainerStatusResponse {
            state: self.state,
            pid: 0,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            exit_code: self.exit_code,
            reason: self.reason.clone(),
            message: self.message.clone(),
        }
    }
    pub fn is(&self, state: ContainerState) -> bool {
        self.state == state as i32
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// How the container's main process was asked to take input (its CRI
/// `ContainerConfig`): what `Attach` may do with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioConfig {
    /// `stdin: true`: attach sessions may write to its stdin.
    pub stdin: bool,
    /// `stdin_once`: the first attach session's end closes its stdin.
    pub stdin_once: bool,
    /// `tty`: the process has a terminal (output on stdout only).
    pub tty: bool,
}

/// One container of the pod.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// The spec sent to the agent, the template of exec processes.
    pub spec: Spec,
    pub log: Option<std::sync::Arc<crate::crilog::CriLog>>,
    pub status: Mutex<Status>,
    /// Flips to true when the container's process has exited.
    pub exited: tokio::sync::watch::Sender<bool>,
    pub stdio: StdioConfig,
    /// The main process's output as it is copied into the log, for
    /// attached clients.
    pub output: crate::attach::OutputHub,
}

impl Container {
    pub fn new(
        id: String,
        spec: Spec,
        log: Option<std::sync::Arc<crate::crilog::CriLog>>,
        status: Status,
        stdio: StdioConfig,
    ) -> Self {
        let exited = status.is(ContainerState::Exited);
        Container {
            id,
            spec,
            log,
            status: Mutex::new(status),
            exited: tokio::sync::watch::channel(exited).0,
            stdio,
            output: crate::attach::OutputHub::default(),
        }
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
    /// Marks the container exited (once) and wakes waiters.
    pub fn set_exited(&self, exit_code: i32, reason: &str, message: &str) {
        let mut first = false;
        self.update(|s| {
            if !s.is(ContainerState::Exited) {
                first = true;
                s.state = ContainerState::Exited as i32;
                s.finished_at = now_nanos();
                s.exit_code = exit_code;
                s.reason = reason.to_string();
                s.message = message.to_string();
            }
        });
        if first {
            self.exited.send_replace(true);
        }
    }
    /// Waits until the container exited, at most `timeout`; true if it did.
    pub async fn wait_exited(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.exited.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|exited| *exited))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_points_at_the_share_and_lists_bind_sources() {
        let mut spec: Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/host/bundle/rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
            "hostname": "pod",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/pods/p/hosts", "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "/vol", "options": ["bind"]},
                {"destination": "/shared", "source": "/pvc", "options": ["rbind", "rshared"]},
            ],
        }))
        .unwrap();
        let shares = adapt_spec(
            &mut spec,
            "c1",
            Path::new("/b/rootfs"),
            Path::new("/s/shared"),
        );
        let spec = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            spec["root"],
            json!({"path": "/run/crius/shared/c1/rootfs", "readonly": true})
        );
        // Hooks and hostname go to the guest (the agent judges them).
        assert_eq!(spec["hooks"]["prestart"][0]["path"], "/usr/bin/hook");
        assert_eq!(spec["hostname"], "pod");
        assert_eq!(spec["mounts"][0]["source"], "proc");
        assert_eq!(spec["mounts"][1]["source"], "/run/crius/shared/c1/mounts/1");
        assert_eq!(spec["mounts"][2]["source"], "/run/crius/shared/c1/mounts/2");
        // A mount with propagation is shared once per pod, by host path.
        let pod_wide = format!("volumes/{}", volume_name(Path::new("/pvc")));
        assert_eq!(
            spec["mounts"][3]["source"],
            format!("/run/crius/shared/{pod_wide}")
        );
        assert_eq!(
            shares,
            vec![
                ShareMount {
                    source: "/b/rootfs".into(),
                    target: "/s/shared/c1/rootfs".into(),
                    recursive: false,
                    pod_wide: false
                },
                ShareMount {
                    source: "/pods/p/hosts".into(),
                    target: "/s/shared/c1/mounts/1".into(),
                    recursive: true,
                    pod_wide: false
                },
                ShareMount {
                    source: "/vol".into(),
                    target: "/s/shared/c1/mounts/2".into(),
                    recursive: false,
                    pod_wide: false
                },
                ShareMount {
                    source: "/pvc".into(),
                    target: Path::new("/s/shared").join(&pod_wide),
                    recursive: true,
                    pod_wide: true
                },
            ]
        );
    }

    #[tokio::test]
    async fn exit_is_recorded_once_and_wakes_waiters() {
        let c = std::sync::Arc::new(Container::new(
            "c".into(),
            Spec::default(),
            None,
            Status::default(),
            StdioConfig::default(),
        ));
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_exited(std::time::Duration::from_secs(5)).await })
        };
        c.set_exited(137, "OOMKilled", "");
        c.set_exited(0, "Completed", "");
        assert!(waiter.await.unwrap());
        let s = c.status();
        assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));
        assert!(s.finished_at > 0);
    }
}
