//! A container as the shim tracks it, and how its bundle is exposed to the
//! guest: the rootfs and every bind-mount source are bind-mounted under the
//! pod's shared directory, and the OCI spec is rewritten to the guest paths
//! (see handlers/kata/README.md).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crius_shim_api::types::{ContainerState, ContainerStatusResponse};
use serde_json::Value;

use crate::agent_client::{GUEST_SHARED_DIR, guest_rootfs};

/// One host path bind-mounted into the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    pub source: PathBuf,
    /// Where it appears under the pod's shared dir on the host.
    pub target: PathBuf,
    pub recursive: bool,
}

fn is_bind(mount: &Value) -> bool {
    let by_type = mount.get("type").and_then(Value::as_str) == Some("bind");
    let by_option = mount
        .get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| {
            o.iter()
                .any(|v| matches!(v.as_str(), Some("bind" | "rbind")))
        });
    by_type || by_option
}

/// Rewrites the host's OCI spec for the guest and lists the host paths that
/// must be shared for it: the rootfs (first) and each bind-mount source.
/// Hooks (host binaries) are dropped; namespaces and cgroups are the
/// agent's business (it drops host namespace paths and places the cgroup).
pub fn adapt_spec(
    spec: &mut Value,
    cid: &str,
    rootfs: &Path,
    shared_dir: &Path,
) -> Vec<ShareMount> {
    let container_share = shared_dir.join(cid);
    let mut shares = vec![ShareMount {
        source: rootfs.to_path_buf(),
        target: container_share.join("rootfs"),
        recursive: false,
    }];
    if let Some(root) = spec.get_mut("root").and_then(Value::as_object_mut) {
        root.insert("path".into(), Value::String(guest_rootfs(cid)));
    } else if let Some(obj) = spec.as_object_mut() {
        obj.insert(
            "root".into(),
            serde_json::json!({ "path": guest_rootfs(cid) }),
        );
    }
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("hooks");
        // Containers share the VM's UTS namespace (the pod's): the agent
        // set its hostname at CreateSandbox, and a runtime refuses to set
        // one without a private UTS namespace.
        obj.remove("hostname");
        obj.remove("domainname");
    }
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        for (index, mount) in mounts.iter_mut().enumerate() {
            if !is_bind(mount) {
                continue;
            }
            let Some(source) = mount
                .get("source")
                .and_then(Value::as_str)
                .map(PathBuf::from)
            else {
                continue;
            };
            let recursive = mount
                .get("options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|v| v.as_str() == Some("rbind")));
            let name = format!("mounts/{index}");
            shares.push(ShareMount {
                source,
                target: container_share.join(&name),
                recursive,
            });
            mount["source"] = Value::String(format!("{GUEST_SHARED_DIR}/{cid}/{name}"));
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

/// One container of the pod.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// The spec sent to the agent (JSON), the template of exec processes.
    pub spec: Value,
    pub log: Option<std::sync::Arc<crate::crilog::CriLog>>,
    pub status: Mutex<Status>,
    /// Flips to true when the container's process has exited.
    pub exited: tokio::sync::watch::Sender<bool>,
}

impl Container {
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
        let mut spec = json!({
            "root": {"path": "/host/bundle/rootfs", "readonly": true},
            "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
            "hostname": "pod",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/pods/p/hosts", "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "/vol", "options": ["bind"]},
            ],
        });
        let shares = adapt_spec(
            &mut spec,
            "c1",
            Path::new("/b/rootfs"),
            Path::new("/s/shared"),
        );
        assert_eq!(
            spec["root"],
            json!({"path": "/run/crius/shared/c1/rootfs", "readonly": true})
        );
        assert!(spec.get("hooks").is_none());
        assert!(spec.get("hostname").is_none());
        assert_eq!(spec["mounts"][0]["source"], "proc");
        assert_eq!(spec["mounts"][1]["source"], "/run/crius/shared/c1/mounts/1");
        assert_eq!(spec["mounts"][2]["source"], "/run/crius/shared/c1/mounts/2");
        assert_eq!(
            shares,
            vec![
                ShareMount {
                    source: "/b/rootfs".into(),
                    target: "/s/shared/c1/rootfs".into(),
                    recursive: false
                },
                ShareMount {
                    source: "/pods/p/hosts".into(),
                    target: "/s/shared/c1/mounts/1".into(),
                    recursive: true
                },
                ShareMount {
                    source: "/vol".into(),
                    target: "/s/shared/c1/mounts/2".into(),
                    recursive: false
                },
            ]
        );
    }

    #[tokio::test]
    async fn exit_is_recorded_once_and_wakes_waiters() {
        let (tx, _) = tokio::sync::watch::channel(false);
        let c = std::sync::Arc::new(Container {
            id: "c".into(),
            spec: Value::Null,
            log: None,
            status: Mutex::new(Status::default()),
            exited: tx,
        });
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
