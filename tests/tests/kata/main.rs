//! The kata (VM) handler through the daemon's CRI socket: real QEMU (TCG
//! here), vhost-device-vsock, the guest image from handlers/kata/guest and
//! the crius guest agent.
//!
//! Needs root, QEMU, vhost-device-vsock and the guest image
//! (`scripts/setup --with-kata`); skipped with the reason otherwise.
//! `CRIUS_KATA_GUEST_DIR` overrides where the guest image is looked for.

mod interactive;
mod pod_semantics;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use crius_tests::cri::{configs, images};
use crius_tests::host::{
    mounts_containing, processes_matching, wait_for_log, write_test_cni_config,
};
use crius_tests::image::{self, BUSYBOX_STATIC};
use crius_tests::registry::{REGISTRY_BIN, Registry};
use crius_tests::{Daemon, require_root_and_tools, require_tools, unique_token};
use tonic::transport::Channel;

type Runtime = RuntimeServiceClient<Channel>;

const CONMON: &str = "/usr/bin/conmon";
const CATATONIT: &str = "/usr/bin/catatonit";
const RUNC: &str = "/usr/sbin/runc";
const CNI_PLUGINS: [&str; 2] = ["/usr/lib/cni/bridge", "/usr/lib/cni/host-local"];
/// The pod annotation that adds guest kernel parameters (allowed on the
/// test's kata entries, so the shim's own check is what refuses bad ones).
const ANNOTATION_KERNEL_PARAMS: &str = "io.katacontainers.config.hypervisor.kernel_params";
/// Room the test VMs have to grow (more vCPUs than the host's cores is
/// fine for a guest).
const MAX_VCPUS: u32 = 3;
const MAX_MEMORY_MIB: u64 = 2048;
/// Generous: TCG on a loaded 2-core machine.
const BOOT_TIMEOUT_SECONDS: u64 = 150;

use crius_tests::kata::{QEMU, VmEntry, VmParts, uses_virtiofs};

struct Env {
    // Field order is drop order: the daemon stops before the registry goes away.
    daemon: Daemon,
    image: String,
    guest_release: String,
    log_dir: tempfile::TempDir,
    _cni_dir: tempfile::TempDir,
    _hooks_dir: tempfile::TempDir,
    _registry: Registry,
}

/// Containers with this annotation (`yes`) get [`HOOK_FILE`] written by a
/// `startContainer` OCI hook from the daemon's hook dir.
const HOOK_ANNOTATION: &str = "crius-test/kata-hook";
/// What the hook writes (inside the container, so in the guest).
const HOOK_FILE: &str = "/tmp/kata-hook";

/// A hook dir with one `oci-hooks(5)` file: `/bin/sh` (the image's) writes
/// [`HOOK_FILE`] in containers annotated with [`HOOK_ANNOTATION`].
fn write_hooks_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("crius-katahooks-")
        .tempdir()
        .unwrap();
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {"path": "/bin/sh", "args": ["sh", "-c", format!("echo hooked-in-the-guest > {HOOK_FILE}")]},
        "when": {"annotations": {format!("^{}$", regex_escape(HOOK_ANNOTATION)): "^yes$"}},
        "stages": ["startContainer"]
    });
    std::fs::write(dir.path().join("kata-test.json"), hook.to_string()).unwrap();
    dir
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

/// A CNI bridge network of the test's own (like tests/pods.rs).
fn write_cni_config(dir: &Path, token: &str, subnet_prefix: &str) {
    write_test_cni_config(
        dir,
        &format!("crius-kata-{token}"),
        &format!("crk{}", &token[..8]),
        subnet_prefix,
    );
}

/// Registry + busybox image + daemon with `runc`, `kata` and `kata-slow`
/// (a boot timeout no VM can meet). `None` (reason printed) when something
/// is missing.
async fn setup(subnet: u32) -> Option<Env> {
    if !require_root_and_tools(&[REGISTRY_BIN, BUSYBOX_STATIC, CONMON, CATATONIT, RUNC])
        || !require_tools(&CNI_PLUGINS)
    {
        return None;
    }
    let vm = VmParts::find()?;
    let guest_release = vm.guest_release.clone();

    let registry = Registry::start().await.expect("registry starts");
    let image = image::push_busybox_with_applets(
        &registry,
        "katabox",
        "1",
        &["dd", "uname", "ip", "httpd", "wget", "seq", "stty"],
    )
    .await
    .expect("push image");

    let token = unique_token();
    let cni_dir = tempfile::Builder::new()
        .prefix("crius-cni-")
        .tempdir()
        .unwrap();
    write_cni_config(
        cni_dir.path(),
        &token,
        &format!("10.{}.{subnet}", 150 + std::process::id() % 40),
    );
    let entry = |boot_timeout_seconds: u64| VmEntry {
        boot_timeout_seconds,
        allowed_annotations: &[ANNOTATION_KERNEL_PARAMS],
        max_vcpus: MAX_VCPUS,
        max_memory_mib: MAX_MEMORY_MIB,
    };
    let handlers = format!(
        "default_runtime_handler: runc\nruntime_handlers:\n  runc:\n    kind: oci\n    runtime_path: {RUNC}\n    \
         monitor_path: {CONMON}\n{}{}",
        vm.entry_yaml("kata", &entry(BOOT_TIMEOUT_SECONDS)),
        vm.entry_yaml("kata-slow", &entry(1))
    );
    let hooks_dir = write_hooks_dir();
    let daemon = Daemon::builder()
        .registry(&registry)
        .runtime_handlers_yaml(&handlers)
        .extra_yaml(&format!(
            "cni:\n  conf_dir: \"{}\"\n  bin_dirs: [/usr/lib/cni]\nhooks_dirs: [\"{}\"]\n",
            cni_dir.path().display(),
            hooks_dir.path().display()
        ))
        .start()
        .await
        .expect("daemon starts");
    images::pull(&mut daemon.image(), &image)
        .await
        .expect("pull image");
    let log_dir = tempfile::Builder::new()
        .prefix("crius-katalogs-")
        .tempdir()
        .unwrap();
    Some(Env {
        daemon,
        image,
        guest_release,
        log_dir,
        _cni_dir: cni_dir,
        _hooks_dir: hooks_dir,
        _registry: registry,
    })
}

impl Drop for Env {
    fn drop(&mut self) {
        // A failed test leaves its pods: SIGTERM makes each VM shim stop its
        // VM and exit, so no QEMU outlives the test.
        let state = self.daemon.state_dir().display().to_string();
        for shim in processes_matching(&["crius-kata-shim", &state]) {
            if let Some(Ok(pid)) = shim.split(':').next().map(str::parse::<i32>) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let _ = nix::mount::umount2(
            &self.daemon.state_dir().join("netns"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

impl Env {
    fn rt(&self) -> Runtime {
        self.daemon.runtime()
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        configs::pod(
            name,
            "crius-test",
            self.log_dir.path(),
            cri::NamespaceMode::Pod,
        )
    }

    async fn run_pod(
        &self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .rt()
            .run_pod_sandbox(req)
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        configs::container(name, &self.image, command)
    }

    fn log_path(&self, pod: &cri::PodSandboxConfig, name: &str) -> PathBuf {
        Path::new(&pod.log_directory).join(name).join("0.log")
    }

    async fn create_and_start(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        let id = self
            .rt()
            .create_container(req)
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        self.rt()
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("StartContainer");
        id
    }

    async fn wait_exited(&self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let req = cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            };
            let status = self
                .rt()
                .container_status(req)
                .await
                .expect("ContainerStatus")
                .into_inner()
                .status
                .unwrap();
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit within {timeout:?}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn exec(&self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        let req = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        self.rt()
            .exec_sync(req)
            .await
            .expect("ExecSync")
            .into_inner()
    }

    async fn handler_info(&self, pod_id: &str) -> serde_json::Value {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_string(),
            verbose: true,
        };
        let status = self
            .rt()
            .pod_sandbox_status(req)
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let info: serde_json::Value =
            serde_json::from_str(&status.info["info"]).expect("verbose info is JSON");
        info
    }

    /// Stops and removes the pod (twice: removal is idempotent). Each call
    /// must fit in a CRI client's default 2 s timeout (crictl's), even with
    /// running containers, which are killed (the VM goes with them).
    async fn stop_and_remove_pod(&self, id: &str) {
        let mut rt = self.rt();
        let started = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("StopPodSandbox");
        let stop = started.elapsed();
        let started = Instant::now();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("RemovePodSandbox");
        let remove = started.elapsed();
        eprintln!("kata StopPodSandbox took {stop:?}, RemovePodSandbox {remove:?}");
        assert!(
            stop < Duration::from_secs(2) && remove < Duration::from_secs(2),
            "StopPodSandbox took {stop:?} and RemovePodSandbox {remove:?}: each must fit in 2 s"
        );
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("second RemovePodSandbox");
    }

    /// No VM process of any pod, no pod dir, netns pin or mount left.
    fn assert_nothing_left(&self, context: &str) {
        // Root and state dir both live in the daemon's own directory.
        let state = self.daemon.dir().display().to_string();
        let pods_dir = self.daemon.pods_dir();
        let left = crius_tests::dir_entries(&pods_dir);
        assert!(left.is_empty(), "{context}: pod dirs left: {left:?}");
        let netns = crius_tests::dir_entries(&self.daemon.state_dir().join("netns"));
        assert!(netns.is_empty(), "{context}: netns pins left: {netns:?}");
        let mounts = mounts_containing(&pods_dir.display().to_string());
        assert!(mounts.is_empty(), "{context}: mounts left: {mounts:?}");
        for needle in ["qemu-system", "vhost-device-vsock", "crius-kata-shim"] {
            let procs = processes_matching(&[needle, &state]);
            assert!(
                procs.is_empty(),
                "{context}: {needle} processes left: {procs:?}"
            );
        }
    }
}

/// The processes of one pod's VM, found by the pod id QEMU and the helpers
/// carry in their command lines.
fn vm_processes(pod_id: &str) -> Vec<String> {
    let short = &pod_id[..16];
    [
        "qemu-system",
        "vhost-device-vsock",
        "virtiofsd",
        "crius-kata-shim",
    ]
    .iter()
    .flat_map(|needle| processes_matching(&[needle, short]))
    .collect()
}

fn host_release() -> String {
    nix::sys::utsname::uname()
        .expect("uname")
        .release()
        .to_string_lossy()
        .into_owned()
}

/// One kata pod: its containers run on the guest kernel, their output
/// reaches the CRI log files, ExecSync works, exit codes and OOM kills are
/// reported, and stop/remove leave no VM process, mount or netns behind.
#[tokio::test(flavor = "multi_thread")]
async fn kata_pod_runs_containers_on_the_guest_kernel() {
    let Some(env) = setup(1).await else { return };
    assert_ne!(
        env.guest_release,
        host_release(),
        "the test needs a guest kernel unlike the host's"
    );
    let pod = env.pod_config("vm");
    let started = Instant::now();
    let pod_id = env
        .run_pod(&pod, "kata")
        .await
        .expect("RunPodSandbox with kata");
    let run_pod = started.elapsed();
    let info = env.handler_info(&pod_id).await;
    eprintln!(
        "kata RunPodSandbox took {run_pod:?}; handler info: {}",
        serde_json::to_string(&info["handlerInfo"]).unwrap_or_default()
    );
    assert_eq!(
        vm_processes(&pod_id).len(),
        3 + usize::from(uses_virtiofs()),
        "shim, QEMU, vhost-device-vsock (and virtiofsd) run: {:?}",
        vm_processes(&pod_id)
    );
    // The VM's sockets are the daemon's own: in the pod's dir or, as here
    // (the pod dir is too deep for a socket path), under the handler's
    // state dir; never in a host-wide directory another daemon shares.
    let short_id: String = pod_id.chars().take(16).collect();
    let socket_dir = env.daemon.state_dir().join("plugins/kata").join(&short_id);
    assert!(
        socket_dir.join("vsock.sock").exists(),
        "hybrid vsock socket in {}",
        socket_dir.display()
    );
    assert!(
        !Path::new("/run/crius-kata").join(&short_id).exists(),
        "nothing under the shared /run/crius-kata"
    );

    // A short-lived container: output, stderr and exit code.
    let started = Instant::now();
    let config = env.container_config(
        "uname",
        &["sh", "-c", "uname -r; uname -n; echo to-stderr >&2; exit 3"],
    );
    let id = env.create_and_start(&pod_id, &pod, config).await;
    let create_start = started.elapsed();
    let status = env.wait_exited(&id, Duration::from_secs(60)).await;
    eprintln!(
        "kata container create+start took {create_start:?}, ran to exit in {:?}",
        started.elapsed()
    );
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (3, "Error"),
        "{status:?}"
    );
    assert!(
        status.finished_at >= status.started_at && status.started_at > 0,
        "{status:?}"
    );
    let log = wait_for_log(
        &env.log_path(&pod, "uname"),
        "to-stderr",
        Duration::from_secs(10),
    )
    .await;
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!(" stdout F {}", env.guest_release))),
        "the container saw the guest kernel {}, not the host's {}: {log}",
        env.guest_release,
        host_release()
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stderr F to-stderr")),
        "{log}"
    );
    // The spec's hostname reached the guest's runtime: the pod's.
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!(" stdout F {}", pod.hostname))),
        "the container's hostname is the pod's {:?}: {log}",
        pod.hostname
    );

    // A long-running container: ExecSync runs in the VM too.
    // PID 1 of its namespace: without a handler SIGTERM would be ignored.
    let sleeper_cmd = [
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 1; done",
    ];
    // Its spec carries a startContainer hook from the daemon's hook dir,
    // which runs in the guest, inside the container.
    let mut sleeper_config = env.container_config("sleeper", &sleeper_cmd);
    sleeper_config
        .annotations
        .insert(HOOK_ANNOTATION.to_string(), "yes".to_string());
    let sleeper = env.create_and_start(&pod_id, &pod, sleeper_config).await;
    let out = env.exec(&sleeper, &["cat", HOOK_FILE]).await;
    assert_eq!(
        (out.exit_code, String::from_utf8_lossy(&out.stdout).trim()),
        (0, "hooked-in-the-guest"),
        "the OCI hook ran in the guest: {out:?}"
    );
    let out = env.exec(&sleeper, &["uname", "-n"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pod.hostname,
        "{out:?}"
    );
    let out = env.exec(&sleeper, &["uname", "-r"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        env.guest_release,
        "{out:?}"
    );
    assert_eq!(out.exit_code, 0);
    let out = env
        .exec(&sleeper, &["sh", "-c", "echo e >&2; exit 7"])
        .await;
    assert_eq!(
        (out.exit_code, out.stderr.as_slice()),
        (7, &b"e\n"[..]),
        "{out:?}"
    );

    // Past its memory limit: OOMKilled.
    let mut hog = env.container_config(
        "hog",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
    );
    hog.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let hog = env.create_and_start(&pod_id, &pod, hog).await;
    let status = env.wait_exited(&hog, Duration::from_secs(60)).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}"
    );

    // Stop: the sleeper gets SIGTERM and exits on it; StopContainer
    // returns as soon as it has, far inside the timeout (as on runc).
    let started = Instant::now();
    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: sleeper.clone(),
            timeout: 20,
        })
        .await
        .expect("StopContainer");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "StopContainer of a SIGTERM-handling container took {:?}",
        started.elapsed()
    );
    let status = env.wait_exited(&sleeper, Duration::from_secs(5)).await;
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (42, "Error"),
        "{status:?}"
    );

    // A container that ignores SIGTERM is killed once the timeout passes.
    let stubborn = env
        .create_and_start(
            &pod_id,
            &pod,
            env.container_config("stubborn", &["sleep", "1000"]),
        )
        .await;
    let started = Instant::now();
    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 2,
        })
        .await
        .expect("StopContainer");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "stopped after {:?}",
        started.elapsed()
    );
    let status = env.wait_exited(&stubborn, Duration::from_secs(5)).await;
    assert_eq!(status.exit_code, 137, "{status:?}");

    // Stop and remove the pod: nothing left.
    env.stop_and_remove_pod(&pod_id).await;
    assert!(
        !socket_dir.exists(),
        "socket dir {} left",
        socket_dir.display()
    );
    assert!(
        vm_processes(&pod_id).is_empty(),
        "VM processes left: {:?}",
        vm_processes(&pod_id)
    );
    env.assert_nothing_left("after the kata pod");
}

/// A runc pod and a kata pod on one daemon, each routed to its handler:
/// the runc container sees the host kernel, the kata one the guest's. A
/// VM that cannot boot in time fails RunPodSandbox and leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn runc_and_kata_pods_side_by_side() {
    let Some(env) = setup(2).await else { return };

    // The boot timeout: a clear error, then nothing of that pod left.
    let slow = env.pod_config("slow");
    let started = Instant::now();
    let err = env
        .run_pod(&slow, "kata-slow")
        .await
        .expect_err("a 1 s boot timeout cannot be met under TCG");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.message().contains("did not answer within"),
        "the error says the agent did not answer in time: {err:?}"
    );
    env.assert_nothing_left("after the failed kata pod");

    // `hostUsers: false`: the VM handler does not run pods in user
    // namespaces, says so in Status, and refuses such a pod before it
    // boots anything; runc, beside it, does.
    let status = env
        .rt()
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let userns_of = |name: &str| crius_tests::cri::handler_features(&status, name).user_namespaces;
    assert!(!userns_of("kata"), "{status:?}");
    assert!(userns_of("runc"), "{status:?}");
    let userns_pod = crius_tests::cri::configs::in_pod_userns(env.pod_config("userns"), 65536 * 9);
    let err = env
        .run_pod(&userns_pod, "kata")
        .await
        .expect_err("kata refuses a pod in a user namespace");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("user namespaces"), "{err:?}");
    env.assert_nothing_left("after the refused user-namespace pod");

    let runc_pod = env.pod_config("host");
    let kata_pod = env.pod_config("guest");
    let (runc_id, kata_id) = tokio::join!(
        env.run_pod(&runc_pod, "runc"),
        env.run_pod(&kata_pod, "kata")
    );
    let (runc_id, kata_id) = (runc_id.expect("runc pod"), kata_id.expect("kata pod"));
    let pods = env
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    let handlers: HashMap<String, String> = pods
        .into_iter()
        .map(|p| (p.id, p.runtime_handler))
        .collect();
    assert_eq!(handlers.get(&runc_id).map(String::as_str), Some("runc"));
    assert_eq!(handlers.get(&kata_id).map(String::as_str), Some("kata"));

    let runc_c = env
        .create_and_start(
            &runc_id,
            &runc_pod,
            env.container_config("uname", &["uname", "-r"]),
        )
        .await;
    let kata_c = env
        .create_and_start(
            &kata_id,
            &kata_pod,
            env.container_config("uname", &["uname", "-r"]),
        )
        .await;
    for (id, pod, release) in [
        (&runc_c, &runc_pod, host_release()),
        (&kata_c, &kata_pod, env.guest_release.clone()),
    ] {
        let status = env.wait_exited(id, Duration::from_secs(60)).await;
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (0, "Completed"),
            "{status:?}"
        );
        wait_for_log(
            &env.log_path(pod, "uname"),
            &format!(" stdout F {release}"),
            Duration::from_secs(10),
        )
        .await;
    }
    assert!(vm_processes(&runc_id).is_empty(), "a runc pod has no VM");

    // The kata pod's CNI address lives on the guest NIC, and the runc pod
    // reaches it over the bridge.
    let req = cri::PodSandboxStatusRequest {
        pod_sandbox_id: kata_id.clone(),
        verbose: false,
    };
    let status = env
        .rt()
        .pod_sandbox_status(req)
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .unwrap();
    let kata_ip = status.network.expect("pod network").ip;
    assert!(!kata_ip.is_empty(), "the kata pod has an IP");
    let server = [
        "sh",
        "-c",
        "echo kata-says-hi > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
    ];
    let kata_s = env
        .create_and_start(&kata_id, &kata_pod, env.container_config("net", &server))
        .await;
    let runc_s = env
        .create_and_start(
            &runc_id,
            &runc_pod,
            env.container_config("net", &["sleep", "1000"]),
        )
        .await;
    let out = env.exec(&kata_s, &["ip", "-4", "addr", "show"]).await;
    let addrs = String::from_utf8_lossy(&out.stdout);
    if !addrs.contains(&format!("inet {kata_ip}/")) {
        let all = env.exec(&kata_s, &["ip", "addr", "show"]).await;
        let dir = env.daemon.pods_dir().join(&kata_id);
        let console = std::fs::read_to_string(dir.join("handler/console.log")).unwrap_or_default();
        let shim = std::fs::read_to_string(dir.join("handler/shim.log")).unwrap_or_default();
        panic!(
            "guest addresses lack {kata_ip}: {}\nconsole:\n{console}\nshim:\n{shim}",
            String::from_utf8_lossy(&all.stdout)
        );
    }
    let url = format!("http://{kata_ip}:8080/index.html");
    // The server may still be starting: retry for up to 20 s.
    let fetch =
        format!("for i in $(seq 1 100); do wget -q -O - {url} && exit 0; sleep 0.2; done; exit 1");
    let out = env.exec(&runc_s, &["sh", "-c", &fetch]).await;
    assert_eq!(
        (out.exit_code, String::from_utf8_lossy(&out.stdout).trim()),
        (0, "kata-says-hi"),
        "the runc pod fetches from the kata pod at {kata_ip}: {out:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.stop_and_remove_pod(&kata_id).await;
    env.stop_and_remove_pod(&runc_id).await;
    env.assert_nothing_left("after both pods");
}

/// The VM shim outlives the daemon: after `kill -9` of the daemon and a
/// restart, the kata pod is still listed and ready and its container keeps
/// logging. When QEMU then dies, the container is reported exited with the
/// reason, the pod not ready, and stop/remove still clean up.
#[tokio::test(flavor = "multi_thread")]
async fn kata_pod_survives_a_daemon_crash_and_reports_a_dead_vm() {
    let Some(mut env) = setup(3).await else {
        return;
    };
    let pod = env.pod_config("durable");
    let pod_id = env
        .run_pod(&pod, "kata")
        .await
        .expect("RunPodSandbox with kata");
    let ticker = [
        "sh",
        "-c",
        "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.5; done",
    ];
    let id = env
        .create_and_start(&pod_id, &pod, env.container_config("ticker", &ticker))
        .await;
    let log = env.log_path(&pod, "ticker");
    wait_for_log(&log, "tick-1\n", Duration::from_secs(30)).await;

    env.daemon.kill9();
    let shim = processes_matching(&["crius-kata-shim", &pod_id]);
    assert_eq!(shim.len(), 1, "the shim survives the daemon: {shim:?}");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    env.daemon.restart().await.expect("daemon restarts");

    let req = cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod_id.clone(),
        verbose: false,
    };
    let status = env
        .rt()
        .pod_sandbox_status(req)
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        status.state,
        cri::PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    let req = cri::ContainerStatusRequest {
        container_id: id.clone(),
        verbose: false,
    };
    let c = env
        .rt()
        .container_status(req)
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        c.state,
        cri::ContainerState::ContainerRunning as i32,
        "{c:?}"
    );
    // Logging went on (the shim writes the log, not the daemon).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&log).unwrap().lines().count() <= before + 2 {
        assert!(
            Instant::now() < deadline,
            "no new log lines after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = env.exec(&id, &["uname", "-r"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        env.guest_release
    );

    // Log rotation: after ReopenContainerLog the shim writes the new file.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    env.rt()
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    wait_for_log(&log, "tick-", Duration::from_secs(20)).await;

    // Stats come from the container's cgroup in the guest.
    let stats = env
        .rt()
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let memory = stats
        .memory
        .and_then(|m| m.usage_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(memory > 0, "memory usage from the guest: {stats:?}");

    // QEMU dies: the container is reported exited, with why.
    let qemu = processes_matching(&["qemu-system", &pod_id]);
    assert_eq!(qemu.len(), 1, "{qemu:?}");
    let pid: i32 = qemu[0].split(':').next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = env.wait_exited(&id, Duration::from_secs(30)).await;
    assert_eq!(status.reason, "Error", "{status:?}");
    assert!(!status.message.is_empty(), "the exit says why: {status:?}");
    let req = cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod_id.clone(),
        verbose: false,
    };
    let status = env
        .rt()
        .pod_sandbox_status(req)
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        status.state,
        cri::PodSandboxState::SandboxNotready as i32,
        "{status:?}"
    );

    env.stop_and_remove_pod(&pod_id).await;
    assert!(
        vm_processes(&pod_id).is_empty(),
        "VM processes left: {:?}",
        vm_processes(&pod_id)
    );
    env.assert_nothing_left("after the dead VM");
}

/// The `vm:` table is the shim's: a table it refuses leaves the daemon up,
/// lists the handler as not ready with the shim's message behind the
/// table's position in the config, and fails pods routed to it with that
/// reason, while a good kata entry next to it is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_table_the_shim_refuses_makes_only_that_handler_not_ready() {
    if !require_root_and_tools(&[CONMON, RUNC]) {
        return;
    }
    let shim = crius_tests::daemon::crius_bin().with_file_name("crius-kata-shim");
    assert!(
        shim.exists(),
        "{} does not exist: build it (`cargo build -p crius-handler-kata`) with the daemon",
        shim.display()
    );
    let handlers = format!(
        "default_runtime_handler: runc\nruntime_handlers:\n  runc:\n    kind: oci\n    runtime_path: {RUNC}\n    \
         monitor_path: {CONMON}\n  kata-bad:\n    kind: vm\n    runtime_path: {QEMU}\n    vm:\n      \
         kernel: vmlinux\n      default_vcpus: 0\n  kata-ok:\n    kind: vm\n    runtime_path: {QEMU}\n"
    );
    let daemon = Daemon::builder()
        .runtime_handlers_yaml(&handlers)
        .start()
        .await
        .expect("the daemon starts despite the bad table");
    let mut rt = daemon.runtime();
    let status = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(&status.info["handlers"]).expect("handlers info is JSON");
    let bad = &info["kata-bad"];
    assert_eq!(bad["ready"], false, "{info}");
    let reason = bad["reason"].as_str().unwrap_or_default();
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    let line = config
        .lines()
        .position(|l| l.trim_start().starts_with("kernel: vmlinux"))
        .expect("the table is in the main config")
        + 1;
    for needle in [
        format!("{}:{line}:", daemon.config_path().display()),
        "runtime_handlers.kata-bad.vm: kernel: path `vmlinux` must be absolute".to_string(),
        "default_vcpus: must be at least 1".to_string(),
    ] {
        assert!(reason.contains(&needle), "{needle:?} not in {reason:?}");
    }
    assert!(
        info["kata-ok"]["reason"]
            .as_str()
            .is_none_or(|r| !r.contains("vm:")),
        "the other kata entry is judged on its own: {info}"
    );
    let log_dir = tempfile::tempdir().unwrap();
    let pod = configs::pod(
        "bad",
        "crius-test",
        log_dir.path(),
        cri::NamespaceMode::Node,
    );
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: "kata-bad".into(),
        })
        .await
        .expect_err("pods routed to the refused handler fail");
    assert!(
        err.message()
            .contains("kernel: path `vmlinux` must be absolute"),
        "{err:?}"
    );
    rt.version(cri::VersionRequest::default())
        .await
        .expect("the daemon serves on");
    let left = crius_tests::dir_entries(&daemon.pods_dir());
    assert!(left.is_empty(), "pod dirs left: {left:?}");
}
