//! Containers and processes the agent manages.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::reaper::ExitWatch;
use crate::stdio::{OutBuf, Stdin};

/// One process: a container's init or an exec.
pub struct Process {
    pub pid: u32,
    pub exit: ExitWatch,
    pub stdin: Stdin,
    pub stdout: OutBuf,
    pub stderr: OutBuf,
    /// The pty master when the process has a terminal.
    pub tty: Option<OwnedFd>,
}

impl Process {
    pub fn exited(&self) -> Option<i32> {
        *self.exit.borrow()
    }
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Storages mounted for this container, unmounted on removal.
    pub mounts: Vec<PathBuf>,
    /// OOM kills already reported.
    pub oom_seen: AtomicU64,
}

impl Container {
    /// `exec_id` empty or equal to the container id means the init process.
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() || exec_id == self.id {
            return Some(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
    }

    /// Drops an exec's record and its files in the bundle.
    pub fn forget_exec(&self, exec_id: &str) {
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(exec_id);
        self.remove_exec_files(exec_id);
    }

    /// The files `runc exec` left for an exec (process spec, pid, log).
    pub fn remove_exec_files(&self, exec_id: &str) {
        for suffix in [".json", ".pid", ".runc.log"] {
            let _ = std::fs::remove_file(self.bundle.join(format!("exec-{exec_id}{suffix}")));
        }
    }
}

#[derive(Default)]
pub struct Sandbox {
    pub id: Option<String>,
    pub mounts: Vec<PathBuf>,
}

/// Where the agent keeps its state in the guest.
pub const STATE_DIR: &str = "/run/crius";

pub fn bundle_dir(cid: &str) -> PathBuf {
    Path::new(STATE_DIR).join("containers").join(cid)
}
