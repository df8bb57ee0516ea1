//! Pods and containers through the daemon's CRI socket, for the runc and the
//! crun handler: real conmon, real OCI runtimes, real CNI bridge networking.
//!
//! Each test runs its own registry and daemon, with a CNI network of its own
//! (unique network name, bridge, subnet and IPAM data dir), so the tests can
//! run in parallel.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_tests::cri::images;
use crius_tests::host::{mounts_containing, processes_matching, wait_for_log};
use crius_tests::pods::{CONMON, PodEnv, PodEnvOptions};
use tonic::Code;

/// Busybox applets the pod tests need beyond the standard image's.
const EXTRA_APPLETS: &[&str] = &["httpd", "wget", "nc", "dd", "tr", "seq"];

/// The shared pod environment plus the checks only these tests make.
struct Env {
    env: PodEnv,
}

impl Deref for Env {
    type Target = PodEnv;
    fn deref(&self) -> &PodEnv {
        &self.env
    }
}

impl DerefMut for Env {
    fn deref_mut(&mut self) -> &mut PodEnv {
        &mut self.env
    }
}

/// Registry with a busybox image that has the extra applets, a CNI network
/// of the test's own and a daemon using both. `None` (skipped, reason
/// printed) without root or the tools.
async fn setup(handler: &'static str) -> Option<Env> {
    setup_with(handler, "").await
}

/// [`setup`] with extra top-level config keys.
async fn setup_with(handler: &'static str, extra_yaml: &str) -> Option<Env> {
    let options = PodEnvOptions {
        applets: EXTRA_APPLETS,
        extra_yaml,
        ..PodEnvOptions::default()
    };
    Some(Env {
        env: PodEnv::start(handler, options).await?,
    })
}

impl Env {
    async fn pod_status(&self, id: &str) -> cri::PodSandboxStatusResponse {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        self.rt()
            .pod_sandbox_status(req)
            .await
            .expect("PodSandboxStatus")
            .into_inner()
    }

    /// What the verbose pod status says the pod holds, for cleanup checks.
    async fn pod_resources(&self, id: &str) -> PodResources {
        let status = self.pod_status(id).await;
        let info: serde_json::Value =
            serde_json::from_str(&status.info["info"]).expect("verbose info is JSON");
        PodResources {
            id: id.to_string(),
            netns: info["netnsPath"].as_str().map(PathBuf::from),
            cgroup: info["cgroupPath"].as_str().expect("cgroupPath").to_string(),
            dir: PathBuf::from(info["podDir"].as_str().expect("podDir")),
            infra_pid: info["pid"].as_u64().unwrap_or(0) as u32,
        }
    }

    async fn stop_and_remove_pod(&self, id: &str) {
        let mut rt = self.rt();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("StopPodSandbox");
        // Stop is idempotent.
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("second StopPodSandbox");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("RemovePodSandbox");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("second RemovePodSandbox");
    }

    async fn list_pods(&self) -> Vec<cri::PodSandbox> {
        self.rt()
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
    }

    async fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        self.rt()
            .list_containers(cri::ListContainersRequest { filter })
            .await
            .unwrap()
            .into_inner()
            .containers
    }

    /// Nothing of any pod left: no pod directory, no netns pin, no runtime
    /// state, no conmon, no mount below the daemon's state dir.
    fn assert_no_pods_left(&self, context: &str) {
        let pods_dir = self.daemon.pods_dir();
        let left = crius_tests::dir_entries(&pods_dir);
        assert!(left.is_empty(), "{context}: pod dirs left: {left:?}");
        let netns = crius_tests::dir_entries(&self.daemon.state_dir().join("netns"));
        assert!(netns.is_empty(), "{context}: netns pins left: {netns:?}");
        let runtime_root = self.daemon.state_dir().join(self.handler);
        let state: Vec<_> = crius_tests::dir_entries(&runtime_root);
        assert!(
            state.is_empty(),
            "{context}: runtime state left in {}: {state:?}",
            runtime_root.display()
        );
        let mounts = mounts_containing(&pods_dir.display().to_string());
        assert!(mounts.is_empty(), "{context}: mounts left: {mounts:?}");
        let conmons = processes_matching(&[
            CONMON.trim_start_matches("/usr/bin/"),
            &self.daemon.state_dir().display().to_string(),
        ]);
        assert!(
            conmons.is_empty(),
            "{context}: conmon processes left: {conmons:?}"
        );
    }
}

struct PodResources {
    id: String,
    netns: Option<PathBuf>,
    cgroup: String,
    dir: PathBuf,
    infra_pid: u32,
}

impl PodResources {
    /// After RemovePodSandbox: every piece is gone.
    fn assert_gone(&self) {
        if let Some(netns) = &self.netns {
            assert!(!netns.exists(), "netns pin {} left", netns.display());
            assert!(
                mounts_containing(&netns.display().to_string()).is_empty(),
                "netns still mounted"
            );
        }
        assert!(!self.dir.exists(), "pod dir {} left", self.dir.display());
        let mounts = mounts_containing(&self.dir.display().to_string());
        assert!(
            mounts.is_empty(),
            "mounts below the pod dir left: {mounts:?}"
        );
        for dir in cgroup_dirs(&self.cgroup) {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
        if self.infra_pid != 0 {
            assert!(
                !Path::new(&format!("/proc/{}", self.infra_pid)).exists(),
                "infra process {} still runs",
                self.infra_pid
            );
        }
        let procs = processes_matching(&[&self.id]);
        assert!(
            procs.is_empty(),
            "processes mentioning pod {} left: {procs:?}",
            self.id
        );
    }
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

/// `<RFC 3339 nano> <stream> <P|F> <text>`.
fn assert_cri_log_line(line: &str, stream: &str, text: &str) {
    let mut parts = line.splitn(4, ' ');
    let (ts, s, tag, rest) = (
        parts.next().unwrap(),
        parts.next(),
        parts.next(),
        parts.next(),
    );
    assert!(
        ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T' && ts.contains('.'),
        "timestamp {ts:?} in {line:?}"
    );
    assert_eq!(
        (s, tag, rest),
        (Some(stream), Some("F"), Some(text)),
        "line {line:?}"
    );
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
    two_containers_share_the_pod_network,
    oom_killed_under_a_memory_limit,
    stop_timeout_is_honoured,
    bad_requests_leave_nothing_behind,
    pods_survive_a_daemon_crash,
    host_network_pod_with_dns_config,
    pods_run_concurrently,
    failures_half_way_roll_back,
    infra_failure_rolls_back,
    pod_caught_mid_creation_is_removed_after_a_crash,
    exec_and_port_forward_through_the_streaming_url,
    vfs_rootfs_is_a_private_copy_of_the_layers,
);

/// A web server and a client in one pod: the client reaches the server on
/// localhost, both log to CRI log files, ExecSync runs in them, the pod has
/// an IP from CNI, and Stop+Remove leave nothing behind.
async fn two_containers_share_the_pod_network(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("web");
    let started = Instant::now();
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let run_pod_ms = started.elapsed().as_millis();

    let status = env.pod_status(&pod_id).await;
    let st = status.status.as_ref().unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.runtime_handler, handler);
    assert_eq!(st.labels["app"], "web");
    let ip = &st.network.as_ref().expect("network status").ip;
    assert!(
        ip.starts_with(&format!("{}.", env.subnet_prefix)),
        "pod IP {ip} is not from the test subnet {}",
        env.subnet_prefix
    );
    let resources = env.pod_resources(&pod_id).await;
    assert!(
        resources.netns.as_ref().is_some_and(|p| p.exists()),
        "netns pinned"
    );
    assert!(
        resources.infra_pid != 0 && Path::new(&format!("/proc/{}", resources.infra_pid)).exists(),
        "infra runs"
    );
    assert!(
        cgroup_dirs(&resources.cgroup).iter().all(|d| d.exists()),
        "pod cgroup exists in every hierarchy"
    );

    let server = env.container_config(
        "server",
        &["sh", "-c", "mkdir -p /www && echo hello-from-server > /www/index.html && echo server-up && exec httpd -f -p 8080 -h /www"],
    );
    let started = Instant::now();
    let server_id = env.create_and_start(&pod_id, &pod, server).await;
    let start_container_ms = started.elapsed().as_millis();
    let client = env.container_config(
        "client",
        &[
            "sh",
            "-c",
            "for i in $(seq 1 100); do wget -q -O - http://127.0.0.1:8080/index.html && break; sleep 0.1; done; \
             echo client-done; echo to-stderr >&2; exec sleep 1000",
        ],
    );
    let client_id = env.create_and_start(&pod_id, &pod, client).await;
    eprintln!(
        "{handler}: RunPodSandbox {run_pod_ms} ms, CreateContainer+StartContainer {start_container_ms} ms"
    );

    let client_log = Path::new(&pod.log_directory).join("client/0.log");
    let text = wait_for_log(&client_log, "client-done", Duration::from_secs(20)).await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    assert_cri_log_line(lines[0], "stdout", "hello-from-server");
    assert_cri_log_line(lines[1], "stdout", "client-done");
    let text = wait_for_log(&client_log, "to-stderr", Duration::from_secs(5)).await;
    assert!(
        text.lines().any(|l| l.ends_with(" stderr F to-stderr")),
        "{text}"
    );
    let server_log = Path::new(&pod.log_directory).join("server/0.log");
    wait_for_log(&server_log, "stdout F server-up", Duration::from_secs(5)).await;

    // Both containers run, and are listed with the pod and label filters.
    let listed = env
        .list_containers(Some(cri::ContainerFilter {
            pod_sandbox_id: pod_id.clone(),
            ..Default::default()
        }))
        .await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|c| c.state == cri::ContainerState::ContainerRunning as i32),
        "{listed:?}"
    );
    let by_label = env
        .list_containers(Some(cri::ContainerFilter {
            label_selector: HashMap::from([("container".to_string(), "server".to_string())]),
            ..Default::default()
        }))
        .await;
    assert_eq!(
        by_label.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [server_id.as_str()]
    );

    let status = env.container_status(&client_id).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    assert!(status.started_at > 0 && status.created_at > 0, "{status:?}");
    assert_eq!(status.log_path, client_log.display().to_string());
    assert!(status.image_id.starts_with("sha256:"), "{status:?}");
    assert_eq!(status.image.as_ref().unwrap().image, env.image);

    // Stats come from the container's cgroup.
    let stats = env
        .rt()
        .container_stats(cri::ContainerStatsRequest {
            container_id: server_id.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(stats.attributes.as_ref().unwrap().id, server_id);
    assert!(
        stats
            .memory
            .as_ref()
            .and_then(|m| m.usage_bytes.as_ref())
            .is_some_and(|v| v.value > 0),
        "{stats:?}"
    );
    assert!(
        stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .is_some_and(|v| v.value > 0),
        "{stats:?}"
    );
    let all = env
        .rt()
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert_eq!(all.len(), 2, "{all:?}");

    // ExecSync: output, exit code, and the pod's hostname/hosts files.
    let exec = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: client_id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        (
            exec.stdout.as_slice(),
            exec.stderr.as_slice(),
            exec.exit_code
        ),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let exec = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: server_id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /etc/hostname; grep web /etc/hosts".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync in server")
        .into_inner();
    let out = String::from_utf8_lossy(&exec.stdout);
    assert_eq!(exec.exit_code, 0, "{exec:?}");
    assert!(
        out.starts_with("web\n") && out.contains(&format!("{ip}\tweb")),
        "{out}"
    );

    // An exec that outlives its timeout is a DeadlineExceeded error that
    // carries the output the command gave before.
    let err = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: client_id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo partial; exec sleep 30".into(),
            ],
            timeout: 1,
        })
        .await
        .expect_err("exec timeout");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains(r#"stdout "partial\n""#),
        "the partial output is in the error: {err:?}"
    );

    // Stop the server: exited, ExecSync refused.
    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: server_id.clone(),
            timeout: 5,
        })
        .await
        .expect("StopContainer");
    let st = env.wait_exited(&server_id, Duration::from_secs(10)).await;
    assert!(st.finished_at >= st.started_at, "{st:?}");
    let err = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: server_id.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .expect_err("exec in a stopped container");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    env.stop_and_remove_pod(&pod_id).await;
    resources.assert_gone();
    assert!(env.list_pods().await.is_empty());
    assert!(env.list_containers(None).await.is_empty());
    env.assert_no_pods_left("after RemovePodSandbox");
    // The CRI log files belong to the kubelet and stay.
    assert!(client_log.exists());
}

/// A container that allocates past its memory limit is reported OOMKilled.
async fn oom_killed_under_a_memory_limit(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("oom");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let mut config = env.container_config(
        "hog",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
    );
    config.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let id = env.create_and_start(&pod_id, &pod, config).await;
    let status = env.wait_exited(&id, Duration::from_secs(30)).await;
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert_eq!(
        status
            .resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(32 << 20)
    );
    let resources = env.pod_resources(&pod_id).await;
    env.stop_and_remove_pod(&pod_id).await;
    resources.assert_gone();
    env.assert_no_pods_left("after the OOM test");
}

/// StopContainer with a timeout waits that long for a process that ignores
/// SIGTERM, then kills it. Before that: UpdateContainerResources reaches the
/// container's cgroup and ReopenContainerLog follows a rotated log file.
async fn stop_timeout_is_honoured(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("stubborn");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let config = env.container_config(
        "stubborn",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo trapped; while true; do echo tick; sleep 0.2; done",
        ],
    );
    let id = env.create_and_start(&pod_id, &pod, config).await;
    let log = Path::new(&pod.log_directory).join("stubborn/0.log");
    wait_for_log(&log, "trapped", Duration::from_secs(10)).await;

    // UpdateContainerResources lands in the container's memory cgroup.
    let resources = env.pod_resources(&pod_id).await;
    let limit = 48i64 << 20;
    env.rt()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: limit,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    let memory_cgroup = cgroup_dirs(&format!("{}/crius-{id}", resources.cgroup))
        .into_iter()
        .find(|d| d.join("memory.limit_in_bytes").exists() || d.join("memory.max").exists())
        .expect("the container has a memory cgroup");
    let written = std::fs::read_to_string(memory_cgroup.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(memory_cgroup.join("memory.max")))
        .unwrap();
    assert_eq!(
        written.trim(),
        limit.to_string(),
        "limit in {}",
        memory_cgroup.display()
    );
    let status = env.container_status(&id).await;
    assert_eq!(
        status
            .resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(limit)
    );

    // The kubelet rotates the log: rename, then ReopenContainerLog.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    env.rt()
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    let text = wait_for_log(&log, "stdout F tick", Duration::from_secs(10)).await;
    assert!(
        !text.contains("trapped"),
        "the new file starts after the rotation: {text}"
    );

    // A second stubborn container: the kubelet stops a pod's containers in
    // parallel, and the grace periods must overlap, not add up.
    let config = env.container_config(
        "stubborn2",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo trapped; while true; do sleep 0.2; done",
        ],
    );
    let id2 = env.create_and_start(&pod_id, &pod, config).await;
    wait_for_log(
        &Path::new(&pod.log_directory).join("stubborn2/0.log"),
        "trapped",
        Duration::from_secs(10),
    )
    .await;

    let started = Instant::now();
    let (mut rt1, mut rt2) = (env.rt(), env.rt());
    let (r1, r2) = tokio::join!(
        rt1.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 2
        }),
        rt2.stop_container(cri::StopContainerRequest {
            container_id: id2.clone(),
            timeout: 2
        }),
    );
    r1.expect("StopContainer");
    r2.expect("StopContainer of the second");
    let elapsed = started.elapsed();
    let status = env.wait_exited(&id, Duration::from_secs(5)).await;
    let status2 = env.wait_exited(&id2, Duration::from_secs(5)).await;
    eprintln!("{handler}: two parallel StopContainer(timeout 2) took {elapsed:?}");
    assert!(
        elapsed >= Duration::from_secs(2),
        "stopped after {elapsed:?}, before the timeout"
    );
    assert!(
        elapsed < Duration::from_millis(3900),
        "parallel stops took {elapsed:?}: serialized?"
    );
    assert_eq!(status.exit_code, 137, "killed by SIGKILL: {status:?}");
    assert_eq!(status2.exit_code, 137, "killed by SIGKILL: {status2:?}");
    // Stopping again is fine and quick.
    let again = Instant::now();
    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .expect("second StopContainer");
    assert!(again.elapsed() < Duration::from_secs(2));

    // RemoveContainer removes the record and its bundle; twice is fine.
    env.rt()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer");
    env.rt()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("second RemoveContainer");
    let left = env.list_containers(None).await;
    assert_eq!(
        left.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [id2.as_str()]
    );
    let err = env
        .rt()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect_err("status of a removed container");
    assert_eq!(err.code(), Code::NotFound);

    env.stop_and_remove_pod(&pod_id).await;
    resources.assert_gone();
}

/// Unknown handler, duplicate names, unknown image, missing metadata:
/// clear errors, and nothing created.
async fn bad_requests_leave_nothing_behind(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut rt = env.rt();

    let pod = env.pod_config("bad");
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: "gvisor".into(),
        })
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("gvisor") && err.message().contains(handler),
        "{err:?}"
    );
    env.assert_no_pods_left("after an unknown handler");

    let mut no_meta = pod.clone();
    no_meta.metadata = None;
    let err = env.run_pod(&no_meta).await.expect_err("no metadata");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    env.assert_no_pods_left("after missing metadata");

    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let err = env.run_pod(&pod).await.expect_err("duplicate pod");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains(&pod_id),
        "names the existing pod: {err:?}"
    );
    assert_eq!(env.list_pods().await.len(), 1);

    let bundles =
        || crius_tests::dir_entries(&env.daemon.pods_dir().join(&pod_id).join("containers"));
    let mut missing = env.container_config("c", &["true"]);
    missing.image.as_mut().unwrap().image = format!("{}-nope", env.image);
    let err = env
        .create(&pod_id, &pod, missing)
        .await
        .expect_err("unknown image");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("-nope"), "names the image: {err:?}");
    assert!(bundles().is_empty(), "{:?}", bundles());

    let mut no_image = env.container_config("c", &["true"]);
    no_image.image = None;
    let err = env
        .create(&pod_id, &pod, no_image)
        .await
        .expect_err("no image");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let err = env
        .create(
            "0123456789abcdef",
            &pod,
            env.container_config("c", &["true"]),
        )
        .await
        .expect_err("no pod");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let first = env
        .create(&pod_id, &pod, env.container_config("c", &["sleep", "100"]))
        .await
        .expect("create c");
    let err = env
        .create(&pod_id, &pod, env.container_config("c", &["true"]))
        .await
        .expect_err("duplicate container");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains(&first),
        "names the existing container: {err:?}"
    );
    assert_eq!(
        bundles().len(),
        2,
        "one bundle dir and one record: {:?}",
        bundles()
    );

    // The image is in use: RemoveImage refuses.
    let err = images::remove(&mut env.daemon.image(), &env.image)
        .await
        .expect_err("image in use");
    assert!(err.message().contains(&first), "{err:?}");

    // Not-running containers: exec and log reopen are refused.
    let err = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: first.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .expect_err("exec in a created container");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: first.clone(),
        })
        .await
        .expect_err("reopen log of a created container");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // A stopped pod takes no new containers.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    let err = env
        .create(&pod_id, &pod, env.container_config("d", &["true"]))
        .await
        .expect_err("pod not ready");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let listed = env.list_pods().await;
    assert_eq!(
        listed[0].state,
        cri::PodSandboxState::SandboxNotready as i32
    );

    // Unknown ids: stop/remove of pods are no-ops, statuses are NotFound.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .expect("stop unknown pod");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .expect("remove unknown pod");
    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await
        .expect_err("status of unknown pod");
    assert_eq!(err.code(), Code::NotFound);

    let resources = env.pod_resources(&pod_id).await;
    env.stop_and_remove_pod(&pod_id).await;
    resources.assert_gone();
    env.assert_no_pods_left("after cleanup");
    // No container uses the image any more.
    images::remove(&mut env.daemon.image(), &env.image)
        .await
        .expect("RemoveImage after the pod is gone");
}

/// `kill -9` of the daemon leaves pods running; the restarted daemon lists
/// them again and can still exec in, stop and remove them.
async fn pods_survive_a_daemon_crash(handler: &'static str) {
    let Some(mut env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("survivor");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let config = env.container_config("sleeper", &["sh", "-c", "echo before; exec sleep 1000"]);
    let id = env.create_and_start(&pod_id, &pod, config).await;
    let log = Path::new(&pod.log_directory).join("sleeper/0.log");
    wait_for_log(&log, "before", Duration::from_secs(10)).await;
    let resources = env.pod_resources(&pod_id).await;

    env.daemon.kill9();
    assert!(
        Path::new(&format!("/proc/{}", resources.infra_pid)).exists(),
        "infra survives the daemon"
    );
    assert!(
        !processes_matching(&["conmon", &id]).is_empty(),
        "the container's conmon survives the daemon"
    );
    env.daemon.restart().await.expect("daemon restarts");

    let pods = env.list_pods().await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(
        (pods[0].id.as_str(), pods[0].state),
        (pod_id.as_str(), cri::PodSandboxState::SandboxReady as i32)
    );
    let containers = env.list_containers(None).await;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(
        containers[0].state,
        cri::ContainerState::ContainerRunning as i32,
        "{containers:?}"
    );
    let exec = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "after".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync after restart")
        .into_inner();
    assert_eq!(exec.stdout, b"after\n");
    let status = env.pod_status(&pod_id).await;
    assert!(
        status
            .status
            .unwrap()
            .network
            .is_some_and(|n| !n.ip.is_empty()),
        "pod IP remembered"
    );

    // A clean stop (SIGTERM) of the daemon does not stop pods either.
    env.daemon
        .restart()
        .await
        .expect("daemon restarts after SIGTERM");
    let containers = env.list_containers(None).await;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(
        containers[0].state,
        cri::ContainerState::ContainerRunning as i32,
        "{containers:?}"
    );
    assert!(
        Path::new(&format!("/proc/{}", resources.infra_pid)).exists(),
        "infra survives a clean daemon stop"
    );

    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer after restart");
    let st = env.wait_exited(&id, Duration::from_secs(10)).await;
    // PID 1 of its namespace ignores SIGTERM without a handler: SIGKILL after the timeout.
    assert_eq!(st.exit_code, 137, "{st:?}");
    env.stop_and_remove_pod(&pod_id).await;
    resources.assert_gone();
    env.assert_no_pods_left("after cleanup following a restart");
}

/// A host-network pod: no netns, no CNI, the host's interfaces; its DNS
/// config becomes the containers' resolv.conf. Also: list filters.
async fn host_network_pod_with_dns_config(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut pod = env.pod_config("hostnet");
    let ns = pod
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap();
    ns.network = cri::NamespaceMode::Node as i32;
    pod.dns_config = Some(cri::DnsConfig {
        servers: vec!["192.0.2.53".into()],
        searches: vec!["crius.test".into()],
        options: vec!["ndots:2".into()],
    });
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let other = env
        .run_pod(&env.pod_config("other"))
        .await
        .expect("second pod");
    let resources = env.pod_resources(&pod_id).await;
    assert!(resources.netns.is_none(), "no netns for a host-network pod");
    let status = env.pod_status(&pod_id).await.status.unwrap();
    assert!(status.network.is_none_or(|n| n.ip.is_empty()), "no CNI IP");
    assert_eq!(
        status
            .linux
            .unwrap()
            .namespaces
            .unwrap()
            .options
            .unwrap()
            .network,
        cri::NamespaceMode::Node as i32
    );

    let mut config = env.container_config("c", &["sleep", "1000"]);
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .network = cri::NamespaceMode::Node as i32;
    let id = env.create_and_start(&pod_id, &pod, config).await;
    let exec = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /etc/resolv.conf; readlink /proc/1/ns/net".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let out = String::from_utf8_lossy(&exec.stdout);
    assert!(
        out.starts_with("nameserver 192.0.2.53\nsearch crius.test\noptions ndots:2\n"),
        "resolv.conf from the DNS config: {out}"
    );
    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(
        out.trim_end().ends_with(&host_netns.display().to_string()),
        "the host's netns: {out}"
    );

    // List filters: id prefix, label, state.
    let mut rt = env.rt();
    let by_id = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                id: pod_id[..12].to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        by_id.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [pod_id.as_str()]
    );
    let by_label = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".to_string(), "other".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        by_label.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [other.as_str()]
    );
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: other.clone(),
    })
    .await
    .unwrap();
    let ready = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        ready.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [pod_id.as_str()]
    );

    let other_resources = env.pod_resources(&other).await;
    env.stop_and_remove_pod(&other).await;
    env.stop_and_remove_pod(&pod_id).await;
    resources.assert_gone();
    other_resources.assert_gone();
    env.assert_no_pods_left("after removing both pods");
}

/// Several pods started, used and removed at the same time on one daemon:
/// distinct IPs, every container reachable, nothing left.
async fn pods_run_concurrently(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let env = std::sync::Arc::new(env);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let pod = env.pod_config(&format!("par{i}"));
            let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
            let config = env.container_config("c", &["sleep", "1000"]);
            let id = env.create_and_start(&pod_id, &pod, config).await;
            let exec = env
                .rt()
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd: vec!["cat".into(), "/etc/hostname".into()],
                    timeout: 10,
                })
                .await
                .expect("ExecSync")
                .into_inner();
            assert_eq!(exec.stdout, format!("par{i}\n").into_bytes());
            let ip = env
                .pod_status(&pod_id)
                .await
                .status
                .unwrap()
                .network
                .unwrap()
                .ip;
            (pod_id, ip)
        }));
    }
    let mut pods = Vec::new();
    for t in tasks {
        pods.push(t.await.expect("pod task"));
    }
    let mut ips: Vec<&str> = pods.iter().map(|(_, ip)| ip.as_str()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "distinct pod IPs: {pods:?}");
    let mut resources = Vec::new();
    for (id, _) in &pods {
        resources.push(env.pod_resources(id).await);
    }
    let mut tasks = Vec::new();
    for (id, _) in pods {
        let env = env.clone();
        tasks.push(tokio::spawn(
            async move { env.stop_and_remove_pod(&id).await },
        ));
    }
    for t in tasks {
        t.await.expect("remove task");
    }
    for r in &resources {
        r.assert_gone();
    }
    env.assert_no_pods_left("after removing the concurrent pods");
}

/// IP allocations host-local holds in the test network's data dir.
fn ipam_allocations(env: &Env) -> Vec<PathBuf> {
    crius_tests::files_below(&env.cni_dir.path().join("ipam"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&env.subnet_prefix))
        })
        .collect()
}

/// A CNI plugin failing after the bridge attached the pod, and a container
/// whose executable does not exist: errors, and nothing left behind.
async fn failures_half_way_roll_back(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let conflist = env.cni_dir.path().join("10-test.conflist");
    let good = std::fs::read(&conflist).unwrap();
    let mut broken: serde_json::Value = serde_json::from_slice(&good).unwrap();
    broken["plugins"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "type": "crius-no-such-plugin" }));
    std::fs::write(&conflist, serde_json::to_vec(&broken).unwrap()).unwrap();

    let pod = env.pod_config("cnifail");
    let err = env.run_pod(&pod).await.expect_err("CNI failure");
    assert!(err.message().contains("crius-no-such-plugin"), "{err:?}");
    env.assert_no_pods_left("after a CNI failure");
    assert!(env.list_pods().await.is_empty());
    assert!(
        ipam_allocations(&env).is_empty(),
        "IP released: {:?}",
        ipam_allocations(&env)
    );
    // The pod cgroup is gone too: the daemon logged the pod's id.
    let log = env.daemon.stderr_text();
    let failed_id = log
        .lines()
        .find(|l| l.contains("RunPodSandbox failed"))
        .and_then(|l| l.split("pod_id=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the failure is logged with the pod id")
        .to_string();
    for dir in cgroup_dirs(&format!("/crius/pod-{failed_id}")) {
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }

    // The same pod (name) runs once the network is fixed: the name was released.
    std::fs::write(&conflist, &good).unwrap();
    let pod_id = env
        .run_pod(&pod)
        .await
        .expect("RunPodSandbox after the fix");
    assert_eq!(
        ipam_allocations(&env).len(),
        1,
        "{:?}",
        ipam_allocations(&env)
    );

    let config = env.container_config("ghost", &["/no/such/binary"]);
    match env.create(&pod_id, &pod, config.clone()).await {
        Err(err) => {
            // Rejected at create: no bundle, mount or record left.
            assert!(err.message().contains("/no/such/binary"), "{err:?}");
            let bundles =
                crius_tests::dir_entries(&env.daemon.pods_dir().join(&pod_id).join("containers"));
            assert!(bundles.is_empty(), "{bundles:?}");
            assert!(env.list_containers(None).await.is_empty());
            // The name is free again.
            let mut ok = env.container_config("ghost", &["true"]);
            ok.metadata = config.metadata.clone();
            env.create(&pod_id, &pod, ok)
                .await
                .expect("the name is free again");
        }
        Ok(id) => {
            // Or at start; the container is then not running and removable.
            let err = env
                .rt()
                .start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .expect_err("start of a missing executable");
            assert!(
                err.message().contains("/no/such/binary") || err.message().contains("no such file"),
                "{err:?}"
            );
            let st = env.container_status(&id).await;
            assert_ne!(
                st.state,
                cri::ContainerState::ContainerRunning as i32,
                "{st:?}"
            );
            env.rt()
                .remove_container(cri::RemoveContainerRequest { container_id: id })
                .await
                .expect("RemoveContainer");
        }
    }
    let resources = env.pod_resources(&pod_id).await;
    env.stop_and_remove_pod(&pod_id).await;
    resources.assert_gone();
    env.assert_no_pods_left("after cleanup");
    assert!(
        ipam_allocations(&env).is_empty(),
        "IP released: {:?}",
        ipam_allocations(&env)
    );
}

/// The infra container cannot start (the pause binary is missing) after
/// the network is set up: the pod's netns, IP, shm mount, cgroup and
/// directory are all undone.
async fn infra_failure_rolls_back(handler: &'static str) {
    let Some(env) = setup_with(handler, "pause:\n  catatonit_path: /no/such/catatonit\n").await
    else {
        return;
    };
    let pod = env.pod_config("noinfra");
    let err = env.run_pod(&pod).await.expect_err("no pause binary");
    assert!(err.message().contains("/no/such/catatonit"), "{err:?}");
    env.assert_no_pods_left("after an infra failure");
    assert!(env.list_pods().await.is_empty());
    assert!(
        ipam_allocations(&env).is_empty(),
        "IP released: {:?}",
        ipam_allocations(&env)
    );
}

/// A crash while RunPodSandbox was still running (simulated: the record is
/// put back to its "creating" state while the daemon is down): the
/// restarted daemon removes the pod and everything it held, including the
/// processes the handler had started.
async fn pod_caught_mid_creation_is_removed_after_a_crash(handler: &'static str) {
    let Some(mut env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("halfmade");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let resources = env.pod_resources(&pod_id).await;
    env.daemon.kill9();

    let record = env.daemon.pods_dir().join(&pod_id).join("pod.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(value["state"], "ready", "{value}");
    value["state"] = "creating".into();
    std::fs::write(&record, serde_json::to_vec(&value).unwrap()).unwrap();
    assert!(
        Path::new(&format!("/proc/{}", resources.infra_pid)).exists(),
        "infra still runs"
    );

    env.daemon.restart().await.expect("daemon restarts");
    assert!(
        env.list_pods().await.is_empty(),
        "the half-made pod is not listed"
    );
    resources.assert_gone();
    env.assert_no_pods_left("after recovering from a crash mid-creation");
    assert!(
        ipam_allocations(&env).is_empty(),
        "IP released: {:?}",
        ipam_allocations(&env)
    );
    // Its name is free again.
    let again = env.run_pod(&pod).await.expect("the same pod runs again");
    env.stop_and_remove_pod(&again).await;
}

/// A pod whose handler was removed from the configuration while the daemon
/// was down: listed not ready, and Stop/Remove still release the network,
/// cgroup (killing what runs in it), mounts and records.
#[tokio::test(flavor = "multi_thread")]
async fn pod_of_a_removed_handler_can_still_be_removed() {
    let Some(mut env) = setup("crun").await else {
        return;
    };
    let pod = env.pod_config("orphan");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let resources = env.pod_resources(&pod_id).await;
    env.daemon.kill9();

    // Drop the crun entry from the handler table.
    let config = std::fs::read_to_string(env.daemon.config_path()).unwrap();
    let mut kept = Vec::new();
    let mut in_crun = false;
    for line in config.lines() {
        if line.starts_with("  ") && !line.starts_with("    ") {
            in_crun = line.trim() == "crun:";
        } else if !line.starts_with(' ') {
            in_crun = false;
        }
        if !in_crun {
            kept.push(line);
        }
    }
    assert!(
        kept.len() < config.lines().count(),
        "crun entry found in:\n{config}"
    );
    std::fs::write(env.daemon.config_path(), kept.join("\n") + "\n").unwrap();
    env.daemon
        .restart()
        .await
        .expect("daemon restarts without crun");

    let pods = env.list_pods().await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    env.stop_and_remove_pod(&pod_id).await;
    assert!(env.list_pods().await.is_empty());
    assert!(
        ipam_allocations(&env).is_empty(),
        "IP released: {:?}",
        ipam_allocations(&env)
    );

    // The infra crun ran was killed with the pod cgroup; crun's own state
    // entry is out of the daemon's reach now: clean it up here.
    let root = env.daemon.state_dir().join("crun");
    let status = std::process::Command::new("/usr/bin/crun")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &pod_id])
        .status()
        .expect("run crun delete");
    assert!(status.success(), "crun delete: {status}");
    resources.assert_gone();
    env.assert_no_pods_left("after removing a pod of a removed handler");
}

/// Runs the Python `kubernetes` package's WebSocket client (a client we did
/// not write) on a streaming URL; its JSON answer.
fn k8s_ws_client(args: &[&str]) -> serde_json::Value {
    let script = crius_tests::workspace_root().join("tests/clients/k8s_ws_client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "k8s_ws_client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

/// `kubectl exec` and `kubectl port-forward` end to end: the CRI Exec and
/// PortForward URLs, driven by the Python kubernetes client over
/// WebSocket, reach a process in the container and a server in the pod
/// through the handler contract; the exit code is reported; the exec
/// leaves no process behind.
async fn exec_and_port_forward_through_the_streaming_url(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let available = std::process::Command::new("python3")
        .args(["-c", "import kubernetes.stream.ws_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !crius_tests::require(available, "python3 with the `kubernetes` package") {
        return;
    }
    let pod = env.pod_config("stream");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let id = env
        .create_and_start(
            &pod_id,
            &pod,
            env.container_config(
                "web",
                &["sh", "-c", "mkdir -p /www && echo hello-through-pf > /www/index.html && exec httpd -f -p 8080 -h /www"],
            ),
        )
        .await;

    let exec_url = |cmd: &[&str], stdin: bool| {
        let mut rt = env.rt();
        let req = cri::ExecRequest {
            container_id: id.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: true,
        };
        async move { rt.exec(req).await.expect("Exec").into_inner().url }
    };
    let url = exec_url(&["sh", "-c", "echo out; echo err >&2; exit 3"], false).await;
    let answer = k8s_ws_client(&["exec", &url]);
    assert_eq!(answer["stdout"], "out\n", "{answer}");
    assert_eq!(answer["stderr"], "err\n", "{answer}");
    assert_eq!(answer["returncode"], 3, "{answer}");
    // A token is single use.
    let again = std::process::Command::new("python3")
        .arg(crius_tests::workspace_root().join("tests/clients/k8s_ws_client.py"))
        .args(["exec", &url])
        .output()
        .unwrap();
    assert!(!again.status.success() || !String::from_utf8_lossy(&again.stdout).contains("out"));

    let url = exec_url(&["cat"], true).await;
    let answer = k8s_ws_client(&["exec", &url, "--stdin", "ping\n", "--close-stdin"]);
    assert_eq!(answer["stdout"], "ping\n", "{answer}");
    assert_eq!(answer["returncode"], 0, "{answer}");

    let url = env
        .rt()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let answer = k8s_ws_client(&[
        "portforward",
        &url,
        "8080",
        "GET /index.html HTTP/1.0\r\n\r\n",
    ]);
    let received = answer["received"].as_str().unwrap_or_default();
    assert!(received.contains("hello-through-pf"), "{answer}");

    // No exec process is left in the container (only httpd runs there).
    let left = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "n=0; for f in /proc/[0-9]*/comm; do read c < $f; [ \"$c\" = cat ] && n=$((n+1)); done; echo $n".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "0",
        "exec left behind"
    );
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_pods_left("after the streaming sessions");
}

/// `storage_driver: vfs`: a container's root is a copy of its image's
/// layers with the whiteouts applied (no overlay mount anywhere), its
/// writes stay its own (another container of the same image sees the
/// image), its writable layer is reported, and removal deletes the copy.
async fn vfs_rootfs_is_a_private_copy_of_the_layers(handler: &'static str) {
    let options = PodEnvOptions {
        storage_driver: "vfs",
        ..PodEnvOptions::default()
    };
    let Some(env) = PodEnv::start(handler, options).await else {
        return;
    };
    // busybox, then /data/{a,b} and /old/x, then a whiteout of /data/a and
    // an opaque /old holding only /old/new.
    let multilayer = crius_tests::image::push_standard_images(&env.registry)
        .await
        .expect("push the standard images")
        .multilayer
        .reference(&env.registry);
    images::pull(&mut env.daemon.image(), &multilayer)
        .await
        .expect("pull multilayer:wh");
    let pod = env.pod_config("vfs");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let config = |name: &str| {
        let mut c = env.container_config(name, &["sleep", "1000"]);
        c.image = Some(cri::ImageSpec {
            image: multilayer.clone(),
            ..Default::default()
        });
        c
    };
    // create() checks that the rootfs is a plain copy, not a mount.
    let writer = env.create_and_start(&pod_id, &pod, config("writer")).await;
    let (code, out, err) = env
        .exec_sync(&writer, &["sh", "-c", "ls /data; ls /old; cat /data/b"])
        .await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(out, "b\nnew\nb\n", "whiteouts and the opaque dir applied");
    let (code, _, err) = env
        .exec_sync(
            &writer,
            &["sh", "-c", "echo changed > /data/b && rm /old/new && dd if=/dev/zero of=/big bs=1M count=4 2>/dev/null"],
        )
        .await;
    assert_eq!((code, err.as_str()), (0, ""));
    let reader = env.create_and_start(&pod_id, &pod, config("reader")).await;
    let (_, out, _) = env
        .exec_sync(&reader, &["sh", "-c", "cat /data/b; ls /old; ls /big 2>&1"])
        .await;
    assert!(
        out.starts_with("b\nnew\n") && out.contains("No such file"),
        "the second container sees the image, not the first one's writes: {out:?}"
    );
    let stats = env
        .rt()
        .container_stats(cri::ContainerStatsRequest {
            container_id: writer.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let used = stats
        .writable_layer
        .and_then(|l| l.used_bytes)
        .map(|u| u.value)
        .unwrap_or(0);
    assert!(
        used >= 4 << 20,
        "writable layer holds the copy and /big: {used}"
    );

    let copy = env
        .daemon
        .pods_dir()
        .join(&pod_id)
        .join("containers")
        .join(&writer);
    assert!(copy.join("rootfs/big").is_file());
    env.stop_and_remove_pod(&pod_id).await;
    assert!(!copy.exists(), "{} is left after the pod", copy.display());
    assert!(mounts_containing(&pod_id).is_empty());
}
