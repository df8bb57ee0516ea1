//! Runs real containers under conmon with runc and crun: CRI log, exit code
//! from the exit file, exec-sync (output, exit code, timeout), kill, delete,
//! and nothing left behind (runtime state, cgroups, conmon).
//!
//! Needs root, conmon, busybox-static and the runtimes; skips with a printed
//! reason otherwise.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{
    BUSYBOX, CONMON, cgroup_mounts, crun_hybrid_controllers, missing_prerequisite, skipped,
};
use crius_handler_runc::{
    Conmon, ContainerExit, ContainerMonitor, ExecSyncOutput, ExecSyncSpec, LaunchSpec,
    MonitorError, OciRuntime, TokioCommandRunner, wait_for_exit,
};
use oci_spec::runtime::{LinuxBuilder, Process, ProcessBuilder, RootBuilder, Spec};

fn skip_reason(runtime: &str) -> Option<String> {
    if let Some(reason) = missing_prerequisite(&[CONMON, BUSYBOX, runtime]) {
        return Some(reason);
    }
    crun_hybrid_controllers(runtime).map(|controllers| {
        format!(
            "crun refuses hybrid cgroups while /sys/fs/cgroup/unified carries controllers ({controllers}); \
             mount them as v1 hierarchies (e.g. mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb)"
        )
    })
}

struct Fixture {
    base: tempfile::TempDir,
    runtime: OciRuntime,
    conmon: Conmon,
    cgroup_parent: String,
}

impl Fixture {
    /// The fixture, or `None` after reporting why the test is skipped.
    fn unless_skipped(runtime_path: &str, tag: &str) -> Option<Fixture> {
        (!skipped(skip_reason(runtime_path), tag)).then(|| Fixture::new(runtime_path, tag))
    }

    fn new(runtime_path: &str, tag: &str) -> Fixture {
        let base = tempfile::Builder::new()
            .prefix("crius-conmon-")
            .tempdir()
            .unwrap();
        let root = base.path().join("runtime-root");
        Fixture {
            runtime: OciRuntime::new(runtime_path, &root, Arc::new(TokioCommandRunner)),
            conmon: Conmon::new(CONMON, runtime_path, &root),
            cgroup_parent: format!("crius-test-{}-{tag}", std::process::id()),
            base,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.path().join(rel)
    }

    /// A bundle whose rootfs is busybox-static with a few applet links.
    fn bundle(&self, id: &str, args: &[&str]) -> PathBuf {
        let bundle = self.path(&format!("bundles/{id}"));
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in ["sh", "echo", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let process = process(args);
        let linux = Spec::default().linux().clone().unwrap();
        let linux = LinuxBuilder::default()
            .namespaces(linux.namespaces().clone().unwrap())
            .masked_paths(linux.masked_paths().clone().unwrap_or_default())
            .readonly_paths(linux.readonly_paths().clone().unwrap_or_default())
            .cgroups_path(PathBuf::from(format!("/{}/{id}", self.cgroup_parent)))
            .build()
            .unwrap();
        let mut spec = Spec::default();
        spec.set_process(Some(process));
        spec.set_root(Some(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .unwrap(),
        ));
        spec.set_hostname(Some(id.to_string()));
        spec.set_linux(Some(linux));
        spec.save(bundle.join("config.json")).unwrap();
        bundle
    }

    fn launch_spec(&self, id: &str, bundle: PathBuf) -> LaunchSpec {
        LaunchSpec {
            id: id.to_string(),
            name: format!("test_{id}"),
            bundle,
            log_path: Some(self.path(&format!("logs/{id}.log"))),
            exit_dir: self.path("exits"),
            persist_dir: self.path(&format!("persist/{id}")),
            socket_dir: self.path("sockets"),
            log_size_max: None,
            terminal: false,
            stdin: false,
            stdin_once: false,
        }
    }

    /// Deletes `id` and checks the runtime forgot it.
    async fn delete(&self, id: &str) {
        self.runtime.delete(id).await.unwrap();
        assert_eq!(
            self.runtime.state(id).await.unwrap(),
            None,
            "runtime state of {id} survived delete"
        );
        assert!(!self.runtime.has_state(id));
        // Deleting again is fine (cleanup retries).
        self.runtime.delete(id).await.unwrap();
    }

    /// After the container `id` ended: its conmon exits, then delete
    /// and cgroup removal leave nothing behind.
    async fn finish(&self, id: &str, monitor_pid: Option<i32>) {
        if let Some(pid) = monitor_pid {
            wait_gone(pid).await;
        }
        self.delete(id).await;
        self.remove_cgroups();
    }

    /// ExecSync of `args` in `id` with a timeout of `timeout_secs`.
    async fn exec(
        &self,
        id: &str,
        args: &[&str],
        timeout_secs: u64,
    ) -> Result<ExecSyncOutput, MonitorError> {
        let process = process(args);
        self.conmon
            .exec_sync(&ExecSyncSpec {
                id: id.to_string(),
                process,
                timeout: Some(Duration::from_secs(timeout_secs)),
                scratch_dir: self.path("exec"),
            })
            .await
    }

    /// Removes the test's cgroup parent in every hierarchy and checks that
    /// no cgroup of the test is left anywhere.
    fn remove_cgroups(&self) {
        for mount in cgroup_mounts() {
            let parent = mount.join(&self.cgroup_parent);
            if parent.exists() {
                // Only empty cgroups can be removed: a leftover child (the
                // container's own cgroup) makes this fail loudly.
                std::fs::remove_dir(&parent)
                    .unwrap_or_else(|e| panic!("cannot remove cgroup {}: {e}", parent.display()));
            }
            assert!(!parent.exists(), "{} left behind", parent.display());
        }
    }
}

/// A busybox process running `args` in `/`.
fn process(args: &[&str]) -> Process {
    ProcessBuilder::default()
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap()
}

/// The exit of `id` (`what` names the expectation should it not come).
async fn exit_within_10s(spec: &LaunchSpec, id: &str, what: &str) -> ContainerExit {
    wait_for_exit(
        &spec.exit_dir,
        &spec.persist_dir,
        id,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .expect(what)
}

async fn wait_gone(pid: i32) {
    for _ in 0..250 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("conmon {pid} still running");
}

async fn echo_and_exit(runtime_path: &str, tag: &str) {
    let Some(fx) = Fixture::unless_skipped(runtime_path, tag) else {
        return;
    };
    let id = format!("echo-{tag}");
    let spec = fx.launch_spec(&id, fx.bundle(&id, &["sh", "-c", "echo hello; exit 3"]));
    let launched = fx.conmon.create(&spec).await.unwrap();
    assert!(launched.container_pid > 0);
    let state = fx
        .runtime
        .state(&id)
        .await
        .unwrap()
        .expect("runtime knows the created container");
    assert_eq!(state.status, "created");
    assert_eq!(state.pid, launched.container_pid);
    assert!(
        spec.bundle.join("ctl").exists(),
        "conmon made its control FIFO"
    );

    fx.runtime.start(&id).await.unwrap();
    let exit = exit_within_10s(&spec, &id, "container exited within 10 s").await;
    assert_eq!(exit.exit_code, 3);
    assert!(!exit.oom_killed);

    let log = std::fs::read_to_string(spec.log_path.as_ref().unwrap()).unwrap();
    assert!(
        log.lines().any(|l| l.ends_with(" stdout F hello")),
        "CRI log lacks hello: {log:?}"
    );
    let state = fx.runtime.state(&id).await.unwrap().unwrap();
    assert_eq!(state.status, "stopped");

    fx.finish(&id, launched.monitor_pid).await;
}

async fn exec_kill_delete(runtime_path: &str, tag: &str) {
    let Some(fx) = Fixture::unless_skipped(runtime_path, tag) else {
        return;
    };
    let id = format!("sleeper-{tag}");
    let spec = fx.launch_spec(&id, fx.bundle(&id, &["sleep", "60"]));
    let launched = fx.conmon.create(&spec).await.unwrap();
    fx.runtime.start(&id).await.unwrap();
    assert_eq!(
        fx.runtime.state(&id).await.unwrap().unwrap().status,
        "running"
    );

    let out = fx
        .exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 5"], 10)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.exit_code, 5);
    assert!(!out.timed_out);

    let started = std::time::Instant::now();
    let out = fx.exec(&id, &["sleep", "30"], 1).await.unwrap();
    assert!(out.timed_out, "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "timeout not enforced: {:?}",
        started.elapsed()
    );

    // Exec in a container that does not exist fails with the runtime's reason.
    let err = fx
        .exec("no-such-container", &["true"], 5)
        .await
        .unwrap_err();
    eprintln!("exec in a missing container: {err}");
    assert!(matches!(err, MonitorError::RuntimeFailed { .. }), "{err:?}");
    // Scratch dirs are removed after each exec.
    assert_eq!(std::fs::read_dir(fx.path("exec")).unwrap().count(), 0);

    fx.runtime.kill(&id, "KILL", false).await.unwrap();
    let exit = exit_within_10s(&spec, &id, "killed container exits").await;
    assert_eq!(exit.exit_code, 128 + 9);
    fx.finish(&id, launched.monitor_pid).await;
}

async fn create_failure_reports_runtime_error(runtime_path: &str, tag: &str) {
    let Some(fx) = Fixture::unless_skipped(runtime_path, tag) else {
        return;
    };
    let id = format!("broken-{tag}");
    let spec = fx.launch_spec(&id, fx.bundle(&id, &["/bin/does-not-exist"]));
    // Point the process at a cwd that cannot exist to make create fail.
    let mut config = Spec::load(spec.bundle.join("config.json")).unwrap();
    let mut process = config.process().clone().unwrap();
    process.set_cwd("/bin/busybox/not-a-dir".into());
    config.set_process(Some(process));
    config.save(spec.bundle.join("config.json")).unwrap();
    let err = fx.conmon.create(&spec).await.unwrap_err();
    assert!(matches!(err, MonitorError::RuntimeFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("failed to create container"), "{text}");
    eprintln!("{tag} create failure: {text}");
    fx.delete(&id).await;
    fx.remove_cgroups();
}

runtime_tests! {
    echo_and_exit: runc_echo_exit_code_and_log("runc"), crun_echo_exit_code_and_log("crun");
    exec_kill_delete: runc_exec_sync_kill_delete("runc-exec"), crun_exec_sync_kill_delete("crun-exec");
    create_failure_reports_runtime_error: runc_create_failure("runc-fail"), crun_create_failure("crun-fail");
}
