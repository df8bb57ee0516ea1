//! Third-party handlers through the CRI socket: the example `hello` handler
//! (examples/handler-hello) loaded from config as a plugin library and as a
//! per-pod shim executable, running real pods (runc, busybox), plus plugins
//! that must be refused (ABI mismatch, missing symbol, writable or foreign
//! library) and handlers that panic or crash, none of which may take the
//! daemon down.
//!
//! The example handler must be built first (`cargo build --workspace
//! --all-targets`, as `scripts/test` does); the refused plugins are compiled
//! here with `rustc` from a few lines of source.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use crius_tests::cri::{configs, images};
use crius_tests::image::{self, BUSYBOX_STATIC, Compression, ImageConfig, Layer, ManifestFormat};
use crius_tests::registry::{REGISTRY_BIN, Registry};
use crius_tests::{Daemon, require_root_and_tools};
use tonic::Code;
use tonic::transport::Channel;

type Runtime = RuntimeServiceClient<Channel>;

const RUNC: &str = "/usr/sbin/runc";
const CATATONIT: &str = "/usr/bin/catatonit";

/// The built example handler: (plugin library, shim executable).
fn example_artifacts() -> (PathBuf, PathBuf) {
    let dir = crius_tests::daemon::crius_bin()
        .parent()
        .expect("target dir")
        .to_path_buf();
    let lib = dir.join("libhandler_hello.so");
    let shim = dir.join("handler-hello-shim");
    for path in [&lib, &shim] {
        assert!(
            path.exists(),
            "{} is missing: build the example handler first (`cargo build --workspace --all-targets`)",
            path.display()
        );
    }
    (lib, shim)
}

/// A root-owned directory, mode 0755, holding copies of the example's
/// artifacts (so the checks do not depend on the target dir's modes).
struct Artifacts {
    dir: tempfile::TempDir,
    lib: PathBuf,
    shim: PathBuf,
}

fn artifacts() -> Artifacts {
    let (lib, shim) = example_artifacts();
    let dir = tempfile::Builder::new()
        .prefix("crius-plugins-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = |from: &Path, name: &str| {
        let to = dir.path().join(name);
        std::fs::copy(from, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        to
    };
    let lib = copy(&lib, "libhandler_hello.so");
    let shim = copy(&shim, "handler-hello-shim");
    Artifacts { dir, lib, shim }
}

impl Artifacts {
    /// Compiles `source` into a cdylib `lib<name>.so` next to the others.
    fn cdylib(&self, name: &str, source: &str) -> PathBuf {
        let src = self.dir.path().join(format!("{name}.rs"));
        std::fs::write(&src, source).unwrap();
        let out = self.dir.path().join(format!("lib{name}.so"));
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let status = std::process::Command::new(&rustc)
            .args([
                "--edition",
                "2021",
                "--crate-type",
                "cdylib",
                "-C",
                "opt-level=0",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run rustc");
        assert!(status.success(), "rustc failed for {name}");
        out
    }

    /// A copy of the example library in its own directory with `mode`,
    /// optionally owned by `uid`.
    fn insecure_copy(&self, name: &str, mode: u32, uid: Option<u32>) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("libhandler_hello.so");
        std::fs::copy(&self.lib, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&path, Some(uid), None).unwrap();
        }
        path
    }
}

/// A plugin whose vtable says ABI version 999.
const ABI_999: &str = r#"
#[repr(C)]
pub struct Header { abi_version: u32, struct_size: u32 }
static HEADER: Header = Header { abi_version: 999, struct_size: 8 };
#[no_mangle]
pub extern "C" fn crius_handler_entry() -> *const Header { &HEADER }
"#;

/// A plugin built against the previous ABI (version 1, contract version 1).
const ABI_1: &str = r#"
#[repr(C)]
pub struct Header { abi_version: u32, struct_size: u32 }
static HEADER: Header = Header { abi_version: 1, struct_size: 40 };
#[no_mangle]
pub extern "C" fn crius_handler_entry() -> *const Header { &HEADER }
"#;

/// A shim of contract version 1: its `info` answers an InfoResponse without
/// `contract_version` (name "old", field 1), as shims built before the
/// version existed do.
const OLD_SHIM: &str = "#!/bin/sh\nprintf '\\n\\003old'\n";

/// A plugin of the right version whose vtable is too small for it.
const SMALL_VTABLE: &str = r#"
#[repr(C)]
pub struct Header { abi_version: u32, struct_size: u32 }
static HEADER: Header = Header { abi_version: 2, struct_size: 8 };
#[no_mangle]
pub extern "C" fn crius_handler_entry() -> *const Header { &HEADER }
"#;

/// A library that is not a crius plugin at all.
const NO_SYMBOL: &str = r#"
#[no_mangle]
pub extern "C" fn something_else() -> u32 { 7 }
"#;

fn library_entry(name: &str, path: &Path, options: &str) -> String {
    format!(
        "  {name}:\n    kind: plugin\n    runtime_path: \"{}\"\n    plugin:\n      mode: library\n      options: {options}\n",
        path.display()
    )
}

fn process_entry(name: &str, path: &Path, options: &str) -> String {
    format!(
        "  {name}:\n    kind: plugin\n    runtime_path: \"{}\"\n    plugin:\n      mode: process\n      options: {options}\n",
        path.display()
    )
}

/// The handler table: runc as the default plus `entries`.
fn handlers_yaml(entries: &[String]) -> String {
    let mut yaml = format!(
        "default_runtime_handler: runc\nruntime_handlers:\n  runc:\n    kind: oci\n    runtime_path: {RUNC}\n    monitor_path: /usr/bin/conmon\n"
    );
    for entry in entries {
        yaml.push_str(entry);
    }
    yaml
}

/// Per-handler readiness from verbose Status: name → (ready, reason).
async fn handler_info(rt: &mut Runtime) -> (cri::StatusResponse, HashMap<String, (bool, String)>) {
    let status = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(&status.info["handlers"]).expect("handlers info is JSON");
    let map = info
        .as_object()
        .expect("handlers info is an object")
        .iter()
        .map(|(name, v)| {
            (
                name.clone(),
                (
                    v["ready"].as_bool().unwrap_or(false),
                    v["reason"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect();
    (status, map)
}

fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    // Host network: no CNI needed.
    configs::pod(name, "crius-plugins", log_dir, cri::NamespaceMode::Node)
}

async fn run_pod(
    rt: &mut Runtime,
    config: &cri::PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    let req = cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    };
    Ok(rt.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id)
}

async fn assert_daemon_up(rt: &mut Runtime, daemon: &Daemon, context: &str) {
    let version = rt.version(cri::VersionRequest::default()).await;
    assert!(
        version.is_ok(),
        "{context}: the daemon no longer answers: {version:?}\n{}",
        daemon.stderr_text()
    );
}

/// Status lists the example handler (both modes) with its features; broken
/// plugins are listed as not ready with a reason that names the problem, and
/// pods routed to them fail with that reason; a panicking plugin gives an
/// Internal error. The daemon serves throughout.
#[tokio::test]
async fn status_lists_plugins_and_refuses_broken_ones() {
    if !require_root_and_tools(&[RUNC, CATATONIT]) {
        return;
    }
    let art = artifacts();
    let abi_999 = art.cdylib("abi999", ABI_999);
    let abi_1 = art.cdylib("abi1", ABI_1);
    let old_shim = art.dir.path().join("old-shim");
    std::fs::write(&old_shim, OLD_SHIM).unwrap();
    std::fs::set_permissions(&old_shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let no_symbol = art.cdylib("nosymbol", NO_SYMBOL);
    let small_vtable = art.cdylib("smallvtable", SMALL_VTABLE);
    let world_writable = art.insecure_copy("ww", 0o757, None);
    let group_writable_dir = {
        let path = art.insecure_copy("gw", 0o755, None);
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o775),
        )
        .unwrap();
        path
    };
    let foreign = art.insecure_copy("foreign", 0o755, Some(65534));
    let entries = vec![
        library_entry("hello-lib", &art.lib, "{}"),
        process_entry("hello-shim", &art.shim, "{}"),
        library_entry("hello-panic", &art.lib, "{fault: \"panic:RunSandbox\"}"),
        library_entry("bad-abi", &abi_999, "{}"),
        library_entry("old-abi", &abi_1, "{}"),
        process_entry("old-shim", &old_shim, "{}"),
        library_entry("no-symbol", &no_symbol, "{}"),
        library_entry("small-vtable", &small_vtable, "{}"),
        library_entry("world-writable", &world_writable, "{}"),
        library_entry("group-writable-dir", &group_writable_dir, "{}"),
        library_entry("foreign-owner", &foreign, "{}"),
        library_entry("missing-lib", &art.dir.path().join("nope.so"), "{}"),
        process_entry("missing-shim", &art.dir.path().join("nope-shim"), "{}"),
    ];
    let daemon = Daemon::builder()
        .runtime_handlers_yaml(&handlers_yaml(&entries))
        .start()
        .await
        .expect("daemon starts");
    let mut rt = daemon.runtime();

    let (status, info) = handler_info(&mut rt).await;
    for name in ["hello-lib", "hello-shim", "hello-panic"] {
        let features = crius_tests::cri::handler_features(&status, name);
        assert!(
            features.user_namespaces,
            "{name} declares user namespaces: {features:?}"
        );
        assert!(
            !features.recursive_read_only_mounts,
            "{name} does not declare rro mounts: {features:?}"
        );
        assert_eq!(info[name], (true, String::new()), "{name} is ready");
    }
    // runc's features come from runc, not from the example.
    crius_tests::cri::handler_features(&status, "runc");

    let expect_refused = [
        (
            "bad-abi",
            vec![
                "handler ABI version 999",
                "handler ABI version 2",
                abi_999.to_str().unwrap(),
            ],
        ),
        (
            "old-abi",
            vec![
                "handler ABI version 1,",
                "speaks handler ABI version 2",
                abi_1.to_str().unwrap(),
            ],
        ),
        (
            "old-shim",
            vec![
                "handler contract version 0",
                "speaks contract version 2",
                old_shim.to_str().unwrap(),
            ],
        ),
        (
            "no-symbol",
            vec![
                "does not export the `crius_handler_entry` symbol",
                no_symbol.to_str().unwrap(),
            ],
        ),
        (
            "small-vtable",
            vec![
                "declares a 8-byte vtable for handler ABI version 2",
                "needs at least",
            ],
        ),
        (
            "world-writable",
            vec![
                "refusing to load plugin",
                "writable by everyone",
                "mode 0757",
            ],
        ),
        (
            "group-writable-dir",
            vec![
                "refusing to load plugin",
                "its directory",
                "writable by its group",
            ],
        ),
        (
            "foreign-owner",
            vec!["refusing to load plugin", "owned by uid 65534, not root"],
        ),
        ("missing-lib", vec!["nope.so"]),
        ("missing-shim", vec!["nope-shim"]),
    ];
    let pod_logs = tempfile::tempdir().unwrap();
    for (name, needles) in &expect_refused {
        let (ready, reason) = &info[*name];
        assert!(!ready, "{name} must not be ready");
        for needle in needles {
            assert!(
                reason.contains(needle),
                "{name}: reason {reason:?} should contain {needle:?}"
            );
        }
        // Listed, with no features.
        assert_eq!(
            crius_tests::cri::handler_features(&status, name),
            cri::RuntimeHandlerFeatures::default()
        );
        let err = run_pod(&mut rt, &pod_config("refused", pod_logs.path()), name)
            .await
            .expect_err("pod must fail");
        assert_eq!(err.code(), Code::Unavailable, "{name}: {err:?}");
        assert!(
            err.message().contains(needles[0]),
            "{name}: RunPodSandbox error {err:?} should say why"
        );
        assert_daemon_up(&mut rt, &daemon, name).await;
    }

    // A handler that panics inside the plugin: an Internal error, daemon up,
    // and the same library's other instance still serves.
    let err = run_pod(
        &mut rt,
        &pod_config("panics", pod_logs.path()),
        "hello-panic",
    )
    .await
    .expect_err("panics");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(
        err.message()
            .contains("panicked in RunSandbox: hello: injected panic in RunSandbox"),
        "{err:?}"
    );
    assert_daemon_up(&mut rt, &daemon, "after the panic").await;
    let (_, info) = handler_info(&mut rt).await;
    assert!(
        info["hello-lib"].0 && info["hello-panic"].0,
        "plugins still answer after a panic: {info:?}"
    );
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "failed pods leave no record: {pods:?}");
    // Nothing on disk either, so a restart has no rollback to retry.
    let left = crius_tests::dir_entries(&daemon.pods_dir());
    assert!(left.is_empty(), "failed pods leave no pod dir: {left:?}");
}

/// A registry with a busybox image and a daemon with `entries`.
struct PodEnv {
    daemon: Daemon,
    image: String,
    log_dir: tempfile::TempDir,
    _registry: Registry,
}

impl Drop for PodEnv {
    /// A failed test must not leave shims or containers running: shims
    /// outlive the daemon by design.
    fn drop(&mut self) {
        let state = self.daemon.state_dir().display().to_string();
        for pid in processes_with(&format!("--socket\0{state}/")) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for root in crius_tests::dir_entries(&self.daemon.state_dir().join("plugins")) {
            let root = root.join("runc");
            let Ok(out) = std::process::Command::new(RUNC)
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .output()
            else {
                continue;
            };
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = std::process::Command::new(RUNC)
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .status();
            }
        }
    }
}

async fn pod_env(entries: &[String]) -> Option<PodEnv> {
    if !require_root_and_tools(&[RUNC, CATATONIT, REGISTRY_BIN, BUSYBOX_STATIC]) {
        return None;
    }
    let registry = Registry::start().await.expect("registry starts");
    let layers = vec![Layer::new(
        image::busybox_rootfs_tar().unwrap(),
        Compression::Gzip,
    )];
    image::push_image(
        &registry,
        "hellobox",
        "1",
        layers,
        &ImageConfig::default(),
        ManifestFormat::Docker,
    )
    .await
    .expect("push image");
    let image = registry.image_ref("hellobox", "1");
    let daemon = Daemon::builder()
        .registry(&registry)
        .runtime_handlers_yaml(&handlers_yaml(entries))
        .start()
        .await
        .expect("daemon starts");
    images::pull(&mut daemon.image(), &image)
        .await
        .expect("pull");
    let log_dir = tempfile::Builder::new()
        .prefix("crius-plugin-logs-")
        .tempdir()
        .unwrap();
    Some(PodEnv {
        daemon,
        image,
        log_dir,
        _registry: registry,
    })
}

impl PodEnv {
    fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        configs::container_with_namespaces(name, &self.image, command, cri::NamespaceMode::Node)
    }

    async fn create(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        Ok(self
            .daemon
            .runtime()
            .create_container(req)
            .await?
            .into_inner()
            .container_id)
    }

    async fn container_state(&self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.daemon
            .runtime()
            .container_status(req)
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .unwrap()
    }

    async fn pod_ready(&self, id: &str) -> bool {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        let status = self
            .daemon
            .runtime()
            .pod_sandbox_status(req)
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        status.status.unwrap().state == cri::PodSandboxState::SandboxReady as i32
    }

    async fn stop_and_remove(&self, pod_id: &str) {
        let mut rt = self.daemon.runtime();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("StopPodSandbox");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("RemovePodSandbox");
        let pods = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
        assert!(pods.iter().all(|p| p.id != pod_id), "pod {pod_id} removed");
    }

    /// Runs a pod with one container through `handler` and checks it really
    /// runs: status, CRI log, exec, exit code. Returns (pod id, pod config).
    async fn run_hello_pod(&self, handler: &str) -> (String, cri::PodSandboxConfig, String) {
        let mut rt = self.daemon.runtime();
        let pod = pod_config(&format!("pod-{handler}"), self.log_dir.path());
        let pod_id = run_pod(&mut rt, &pod, handler)
            .await
            .expect("RunPodSandbox");
        assert!(self.pod_ready(&pod_id).await, "pod is ready");

        let script = format!("echo hello from {handler}; exec sleep 1000");
        let id = self
            .create(
                &pod_id,
                &pod,
                self.container_config("hello", &["sh", "-c", &script]),
            )
            .await
            .expect("CreateContainer");
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
        let status = self.container_state(&id).await;
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerRunning as i32,
            "{status:?}"
        );

        let log = Path::new(&pod.log_directory).join("hello/0.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        let expected = format!("stdout F hello from {handler}");
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(&expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "log {} lacks {expected:?}: {text:?}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let exec = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo exec in $0; exit 3".into(),
                    "hello".into(),
                ],
                timeout: 10,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        assert_eq!(exec.exit_code, 3, "{exec:?}");
        assert_eq!(
            String::from_utf8_lossy(&exec.stdout).trim(),
            "exec in hello",
            "{exec:?}"
        );
        (pod_id, pod, id)
    }

    /// A short-lived container's exit code arrives, then the pod goes away.
    async fn exit_code_and_cleanup(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        running: &str,
    ) {
        let mut rt = self.daemon.runtime();
        let id = self
            .create(
                pod_id,
                pod,
                self.container_config("short", &["sh", "-c", "exit 7"]),
            )
            .await
            .expect("CreateContainer");
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.container_state(&id).await;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                assert_eq!(status.exit_code, 7, "{status:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "container did not exit: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rt.stop_container(cri::StopContainerRequest {
            container_id: running.into(),
            timeout: 1,
        })
        .await
        .expect("StopContainer");
        let status = self.container_state(running).await;
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerExited as i32,
            "{status:?}"
        );
        self.stop_and_remove(pod_id).await;
    }
}

fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// A pod runs through the plugin library, inside the daemon's process, and
/// is restored by the reloaded plugin after a daemon crash.
#[tokio::test]
async fn pod_runs_through_the_plugin_library() {
    within(pod_runs_through_the_plugin_library_inner()).await;
}

/// Fails a test that hangs instead of blocking the run.
async fn within(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(240), test)
        .await
        .expect("the test timed out");
}

async fn pod_runs_through_the_plugin_library_inner() {
    let art = artifacts();
    let Some(mut env) = pod_env(&[library_entry("hello-lib", &art.lib, "{}")]).await else {
        return;
    };
    let (pod_id, pod, running) = env.run_hello_pod("hello-lib").await;

    // After a daemon crash the reloaded plugin restores the pod from runc.
    env.daemon.kill9();
    env.daemon.restart().await.expect("daemon restarts");
    assert!(
        env.pod_ready(&pod_id).await,
        "the pod is still ready after the restart"
    );
    let status = env.container_state(&running).await;
    assert_eq!(
        status.state,
        cri::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );

    env.exit_code_and_cleanup(&pod_id, &pod, &running).await;
}

/// A pod runs through a shim process of its own, which survives a daemon
/// crash (the restarted daemon reconnects) and exits when the pod is
/// removed. A shim that crashes fails its pod's calls with a clear error;
/// the daemon stays up and the pod can still be removed.
#[tokio::test]
async fn pod_runs_through_a_shim_process_and_a_crashing_shim_is_contained() {
    within(shim_inner()).await;
}

async fn shim_inner() {
    let art = artifacts();
    let entries = [
        process_entry("hello-shim", &art.shim, "{}"),
        process_entry(
            "hello-crash",
            &art.shim,
            "{fault: \"abort:CreateContainer\"}",
        ),
    ];
    let Some(mut env) = pod_env(&entries).await else {
        return;
    };
    let (pod_id, pod, running) = env.run_hello_pod("hello-shim").await;
    let shims = processes_with(&format!("--sandbox-id\0{pod_id}"));
    assert_eq!(shims.len(), 1, "one shim process for the pod: {shims:?}");

    env.daemon.kill9();
    env.daemon.restart().await.expect("daemon restarts");
    assert!(
        env.pod_ready(&pod_id).await,
        "the pod is still ready after the restart"
    );
    let status = env.container_state(&running).await;
    assert_eq!(
        status.state,
        cri::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    assert_eq!(
        processes_with(&format!("--sandbox-id\0{pod_id}")),
        shims,
        "the same shim serves the pod"
    );

    env.exit_code_and_cleanup(&pod_id, &pod, &running).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&format!("--sandbox-id\0{pod_id}")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the shim exits after RemovePodSandbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The crashing shim.
    let mut rt = env.daemon.runtime();
    let pod = pod_config("crashy", env.log_dir.path());
    let pod_id = run_pod(&mut rt, &pod, "hello-crash")
        .await
        .expect("RunPodSandbox");
    let err = env
        .create(&pod_id, &pod, env.container_config("c", &["sleep", "100"]))
        .await
        .expect_err("shim aborts");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    for needle in [
        format!("shim for pod {pod_id} exited"),
        "signal 6".to_string(),
        "injected abort in CreateContainer".to_string(),
    ] {
        assert!(
            err.message().contains(&needle),
            "error {:?} should contain {needle:?}",
            err.message()
        );
    }
    assert_daemon_up(&mut rt, &env.daemon, "after the shim crash").await;
    env.stop_and_remove(&pod_id).await;
    assert!(
        processes_with(&format!("--sandbox-id\0{pod_id}")).is_empty(),
        "no shim left"
    );
}

/// A library call that never answers: the CRI call fails with
/// DEADLINE_EXCEEDED after the handler's `call_timeout_seconds`, the
/// handler reports itself unhealthy (naming the stuck call) and refuses new
/// pods, its pod can still be torn down, and the other handlers and the
/// daemon are unaffected.
#[tokio::test]
async fn a_stuck_library_call_times_out_and_marks_only_its_handler_unhealthy() {
    within(stuck_library_call_inner()).await;
}

async fn stuck_library_call_inner() {
    let art = artifacts();
    let hang = format!(
        "  hello-hang:\n    kind: plugin\n    runtime_path: \"{}\"\n    call_timeout_seconds: 2\n    \
         plugin:\n      mode: library\n      options: {{fault: \"hang:StartContainer\"}}\n",
        art.lib.display()
    );
    let Some(env) = pod_env(&[library_entry("hello-lib", &art.lib, "{}"), hang]).await else {
        return;
    };
    let mut rt = env.daemon.runtime();
    let pod = pod_config("stuck", env.log_dir.path());
    let pod_id = run_pod(&mut rt, &pod, "hello-hang")
        .await
        .expect("RunPodSandbox");
    let id = env
        .create(&pod_id, &pod, env.container_config("c", &["sleep", "100"]))
        .await
        .expect("CreateContainer");
    let started = Instant::now();
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("StartContainer never answers");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message()
            .contains("handler hello-hang: StartContainer did not answer within 2s"),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "bounded by the 2 s call timeout: {took:?}"
    );

    let (_, info) = handler_info(&mut rt).await;
    let (ready, reason) = &info["hello-hang"];
    assert!(!ready, "the stuck handler is not ready");
    assert!(
        reason.contains("unhealthy") && reason.contains("StartContainer"),
        "{reason:?}"
    );
    assert!(
        info["hello-lib"].0,
        "the other plugin is still ready: {info:?}"
    );
    let err = run_pod(
        &mut rt,
        &pod_config("refused", env.log_dir.path()),
        "hello-hang",
    )
    .await
    .expect_err("no new pods on an unhealthy handler");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("unhealthy"), "{err:?}");

    // Teardown still goes through the stuck handler.
    env.stop_and_remove(&pod_id).await;
    assert_daemon_up(&mut rt, &env.daemon, "after the stuck call").await;
}

/// A pod's shim killed while its container runs: the next call for the pod
/// starts a fresh shim, which restores the pod (RestoreSandbox) and
/// reattaches to the running container; the pod is served as before.
#[tokio::test]
async fn a_killed_shim_is_respawned_and_reattaches_to_its_running_container() {
    within(killed_shim_inner()).await;
}

async fn killed_shim_inner() {
    let art = artifacts();
    let Some(env) = pod_env(&[process_entry("hello-shim", &art.shim, "{}")]).await else {
        return;
    };
    let (pod_id, _pod, running) = env.run_hello_pod("hello-shim").await;
    let needle = format!("--sandbox-id\0{pod_id}");
    let shims = processes_with(&needle);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let status = std::process::Command::new("kill")
        .args(["-9", &shims[0].to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&needle) == shims {
        assert!(Instant::now() < deadline, "the shim dies");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The next call respawns the shim, which finds the container running.
    let status = env.container_state(&running).await;
    assert_eq!(
        status.state,
        cri::ContainerState::ContainerRunning as i32,
        "reattached: {status:?}"
    );
    let fresh = processes_with(&needle);
    assert_eq!(fresh.len(), 1, "a fresh shim serves the pod: {fresh:?}");
    assert_ne!(fresh, shims, "a new process");
    let out = env
        .daemon
        .runtime()
        .exec_sync(cri::ExecSyncRequest {
            container_id: running.clone(),
            cmd: vec!["echo".into(), "still-here".into()],
            timeout: 20,
        })
        .await
        .expect("ExecSync through the fresh shim")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
    env.stop_and_remove(&pod_id).await;
    assert!(processes_with(&needle).is_empty(), "no shim left");
}
