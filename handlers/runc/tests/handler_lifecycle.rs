//! Drives `OciHandler` through the `RuntimeHandler` trait with the real
//! runtimes (runc and crun) under conmon: a pod whose infra is catatonit,
//! containers sharing its namespaces, CRI logs, exec-sync, stop timeouts,
//! OOM kills, log reopening, resource updates, restore in a fresh handler
//! and complete cleanup (no runtime state, no conmon, no cgroup left).
//!
//! Needs root, conmon, catatonit, busybox-static and the runtime; skips
//! with a printed reason otherwise.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    BUSYBOX, CATATONIT, CONMON, cgroup_mounts, create_request, cref, crun_hybrid_controllers,
    missing_prerequisite, pod_spec, save_bundle, skipped, sref, stop_request,
};
use crius_handler_runc::{OciHandler, runc_config};
use crius_shim_api::types::{
    Bundle, ContainerState, ContainerStatusResponse, CreateContainerRequest, ExecSyncRequest,
    RestoreContainer, RestoreSandboxRequest, RunSandboxRequest, UpdateContainerResourcesRequest,
};
use crius_shim_api::{ErrorKind, RuntimeHandler, cri};
use serde_json::{Value, json};

fn skip_reason(runtime: &str) -> Option<String> {
    if let Some(reason) = missing_prerequisite(&[CONMON, BUSYBOX, CATATONIT, runtime]) {
        return Some(reason);
    }
    if let Some(controllers) = crun_hybrid_controllers(runtime) {
        // Not a skip: scripts/setup fixes this; a test run without it is
        // a broken setup and must fail loudly.
        panic!(
            "crun refuses hybrid cgroups while /sys/fs/cgroup/unified carries controllers ({controllers}); \
             run scripts/setup (it mounts a v1 hugetlb hierarchy)"
        );
    }
    None
}

/// conmon processes whose command line mentions `needle`.
fn conmons_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "conmon" {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

struct Fixture {
    base: tempfile::TempDir,
    runtime_path: &'static str,
    tag: String,
    cgroup_parent: String,
    handler: OciHandler,
}

impl Fixture {
    /// The fixture, or `None` after reporting why the test is skipped.
    async fn unless_skipped(runtime_path: &'static str, tag: &str) -> Option<Fixture> {
        if skipped(skip_reason(runtime_path), tag) {
            return None;
        }
        Some(Fixture::new(runtime_path, tag).await)
    }

    /// The fixture with the running pod `pod-<tag>` and its infra pid, or
    /// `None` after reporting why the test is skipped.
    async fn with_pod(runtime_path: &'static str, tag: &str) -> Option<(Fixture, String, u32)> {
        let fx = Fixture::unless_skipped(runtime_path, tag).await?;
        let pod = format!("pod-{tag}");
        let (infra_pid, _) = fx.run_sandbox(&pod).await;
        Some((fx, pod, infra_pid))
    }

    /// Stops and removes `pod` (taking containers left in it along), then
    /// checks nothing of the test is left.
    async fn remove_pod_and_check_clean(&self, pod: &str) {
        self.handler.stop_sandbox(sref(pod)).await.unwrap();
        self.handler.remove_sandbox(sref(pod)).await.unwrap();
        self.assert_clean();
    }

    async fn new(runtime_path: &'static str, tag: &str) -> Fixture {
        let base = tempfile::Builder::new()
            .prefix("crius-h-")
            .tempdir()
            .unwrap();
        let handler = OciHandler::new(Self::config(base.path(), runtime_path, tag)).await;
        handler.check_ready().await.unwrap();
        Fixture {
            runtime_path,
            tag: tag.to_string(),
            cgroup_parent: format!("crius-htest-{}-{tag}", std::process::id()),
            handler,
            base,
        }
    }

    fn config(base: &Path, runtime_path: &str, tag: &str) -> crius_handler_runc::OciHandlerConfig {
        runc_config(tag, runtime_path, base.join("root"), CONMON)
    }

    /// A second handler instance over the same state (a restarted daemon).
    async fn fresh_handler(&self) -> OciHandler {
        OciHandler::new(Self::config(self.base.path(), self.runtime_path, &self.tag)).await
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.path().join(rel)
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn state_dir(&self, sandbox: &str) -> PathBuf {
        self.path(&format!("state/{sandbox}"))
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.path(&format!("logs/{id}.log"))
    }

    /// Writes a bundle: rootfs with busybox (or catatonit for the infra)
    /// and a config.json built from oci-spec's default spec.
    fn bundle(
        &self,
        id: &str,
        args: &[&str],
        infra_pid: Option<u32>,
        memory: Option<i64>,
    ) -> Bundle {
        let dir = self.path(&format!("bundles/{id}"));
        let applets = [
            "sh", "echo", "sleep", "cat", "tail", "hostname", "true", "ls",
        ];
        let cgroups_path = format!("/{}/{id}", self.cgroup_parent);
        let mut spec = pod_spec(&dir, &cgroups_path, args, infra_pid, None, &applets);
        if infra_pid.is_none() {
            spec["hostname"] = json!("podhost");
        }
        if let Some(limit) = memory {
            spec["linux"]["resources"] = json!({"memory": {"limit": limit}});
        }
        save_bundle(&dir, &spec)
    }

    async fn run_sandbox(&self, id: &str) -> (u32, Vec<u8>) {
        let bundle = self.bundle(&format!("{id}-infra"), &["/catatonit", "-P"], None, None);
        let started = Instant::now();
        let resp = self
            .handler
            .run_sandbox(RunSandboxRequest {
                sandbox_id: id.to_string(),
                state_dir: self.state_dir(id).display().to_string(),
                cgroup_parent: format!("/{}", self.cgroup_parent),
                infra: Some(bundle),
                ..Default::default()
            })
            .await
            .unwrap();
        eprintln!("{}: run_sandbox took {:?}", self.tag, started.elapsed());
        (resp.infra_pid, resp.handler_state)
    }

    async fn create(
        &self,
        sandbox: &str,
        id: &str,
        infra_pid: u32,
        args: &[&str],
        memory: Option<i64>,
    ) -> Vec<u8> {
        let bundle = self.bundle(id, args, Some(infra_pid), memory);
        self.handler
            .create_container(create_request(sandbox, id, bundle, &self.log_path(id)))
            .await
            .unwrap()
            .handler_state
    }

    async fn start(&self, sandbox: &str, id: &str) {
        self.handler
            .start_container(cref(sandbox, id))
            .await
            .unwrap();
    }

    async fn status(&self, h: &OciHandler, sandbox: &str, id: &str) -> ContainerStatusResponse {
        h.container_status(cref(sandbox, id)).await.unwrap()
    }

    async fn wait_exited(
        &self,
        sandbox: &str,
        id: &str,
        within: Duration,
    ) -> ContainerStatusResponse {
        let deadline = Instant::now() + within;
        loop {
            let st = self.status(&self.handler, sandbox, id).await;
            if st.state == ContainerState::Exited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not exit within {within:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_log(&self, path: &Path, needle: &str) -> String {
        for _ in 0..200 {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "{} never contained {needle:?}: {:?}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }

    /// `<runtime> --root <root> list -q` output lines.
    fn runtime_list(&self) -> Vec<String> {
        let out = std::process::Command::new(self.runtime_path)
            .arg("--root")
            .arg(self.root())
            .args(["list", "-q"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks nothing of the test is left and removes the cgroup parents
    /// (which fails if a container cgroup is left inside).
    fn assert_clean(&self) {
        assert_eq!(
            self.runtime_list(),
            Vec::<String>::new(),
            "runtime state left"
        );
        let root = self.root().display().to_string();
        let left = conmons_mentioning(&root);
        assert!(left.is_empty(), "conmon processes left: {left:?}");
        for mount in cgroup_mounts() {
            let parent = mount.join(&self.cgroup_parent);
            if parent.exists() {
                std::fs::remove_dir(&parent)
                    .unwrap_or_else(|e| panic!("cannot remove cgroup {}: {e}", parent.display()));
            }
        }
    }
}

/// Best-effort cleanup when a test fails half-way: no container, conmon or
/// cgroup of the test may outlive it (the temp dir with the runtime root
/// goes right after this).
impl Drop for Fixture {
    // Only while a failed test unwinds, to clean up after it: blocking the
    // test's executor then costs nothing.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for id in self.runtime_list_lossy() {
            let _ = std::process::Command::new(self.runtime_path)
                .arg("--root")
                .arg(self.root())
                .args(["delete", "--force", &id])
                .status();
        }
        std::thread::sleep(Duration::from_millis(200));
        for pid in conmons_mentioning(&self.root().display().to_string()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for mount in cgroup_mounts() {
            let parent = mount.join(&self.cgroup_parent);
            if let Ok(children) = std::fs::read_dir(&parent) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

impl Fixture {
    fn runtime_list_lossy(&self) -> Vec<String> {
        std::process::Command::new(self.runtime_path)
            .arg("--root")
            .arg(self.root())
            .args(["list", "-q"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn exec(sandbox: &str, id: &str, cmd: &[&str], timeout: i64) -> ExecSyncRequest {
    ExecSyncRequest {
        sandbox_id: sandbox.to_string(),
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout_seconds: timeout,
    }
}

fn ns(pid: u32, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

async fn lifecycle(runtime: &'static str, tag: &str) {
    let Some(fx) = Fixture::unless_skipped(runtime, tag).await else {
        return;
    };
    let h = &fx.handler;
    let pod = format!("pod-{tag}");

    // Unknown IDs.
    let err = h.sandbox_status(sref("nope")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    h.stop_sandbox(sref("nope")).await.unwrap();
    h.remove_sandbox(sref("nope")).await.unwrap();

    // --- sandbox -----------------------------------------------------------
    let (infra_pid, sandbox_state) = fx.run_sandbox(&pod).await;
    assert!(infra_pid > 0);
    // `start` returns once the runtime released the process; the exec of
    // catatonit follows a moment later.
    let mut comm = String::new();
    for _ in 0..100 {
        comm = std::fs::read_to_string(format!("/proc/{infra_pid}/comm")).unwrap();
        if comm.trim() == "catatonit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(comm.trim(), "catatonit");
    assert!(h.sandbox_status(sref(&pod)).await.unwrap().ready);
    // A second RunSandbox with the same ID is refused.
    let dup = h
        .run_sandbox(RunSandboxRequest {
            sandbox_id: pod.clone(),
            state_dir: fx.state_dir(&pod).display().to_string(),
            infra: Some(fx.bundle("dup-infra", &["/catatonit", "-P"], None, None)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.kind, ErrorKind::AlreadyExists, "{dup}");

    // --- a container that traps SIGTERM ----------------------------------
    let web = "web";
    let started = Instant::now();
    let web_state = fx
        .create(
            &pod,
            web,
            infra_pid,
            &["sh", "-c", "trap 'echo got-term' TERM; echo started on $(hostname); while true; do sleep 0.1; done"],
            None,
        )
        .await;
    let created = started.elapsed();
    fx.start(&pod, web).await;
    eprintln!(
        "{tag}: create {:?}, create+start {:?}",
        created,
        started.elapsed()
    );
    let log = fx.wait_log(&fx.log_path(web), "started on podhost").await;
    let line = log
        .lines()
        .find(|l| l.contains("started on podhost"))
        .unwrap();
    // CRI format: <RFC3339Nano> stdout F <content>
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields[1..], ["stdout", "F", "started on podhost"], "{line}");
    assert!(fields[0].contains('T') && fields[0].len() > 20, "{line}");

    let st = fx.status(h, &pod, web).await;
    assert_eq!(st.state, ContainerState::Running as i32, "{st:?}");
    assert!(
        st.pid > 0 && st.created_at > 0 && st.started_at >= st.created_at,
        "{st:?}"
    );
    let web_pid = st.pid;
    // conmon detached from us (own session, not our child): it survives a
    // daemon exit.
    let record: Value = serde_json::from_slice(&web_state).unwrap();
    let conmon_pid = record["conmon_pid"].as_i64().expect("conmon pid recorded");
    let stat = std::fs::read_to_string(format!("/proc/{conmon_pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (ppid, sid): (i64, i64) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(
        ppid,
        i64::from(std::process::id()),
        "conmon is still our child"
    );
    assert_eq!(sid, conmon_pid, "conmon does not lead its own session");
    for kind in ["ipc", "uts", "net"] {
        assert_eq!(
            ns(web_pid, kind),
            ns(infra_pid, kind),
            "{kind} namespace not shared"
        );
    }
    assert_ne!(ns(web_pid, "pid"), ns(infra_pid, "pid"));
    // Starting twice is refused.
    let again = h.start_container(cref(&pod, web)).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::FailedPrecondition, "{again}");

    // --- exec-sync ----------------------------------------------------------
    let exec_web = |cmd: &[&str], timeout: i64| h.exec_sync(exec(&pod, web, cmd, timeout));
    let out = exec_web(&["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!((out.exit_code, out.timed_out), (3, false));
    let out = exec_web(&["hostname"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "podhost\n");
    let t = Instant::now();
    let out = exec_web(&["sleep", "30"], 1).await.unwrap();
    let took = t.elapsed();
    assert!(out.timed_out, "{out:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    eprintln!("{tag}: exec timeout 1s returned after {took:?}");
    let out = exec_web(&["/bin/no-such-command"], 10).await.unwrap();
    eprintln!(
        "{tag}: bad exec: code {} stderr {:?}",
        out.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.exit_code, 0);
    assert!(!out.stderr.is_empty());
    let err = exec_web(&[], 10).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    // 24 MiB of output, under the 32 MiB cap: all of it comes back.
    let out = exec_web(&["sh", "-c", "head -c 25165824 /dev/zero | tr '\\0' a"], 30)
        .await
        .unwrap();
    assert_eq!(
        out.exit_code,
        0,
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        (crius_handler_runc::execsync::EXEC_SYNC_OUTPUT_MAX_BYTES as usize) > 25165824,
        "the test must stay under the cap"
    );
    assert_eq!(
        out.stdout.len(),
        25165824,
        "every byte of stdout comes back"
    );
    assert!(out.stdout.iter().all(|&b| b == b'a'));
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --- stats and resources -------------------------------------------------
    let stats = h.container_stats(cref(&pod, web)).await.unwrap();
    assert!(
        stats.memory_usage_bytes > 0 && stats.cpu_usage_core_nanoseconds > 0,
        "{stats:?}"
    );
    h.update_container_resources(UpdateContainerResourcesRequest {
        sandbox_id: pod.clone(),
        container_id: web.into(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 256,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let mem_dir = cgroup_mounts()
        .into_iter()
        .find(|m| m.ends_with("memory"))
        .map(|m| m.join(&fx.cgroup_parent).join(web));
    if let Some(dir) = mem_dir.filter(|d| d.join("memory.limit_in_bytes").exists()) {
        let limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
    } else {
        let limit = std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(&fx.cgroup_parent)
                .join(web)
                .join("memory.max"),
        )
        .unwrap();
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
    }

    // --- log rotation --------------------------------------------------------
    let log_path = fx.log_path(web);
    let rotated = log_path.with_extension("log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    h.reopen_container_log(cref(&pod, web)).await.unwrap();
    assert!(log_path.exists(), "reopen did not recreate the log");
    // Write to the container's stdout (its init's fd 1, the pipe to conmon).
    let out = exec_web(&["sh", "-c", "echo after-rotation > /proc/1/fd/1"], 10)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    fx.wait_log(&log_path, "stdout F after-rotation").await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        !old.contains("after-rotation"),
        "old file still written: {old}"
    );

    // --- a container that completes ------------------------------------------
    fx.create(
        &pod,
        "once",
        infra_pid,
        &["sh", "-c", "echo hello; exit 0"],
        None,
    )
    .await;
    fx.start(&pod, "once").await;
    let st = fx.wait_exited(&pod, "once", Duration::from_secs(10)).await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );
    assert!(
        st.finished_at >= st.started_at && st.started_at > 0,
        "{st:?}"
    );
    fx.wait_log(&fx.log_path("once"), "stdout F hello").await;
    let err = h
        .exec_sync(exec(&pod, "once", &["true"], 5))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::FailedPrecondition);

    // --- a failing create leaves nothing behind -----------------------------
    let bad = fx.bundle("bad", &["sh"], Some(infra_pid), None);
    let mut spec: Value = serde_json::from_slice(&bad.oci_spec).unwrap();
    spec["process"]["cwd"] = json!("/bin/busybox/not-a-dir");
    std::fs::write(
        Path::new(&bad.dir).join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let err = h
        .create_container(create_request(&pod, "bad", bad, &fx.log_path("bad")))
        .await
        .unwrap_err();
    eprintln!("{tag}: failed create: {err}");
    assert_eq!(err.kind, ErrorKind::Internal);
    assert!(
        err.message.contains("bad") && err.message.contains(runtime),
        "{err}"
    );
    assert!(!fx.runtime_list().contains(&"bad".to_string()));
    assert!(!fx.state_dir(&pod).join("containers/bad").exists());
    assert_eq!(
        h.container_status(cref(&pod, "bad"))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    // Unknown sandbox.
    let err = h
        .create_container(CreateContainerRequest {
            sandbox_id: "no-pod".into(),
            container_id: "x".into(),
            bundle: Some(fx.bundle("x", &["true"], Some(infra_pid), None)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);

    // --- restore in a fresh handler (daemon restart) ------------------------
    let h2 = fx.fresh_handler().await;
    let restored = h2
        .restore_sandbox(RestoreSandboxRequest {
            sandbox_id: pod.clone(),
            state_dir: fx.state_dir(&pod).display().to_string(),
            handler_state: sandbox_state,
            containers: vec![
                RestoreContainer {
                    container_id: web.into(),
                    bundle_dir: fx.path("bundles/web").display().to_string(),
                    log_path: log_path.display().to_string(),
                    handler_state: web_state,
                },
                RestoreContainer {
                    container_id: "once".into(),
                    bundle_dir: fx.path("bundles/once").display().to_string(),
                    log_path: fx.log_path("once").display().to_string(),
                    handler_state: Vec::new(),
                },
            ],
            config: None,
        })
        .await
        .unwrap();
    assert!(restored.ready);
    let st = fx.status(&h2, &pod, web).await;
    assert_eq!(
        (st.state, st.pid),
        (ContainerState::Running as i32, web_pid),
        "{st:?}"
    );
    assert!(st.started_at > 0);
    let st = fx.status(&h2, &pod, "once").await;
    assert_eq!(
        (st.state, st.reason.as_str()),
        (ContainerState::Exited as i32, "Completed")
    );
    let out = h2
        .exec_sync(exec(&pod, web, &["echo", "still here"], 10))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");

    // --- remove refuses a running container; stop honours the timeout ------
    let err = h2.remove_container(cref(&pod, web)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::FailedPrecondition, "{err}");
    let t = Instant::now();
    h2.stop_container(stop_request(&pod, web, 2)).await.unwrap();
    let took = t.elapsed();
    eprintln!("{tag}: stop with 2s timeout of a SIGTERM-trapping container took {took:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    fx.wait_log(&log_path, "got-term").await;
    let st = fx.status(&h2, &pod, web).await;
    assert_eq!(
        (st.state, st.exit_code, st.reason.as_str()),
        (ContainerState::Exited as i32, 137, "Error"),
        "{st:?}"
    );
    assert!(st.finished_at > st.started_at);
    // Idempotent.
    h2.stop_container(stop_request(&pod, web, 2)).await.unwrap();

    // A container that exits promptly on SIGTERM stops before its timeout.
    // (The first handler no longer owns the pod's view; keep using h2.)
    let bundle = fx.bundle(
        "polite",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
        Some(infra_pid),
        None,
    );
    h2.create_container(create_request(
        &pod,
        "polite",
        bundle,
        &fx.log_path("polite"),
    ))
    .await
    .unwrap();
    h2.start_container(cref(&pod, "polite")).await.unwrap();
    let t = Instant::now();
    h2.stop_container(stop_request(&pod, "polite", 30))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let st = fx.status(&h2, &pod, "polite").await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );

    // --- teardown ------------------------------------------------------------
    for id in [web, "once", "polite"] {
        h2.remove_container(cref(&pod, id)).await.unwrap();
        h2.remove_container(cref(&pod, id)).await.unwrap();
        assert_eq!(
            h2.container_status(cref(&pod, id)).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
    }
    h2.stop_sandbox(sref(&pod)).await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{infra_pid}")).exists() || {
            // A zombie awaiting its reaper is not running either.
            std::fs::read_to_string(format!("/proc/{infra_pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        }
    );
    assert!(!h2.sandbox_status(sref(&pod)).await.unwrap().ready);
    h2.stop_sandbox(sref(&pod)).await.unwrap();
    h2.remove_sandbox(sref(&pod)).await.unwrap();
    h2.remove_sandbox(sref(&pod)).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(fx.state_dir(&pod))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "handler files left in the state dir: {left:?}"
    );
    fx.assert_clean();
}

async fn oom_killed(runtime: &'static str, tag: &str) {
    let Some((fx, pod, infra_pid)) = Fixture::with_pod(runtime, tag).await else {
        return;
    };
    // tail buffers a "line" that never ends: memory grows until the limit.
    fx.create(
        &pod,
        "hog",
        infra_pid,
        &["tail", "/dev/zero"],
        Some(16 << 20),
    )
    .await;
    fx.start(&pod, "hog").await;
    let st = fx.wait_exited(&pod, "hog", Duration::from_secs(30)).await;
    eprintln!("{tag}: OOM status {st:?}");
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (137, "OOMKilled"),
        "{st:?}"
    );

    // Removing the sandbox with a container left removes that too.
    fx.remove_pod_and_check_clean(&pod).await;
}

/// create+start latency over a few containers (printed, loosely bounded).
async fn latency(runtime: &'static str, tag: &str) {
    let Some((fx, pod, infra_pid)) = Fixture::with_pod(runtime, tag).await else {
        return;
    };
    let h = &fx.handler;
    let mut samples = Vec::new();
    for i in 0..10 {
        let id = format!("c{i}");
        let bundle = fx.bundle(&id, &["sleep", "60"], Some(infra_pid), None);
        let t = Instant::now();
        h.create_container(CreateContainerRequest {
            sandbox_id: pod.clone(),
            container_id: id.clone(),
            bundle: Some(bundle),
            // The first container has no log (conmon's `none` driver).
            log_path: if i == 0 {
                String::new()
            } else {
                fx.log_path(&id).display().to_string()
            },
            ..Default::default()
        })
        .await
        .unwrap();
        h.start_container(cref(&pod, &id)).await.unwrap();
        samples.push(t.elapsed());
        let st = h.container_status(cref(&pod, &id)).await.unwrap();
        assert_eq!(st.state, ContainerState::Running as i32, "{id}: {st:?}");
    }
    samples.sort();
    eprintln!(
        "{tag}: create+start over {} containers: min {:?} p50 {:?} max {:?}",
        samples.len(),
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    assert!(samples[samples.len() / 2] < Duration::from_secs(5));
    // A created, never started container: stop ends it at once (the
    // runtime's init only waits for `start`), remove cleans it up.
    fx.create(&pod, "idle", infra_pid, &["sleep", "60"], None)
        .await;
    let st = h.container_status(cref(&pod, "idle")).await.unwrap();
    assert_eq!(st.state, ContainerState::Created as i32, "{st:?}");
    assert!(st.pid > 0 && st.started_at == 0, "{st:?}");
    let t = Instant::now();
    h.stop_container(stop_request(&pod, "idle", 10))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let st = h.container_status(cref(&pod, "idle")).await.unwrap();
    assert_eq!(st.state, ContainerState::Exited as i32, "{st:?}");
    h.remove_container(cref(&pod, "idle")).await.unwrap();
    assert!(!fx.runtime_list().contains(&"idle".to_string()));

    // Removing the pod takes its running containers with it.
    fx.remove_pod_and_check_clean(&pod).await;
}

runtime_tests! {
    lifecycle: runc_pod_lifecycle("runc"), crun_pod_lifecycle("crun");
    oom_killed: runc_oom_killed("runc-oom"), crun_oom_killed("crun-oom");
    latency: runc_create_start_latency("runc-lat"), crun_create_start_latency("crun-lat");
}
