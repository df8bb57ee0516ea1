//! What the handler keeps per pod and per container: the on-disk layout in
//! the pod's state directory, the records persisted there (and handed to
//! the core as `handler_state`), and the in-memory objects built from them.
//!
//! Layout of `<state_dir>` (all handler-private):
//!
//! ```text
//! sandbox.json               SandboxRecord (also the pod's handler_state)
//! exits/<id>                 exit files conmon writes, one per container
//! attach/<id>                conmon's attach-socket links
//! infra/                     the infra container's dir (see below)
//! containers/<id>/           per container:
//!     record.json            ContainerRecord, rewritten on start
//!     persist/               conmon --persist-dir (the `oom` marker)
//!     exec/                  exec-sync scratch dirs and one dir per
//!                            interactive exec (process.json, pid file,
//!                            runtime log), removed when it ends
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Version of the persisted records.
pub const RECORD_VERSION: u32 = 1;

/// One container (or the infra container) as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub version: u32,
    pub id: String,
    pub sandbox_id: String,
    /// The infra (pause) container of the pod.
    #[serde(default)]
    pub infra: bool,
    pub bundle: PathBuf,
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    /// `linux.cgroupsPath` of the spec (cgroupfs path).
    #[serde(default)]
    pub cgroup: Option<String>,
    pub stop_signal: i32,
    /// Unix nanoseconds.
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    /// Host pid of the container's init process.
    pub pid: u32,
    /// The conmon watching it.
    #[serde(default)]
    pub conmon_pid: Option<i32>,
    /// The main process has a terminal (the spec's `process.terminal`).
    #[serde(default)]
    pub terminal: bool,
    /// conmon keeps a stdin pipe for attach clients (CRI `stdin`).
    #[serde(default)]
    pub stdin: bool,
    /// conmon closes that stdin after the first attach session (CRI
    /// `stdin_once`).
    #[serde(default)]
    pub stdin_once: bool,
}

/// A pod as persisted (`sandbox.json` and the RunSandbox handler_state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub version: u32,
    pub sandbox_id: String,
    pub state_dir: PathBuf,
    pub infra: ContainerRecord,
    /// The pod's network namespace (bind mount); `None` = host network.
    #[serde(default)]
    pub netns_path: Option<PathBuf>,
    /// The pod cgroup (cgroupfs path) its containers go under.
    #[serde(default)]
    pub cgroup_parent: Option<String>,
}

/// The handler's files inside one pod's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn sandbox_record(&self) -> PathBuf {
        self.root.join("sandbox.json")
    }
    pub fn exit_dir(&self) -> PathBuf {
        self.root.join("exits")
    }
    pub fn attach_dir(&self) -> PathBuf {
        self.root.join("attach")
    }
    pub fn infra_dir(&self) -> PathBuf {
        self.root.join("infra")
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }
    /// Every top-level entry the handler creates (removed on RemoveSandbox).
    pub fn owned_entries(&self) -> [PathBuf; 5] {
        [
            self.sandbox_record(),
            self.exit_dir(),
            self.attach_dir(),
            self.infra_dir(),
            self.containers_dir(),
        ]
    }
}

/// Current time as unix nanoseconds.
pub fn now_ns() -> i64 {
    system_time_ns(SystemTime::now())
}

pub fn system_time_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Writes `bytes` to `path` atomically (temp file + rename), so a crash
/// never leaves a half-written record.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // Records name the container's bundle, cgroup and log: root only.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes `path` only if nothing is there yet, atomically (a private
/// temporary file hard-linked into place): of concurrent writers the first
/// wins and the file never changes afterwards. Returns whether this call
/// wrote it.
pub fn write_once(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// A container the handler manages (infra included).
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub infra: bool,
    /// Handler-private directory of this container.
    pub dir: PathBuf,
    pub exit_dir: PathBuf,
    pub attach_dir: PathBuf,
    pub bundle: PathBuf,
    pub log_path: Option<PathBuf>,
    pub cgroup: Option<String>,
    pub stop_signal: i32,
    pub created_at: i64,
    pub pid: u32,
    pub conmon_pid: Option<i32>,
    pub terminal: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    started_at: AtomicI64,
    /// Serialises start/stop/remove of this container.
    pub lifecycle: tokio::sync::Mutex<()>,
}

impl Container {
    /// Builds the in-memory container from its record and the pod layout.
    pub fn from_record(record: &ContainerRecord, layout: &Layout) -> Container {
        let dir = if record.infra {
            layout.infra_dir()
        } else {
            layout.container_dir(&record.id)
        };
        Container {
            id: record.id.clone(),
            sandbox_id: record.sandbox_id.clone(),
            infra: record.infra,
            dir,
            exit_dir: layout.exit_dir(),
            attach_dir: layout.attach_dir(),
            bundle: record.bundle.clone(),
            log_path: record.log_path.clone(),
            cgroup: record.cgroup.clone(),
            stop_signal: record.stop_signal,
            created_at: record.created_at,
            pid: record.pid,
            conmon_pid: record.conmon_pid,
            terminal: record.terminal,
            stdin: record.stdin,
            stdin_once: record.stdin_once,
            started_at: AtomicI64::new(record.started_at),
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    pub fn record(&self) -> ContainerRecord {
        ContainerRecord {
            version: RECORD_VERSION,
            id: self.id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            infra: self.infra,
            bundle: self.bundle.clone(),
            log_path: self.log_path.clone(),
            cgroup: self.cgroup.clone(),
            stop_signal: self.stop_signal,
            created_at: self.created_at,
            started_at: self.started_at(),
            pid: self.pid,
            conmon_pid: self.conmon_pid,
            terminal: self.terminal,
            stdin: self.stdin,
            stdin_once: self.stdin_once,
        }
    }

    pub fn persist_dir(&self) -> PathBuf {
        self.dir.join("persist")
    }
    pub fn exec_dir(&self) -> PathBuf {
        self.dir.join("exec")
    }
    pub fn record_path(&self) -> PathBuf {
        self.dir.join("record.json")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.exit_dir.join(&self.id)
    }
    /// conmon's attach-socket link (`<attach>/<id>`, pointing at the
    /// bundle, where the `attach` socket itself lives).
    pub fn attach_link(&self) -> PathBuf {
        self.attach_dir.join(&self.id)
    }
    /// conmon's control FIFO (`ctl`), made in the bundle directory.
    pub fn ctl_fifo(&self) -> PathBuf {
        self.bundle.join("ctl")
    }
    pub fn started_at(&self) -> i64 {
        self.started_at.load(Ordering::SeqCst)
    }
    pub fn set_started_at(&self, ns: i64) {
        self.started_at.store(ns, Ordering::SeqCst)
    }

    /// Persists the record in the container's directory.
    pub fn save(&self) -> std::io::Result<Vec<u8>> {
        let bytes = serde_json::to_vec(&self.record()).map_err(std::io::Error::other)?;
        write_atomic(&self.record_path(), &bytes)?;
        Ok(bytes)
    }
}

/// Whether `pid` is a live conmon (not a recycled pid).
pub fn conmon_alive(pid: Option<i32>) -> bool {
    let Some(pid) = pid.filter(|p| *p > 0) else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim() == "conmon")
        .unwrap_or(false)
        // A zombie still has its comm; it is gone for our purposes.
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_once_keeps_the_first_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit");
        assert!(write_once(&path, b"first").unwrap());
        assert!(!write_once(&path, b"second").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
    }

    fn record() -> ContainerRecord {
        ContainerRecord {
            version: RECORD_VERSION,
            id: "c1".into(),
            sandbox_id: "s1".into(),
            infra: false,
            bundle: "/b".into(),
            log_path: Some("/l".into()),
            cgroup: Some("/pod/c1".into()),
            stop_signal: 15,
            created_at: 1,
            started_at: 2,
            pid: 42,
            conmon_pid: Some(41),
            terminal: false,
            stdin: true,
            stdin_once: true,
        }
    }

    #[test]
    fn record_round_trips_through_container() {
        let layout = Layout::new("/state");
        let c = Container::from_record(&record(), &layout);
        assert_eq!(c.dir, Path::new("/state/containers/c1"));
        assert_eq!(c.exit_file(), Path::new("/state/exits/c1"));
        assert_eq!(c.persist_dir(), Path::new("/state/containers/c1/persist"));
        assert_eq!(c.record(), record());
        let infra = Container::from_record(
            &ContainerRecord {
                infra: true,
                ..record()
            },
            &layout,
        );
        assert_eq!(infra.dir, Path::new("/state/infra"));
    }

    #[test]
    fn old_records_without_optional_fields_parse() {
        let json = r#"{"version":1,"id":"c","sandbox_id":"s","bundle":"/b","stop_signal":15,"created_at":5,"pid":7}"#;
        let r: ContainerRecord = serde_json::from_str(json).unwrap();
        assert_eq!((r.started_at, r.conmon_pid, r.infra), (0, None, false));
    }

    #[test]
    fn own_pid_is_not_conmon() {
        assert!(!conmon_alive(Some(std::process::id() as i32)));
        assert!(!conmon_alive(None));
        assert!(!conmon_alive(Some(-1)));
    }
}
