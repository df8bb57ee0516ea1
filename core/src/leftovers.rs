//! `crius check --leftovers`: what on this host belongs to crius but no
//! record accounts for — processes, runtime state, mounts, netns pins,
//! pod cgroups, IPAM leases, pod and container directories, image layers
//! and blobs — and, with `--repair`, their removal.
//!
//! The records are the source of truth: a pod record names its id, and
//! everything crius makes for a pod carries that id (`<root>/pods/<id>`,
//! `<state_dir>/{netns,userns,userns-pods}/<id>`, `/crius/pod-<id>`, the
//! CNI container id, the runtime's container ids). Anything carrying an id no record knows was
//! left by a crash the daemon's own restore could not attribute, or by an
//! older daemon. The audit only reads; it never trusts a path it did not
//! build itself from the configuration.
//!
//! A running daemon creates resources right after writing their record,
//! so the audit is accurate while it runs, but a repair could race a pod
//! being created: `--repair` refuses while the daemon's socket answers.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, HandlerKind};
use crate::image::ImageManager;
use crate::pod::files::mounts_under;
use crate::pod::store::Store;
use crate::sandbox::cgroup::DEFAULT_PARENT;
use crate::sandbox::{CgroupLayout, CniNetwork, PodCgroup};

/// What kind of thing was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A process working for a pod no record names (conmon, a VM, a shim).
    Process,
    /// A container in an OCI runtime's state root no record names.
    RuntimeState,
    /// A mount under the pods directory of an unknown pod or container.
    Mount,
    /// A pinned network namespace of an unknown pod.
    NetnsPin,
    /// A pod cgroup (`/crius/pod-<id>`) of an unknown pod.
    Cgroup,
    /// A host-local IPAM lease held for an unknown pod.
    IpamLease,
    /// A pod directory without a record, or a container directory whose
    /// record is gone.
    Directory,
    /// An unpacked layer no image record references.
    Layer,
    /// A blob no image record references, or a temporary file of the
    /// image store.
    Blob,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Process => "process",
            Kind::RuntimeState => "runtime state",
            Kind::Mount => "mount",
            Kind::NetnsPin => "netns pin",
            Kind::Cgroup => "cgroup",
            Kind::IpamLease => "ipam lease",
            Kind::Directory => "directory",
            Kind::Layer => "layer",
            Kind::Blob => "blob",
        })
    }
}

/// How to remove one leftover.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Removal {
    Kill(i32),
    RuntimeDelete { runtime: PathBuf, root: PathBuf },
    Unmount,
    UnpinNetns,
    RemoveCgroup,
    RemoveFile,
    RemoveTree,
}

/// One thing left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub kind: Kind,
    /// The path, or the runtime container id, or the pid.
    pub what: String,
    /// Why it counts as left (which id is unknown, whose it is).
    pub why: String,
    removal: Removal,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.kind, self.what, self.why)
    }
}

/// The ids the records on disk know.
#[derive(Debug, Default)]
struct Known {
    pods: BTreeSet<String>,
    containers: BTreeSet<String>,
}

impl Known {
    fn any(&self, id: &str) -> bool {
        self.pods.contains(id) || self.containers.contains(id)
    }
}

/// Everything on this host that belongs to crius and no record accounts
/// for, in the order a repair removes them (processes first, so nothing
/// holds a mount or a cgroup; directories and content last).
pub async fn audit(config: &Config) -> Result<Vec<Leftover>, String> {
    let pods_root = config.root.join("pods");
    let on_disk = {
        let root = pods_root.clone();
        tokio::task::spawn_blocking(move || Store::new(root).read_records())
            .await
            .map_err(|e| format!("reading the pod records: {e}"))?
            .map_err(|e| format!("reading the pod records: {e}"))?
    };
    let known = Known {
        pods: on_disk.pods.iter().map(|p| p.id.clone()).collect(),
        containers: on_disk.containers.iter().map(|c| c.id.clone()).collect(),
    };
    let mut found = Vec::new();
    found.extend(runtime_state(config, &known, &pods_root).await);
    let (config_c, pods_c) = (config.clone(), pods_root.clone());
    // Pods in user namespaces keep their mount points here (pod::userns).
    let userns_root = config.state_dir.join("userns-pods");
    let host = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        found.extend(processes(&known, &pods_c));
        found.extend(mounts(&known, &pods_c));
        found.extend(mounts(&known, &userns_root));
        found.extend(netns_pins(&config_c, &known));
        found.extend(cgroups(&known));
        found.extend(ipam_leases(&config_c, &known));
        found.extend(directories(&known, &pods_c, &on_disk.without_record));
        found.extend(userns_pod_dirs(&known, &userns_root));
        found
    })
    .await
    .map_err(|e| format!("auditing the host: {e}"))?;
    found.extend(host);
    found.extend(
        ImageManager::unreferenced_content(config)
            .await
            .map_err(|e| format!("reading the image store: {e}"))?
            .into_iter()
            .map(|(is_layer, path)| Leftover {
                kind: if is_layer { Kind::Layer } else { Kind::Blob },
                what: path.display().to_string(),
                why: "no image record references it".into(),
                removal: Removal::RemoveTree,
            }),
    );
    // Stable: within a kind, the order found (mounts deepest first).
    found.sort_by_key(|l| l.kind);
    Ok(found)
}

/// Removes `leftovers` (an [`audit`] result) in order; the error of each
/// one that could not be removed.
pub async fn repair(leftovers: &[Leftover]) -> Vec<(Leftover, Result<(), String>)> {
    let mut outcomes = Vec::new();
    for item in leftovers {
        let outcome = match &item.removal {
            Removal::RuntimeDelete { runtime, root } => {
                let runtime = crius_handler_runc::OciRuntime::new(
                    runtime,
                    root,
                    Arc::new(crius_handler_runc::TokioCommandRunner),
                );
                runtime.delete(&item.what).await.map_err(|e| e.to_string())
            }
            removal => {
                let (removal, what) = (removal.clone(), item.what.clone());
                tokio::task::spawn_blocking(move || remove(&removal, &what))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        outcomes.push((item.clone(), outcome));
    }
    outcomes
}

fn remove(removal: &Removal, what: &str) -> Result<(), String> {
    let path = Path::new(what);
    match removal {
        Removal::Kill(pid) => {
            use nix::sys::signal::{Signal, kill};
            if *pid <= 0 {
                return Err(format!("pid {pid} names no single process"));
            }
            match kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        Removal::Unmount => match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            // Gone already, or went with a parent's detach.
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        Removal::UnpinNetns => crate::sandbox::netns::remove_path(path).map_err(|e| e.to_string()),
        Removal::RemoveCgroup => {
            let layout = CgroupLayout::detect().map_err(|e| e.to_string())?;
            match PodCgroup::open(&layout, what) {
                Ok(cgroup) => cgroup.remove().map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        Removal::RemoveFile => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        Removal::RemoveTree => {
            // Never through a mount: whatever is still mounted below was
            // listed (and detached) before, or the removal stops here.
            if let Some(m) = mounts_under(path).first() {
                return Err(format!("{} is still mounted", m.display()));
            }
            let removed = match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
                Ok(_) => std::fs::remove_file(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            removed.map_err(|e| e.to_string())
        }
        Removal::RuntimeDelete { .. } => unreachable!("deleted through the runtime"),
    }
}

/// The id `path` names below `pods_root` (`<pods_root>/<pod id>/...`) and,
/// when it is inside a container's directory, that container's id.
fn ids_in(path: &Path, pods_root: &Path) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix(pods_root).ok()?;
    let mut parts = rest
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let pod = parts.next()?;
    let container = match parts.next().as_deref() {
        Some("containers") => parts
            .next()
            .map(|c| c.trim_end_matches(".json").to_string()),
        _ => None,
    };
    Some((pod, container))
}

/// Why `path` under `pods_root` is left over, if it is.
fn unknown_owner(path: &Path, pods_root: &Path, known: &Known) -> Option<String> {
    let (pod, container) = ids_in(path, pods_root)?;
    if !known.pods.contains(&pod) {
        return Some(format!("pod {pod} has no record"));
    }
    match container {
        Some(c) if !known.containers.contains(&c) => {
            Some(format!("container {c} of pod {pod} has no record"))
        }
        _ => None,
    }
}

/// Processes working for unknown pods: their command line names a path
/// below an unknown pod's directory (conmon's bundle, QEMU's pid file) or
/// an unknown `--sandbox-id` (a handler's shim).
fn processes(known: &Known, pods_root: &Path) -> Vec<Leftover> {
    let Ok(all) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let prefix = format!("{}/", pods_root.display());
    let mut found = Vec::new();
    for entry in all.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Kernel threads and processes gone meanwhile have no command line.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let mut why = None;
        for (i, arg) in argv.iter().enumerate() {
            if arg == "--sandbox-id"
                && let Some(id) = argv.get(i + 1)
                && !known.pods.contains(id)
            {
                why = Some(format!("shim of pod {id}, which has no record"));
            }
            if let Some(at) = arg.find(&prefix) {
                let path = Path::new(&arg[at..]);
                if let Some(reason) = unknown_owner(path, pods_root, known) {
                    why = Some(reason);
                }
            }
            if why.is_some() {
                break;
            }
        }
        if let Some(why) = why {
            let name = argv.first().cloned().unwrap_or_default();
            found.push(Leftover {
                kind: Kind::Process,
                what: pid.to_string(),
                why: format!("{name}: {why}"),
                removal: Removal::Kill(pid),
            });
        }
    }
    found
}

/// Containers in each OCI handler's state root that no record names and
/// whose bundle is below crius's pods directory (a root shared with
/// another daemon loses nothing of that daemon's).
async fn runtime_state(config: &Config, known: &Known, pods_root: &Path) -> Vec<Leftover> {
    let mut found = Vec::new();
    for (name, entry) in &config.runtime_handlers {
        if entry.kind != HandlerKind::Oci {
            continue;
        }
        let root = entry
            .runtime_root
            .clone()
            .unwrap_or_else(|| config.state_dir.join(name));
        let runtime = crius_handler_runc::OciRuntime::new(
            &entry.runtime_path,
            &root,
            Arc::new(crius_handler_runc::TokioCommandRunner),
        );
        let ids = {
            let runtime = runtime.clone();
            tokio::task::spawn_blocking(move || runtime.list_ids())
                .await
                .unwrap_or_default()
        };
        for id in ids.into_iter().filter(|id| !known.any(id)) {
            let Ok(Some(state)) = runtime.state(&id).await else {
                continue;
            };
            if !state.bundle.starts_with(pods_root) {
                continue;
            }
            found.push(Leftover {
                kind: Kind::RuntimeState,
                what: id.clone(),
                why: format!(
                    "handler {name}: container {id} (bundle {}) has no record",
                    state.bundle.display()
                ),
                removal: Removal::RuntimeDelete {
                    runtime: entry.runtime_path.clone(),
                    root: root.clone(),
                },
            });
        }
    }
    found
}

/// Mounts below unknown pods' or containers' directories, deepest first.
fn mounts(known: &Known, pods_root: &Path) -> Vec<Leftover> {
    mounts_under(pods_root)
        .into_iter()
        .filter(|m| m != pods_root)
        .filter_map(|point| {
            let why = unknown_owner(&point, pods_root, known)?;
            Some(Leftover {
                kind: Kind::Mount,
                what: point.display().to_string(),
                why,
                removal: Removal::Unmount,
            })
        })
        .collect()
}

/// Pins of pod network and user namespaces (`<state_dir>/{netns,userns}`).
fn netns_pins(config: &Config, known: &Known) -> Vec<Leftover> {
    ["netns", "userns"]
        .iter()
        .filter_map(|d| std::fs::read_dir(config.state_dir.join(d)).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (!known.pods.contains(&name)).then(|| Leftover {
                kind: Kind::NetnsPin,
                what: entry.path().display().to_string(),
                why: format!("pod {name} has no record"),
                removal: Removal::UnpinNetns,
            })
        })
        .collect()
}

/// `/crius/pod-<id>` cgroups (the default pod cgroup, used when kubelet
/// gives no parent) of unknown pods, in any hierarchy. Cgroups below a
/// kubelet-given parent are kubelet's to manage.
fn cgroups(known: &Known) -> Vec<Leftover> {
    let Ok(layout) = CgroupLayout::detect() else {
        return Vec::new();
    };
    let mut paths = BTreeSet::new();
    for hierarchy in layout.hierarchies() {
        let parent = hierarchy.mount.join(DEFAULT_PARENT.trim_start_matches('/'));
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix("pod-")
                && entry.file_type().is_ok_and(|t| t.is_dir())
                && !known.pods.contains(id)
            {
                paths.insert((format!("{DEFAULT_PARENT}/{name}"), id.to_string()));
            }
        }
    }
    paths
        .into_iter()
        .map(|(path, id)| Leftover {
            kind: Kind::Cgroup,
            what: path,
            why: format!("pod {id} has no record"),
            removal: Removal::RemoveCgroup,
        })
        .collect()
}

/// host-local leases of crius's CNI network held for unknown pods (the
/// CNI container id crius passes is the pod id).
fn ipam_leases(config: &Config, known: &Known) -> Vec<Leftover> {
    let Ok(network) = CniNetwork::load(&config.cni) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for dir in network.host_local_lease_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_err() {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let owner = text.lines().next().unwrap_or("").trim().to_string();
            if !owner.is_empty() && !known.pods.contains(&owner) {
                found.push(Leftover {
                    kind: Kind::IpamLease,
                    what: entry.path().display().to_string(),
                    why: format!(
                        "network {}: {name} is leased to pod {owner}, which has no record",
                        network.name()
                    ),
                    removal: Removal::RemoveFile,
                });
            }
        }
    }
    found
}

/// Pod directories without a readable record, and container directories
/// (bundles with their writable layers) whose record is gone.
fn directories(known: &Known, pods_root: &Path, without_record: &[PathBuf]) -> Vec<Leftover> {
    let mut found: Vec<Leftover> = without_record
        .iter()
        .map(|dir| Leftover {
            kind: Kind::Directory,
            what: dir.display().to_string(),
            why: "pod directory without a pod record".into(),
            removal: Removal::RemoveTree,
        })
        .collect();
    for pod in &known.pods {
        let containers = pods_root.join(pod).join("containers");
        let Ok(entries) = std::fs::read_dir(&containers) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !known.containers.contains(&name) {
                found.push(Leftover {
                    kind: Kind::Directory,
                    what: entry.path().display().to_string(),
                    why: format!("container {name} of pod {pod} has no record"),
                    removal: Removal::RemoveTree,
                });
            }
        }
    }
    found
}

/// User-namespace directories (`<state_dir>/userns-pods/<pod>`) of pods
/// without a record.
fn userns_pod_dirs(known: &Known, userns_root: &Path) -> Vec<Leftover> {
    let Ok(entries) = std::fs::read_dir(userns_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (!known.pods.contains(&name)).then(|| Leftover {
                kind: Kind::Directory,
                what: entry.path().display().to_string(),
                why: format!("pod {name} has no record"),
                removal: Removal::RemoveTree,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(pods: &[&str], containers: &[&str]) -> Known {
        Known {
            pods: pods.iter().map(|s| s.to_string()).collect(),
            containers: containers.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_path_is_left_over_when_its_pod_or_container_is_unknown() {
        let root = Path::new("/var/lib/crius/pods");
        let k = known(&["p1"], &["c1"]);
        assert_eq!(unknown_owner(&root.join("p1/shm"), root, &k), None);
        assert_eq!(
            unknown_owner(&root.join("p1/containers/c1/rootfs"), root, &k),
            None
        );
        assert_eq!(
            unknown_owner(&root.join("p1/containers/c1.json"), root, &k),
            None
        );
        assert_eq!(
            unknown_owner(&root.join("p2/shm"), root, &k).as_deref(),
            Some("pod p2 has no record")
        );
        assert_eq!(
            unknown_owner(&root.join("p1/containers/c9/rootfs"), root, &k).as_deref(),
            Some("container c9 of pod p1 has no record")
        );
        // Not below the pods dir: not ours to judge.
        assert_eq!(
            unknown_owner(Path::new("/var/lib/other/p2"), root, &k),
            None
        );
    }
}
