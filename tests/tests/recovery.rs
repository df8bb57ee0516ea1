//! Crash recovery and durability through the daemon's CRI socket: what a
//! restarted daemon finds and reports after `kill -9` of itself, of a
//! container's conmon, or a (simulated) reboot; and ExecSync output sizes.
//!
//! Each test runs its own registry, CNI network (own bridge, subnet and
//! IPAM data dir) and daemon, as `pods.rs` does.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use crius_tests::cri::{configs, images};
use crius_tests::host::{
    mounts_containing, processes_matching, wait_for_log, write_test_cni_config,
};
use crius_tests::image::{self, BUSYBOX_STATIC};
use crius_tests::registry::{REGISTRY_BIN, Registry};
use crius_tests::{Daemon, require_root_and_tools, unique_token};
use tonic::transport::Channel;

type Runtime = RuntimeServiceClient<Channel>;

const CONMON: &str = "/usr/bin/conmon";
const CATATONIT: &str = "/usr/bin/catatonit";
const CNI_PLUGINS: [&str; 3] = [
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/portmap",
];
const EXTRA_APPLETS: &[&str] = &["head", "tr", "dd", "wc"];

fn runtime_binary(handler: &str) -> &'static str {
    match handler {
        "runc" => "/usr/sbin/runc",
        "crun" => "/usr/bin/crun",
        other => panic!("no binary known for handler {other}"),
    }
}

struct Env {
    // Field order is drop order: the daemon stops before the registry goes away.
    daemon: Daemon,
    handler: &'static str,
    image: String,
    subnet_prefix: String,
    bridge: String,
    log_dir: tempfile::TempDir,
    cni_dir: tempfile::TempDir,
    _registry: Registry,
}

impl Drop for Env {
    fn drop(&mut self) {
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

fn next_subnet() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Apart from the pod suite's 10.200-249 and the security suite's
    // 10.150-199 ranges; a /22 per test (up to 1000 pods).
    format!("10.{}.{}", 100 + (std::process::id() % 50), (n % 60) * 4)
}

async fn setup(handler: &'static str) -> Option<Env> {
    let mut tools = vec![
        REGISTRY_BIN,
        BUSYBOX_STATIC,
        CONMON,
        CATATONIT,
        runtime_binary(handler),
    ];
    tools.extend(CNI_PLUGINS);
    if !require_root_and_tools(&tools) {
        return None;
    }
    let registry = Registry::start().await.expect("registry starts");
    let image = image::push_busybox_with_applets(&registry, "recoverybox", "1", EXTRA_APPLETS)
        .await
        .expect("push the test image");
    let token = unique_token();
    let cni_dir = tempfile::Builder::new()
        .prefix("crius-cni-")
        .tempdir()
        .unwrap();
    let subnet_prefix = next_subnet();
    let bridge = format!("crr{}", &token[..8]);
    let conflist = write_test_cni_config(
        cni_dir.path(),
        &format!("crius-rec-{token}"),
        &bridge,
        &subnet_prefix,
    );
    // A /22, so the crash test's 50 pods (and their leaked leases, on a
    // daemon that leaks) fit.
    let mut conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    conf["plugins"][0]["ipam"]["ranges"] =
        serde_json::json!([[{ "subnet": format!("{subnet_prefix}.0/22") }]]);
    std::fs::write(&conflist, serde_json::to_vec_pretty(&conf).unwrap()).unwrap();
    let daemon = Daemon::builder()
        .registry(&registry)
        .extra_yaml(&format!(
            "cni:\n  conf_dir: \"{}\"\n  bin_dirs: [/usr/lib/cni]\n",
            cni_dir.path().display()
        ))
        .start()
        .await
        .expect("daemon starts");
    images::pull(&mut daemon.image(), &image)
        .await
        .expect("pull the test image");
    let log_dir = tempfile::Builder::new()
        .prefix("crius-reclogs-")
        .tempdir()
        .unwrap();
    Some(Env {
        daemon,
        handler,
        image,
        subnet_prefix,
        bridge,
        log_dir,
        cni_dir,
        _registry: registry,
    })
}

impl Env {
    fn rt(&self) -> Runtime {
        self.daemon.runtime()
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let mut pod = configs::pod(
            name,
            "crius-rec",
            self.log_dir.path(),
            cri::NamespaceMode::Pod,
        );
        pod.labels = HashMap::from([("app".to_string(), name.to_string())]);
        pod
    }

    fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        configs::container_with_namespaces(name, &self.image, command, cri::NamespaceMode::Pod)
    }

    async fn run_pod(&self, config: &cri::PodSandboxConfig) -> String {
        run_pod(&mut self.rt(), self.handler, config)
            .await
            .expect("RunPodSandbox")
    }

    async fn create(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        name: &str,
        cmd: &[&str],
    ) -> String {
        create(
            &mut self.rt(),
            pod_id,
            pod,
            self.container_config(name, cmd),
        )
        .await
        .expect("CreateContainer")
    }

    async fn create_and_start(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        name: &str,
        cmd: &[&str],
    ) -> String {
        let id = self.create(pod_id, pod, name, cmd).await;
        start(&mut self.rt(), &id).await.expect("StartContainer");
        id
    }

    async fn status(&self, id: &str) -> (cri::ContainerStatus, serde_json::Value) {
        let resp = self
            .rt()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: true,
            })
            .await
            .expect("ContainerStatus")
            .into_inner();
        let info = resp
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        (resp.status.unwrap(), info)
    }

    async fn list_pods(&self) -> Vec<cri::PodSandbox> {
        self.rt()
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items
    }

    async fn list_containers(&self) -> Vec<cri::Container> {
        self.rt()
            .list_containers(cri::ListContainersRequest::default())
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    async fn stop_and_remove_pod(&self, id: &str) {
        let mut rt = self.rt();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("StopPodSandbox");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("RemovePodSandbox");
    }

    async fn remove_all_pods(&self) {
        for pod in self.list_pods().await {
            self.stop_and_remove_pod(&pod.id).await;
        }
    }

    fn runtime_root(&self) -> PathBuf {
        self.daemon.state_dir().join(self.handler)
    }

    /// Container ids the OCI runtime keeps state for.
    fn runtime_ids(&self) -> BTreeSet<String> {
        crius_tests::dir_entries(&self.runtime_root())
            .into_iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }

    /// IP leases host-local holds in the test network's data dir.
    fn ipam_leases(&self) -> Vec<PathBuf> {
        crius_tests::files_below(&self.cni_dir.path().join("ipam"))
            .into_iter()
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&self.subnet_prefix[..self.subnet_prefix.rfind('.').unwrap()])
                        && n.chars().all(|c| c.is_ascii_digit() || c == '.')
                })
            })
            .collect()
    }

    /// Nothing of any pod left: no pod directory, netns pin, runtime state,
    /// conmon, IP lease or mount below the daemon's directory, and no cgroup
    /// of any pod id the daemon ever logged.
    fn assert_nothing_left(&self, context: &str) {
        let pods = crius_tests::dir_entries(&self.daemon.pods_dir());
        assert!(pods.is_empty(), "{context}: pod dirs left: {pods:?}");
        let netns = crius_tests::dir_entries(&self.daemon.state_dir().join("netns"));
        assert!(netns.is_empty(), "{context}: netns pins left: {netns:?}");
        let state = self.runtime_ids();
        assert!(
            state.is_empty(),
            "{context}: runtime state left in {}: {state:?}",
            self.runtime_root().display()
        );
        let dir = self.daemon.dir().display().to_string();
        let conmons = processes_matching(&["conmon", &dir]);
        assert!(conmons.is_empty(), "{context}: conmon left: {conmons:?}");
        let mounts: Vec<String> = mounts_containing(&self.daemon.pods_dir().display().to_string());
        assert!(mounts.is_empty(), "{context}: mounts left: {mounts:?}");
        let leases = self.ipam_leases();
        assert!(leases.is_empty(), "{context}: IP leases left: {leases:?}");
        for id in logged_pod_ids(&self.daemon.stderr_text()) {
            for cg in cgroup_dirs(&format!("/crius/pod-{id}")) {
                assert!(!cg.exists(), "{context}: cgroup {} left", cg.display());
            }
        }
    }
}

async fn run_pod(
    rt: &mut Runtime,
    handler: &str,
    config: &cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    Ok(rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

async fn create(
    rt: &mut Runtime,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    Ok(rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

async fn start(rt: &mut Runtime, id: &str) -> Result<(), tonic::Status> {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.to_string(),
    })
    .await
    .map(drop)
}

/// Every `pod_id=<hex>` in the daemon's log.
fn logged_pod_ids(log: &str) -> BTreeSet<String> {
    log.split("pod_id=")
        .skip(1)
        .filter_map(|rest| {
            let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            (id.len() == 64).then_some(id)
        })
        .collect()
}

/// `<mount>/<path>` for every mounted cgroup hierarchy.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mount| Path::new(mount).join(path.trim_start_matches('/')))
        .collect()
}

fn kill9(pid: i32) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The pid of the conmon monitoring container `id`.
fn conmon_of(id: &str) -> i32 {
    let procs = processes_matching(&["conmon", &format!("-c {id}")]);
    assert_eq!(procs.len(), 1, "one conmon for {id}: {procs:?}");
    procs[0].split(':').next().unwrap().parse().unwrap()
}

async fn wait_gone(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie counts as gone.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} still there after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! per_handler {
    ($($name:ident),* $(,)?) => {
        mod runc {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name("runc").await
                }
            )*
        }
        mod crun {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name("crun").await
                }
            )*
        }
    };
}

per_handler!(
    exec_sync_output_is_complete_or_truncated_explicitly,
    runtime_state_is_reconciled_with_the_records_at_start,
    conmon_death_is_reported,
    reboot_tears_down_the_previous_boots_pods,
    crash_during_concurrent_creations_recovers_every_pod,
);

/// ExecSync returns 8 MiB and 20 MiB of stdout whole (conmon's log-size
/// limit used to cut them silently); above the documented 32 MiB cap the
/// output is cut at the cap and stderr says so, with the real exit code.
async fn exec_sync_output_is_complete_or_truncated_explicitly(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("bigout");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .create_and_start(&pod_id, &pod, "talker", &["sleep", "1000"])
        .await;
    // A client that accepts the daemon's largest response.
    let channel = crius_tests::cri::channel(env.daemon.socket())
        .await
        .unwrap();
    let mut rt = RuntimeServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let exec = |bytes: u64, code: i32| cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec![
            "sh".into(),
            "-c".into(),
            format!("head -c {bytes} /dev/zero | tr '\\0' x; exit {code}"),
        ],
        timeout: 120,
    };
    for mib in [8u64, 20] {
        let started = Instant::now();
        let out = rt
            .exec_sync(exec(mib << 20, 0))
            .await
            .unwrap_or_else(|e| panic!("ExecSync of {mib} MiB: {e:?}"))
            .into_inner();
        eprintln!("{handler}: {mib} MiB ExecSync took {:?}", started.elapsed());
        assert_eq!(
            out.exit_code,
            0,
            "{:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout.len() as u64,
            mib << 20,
            "all of the {mib} MiB come back"
        );
        assert!(out.stdout.iter().all(|&b| b == b'x'), "{mib} MiB intact");
        assert!(
            out.stderr.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // 40 MiB: cut at the cap, said on stderr; the exit code is the command's.
    let out = rt
        .exec_sync(exec(40 << 20, 3))
        .await
        .expect("ExecSync of 40 MiB")
        .into_inner();
    let cap = 32u64 << 20;
    assert_eq!(out.stdout.len() as u64, cap, "stdout is cut at the cap");
    assert_eq!(out.exit_code, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ExecSync output truncated")
            && stderr.contains(&(8u64 << 20).to_string())
            && stderr.contains(&cap.to_string()),
        "the truncation is said: {stderr:?}"
    );
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left("after the ExecSync pod");
}

/// After `kill -9` of the daemon: a created container whose conmon died
/// meanwhile is deleted and reported exited (never started unmonitored), a
/// runtime container crius has no record of is deleted, and a pod caught
/// before its handler record was written leaves no runtime state.
async fn runtime_state_is_reconciled_with_the_records_at_start(handler: &'static str) {
    let Some(mut env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("reconcile");
    let pod_id = env.run_pod(&pod).await;
    let created = env
        .create(&pod_id, &pod, "created", &["sleep", "1000"])
        .await;
    let stray = env
        .create_and_start(&pod_id, &pod, "stray", &["sleep", "1000"])
        .await;
    let kept = env
        .create_and_start(
            &pod_id,
            &pod,
            "kept",
            &["sh", "-c", "echo up; exec sleep 1000"],
        )
        .await;
    wait_for_log(
        &Path::new(&pod.log_directory).join("kept/0.log"),
        "up",
        Duration::from_secs(10),
    )
    .await;
    let (_, stray_info) = env.status(&stray).await;
    let stray_pid = stray_info["pid"].as_i64().expect("stray pid") as i32;
    // A second pod, to be caught "mid-creation" before its handler record.
    let half = env.pod_config("halfway");
    let half_id = env.run_pod(&half).await;
    let created_conmon = conmon_of(&created);

    env.daemon.kill9();
    kill9(created_conmon);
    wait_gone(created_conmon, Duration::from_secs(5)).await;
    // The stray's record is lost: only the runtime knows it.
    let pod_dir = env.daemon.pods_dir().join(&pod_id);
    std::fs::remove_file(pod_dir.join("containers").join(format!("{stray}.json"))).unwrap();
    // The half-made pod: still creating, handler record never written.
    let half_dir = env.daemon.pods_dir().join(&half_id);
    let record = half_dir.join("pod.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    value["state"] = "creating".into();
    value["handler_state"] = "".into();
    std::fs::write(&record, serde_json::to_vec(&value).unwrap()).unwrap();
    std::fs::remove_file(half_dir.join("handler/sandbox.json")).unwrap();
    assert!(env.runtime_ids().contains(&half_id));

    env.daemon.restart().await.expect("daemon restarts");
    // The pod listing waits for the restore, which reconciles the runtime.
    let pods = env.list_pods().await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, pod_id);
    let expected: BTreeSet<String> = [pod_id.clone(), kept.clone()].into();
    assert_eq!(
        env.runtime_ids(),
        expected,
        "the runtime keeps exactly the infra and the monitored container"
    );
    wait_gone(stray_pid, Duration::from_secs(10)).await;
    assert!(
        processes_matching(&["conmon", &format!("-c {stray}")]).is_empty(),
        "the stray's conmon is gone"
    );
    assert!(
        processes_matching(&[&half_id]).is_empty(),
        "nothing of the half-made pod runs"
    );

    let (st, _) = env.status(&created).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (255, "ConmonDied"),
        "{st:?}"
    );
    assert!(st.message.contains("conmon"), "{st:?}");
    let err = start(&mut env.rt(), &created)
        .await
        .expect_err("an unmonitored container must not start");
    eprintln!("{handler}: start without conmon: {err:?}");
    let (st, _) = env.status(&kept).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    assert!(st.message.is_empty(), "{st:?}");
    let ids: BTreeSet<String> = env
        .list_containers()
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, [created.clone(), kept.clone()].into());

    env.remove_all_pods().await;
    env.assert_nothing_left("after removing the reconciled pod");
}

/// `kill -9` of a container's conmon while the daemon runs: a container
/// that still runs is reported running and unmonitored; one whose process
/// then dies is reported exited with reason ConmonDied and exit code 255
/// (unknown), not a made-up clean exit.
async fn conmon_death_is_reported(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("monitors");
    let pod_id = env.run_pod(&pod).await;
    let alive = env
        .create_and_start(&pod_id, &pod, "alive", &["sleep", "1000"])
        .await;
    let dies = env
        .create_and_start(&pod_id, &pod, "dies", &["sleep", "1000"])
        .await;
    for id in [&alive, &dies] {
        let (st, _) = env.status(id).await;
        assert!(st.message.is_empty(), "{st:?}");
        let conmon = conmon_of(id);
        kill9(conmon);
        wait_gone(conmon, Duration::from_secs(5)).await;
    }
    let (st, _) = env.status(&alive).await;
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerRunning as i32,
        "{st:?}"
    );
    assert!(st.message.contains("unmonitored"), "{st:?}");
    let exec = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: alive.clone(),
            cmd: vec!["echo".into(), "still".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync in an unmonitored container")
        .into_inner();
    assert_eq!(exec.stdout, b"still\n");

    let (_, info) = env.status(&dies).await;
    let pid = info["pid"].as_i64().expect("pid") as i32;
    kill9(pid);
    wait_gone(pid, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let (st, _) = env.status(&dies).await;
        if st.state == cri::ContainerState::ContainerExited as i32 || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        st.state,
        cri::ContainerState::ContainerExited as i32,
        "{st:?}"
    );
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (255, "ConmonDied"),
        "{st:?}"
    );
    assert!(st.message.contains("exit code is unknown"), "{st:?}");
    assert!(st.finished_at >= st.started_at, "{st:?}");
    // The answer is stable.
    let (again, _) = env.status(&dies).await;
    assert_eq!(
        (again.exit_code, again.finished_at),
        (st.exit_code, st.finished_at)
    );

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left("after removing the pod whose monitors died");
}

/// Simulated reboot: the daemon stops, every pod process dies, every mount
/// goes and the state dir (a tmpfs) is emptied. The restarted daemon finds
/// the records under `root` and removes those pods as CRI-O does: CNI DEL
/// with the saved result (the IP leases are released), writable layers and
/// records deleted, nothing listed.
async fn reboot_tears_down_the_previous_boots_pods(handler: &'static str) {
    let Some(mut env) = setup(handler).await else {
        return;
    };
    let mut pods = Vec::new();
    for name in ["boot-a", "boot-b"] {
        let pod = env.pod_config(name);
        let pod_id = env.run_pod(&pod).await;
        let id = env
            .create_and_start(
                &pod_id,
                &pod,
                "writer",
                &[
                    "sh",
                    "-c",
                    "echo data > /written; echo done; exec sleep 1000",
                ],
            )
            .await;
        wait_for_log(
            &Path::new(&pod.log_directory).join("writer/0.log"),
            "done",
            Duration::from_secs(10),
        )
        .await;
        let (_, info) = env.status(&id).await;
        let bundle = PathBuf::from(info["bundle"].as_str().expect("bundle"));
        // The writable layer is on persistent storage, not the state dir.
        assert!(
            bundle.starts_with(env.daemon.root()),
            "{}",
            bundle.display()
        );
        assert!(bundle.join("upper/written").exists());
        pods.push((pod, pod_id));
    }
    assert_eq!(env.ipam_leases().len(), 2, "{:?}", env.ipam_leases());

    // --- the reboot -------------------------------------------------------
    env.daemon.terminate();
    let dir = env.daemon.dir().display().to_string();
    for (_, pod_id) in &pods {
        for cg in cgroup_dirs(&format!("/crius/pod-{pod_id}")) {
            for procs in crius_tests::files_below(&cg)
                .into_iter()
                .filter(|p| p.ends_with("cgroup.procs"))
            {
                let text = std::fs::read_to_string(cg.join(procs)).unwrap_or_default();
                for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    kill9(pid);
                }
            }
        }
    }
    for line in processes_matching(&[&dir]) {
        kill9(line.split(':').next().unwrap().parse().unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Deepest first.
    let mut mounts: Vec<String> = mounts_containing(&dir)
        .iter()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
    }
    assert!(
        mounts_containing(&dir).is_empty(),
        "{:?}",
        mounts_containing(&dir)
    );
    std::fs::remove_dir_all(env.daemon.state_dir()).unwrap();
    std::fs::create_dir(env.daemon.state_dir()).unwrap();

    env.daemon
        .restart()
        .await
        .expect("daemon starts after the reboot");
    let listed = env.list_pods().await;
    assert!(
        listed.is_empty(),
        "the old boot's pods are removed: {listed:?}"
    );
    assert!(env.list_containers().await.is_empty());
    let leases = env.ipam_leases();
    assert!(leases.is_empty(), "CNI DEL released the leases: {leases:?}");
    let left = crius_tests::files_below(&env.daemon.pods_dir());
    assert!(
        left.is_empty(),
        "records and writable layers removed: {left:?}"
    );
    let log = env.daemon.stderr_text();
    assert!(
        log.contains("pod is from a previous boot"),
        "the daemon says why"
    );

    // The names are free: the same pods run again, and a restart (same
    // boot) keeps them.
    let (pod, _) = &pods[0];
    let again = env.run_pod(pod).await;
    env.daemon.restart().await.expect("daemon restarts");
    let listed = env.list_pods().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].state),
        (again.as_str(), cri::PodSandboxState::SandboxReady as i32)
    );
    env.remove_all_pods().await;
    env.assert_nothing_left("after the reboot test");
}

/// `kill -9` of the daemon while many RunPodSandbox + CreateContainer +
/// StartContainer calls run at once, at four moments: the restarted daemon
/// serves at once, lists every pod with its true state, and removing them
/// all leaves nothing (mounts, netns, cgroups, conmon, runtime state, IP
/// leases). The time until the socket serves and until the restore is done
/// is printed.
async fn crash_during_concurrent_creations_recovers_every_pod(handler: &'static str) {
    let Some(mut env) = setup(handler).await else {
        return;
    };
    for (round, (pods, kill_after)) in [
        (50usize, Duration::from_millis(700)),
        (50, Duration::from_millis(1500)),
        (50, Duration::from_millis(3500)),
        (30, Duration::from_millis(2500)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut tasks = Vec::new();
        for n in 0..pods {
            let socket = env.daemon.socket().to_path_buf();
            let pod = env.pod_config(&format!("crash{round}-{n}"));
            let config = env.container_config("c", &["sleep", "1000"]);
            let handler = env.handler;
            tasks.push(tokio::spawn(async move {
                let mut rt = crius_tests::cri::connect(&socket).await.ok()?.runtime;
                let pod_id = run_pod(&mut rt, handler, &pod).await.ok()?;
                let id = create(&mut rt, &pod_id, &pod, config).await.ok()?;
                start(&mut rt, &id).await.ok()?;
                Some(())
            }));
        }
        tokio::time::sleep(kill_after).await;
        env.daemon.kill9();
        let mut completed = 0;
        for t in tasks {
            if t.await.ok().flatten().is_some() {
                completed += 1;
            }
        }
        let log_before = env.daemon.stderr_text().len();
        let started = Instant::now();
        env.daemon.restart().await.expect("daemon restarts");
        let serving = started.elapsed();
        let listed = env.list_pods().await;
        let restored = started.elapsed();
        let log = env.daemon.stderr_text();
        let this_run = &log[log_before..];
        let half_created = this_run
            .matches("being created when the daemon stopped")
            .count();
        eprintln!(
            "{handler} round {round}: {pods} concurrent creations, kill -9 after {kill_after:?}: {completed} completed, {} listed, {half_created} half-created torn down; socket serving after {serving:?}, pods listed (restore done) after {restored:?}",
            listed.len()
        );
        for line in this_run
            .lines()
            .filter(|l| l.contains("pods restored") || l.contains("restore done"))
        {
            eprintln!("  {line}");
        }
        assert!(
            serving < Duration::from_secs(5),
            "socket serving after {serving:?}"
        );
        // Every listed pod is what it claims.
        for p in &listed {
            let status = env
                .rt()
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: p.id.clone(),
                    verbose: true,
                })
                .await
                .expect("PodSandboxStatus of a listed pod")
                .into_inner();
            let st = status.status.unwrap();
            assert_eq!(st.state, p.state, "list and status agree for {}", p.id);
            let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
            let pid = info["pid"].as_u64().unwrap_or(0);
            if p.state == cri::PodSandboxState::SandboxReady as i32 {
                assert!(
                    pid > 0 && Path::new(&format!("/proc/{pid}")).exists(),
                    "a ready pod's infra runs: {}",
                    p.id
                );
                assert!(
                    st.network.is_some_and(|n| !n.ip.is_empty()),
                    "a ready pod has its IP"
                );
            }
        }
        assert!(
            listed.len() >= completed,
            "{} listed, {completed} completed",
            listed.len()
        );
        let listed_ids: BTreeSet<&str> = listed.iter().map(|p| p.id.as_str()).collect();
        for c in env.list_containers().await {
            assert!(
                listed_ids.contains(c.pod_sandbox_id.as_str()),
                "container {} of an unlisted pod",
                c.id
            );
            let (st, _) = env.status(&c.id).await;
            assert_eq!(
                st.state, c.state,
                "list and status agree for container {}",
                c.id
            );
            if st.state == cri::ContainerState::ContainerRunning as i32 {
                assert!(st.message.is_empty(), "{st:?}");
            }
        }
        env.remove_all_pods().await;
        env.assert_nothing_left(&format!("after removing the pods of round {round}"));
    }
}
