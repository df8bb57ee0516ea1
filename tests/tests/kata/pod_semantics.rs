//! What only a VM pod has: its QEMU and helpers charged to the pod's
//! cgroup, and in-place resize that hot-plugs vCPUs and memory. The pod
//! semantics every handler shares (PID namespaces, sysctls, propagation,
//! stop) are checked for kata with runc's assertions in
//! tests/pod_semantics.rs.

use super::*;

fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {meminfo}"))
}

/// The VM runs in the pod cgroup kubelet names, and in-place resize:
/// raising a container's limits hot-plugs vCPUs and memory into the
/// running VM (up to the entry's maxima), so the guest has the room the
/// new limits promise.
#[tokio::test(flavor = "multi_thread")]
async fn kata_vm_runs_in_the_pod_cgroup_and_grows_with_its_limits() {
    let Some(env) = setup(11).await else { return };
    let mut pod = env.pod_config("resize");
    // A pod cgroup the way kubelet's cgroupfs driver names one.
    let pod_cgroup = format!("/crius/pod{}", crius_tests::unique_token());
    pod.linux.as_mut().unwrap().cgroup_parent = pod_cgroup.clone();
    let pod_id = env.run_pod(&pod, "kata").await.expect("RunPodSandbox");

    // QEMU and its helper are charged to the pod: they run in its cgroup
    // (the `vm` child) in every hierarchy, memory and pids among them.
    let vm_pids: Vec<String> = vm_processes(&pod_id)
        .iter()
        .filter(|p| !p.contains("crius-kata-shim"))
        .map(|p| p.split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(
        vm_pids.len(),
        2 + usize::from(uses_virtiofs()),
        "QEMU, vhost-device-vsock (and virtiofsd): {vm_pids:?}"
    );
    for pid in &vm_pids {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for controller in ["memory", "pids", "cpu"] {
            let line = cgroups
                .lines()
                .find(|l| {
                    l.split(':')
                        .nth(1)
                        .is_some_and(|c| c.split(',').any(|c| c == controller))
                })
                .unwrap_or_else(|| panic!("no {controller} line in {cgroups}"));
            assert!(
                line.ends_with(&format!(":{pod_cgroup}/vm")),
                "process {pid} is in the pod's VM cgroup for {controller}: {cgroups}"
            );
        }
    }

    let c = env
        .create_and_start(&pod_id, &pod, env.container_config("c", &["sleep", "1031"]))
        .await;
    let out = env
        .exec(&c, &["cat", "/sys/devices/system/cpu/online"])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "one vCPU at boot"
    );
    let before = mem_total_kib(&String::from_utf8_lossy(
        &env.exec(&c, &["cat", "/proc/meminfo"]).await.stdout,
    ));

    // Two CPUs and 512 MiB more for the container: the VM needs 1 + 2
    // vCPUs (the maximum here is 3) and 256 + 512 MiB.
    env.rt()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 200_000,
                memory_limit_in_bytes: 512 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    let out = env
        .exec(&c, &["cat", "/sys/devices/system/cpu/online"])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0-2",
        "two vCPUs hot-plugged and online: {out:?}"
    );
    let after = mem_total_kib(&String::from_utf8_lossy(
        &env.exec(&c, &["cat", "/proc/meminfo"]).await.stdout,
    ));
    assert!(
        after >= before + (500 << 10),
        "512 MiB hot-plugged: MemTotal {before} kB -> {after} kB"
    );

    // Past the maximum: the VM stops at max_vcpus, the update still works.
    env.rt()
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 800_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources beyond the VM's maximum");
    let out = env
        .exec(&c, &["cat", "/sys/devices/system/cpu/online"])
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0-2");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left("after the resized pod");
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(&pod_cgroup[1..])
            .exists(),
        "the pod cgroup {pod_cgroup} and its VM cgroup are gone"
    );
}
