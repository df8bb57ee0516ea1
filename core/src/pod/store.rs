//! Pod and container records: kept in memory, persisted as one JSON file
//! per object so a restarted daemon knows every pod it left running.
//!
//! Layout under `<root>/pods/` (persistent storage, not the tmpfs
//! `state_dir`: the records must outlive a reboot so the pods of the old
//! boot can be torn down, and writable layers can be large):
//! - `<pod id>/pod.json`: the [`PodRecord`];
//! - `<pod id>/containers/<container id>.json`: a [`ContainerRecord`];
//! - `<pod id>/containers/<container id>/`: the container's bundle, with
//!   its writable layer (`upper`, `work`) and the overlay mount point;
//! - `<pod id>/cni.json`: the CNI attachment (its saved result, for DEL);
//! - `<pod id>/handler/`: the handler's own per-pod directory.
//!
//! Every write is atomic (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new record.
//!
//! Names are reserved here too: a pod's name is its metadata
//! `name_namespace_uid_attempt`, a container's its pod id plus
//! `name_attempt`, as the kubelet expects from CRI-O and containerd.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crius_proto::cri;
use serde::{Deserialize, Serialize};

use super::error::{PodError, PodResult};

/// CRI messages persisted inside records as base64 protobuf: exact, and
/// independent of whether the generated types implement serde.
mod proto_b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<M: Message, S: Serializer>(msg: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(msg.encode_to_vec()))
    }

    pub fn deserialize<'de, M: Message + Default, D: Deserializer<'de>>(
        d: D,
    ) -> Result<M, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<M: Message, S: Serializer>(
            msg: &Option<M>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match msg {
                Some(m) => super::serialize(m, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, M: Message + Default, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<M>, D::Error> {
            let text: Option<String> = Option::deserialize(d)?;
            text.map(|t| {
                let bytes = STANDARD.decode(t).map_err(serde::de::Error::custom)?;
                M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

/// Opaque bytes (handler state) as base64.
mod bytes_b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Lifecycle state of a pod as the core tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// RunPodSandbox is in progress (a record in this state after a
    /// restart is a crash mid-creation: it is torn down).
    Creating,
    Ready,
    NotReady,
}

/// Everything the core knows and holds for one pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    /// The reserved name (`name_namespace_uid_attempt`).
    pub name: String,
    /// Handler name as resolved (never empty).
    pub handler: String,
    pub state: PodState,
    /// Unix nanoseconds.
    pub created_at: i64,
    #[serde(with = "proto_b64")]
    pub config: cri::PodSandboxConfig,
    /// `<root>/pods/<id>`.
    pub dir: PathBuf,
    /// Pinned netns; `None` for host network or once removed.
    pub netns_path: Option<PathBuf>,
    /// Pinned user namespace of a `hostUsers: false` pod (which owns the
    /// pinned netns); `None` for pods in the host's, or once removed.
    #[serde(default)]
    pub userns_path: Option<PathBuf>,
    /// CNI attachment record; set before ADD runs so a crash mid-ADD is
    /// still cleaned up.
    pub cni_record: Option<PathBuf>,
    /// CNI ADD may have happened and DEL has not run yet.
    pub cni_attached: bool,
    /// The cgroupfs path of the pod cgroup (with the systemd driver: of its
    /// slice, expanded).
    pub cgroup_path: String,
    /// With the systemd driver: the pod's slice unit.
    #[serde(default)]
    pub systemd_slice: Option<String>,
    /// The daemon started that slice (and stops it with the pod); a slice
    /// kubelet made is kubelet's.
    #[serde(default)]
    pub slice_owned: bool,
    pub pod_ips: Vec<String>,
    pub infra_pid: u32,
    /// Infra bundle dir, when the handler needs an infra container.
    pub infra_bundle: Option<PathBuf>,
    /// Handler's own per-pod directory.
    pub handler_dir: PathBuf,
    /// The handler's run_sandbox was called (so stop/remove must be too).
    pub handler_started: bool,
    #[serde(with = "bytes_b64")]
    pub handler_state: Vec<u8>,
    /// Annotations the handler was given.
    pub handler_annotations: BTreeMap<String, String>,
    pub hostname_path: Option<PathBuf>,
    pub resolv_conf_path: Option<PathBuf>,
    pub hosts_path: Option<PathBuf>,
    pub shm_dir: Option<PathBuf>,
    /// A tmpfs is mounted at `shm_dir`.
    pub shm_mounted: bool,
}

impl PodRecord {
    /// The OCI `cgroupsPath` of the pod's container `id`: a child of the pod
    /// cgroup, or with the systemd driver the scope `crius-<id>.scope` in
    /// the pod's slice.
    pub fn container_cgroups_path(&self, id: &str) -> String {
        match &self.systemd_slice {
            Some(slice) => crius_shim_api::cgroupfs::systemd::cgroups_path(slice, id),
            None => format!("{}/crius-{id}", self.cgroup_path),
        }
    }

    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.dir.join("containers")
    }
}

/// Everything the core knows and holds for one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    /// The reserved name (`<pod id>/name_attempt`).
    pub name: String,
    /// Unix nanoseconds.
    pub created_at: i64,
    #[serde(with = "proto_b64")]
    pub config: cri::ContainerConfig,
    /// The image as the request named it.
    pub image_name: String,
    /// `sha256:<config digest>`.
    pub image_id: String,
    /// Images mounted as volumes (`Mount.image`), by id: in use like
    /// `image_id` while the container exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_volume_ids: Vec<String>,
    /// A repo digest of the image (or its id when it has none).
    pub image_ref: String,
    /// `<pod dir>/containers/<id>`.
    pub bundle_dir: PathBuf,
    /// The mounted overlay (`<bundle>/rootfs`), while mounted.
    pub rootfs: Option<PathBuf>,
    /// Absolute CRI log path; empty = none.
    pub log_path: String,
    /// The handler's create_container was called.
    pub handler_created: bool,
    #[serde(with = "bytes_b64")]
    pub handler_state: Vec<u8>,
    /// Current resources (from the config, then UpdateContainerResources).
    #[serde(with = "proto_b64::option", default)]
    pub resources: Option<cri::LinuxContainerResources>,
    /// The process identity the spec gives the container (reported as
    /// `ContainerStatus.user`).
    #[serde(default)]
    pub user: Option<ContainerUser>,
}

/// uid, gid and supplementary groups of a container's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl ContainerRecord {
    pub fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }
}

/// What [`Store::read_records`] found.
#[derive(Debug, Default)]
pub struct RecordsOnDisk {
    pub pods: Vec<PodRecord>,
    pub containers: Vec<ContainerRecord>,
    /// Pod directories without a `pod.json`.
    pub without_record: Vec<PathBuf>,
}

/// The in-memory view plus the files behind it.
pub struct Store {
    root: PathBuf,
    pods: RwLock<BTreeMap<String, PodRecord>>,
    containers: RwLock<BTreeMap<String, ContainerRecord>>,
    /// Reserved name → owner id, pods and containers alike (container
    /// names carry their pod id, so the two never collide).
    names: Mutex<BTreeMap<String, String>>,
    /// One lock per record file, held from the disk write to the cache
    /// update: two saves of one record (a status update racing a stop)
    /// reach the disk and the cache in the same order, and never share
    /// the temporary file.
    write_order: Mutex<BTreeMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Records are replaced whole; a panic elsewhere cannot leave one half-written.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// An empty store persisting under `root` (`<config root>/pods`).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            pods: RwLock::new(BTreeMap::new()),
            containers: RwLock::new(BTreeMap::new()),
            names: Mutex::new(BTreeMap::new()),
            write_order: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<pod id>`.
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Reads every record on disk without changing anything. Unreadable
    /// records are skipped with a warning: one corrupt file must not keep
    /// the daemon from serving the other pods.
    pub fn read_records(&self) -> PodResult<RecordsOnDisk> {
        let mut out = RecordsOnDisk::default();
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(PodError::io(format!("reading {}", self.root.display()), e)),
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let pod_file = entry.path().join("pod.json");
            let pod: PodRecord = match read_json(&pod_file) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    out.without_record.push(entry.path());
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unreadable pod record");
                    continue;
                }
            };
            let cdir = pod.containers_dir();
            if let Ok(centries) = fs::read_dir(&cdir) {
                for c in centries.flatten() {
                    let path = c.path();
                    if path.extension().is_none_or(|e| e != "json") {
                        continue;
                    }
                    match read_json::<ContainerRecord>(&path) {
                        Ok(Some(rec)) => out.containers.push(rec),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping unreadable container record")
                        }
                    }
                }
            }
            out.pods.push(pod);
        }
        Ok(out)
    }

    /// Loads every record from disk (at start-up), and removes the pod
    /// directories a crash left before their first record was written.
    pub fn load(&self) -> PodResult<()> {
        crate::perms::ensure_private_dir(&self.root)
            .map_err(|e| PodError::io(format!("creating {}", self.root.display()), e))?;
        let on_disk = self.read_records()?;
        for dir in &on_disk.without_record {
            remove_unborn_pod_dir(dir);
        }
        for rec in on_disk.containers {
            self.reserve(&rec.name, &rec.id, "container").ok();
            write_lock(&self.containers).insert(rec.id.clone(), rec);
        }
        for pod in on_disk.pods {
            self.reserve(&pod.name, &pod.id, "pod").ok();
            write_lock(&self.pods).insert(pod.id.clone(), pod);
        }
        Ok(())
    }

    /// Reserves `name` for `id`; fails naming the current owner.
    pub fn reserve(&self, name: &str, id: &str, what: &'static str) -> PodResult<()> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        match names.get(name) {
            Some(owner) if owner != id => Err(PodError::AlreadyExists {
                what,
                name: crate::bounded::bounded(name).into_owned(),
                id: owner.clone(),
            }),
            _ => {
                names.insert(name.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    /// Frees `name` if `id` holds it.
    pub fn release(&self, name: &str, id: &str) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.get(name).is_some_and(|owner| owner == id) {
            names.remove(name);
        }
    }

    pub fn pod(&self, id: &str) -> Option<PodRecord> {
        read_lock(&self.pods).get(id).cloned()
    }

    pub fn pods(&self) -> Vec<PodRecord> {
        read_lock(&self.pods).values().cloned().collect()
    }

    /// The write lock of the record file at `path`.
    fn write_slot(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut slots = self.write_order.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(path.to_path_buf()).or_default().clone()
    }

    fn drop_write_slot(&self, path: &Path) {
        let mut slots = self.write_order.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(path);
    }

    /// Writes `value` to `path` atomically on the blocking pool (the
    /// fsyncs take milliseconds), then runs `cache` — both under the
    /// record's write lock.
    async fn persist<T: Serialize>(
        &self,
        path: PathBuf,
        value: &T,
        cache: impl FnOnce(),
    ) -> PodResult<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| PodError::Record {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let slot = self.write_slot(&path);
        let _order = slot.lock().await;
        tokio::task::spawn_blocking(move || write_bytes(&path, &bytes))
            .await
            .map_err(|e| PodError::io("the record write task", std::io::Error::other(e)))??;
        cache();
        Ok(())
    }

    /// Writes and caches a pod record.
    pub async fn save_pod(&self, pod: &PodRecord) -> PodResult<()> {
        self.persist(pod.dir.join("pod.json"), pod, || {
            write_lock(&self.pods).insert(pod.id.clone(), pod.clone());
        })
        .await
    }

    /// Forgets a pod (its directory is removed by the caller).
    pub fn forget_pod(&self, pod: &PodRecord) {
        write_lock(&self.pods).remove(&pod.id);
        self.drop_write_slot(&pod.dir.join("pod.json"));
        self.release(&pod.name, &pod.id);
    }

    pub fn container(&self, id: &str) -> Option<ContainerRecord> {
        read_lock(&self.containers).get(id).cloned()
    }

    pub fn containers(&self) -> Vec<ContainerRecord> {
        read_lock(&self.containers).values().cloned().collect()
    }

    pub fn containers_of(&self, pod_id: &str) -> Vec<ContainerRecord> {
        read_lock(&self.containers)
            .values()
            .filter(|c| c.pod_id == pod_id)
            .cloned()
            .collect()
    }

    fn container_file(&self, c: &ContainerRecord) -> PathBuf {
        self.pod_dir(&c.pod_id)
            .join("containers")
            .join(format!("{}.json", c.id))
    }

    /// Writes and caches a container record.
    pub async fn save_container(&self, c: &ContainerRecord) -> PodResult<()> {
        self.persist(self.container_file(c), c, || {
            write_lock(&self.containers).insert(c.id.clone(), c.clone());
        })
        .await
    }

    /// Deletes a container's record file and forgets it.
    pub async fn forget_container(&self, c: &ContainerRecord) -> PodResult<()> {
        let path = self.container_file(c);
        let slot = self.write_slot(&path);
        let _order = slot.lock().await;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PodError::io(format!("removing {}", path.display()), e)),
        }
        write_lock(&self.containers).remove(&c.id);
        self.drop_write_slot(&path);
        self.release(&c.name, &c.id);
        Ok(())
    }

    /// Ids of the containers created from `image_id`.
    pub fn users_of_image(&self, image_id: &str) -> Vec<String> {
        read_lock(&self.containers)
            .values()
            .filter(|c| c.image_id == image_id || c.image_volume_ids.iter().any(|v| v == image_id))
            .map(|c| c.id.clone())
            .collect()
    }

    /// Resolves a pod id or unique id prefix.
    pub fn find_pod_id(&self, id: &str) -> Option<String> {
        find_id(read_lock(&self.pods).keys(), id)
    }

    /// Resolves a container id or unique id prefix.
    pub fn find_container_id(&self, id: &str) -> Option<String> {
        find_id(read_lock(&self.containers).keys(), id)
    }
}

/// An exact id, or a prefix matching exactly one id.
fn find_id<'a>(ids: impl Iterator<Item = &'a String>, wanted: &str) -> Option<String> {
    if wanted.is_empty() {
        return None;
    }
    let mut found = None;
    for id in ids {
        if id == wanted {
            return Some(id.clone());
        }
        if id.starts_with(wanted) {
            if found.is_some() {
                return None;
            }
            found = Some(id.clone());
        }
    }
    found
}

/// A pod directory without `pod.json`: a crash during the pod's first record
/// write (the directory and the temporary file exist, nothing else was made
/// yet). Removed when that is all it holds; anything else is kept and named.
fn remove_unborn_pod_dir(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.iter().all(|n| n == "pod.json.tmp") {
        match fs::remove_dir_all(dir) {
            Ok(()) => {
                tracing::warn!(dir = %dir.display(), "removed a pod directory left by a crash before its first record")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a pod directory without a record")
            }
        }
    } else {
        tracing::warn!(dir = %dir.display(), entries = ?names, "pod directory without pod.json kept: it holds more than a record being written");
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> PodResult<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PodError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| PodError::Record {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// Atomic write: temp file, fsync, rename, fsync of the directory.
fn write_bytes(path: &Path, bytes: &[u8]) -> PodResult<()> {
    let dir = path.parent().ok_or_else(|| PodError::Record {
        path: path.display().to_string(),
        message: "no parent directory".into(),
    })?;
    crate::perms::ensure_private_dir(dir)
        .map_err(|e| PodError::io(format!("creating {}", dir.display()), e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| -> std::io::Result<()> {
        // Records carry the container config (env included): root only.
        let mut f = crate::perms::create_private_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PodError::io(format!("writing {}", path.display()), e)
    })
}

/// 64 hex characters from the kernel's random pool.
pub fn new_id() -> PodResult<String> {
    let mut buf = [0u8; 32];
    let mut f =
        fs::File::open("/dev/urandom").map_err(|e| PodError::io("opening /dev/urandom", e))?;
    std::io::Read::read_exact(&mut f, &mut buf)
        .map_err(|e| PodError::io("reading /dev/urandom", e))?;
    Ok(hex::encode(buf))
}

/// Unix nanoseconds now.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(dir: &Path, id: &str, name: &str) -> PodRecord {
        PodRecord {
            id: id.into(),
            name: name.into(),
            handler: "runc".into(),
            state: PodState::Ready,
            created_at: 1,
            config: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "p".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            dir: dir.join(id),
            netns_path: None,
            userns_path: None,
            cni_record: None,
            cni_attached: false,
            cgroup_path: "/crius/pod".into(),
            systemd_slice: None,
            slice_owned: false,
            pod_ips: vec!["10.0.0.2".into()],
            infra_pid: 42,
            infra_bundle: None,
            handler_dir: dir.join(id).join("handler"),
            handler_started: true,
            handler_state: vec![0, 1, 2, 255],
            handler_annotations: BTreeMap::new(),
            hostname_path: None,
            resolv_conf_path: None,
            hosts_path: None,
            shm_dir: None,
            shm_mounted: false,
        }
    }

    #[tokio::test]
    async fn records_round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        let p = pod(dir.path(), "abc", "p_ns_uid_0");
        store.reserve(&p.name, &p.id, "pod").unwrap();
        store.save_pod(&p).await.unwrap();
        let c = ContainerRecord {
            id: "c1".into(),
            pod_id: "abc".into(),
            name: "abc/c_0".into(),
            created_at: 2,
            config: cri::ContainerConfig::default(),
            image_name: "busybox".into(),
            image_id: "sha256:1".into(),
            image_volume_ids: Vec::new(),
            image_ref: "sha256:1".into(),
            bundle_dir: dir.path().join("abc/containers/c1"),
            rootfs: None,
            log_path: String::new(),
            handler_created: true,
            handler_state: b"state".to_vec(),
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 5,
                ..Default::default()
            }),
            user: Some(ContainerUser {
                uid: 1,
                gid: 2,
                groups: vec![3],
            }),
        };
        store.reserve(&c.name, &c.id, "container").unwrap();
        store.save_container(&c).await.unwrap();

        let again = Store::new(dir.path().to_path_buf());
        again.load().unwrap();
        let p2 = again.pod("abc").unwrap();
        assert_eq!(p2.handler_state, vec![0, 1, 2, 255]);
        assert_eq!(p2.config.metadata.unwrap().name, "p");
        let c2 = again.container("c1").unwrap();
        assert_eq!(c2.resources.as_ref().unwrap().memory_limit_in_bytes, 5);
        assert_eq!(again.users_of_image("sha256:1"), vec!["c1".to_string()]);
        // Names are reserved again after loading.
        let err = again.reserve("p_ns_uid_0", "other", "pod").unwrap_err();
        assert!(err.to_string().contains("already reserved by abc"), "{err}");
        again.forget_container(&c2).await.unwrap();
        assert!(!dir.path().join("abc/containers/c1.json").exists());
        again.reserve("abc/c_0", "c2", "container").unwrap();
    }

    #[test]
    fn a_pod_dir_left_before_its_first_record_is_removed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let unborn = dir.path().join("unborn");
        fs::create_dir(&unborn).unwrap();
        fs::write(unborn.join("pod.json.tmp"), b"{").unwrap();
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("something"), b"").unwrap();
        let store = Store::new(dir.path().to_path_buf());
        store.load().unwrap();
        assert!(store.pods().is_empty());
        assert!(!unborn.exists(), "only a half-written record: removed");
        assert!(other.exists(), "more than a record: kept");
    }

    #[test]
    fn id_prefixes_must_be_unique() {
        let ids = ["abc1".to_string(), "abc2".to_string(), "def".to_string()];
        assert_eq!(find_id(ids.iter(), "d"), Some("def".into()));
        assert_eq!(find_id(ids.iter(), "abc"), None);
        assert_eq!(find_id(ids.iter(), "abc2"), Some("abc2".into()));
        assert_eq!(find_id(ids.iter(), ""), None);
        assert_eq!(new_id().unwrap().len(), 64);
    }
}
