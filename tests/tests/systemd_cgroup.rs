//! The systemd cgroup driver (`cgroup_driver: systemd`, what kubeadm sets
//! up kubelet with), through the CRI socket, for the runc and the crun
//! handler. These machines' PID 1 is not systemd: each test runs a private
//! systemd as PID 1 of its own PID namespace and the daemon beside it
//! (`crius_tests::systemd`), which is as far as a host without systemd
//! allows; on a systemd host the daemon talks to PID 1 the same way.

use crius_proto::cri;
use crius_tests::pods::{PodEnv, PodEnvOptions};
use crius_tests::systemd::{NestedSystemd, TOOLS};

const POD_MEMORY: i64 = 256 << 20;
const CONTAINER_MEMORY: i64 = 64 << 20;

fn unit_state(systemd: &NestedSystemd, unit: &str) -> String {
    let out = systemd.systemctl(&["is-active", unit]).expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn read_number(path: &std::path::Path) -> i64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// `dir`, or the cgroup below it, that holds processes.
fn process_cgroup(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if !procs.trim().is_empty() {
        return Some(dir.to_path_buf());
    }
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| process_cgroup(&e.path()))
}

async fn pods_live_in_slices_and_containers_in_scopes(handler: &'static str) {
    if !crius_tests::require_root_and_tools(TOOLS) {
        return;
    }
    let systemd = NestedSystemd::start()
        .await
        .expect("a private systemd starts");
    let Some(env) = PodEnv::start(
        handler,
        PodEnvOptions {
            extra_yaml: "cgroup_driver: systemd\n",
            daemon_prefix: systemd.command_prefix(),
            daemon_mount_ns: Some(systemd.pid()),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let mut rt = env.rt();

    // Kubelet asks which driver to configure itself with.
    let config = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .expect("RuntimeConfig")
        .into_inner();
    assert_eq!(
        config.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Systemd as i32
    );

    // A cgroupfs path is the wrong driver's.
    let mut wrong = env.pod_config("wrong-driver");
    wrong.linux.get_or_insert_default().cgroup_parent = "/kubepods/podx".into();
    let err = env.run_pod(&wrong).await.expect_err("a path is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(".slice"), "{}", err.message());

    // Kubelet's layout: the pod slice under kubepods-besteffort.slice.
    let token = &crius_tests::unique_token()[..8];
    let slice = format!("kubepods-besteffort-pod{token}.slice");
    let mut pod = env.pod_config("sliced");
    let linux = pod.linux.get_or_insert_default();
    linux.cgroup_parent = slice.clone();
    linux.resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: POD_MEMORY,
        ..Default::default()
    });
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    assert_eq!(unit_state(&systemd, &slice), "active");
    let slice_rel = format!("kubepods.slice/kubepods-besteffort.slice/{slice}");
    let slice_memory = systemd.cgroup_dir("memory", &slice_rel).unwrap();
    assert_eq!(
        read_number(&slice_memory.join("memory.limit_in_bytes")),
        POD_MEMORY,
        "the pod's limit is the slice's MemoryLimit"
    );

    let mut ctr = env.container_config("app", &["sleep", "3600"]);
    ctr.linux.get_or_insert_default().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: CONTAINER_MEMORY,
        ..Default::default()
    });
    let cid = env.create_and_start(&pod_id, &pod, ctr).await;
    let scope = format!("crius-{cid}.scope");
    assert_eq!(
        unit_state(&systemd, &scope),
        "active",
        "runtime made the scope"
    );
    // The container's processes are in the scope (read on the host: the
    // container may have a cgroup namespace of its own; crun puts them in a
    // `container` child of the scope).
    let scope_memory = slice_memory.join(&scope);
    let container_memory = process_cgroup(&scope_memory)
        .unwrap_or_else(|| panic!("no process in {}", scope_memory.display()));
    assert_eq!(
        read_number(&container_memory.join("memory.limit_in_bytes")),
        CONTAINER_MEMORY
    );

    // Stats are read from the scope.
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .unwrap();
    let working_set = stats.memory.unwrap().working_set_bytes.unwrap().value;
    assert!(working_set > 0, "no memory read from the scope");

    // A pod that names no parent gets crius's own slice.
    let plain = env.pod_config("default-slice");
    let plain_id = env.run_pod(&plain).await.expect("RunPodSandbox");
    let default_slice = format!("crius-pod{plain_id}.slice");
    assert_eq!(unit_state(&systemd, &default_slice), "active");

    // Removal stops the scope and the slices crius started.
    env.stop_and_remove_pod(&pod_id).await;
    env.stop_and_remove_pod(&plain_id).await;
    for unit in [&scope, &slice, &default_slice] {
        let state = unit_state(&systemd, unit);
        assert!(
            state == "inactive" || state == "unknown",
            "{unit} is {state}"
        );
    }
    assert!(!slice_memory.exists(), "{} left", slice_memory.display());
}

#[tokio::test]
async fn runc_pods_live_in_slices_and_containers_in_scopes() {
    pods_live_in_slices_and_containers_in_scopes("runc").await;
}

#[tokio::test]
async fn crun_pods_live_in_slices_and_containers_in_scopes() {
    pods_live_in_slices_and_containers_in_scopes("crun").await;
}
