//! Pod cgroups with the cgroupfs driver, on cgroup v1 (including the hybrid
//! layout with a controller-less or partial `unified` cgroup2 mount) and v2.
//!
//! The daemon creates, sizes and removes every pod's cgroup with this
//! module; a handler that runs host processes of its own for a pod (a VM
//! handler's hypervisor and helpers) places them under the pod cgroup it
//! receives in `RunSandboxRequest.cgroup_parent` with the same code, so
//! both agree on the layout.
//!
//! A pod cgroup is a path such as `/kubepods/besteffort/pod<uid>` (the CRI
//! `cgroup_parent`) that exists in every mounted hierarchy: on v1 the
//! runtimes put each container's processes into that path's children in
//! every hierarchy, so the pod directory must exist everywhere and must be
//! removed everywhere. On v2 there is one tree, but controllers have to be
//! enabled in `cgroup.subtree_control` of every ancestor for the pod's limits
//! (and its containers' limits) to be settable.
//!
//! The layout is read from `/proc/self/mountinfo`, not guessed from paths.
//! Nothing here kills processes or waits: [`PodCgroup::remove`] expects the
//! caller to have stopped everything in the pod and fails at once with
//! [`CgroupError::Busy`] if a cgroup is still busy; the caller retries (the
//! kernel can report EBUSY for a moment after the last process exited)
//! without blocking its executor (see `pod::sandbox`). Everything here is
//! synchronous filesystem work: async callers run it on the blocking pool.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

mod stats;
pub mod systemd;
pub use stats::CgroupStats;

/// Parent used when a pod does not name one (see [`pod_cgroup_path`]).
pub const DEFAULT_PARENT: &str = "/crius";

/// v2 controllers enabled down to a pod cgroup (when the root offers them).
const V2_CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"];

/// Errors from cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("no cgroup filesystem mounted (checked /proc/self/mountinfo)")]
    NotMounted,
    #[error("cgroup controller {controller:?} is not available for {path}")]
    MissingController { controller: String, path: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} is still in use (processes or child cgroups left): {source}")]
    Busy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which cgroup version the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Per-controller v1 hierarchies (possibly with a cgroup2 `unified` mount: hybrid).
    V1,
    /// A single cgroup2 hierarchy.
    V2,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup`).
    pub mount: PathBuf,
    /// v1 controllers (`cpu`, `name=systemd`, ...); empty for cgroup2.
    pub controllers: Vec<String>,
    /// A cgroup2 mount (the whole tree on v2, `unified` in hybrid mode).
    pub cgroup2: bool,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The host's cgroup mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    mode: CgroupMode,
    hierarchies: Vec<Hierarchy>,
}

/// v1 mount options that are not controllers.
const NON_CONTROLLER_OPTS: &[&str] = &[
    "rw",
    "ro",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "nosuid",
    "nodev",
    "noexec",
    "relatime",
];

impl CgroupLayout {
    /// Reads the layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<CgroupLayout, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|source| CgroupError::Io {
            op: "read",
            path: path.into(),
            source,
        })?;
        Self::from_mountinfo(&text)
    }

    /// Parses mountinfo text. cgroup2 mounted at `/sys/fs/cgroup` means v2;
    /// otherwise any v1 mount means v1, with the cgroup2 mounts (hybrid
    /// `unified`) kept as extra hierarchies.
    pub fn from_mountinfo(text: &str) -> Result<CgroupLayout, CgroupError> {
        let mut v1: Vec<Hierarchy> = Vec::new();
        let mut v2: Vec<PathBuf> = Vec::new();
        for entry in crate::mountinfo::parse(text) {
            let (fstype, opts, mount) = (&*entry.fs_type, &*entry.super_options, entry.mount_point);
            match fstype {
                "cgroup2" if !v2.contains(&mount) => v2.push(mount),
                "cgroup" => {
                    let mut controllers: Vec<String> = opts
                        .split(',')
                        .filter(|o| {
                            !NON_CONTROLLER_OPTS.contains(o)
                                && (!o.contains('=') || o.starts_with("name="))
                        })
                        .map(str::to_string)
                        .collect();
                    controllers.sort();
                    // The same hierarchy can be mounted twice; one mount is enough.
                    if !v1.iter().any(|h| h.controllers == controllers) {
                        v1.push(Hierarchy {
                            mount,
                            controllers,
                            cgroup2: false,
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = v2
            .iter()
            .find(|m| m.as_path() == Path::new("/sys/fs/cgroup"))
        {
            return Ok(CgroupLayout {
                mode: CgroupMode::V2,
                hierarchies: vec![Hierarchy {
                    mount: root.clone(),
                    controllers: Vec::new(),
                    cgroup2: true,
                }],
            });
        }
        if !v1.is_empty() {
            v1.extend(v2.into_iter().map(|mount| Hierarchy {
                mount,
                controllers: Vec::new(),
                cgroup2: true,
            }));
            return Ok(CgroupLayout {
                mode: CgroupMode::V1,
                hierarchies: v1,
            });
        }
        match v2.into_iter().next() {
            Some(mount) => Ok(CgroupLayout {
                mode: CgroupMode::V2,
                hierarchies: vec![Hierarchy {
                    mount,
                    controllers: Vec::new(),
                    cgroup2: true,
                }],
            }),
            None => Err(CgroupError::NotMounted),
        }
    }

    /// A pure v2 layout rooted at `mount` (tests, or a non-standard mount).
    pub fn v2_at(mount: impl Into<PathBuf>) -> CgroupLayout {
        CgroupLayout {
            mode: CgroupMode::V2,
            hierarchies: vec![Hierarchy {
                mount: mount.into(),
                controllers: Vec::new(),
                cgroup2: true,
            }],
        }
    }

    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }
}

/// Checks and normalises a cgroupfs path: absolute, not the root, no empty,
/// `.` or `..` components. A trailing `/` is dropped.
pub fn validate_path(path: &str) -> Result<String, CgroupError> {
    let bad = |reason| {
        Err(CgroupError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.ends_with(".slice") && !path.starts_with('/') {
        return bad(
            "a systemd slice name, but the daemon runs `cgroup_driver: cgroupfs` (set `cgroup_driver: systemd`)",
        );
    }
    if !path.starts_with('/') {
        return bad("must be absolute");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return bad("is the root cgroup");
    }
    for c in trimmed[1..].split('/') {
        match c {
            "" => return bad("has an empty component"),
            "." | ".." => return bad("has a '.' or '..' component"),
            _ if c.len() > 255 => return bad("has a component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// The pod cgroup for a sandbox: the CRI `cgroup_parent` when given, else
/// `/crius/pod-<sandbox id>`.
pub fn pod_cgroup_path(cgroup_parent: &str, sandbox_id: &str) -> Result<String, CgroupError> {
    if cgroup_parent.is_empty() {
        if sandbox_id.is_empty() || sandbox_id.contains('/') {
            return Err(CgroupError::InvalidPath {
                path: sandbox_id.to_string(),
                reason: "sandbox id must be one path component",
            });
        }
        validate_path(&format!("{DEFAULT_PARENT}/pod-{sandbox_id}"))
    } else {
        validate_path(cgroup_parent)
    }
}

/// Limits applied to a pod cgroup. `None` leaves a setting untouched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// v1 `cpu.shares` (2..=262144); converted to `cpu.weight` on v2.
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per period; negative means unlimited.
    pub cpu_quota: Option<i64>,
    /// CFS period in µs.
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Bytes; negative means unlimited.
    pub memory_limit: Option<i64>,
    /// Max tasks; zero or negative means unlimited.
    pub pids_limit: Option<i64>,
}

/// The v2 `cpu.weight` for v1 `cpu.shares`, as runc and crun convert it:
/// maps [2, 262144] linearly onto [1, 10000].
/// A limit as a cgroup file takes it: `unlimited` (`max`, `-1`) when the
/// value means no limit.
fn limit_value(value: i64, no_limit: bool, unlimited: &str) -> String {
    if no_limit {
        unlimited.to_string()
    } else {
        value.to_string()
    }
}

pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// A pod's cgroup in every hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    path: String,
    layout: CgroupLayout,
}

impl PodCgroup {
    /// Creates `path` (and missing ancestors) in every hierarchy; existing
    /// directories are fine (kubelet creates pod cgroups itself with the
    /// cgroupfs driver). On v1 the cpuset of each new level is copied from
    /// its parent (a new cpuset cgroup starts empty and rejects tasks); on
    /// v2 the controllers are enabled in each ancestor's subtree_control.
    /// On failure the directories created so far are removed again.
    pub fn create(layout: &CgroupLayout, path: &str) -> Result<PodCgroup, CgroupError> {
        let cg = PodCgroup::open(layout, path)?;
        let mut created: Vec<PathBuf> = Vec::new();
        for h in &layout.hierarchies {
            if let Err(e) = cg.create_in(h, &mut created) {
                for dir in created.iter().rev() {
                    let _ = fs::remove_dir(dir);
                }
                return Err(e);
            }
        }
        tracing::debug!(path = %cg.path, created = created.len(), "created pod cgroup");
        Ok(cg)
    }

    /// Refers to `path` without touching the filesystem (after a restart, or
    /// to remove a cgroup).
    pub fn open(layout: &CgroupLayout, path: &str) -> Result<PodCgroup, CgroupError> {
        Ok(PodCgroup {
            path: validate_path(path)?,
            layout: layout.clone(),
        })
    }

    /// The cgroupfs path (`/kubepods/.../pod<uid>`), as put in OCI specs.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The directory in every hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.layout
            .hierarchies
            .iter()
            .map(|h| self.dir_in(h))
            .collect()
    }

    /// Whether the directory exists in any hierarchy.
    pub fn exists_anywhere(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }

    fn dir_in(&self, h: &Hierarchy) -> PathBuf {
        h.mount.join(&self.path[1..])
    }

    fn create_in(&self, h: &Hierarchy, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        let v2 = self.layout.mode == CgroupMode::V2 && h.cgroup2;
        let mut dir = h.mount.clone();
        for component in self.path[1..].split('/') {
            if v2 {
                enable_controllers(&dir)?;
            }
            let parent = dir.clone();
            dir.push(component);
            match fs::create_dir(&dir) {
                Ok(()) => created.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(CgroupError::Io {
                        op: "create cgroup",
                        path: dir,
                        source,
                    });
                }
            }
            if h.has("cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    inherit_if_empty(&parent.join(file), &dir.join(file))?;
                }
            }
        }
        Ok(())
    }

    /// Writes the limits. A requested limit whose controller is not
    /// available is an error, not silently dropped.
    pub fn set_resources(&self, r: &Resources) -> Result<(), CgroupError> {
        match self.layout.mode {
            CgroupMode::V1 => self.set_v1(r),
            CgroupMode::V2 => self.set_v2(r),
        }
    }

    fn v1_dir(&self, controller: &str) -> Result<PathBuf, CgroupError> {
        self.layout
            .hierarchies
            .iter()
            .find(|h| !h.cgroup2 && h.has(controller))
            .map(|h| self.dir_in(h))
            .ok_or_else(|| CgroupError::MissingController {
                controller: controller.into(),
                path: self.path.clone(),
            })
    }

    fn set_v1(&self, r: &Resources) -> Result<(), CgroupError> {
        if r.cpu_shares.is_some() || r.cpu_quota.is_some() || r.cpu_period.is_some() {
            let d = self.v1_dir("cpu")?;
            if let Some(s) = r.cpu_shares {
                write(&d.join("cpu.shares"), &s.to_string())?;
            }
            // The period first: a quota is validated against the current period.
            if let Some(p) = r.cpu_period {
                write(&d.join("cpu.cfs_period_us"), &p.to_string())?;
            }
            if let Some(q) = r.cpu_quota {
                write(&d.join("cpu.cfs_quota_us"), &limit_value(q, q < 0, "-1"))?;
            }
        }
        if r.cpuset_cpus.is_some() || r.cpuset_mems.is_some() {
            let d = self.v1_dir("cpuset")?;
            if let Some(c) = &r.cpuset_cpus {
                write(&d.join("cpuset.cpus"), c)?;
            }
            if let Some(m) = &r.cpuset_mems {
                write(&d.join("cpuset.mems"), m)?;
            }
        }
        if let Some(m) = r.memory_limit {
            let d = self.v1_dir("memory")?;
            write(
                &d.join("memory.limit_in_bytes"),
                &limit_value(m, m < 0, "-1"),
            )?;
        }
        if let Some(p) = r.pids_limit {
            let d = self.v1_dir("pids")?;
            write(&d.join("pids.max"), &limit_value(p, p <= 0, "max"))?;
        }
        Ok(())
    }

    fn set_v2(&self, r: &Resources) -> Result<(), CgroupError> {
        let h = &self.layout.hierarchies[0];
        let d = self.dir_in(h);
        let available = read_set(&d.join("cgroup.controllers"))?;
        let need = |c: &str| -> Result<(), CgroupError> {
            if available.contains(c) {
                Ok(())
            } else {
                Err(CgroupError::MissingController {
                    controller: c.into(),
                    path: self.path.clone(),
                })
            }
        };
        if let Some(s) = r.cpu_shares {
            need("cpu")?;
            write(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
        }
        if r.cpu_quota.is_some() || r.cpu_period.is_some() {
            need("cpu")?;
            // cpu.max is "<quota|max> <period>"; keep the current half that
            // was not asked for.
            let current = read_trimmed(&d.join("cpu.max"))?;
            let mut parts = current.split_whitespace();
            let (cur_q, cur_p) = (
                parts.next().unwrap_or("max").to_string(),
                parts.next().unwrap_or("100000").to_string(),
            );
            let q = match r.cpu_quota {
                Some(q) => limit_value(q, q < 0, "max"),
                None => cur_q,
            };
            let p = r.cpu_period.map(|p| p.to_string()).unwrap_or(cur_p);
            write(&d.join("cpu.max"), &format!("{q} {p}"))?;
        }
        if let Some(c) = &r.cpuset_cpus {
            need("cpuset")?;
            write(&d.join("cpuset.cpus"), c)?;
        }
        if let Some(m) = &r.cpuset_mems {
            need("cpuset")?;
            write(&d.join("cpuset.mems"), m)?;
        }
        if let Some(m) = r.memory_limit {
            need("memory")?;
            write(&d.join("memory.max"), &limit_value(m, m < 0, "max"))?;
        }
        if let Some(p) = r.pids_limit {
            need("pids")?;
            write(&d.join("pids.max"), &limit_value(p, p <= 0, "max"))?;
        }
        Ok(())
    }

    /// Removes the pod cgroup, and any child cgroups left under it (deepest
    /// first), in every hierarchy. Ancestors are kept: they are shared. A
    /// missing directory is fine; a busy one is reported
    /// ([`CgroupError::Busy`]) after the other hierarchies were still
    /// cleaned. One pass, no waiting: retrying is the caller's choice.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.dirs() {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "removing cgroup failed");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => {
                tracing::debug!(path = %self.path, "removed pod cgroup");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}

/// Enables the wanted v2 controllers that `dir` offers in its subtree_control.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = read_set(&dir.join("cgroup.controllers"))?;
    let enabled = read_set(&dir.join("cgroup.subtree_control"))?;
    let missing: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| available.contains(**c) && !enabled.contains(**c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &missing.join(" "))
}

/// Copies `parent` into `child` when `child` is empty (v1 cpuset files).
fn inherit_if_empty(parent: &Path, child: &Path) -> Result<(), CgroupError> {
    if !read_trimmed(child)?.is_empty() {
        return Ok(());
    }
    let value = read_trimmed(parent)?;
    if value.is_empty() {
        return Ok(());
    }
    write(child, &value)
}

fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })
}

fn read_set(path: &Path) -> Result<BTreeSet<String>, CgroupError> {
    Ok(read_trimmed(path)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Writes a cgroup file (no O_CREAT: a missing file means a missing
/// controller, which must not turn into a stray regular file).
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Io {
                op: "list",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Io {
            op: "list",
            path: dir.to_path_buf(),
            source,
        })?;
        // Only directories are child cgroups; the files are the interface.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ResourceBusy => Err(CgroupError::Busy {
            path: dir.to_path_buf(),
            source: e,
        }),
        Err(source) => Err(CgroupError::Io {
            op: "remove cgroup",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
