//! The kata (VM) handler after `kill -9` of a pod's VM shim: one
//! StopPodSandbox and one RemovePodSandbox clean up everything the pod held
//! (VM, helpers, mounts, network), with the daemon running and after a
//! daemon restart.
//!
//! Needs root, QEMU, vhost-device-vsock and the guest image
//! (`scripts/setup --with-kata`), like `kata.rs`.

use std::path::PathBuf;
use std::time::Duration;

use crius_proto::cri;
use crius_tests::cri::{configs, images};
use crius_tests::host::{
    mounts_containing, processes_matching, wait_for_log, write_test_cni_config,
};
use crius_tests::image::{self, BUSYBOX_STATIC};
use crius_tests::registry::{REGISTRY_BIN, Registry};
use crius_tests::{Daemon, require_root_and_tools, unique_token};

const CONMON: &str = "/usr/bin/conmon";
const RUNC: &str = "/usr/sbin/runc";
const CNI_PLUGINS: [&str; 2] = ["/usr/lib/cni/bridge", "/usr/lib/cni/host-local"];

use crius_tests::kata::{VmEntry, VmParts};

struct Env {
    daemon: Daemon,
    image: String,
    bridge: String,
    log_dir: tempfile::TempDir,
    cni_dir: tempfile::TempDir,
    _registry: Registry,
}

impl Drop for Env {
    fn drop(&mut self) {
        let state = self.daemon.state_dir().display().to_string();
        for needle in ["crius-kata-shim", "qemu-system", "vhost-device-vsock"] {
            for p in processes_matching(&[needle, &state]) {
                if let Some(Ok(pid)) = p.split(':').next().map(str::parse::<i32>) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = nix::mount::umount2(
            &self.daemon.state_dir().join("netns"),
            nix::mount::MntFlags::MNT_DETACH,
        );
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.bridge, "type", "bridge"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

async fn setup() -> Option<Env> {
    let mut tools = vec![REGISTRY_BIN, BUSYBOX_STATIC, CONMON, RUNC];
    tools.extend(CNI_PLUGINS);
    if !require_root_and_tools(&tools) {
        return None;
    }
    let vm = VmParts::find()?;
    let registry = Registry::start().await.expect("registry starts");
    let image = image::push_busybox(
        &registry,
        "katarec",
        "1",
        image::ManifestFormat::Oci,
        image::Compression::Gzip,
    )
    .await
    .map(|_| registry.image_ref("katarec", "1"))
    .expect("push image");
    let token = unique_token();
    let cni_dir = tempfile::Builder::new()
        .prefix("crius-cni-")
        .tempdir()
        .unwrap();
    let bridge = format!("crq{}", &token[..8]);
    write_test_cni_config(
        cni_dir.path(),
        &format!("crius-katarec-{token}"),
        &bridge,
        &format!("10.{}.{}", 100 + std::process::id() % 50, 250),
    );
    let handlers = format!(
        "default_runtime_handler: runc\nruntime_handlers:\n  runc:\n    kind: oci\n    runtime_path: {RUNC}\n    \
         monitor_path: {CONMON}\n{}",
        vm.entry_yaml("kata", &VmEntry::default())
    );
    let daemon = Daemon::builder()
        .registry(&registry)
        .runtime_handlers_yaml(&handlers)
        .extra_yaml(&format!(
            "cni:\n  conf_dir: \"{}\"\n  bin_dirs: [/usr/lib/cni]\n",
            cni_dir.path().display()
        ))
        .start()
        .await
        .expect("daemon starts");
    images::pull(&mut daemon.image(), &image)
        .await
        .expect("pull image");
    let log_dir = tempfile::Builder::new()
        .prefix("crius-katareclogs-")
        .tempdir()
        .unwrap();
    Some(Env {
        daemon,
        image,
        bridge,
        log_dir,
        cni_dir,
        _registry: registry,
    })
}

impl Env {
    /// A kata pod with one running container that has logged.
    async fn pod_with_a_container(&self, name: &str) -> String {
        let pod = configs::pod(
            name,
            "crius-rec",
            self.log_dir.path(),
            cri::NamespaceMode::Pod,
        );
        let mut rt = self.daemon.runtime();
        let pod_id = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: "kata".into(),
            })
            .await
            .expect("RunPodSandbox with kata")
            .into_inner()
            .pod_sandbox_id;
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(configs::container(
                    "c",
                    &self.image,
                    &["sh", "-c", "echo up; exec sleep 1000"],
                )),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest { container_id: id })
            .await
            .expect("StartContainer");
        wait_for_log(
            &std::path::Path::new(&pod.log_directory).join("c/0.log"),
            "up",
            Duration::from_secs(60),
        )
        .await;
        pod_id
    }

    /// One Stop and one Remove, each must succeed.
    async fn stop_and_remove_once(&self, pod_id: &str) {
        let mut rt = self.daemon.runtime();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        })
        .await
        .expect("the first StopPodSandbox after the shim died");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        })
        .await
        .expect("the first RemovePodSandbox after the shim died");
    }

    fn assert_pod_gone(&self, pod_id: &str, context: &str) {
        let short = &pod_id[..16];
        for needle in ["qemu-system", "vhost-device-vsock", "crius-kata-shim"] {
            let procs = processes_matching(&[needle, short]);
            assert!(procs.is_empty(), "{context}: {needle} left: {procs:?}");
        }
        let dir = self.daemon.dir().display().to_string();
        let mounts: Vec<String> = mounts_containing(&dir)
            .into_iter()
            // The netns directory's own bind mount stays (shared by pods).
            .filter(|m| !m.split(' ').nth(4).is_some_and(|p| p.ends_with("/netns")))
            .collect();
        assert!(mounts.is_empty(), "{context}: mounts left: {mounts:?}");
        let left = crius_tests::dir_entries(&self.daemon.pods_dir());
        assert!(left.is_empty(), "{context}: pod dirs left: {left:?}");
        let leases: Vec<PathBuf> = crius_tests::files_below(&self.cni_dir.path().join("ipam"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("10."))
            })
            .collect();
        assert!(leases.is_empty(), "{context}: IP leases left: {leases:?}");
    }
}

/// SIGKILLs the pod's shim; with `wait`, returns once it is gone.
async fn kill_shim(pod_id: &str, wait: bool) {
    let shims = processes_matching(&["crius-kata-shim", &pod_id[..16]]);
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let pid: i32 = shims[0].split(':').next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    if !wait {
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "shim {pid} survives SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kill -9` of the shim while the daemon runs, and of another pod's shim
/// while the daemon is down: each pod goes with one Stop and one Remove.
#[tokio::test(flavor = "multi_thread")]
async fn one_stop_and_remove_clean_up_after_the_shim_died() {
    let Some(mut env) = setup().await else {
        return;
    };
    let first = env.pod_with_a_container("shimdies").await;
    // Stop follows at once: the daemon may not have seen the death yet.
    kill_shim(&first, false).await;
    env.stop_and_remove_once(&first).await;
    env.assert_pod_gone(&first, "after the shim died under a running daemon");

    let second = env.pod_with_a_container("shimdies-down").await;
    env.daemon.kill9();
    kill_shim(&second, true).await;
    env.daemon.restart().await.expect("daemon restarts");
    env.stop_and_remove_once(&second).await;
    env.assert_pod_gone(&second, "after the shim died with the daemon down");
}
