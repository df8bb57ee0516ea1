//! Stats, metrics and the remaining RuntimeService RPCs through the
//! daemon's CRI socket, for the runc and the crun handler: pod stats with
//! network counters after real traffic, writable-layer growth, CPU rate,
//! cAdvisor-style metrics, ImageFsInfo's two filesystems, the paginated
//! list streams, UpdatePodSandboxResources (checked in the host's cgroup
//! files) and UpdateRuntimeConfig. Events are in `container_events.rs`.
//!
//! Each test runs its own registry, daemon and CNI network, so they run in
//! parallel.

mod stats_env;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_tests::cri::images;
use stats_env::*;
use tonic::Code;

async fn stats_network_layer_and_metrics(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut rt = env.rt();
    let (pod_id, _pod, server, ip, _info) = server_pod(&env, "stats").await;

    // Network counters of the pod's eth0 after traffic from the host.
    let before = env.pod_stats(&pod_id).await;
    let eth0 = |s: &cri::PodSandboxStats| {
        s.linux
            .as_ref()
            .and_then(|l| l.network.as_ref())
            .and_then(|n| n.interfaces.iter().find(|i| i.name == "eth0").cloned())
            .expect("eth0 in pod network stats")
    };
    for _ in 0..5 {
        http_get(&ip, 8080).await;
    }
    let after = env.pod_stats(&pod_id).await;
    let (b, a) = (eth0(&before), eth0(&after));
    assert!(v(&a.rx_bytes) > v(&b.rx_bytes), "rx: {b:?} -> {a:?}");
    assert!(v(&a.tx_bytes) > v(&b.tx_bytes), "tx: {b:?} -> {a:?}");
    let linux = after.linux.clone().unwrap();
    assert_eq!(
        linux
            .network
            .as_ref()
            .unwrap()
            .default_interface
            .as_ref()
            .map(|i| i.name.as_str()),
        Some("eth0")
    );
    assert!(
        v(&linux.cpu.as_ref().unwrap().usage_core_nano_seconds) > 0,
        "{linux:?}"
    );
    assert!(
        v(&linux.memory.as_ref().unwrap().working_set_bytes) > 0,
        "{linux:?}"
    );
    // pause + httpd.
    assert!(
        v(&linux.process.as_ref().unwrap().process_count) >= 2,
        "{linux:?}"
    );
    assert_eq!(
        linux
            .containers
            .iter()
            .map(|c| c.attributes.as_ref().unwrap().id.as_str())
            .collect::<Vec<_>>(),
        [server.as_str()]
    );
    assert_eq!(after.attributes.as_ref().unwrap().id, pod_id);

    // The list with the CRI filter.
    let list = |filter: cri::PodSandboxStatsFilter| {
        let mut rt = env.rt();
        async move {
            rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
                filter: Some(filter),
            })
            .await
            .expect("ListPodSandboxStats")
            .into_inner()
            .stats
        }
    };
    assert_eq!(
        list(cri::PodSandboxStatsFilter {
            id: pod_id[..12].to_string(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        list(cri::PodSandboxStatsFilter {
            label_selector: HashMap::from([("app".to_string(), "stats".to_string())]),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert!(
        list(cri::PodSandboxStatsFilter {
            label_selector: HashMap::from([("app".to_string(), "other".to_string())]),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let err = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: "nosuchpod".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // Writable layer: grows by the 10 MiB written (a cached walk, so poll).
    let first = env.container_stats(&server).await;
    let layer = first.writable_layer.clone().expect("writable_layer");
    assert!(!layer.fs_id.as_ref().unwrap().mountpoint.is_empty());
    let base = v(&layer.used_bytes);
    let base_inodes = v(&layer.inodes_used);
    assert!(
        first.swap.is_some(),
        "swap is reported for {handler}: {first:?}"
    );
    let out = env
        .exec(
            &server,
            &["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=10 && sync"],
        )
        .await;
    assert_eq!(
        out.exit_code,
        0,
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let grown = loop {
        let s = env.container_stats(&server).await;
        let l = s.writable_layer.clone().unwrap();
        if v(&l.used_bytes) >= base + 10 * MIB {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "writable layer did not grow by 10 MiB: {base} -> {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        v(&grown.inodes_used) > base_inodes,
        "{base_inodes} -> {grown:?}"
    );
    eprintln!(
        "{handler}: writable layer {base} -> {} bytes",
        v(&grown.used_bytes)
    );

    // usage_nano_cores from successive samples: a busy loop between two.
    env.container_stats(&server).await;
    let started = Instant::now();
    env.exec(
        &server,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done",
        ],
    )
    .await;
    if started.elapsed() < Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(1100) - started.elapsed()).await;
    }
    let busy = env.container_stats(&server).await;
    let nano_cores = v(&busy.cpu.as_ref().unwrap().usage_nano_cores);
    assert!(
        nano_cores > 0,
        "usage_nano_cores after a busy loop: {busy:?}"
    );
    eprintln!("{handler}: usage_nano_cores {nano_cores}");

    // ImageFsInfo: the image store and the writable layers, separately.
    let fs = images::fs_info(&mut env.daemon.image()).await.unwrap();
    let image_fs = fs.image_filesystems.first().expect("image filesystem");
    let container_fs = fs
        .container_filesystems
        .first()
        .expect("container filesystem");
    assert!(
        v(&image_fs.used_bytes) > 0 && v(&image_fs.inodes_used) > 0,
        "{fs:?}"
    );
    assert!(v(&container_fs.used_bytes) >= 10 * MIB, "{fs:?}");
    assert_eq!(
        container_fs.fs_id.as_ref().unwrap().mountpoint,
        grown.fs_id.as_ref().unwrap().mountpoint
    );
    for f in [image_fs, container_fs] {
        let mp = &f.fs_id.as_ref().unwrap().mountpoint;
        assert!(
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(mp.as_str())),
            "{mp} is a mount point"
        );
    }

    // Metrics: descriptors and series for the running pod.
    let descriptors = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let keys: HashMap<String, usize> = descriptors
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.len()))
        .collect();
    let metrics = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    let pm = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod_id)
        .expect("metrics of the pod");
    let rx = pm
        .metrics
        .iter()
        .find(|m| {
            m.name == "container_network_receive_bytes_total"
                && m.label_values.last().map(String::as_str) == Some("eth0")
        })
        .expect("network receive series");
    assert!(v(&rx.value) > 0, "{rx:?}");
    let cm = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == server)
        .expect("container series");
    for name in [
        "container_memory_working_set_bytes",
        "container_cpu_usage_seconds_total",
        "container_fs_usage_bytes",
    ] {
        assert!(
            cm.metrics.iter().any(|m| m.name == name),
            "{name} in {cm:?}"
        );
    }
    let fs_series = cm
        .metrics
        .iter()
        .find(|m| m.name == "container_fs_usage_bytes")
        .unwrap();
    assert!(v(&fs_series.value) >= 10 * MIB, "{fs_series:?}");
    for m in pm.metrics.iter().chain(cm.metrics.iter()) {
        assert_eq!(
            Some(&m.label_values.len()),
            keys.get(&m.name),
            "labels of {m:?}"
        );
    }
    // The pod and namespace labels (positions 4 and 5).
    assert_eq!(
        cm.metrics[0].label_values[4..6],
        ["stats".to_string(), "crius-stats".to_string()]
    );

    // The paginated list streams.
    async fn drain<T>(mut s: tonic::Streaming<T>) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(item) = s.message().await.expect("stream item") {
            out.push(item);
        }
        out
    }
    let pods: Vec<_> = drain(
        rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|r| r.pod_sandboxes)
    .collect();
    assert!(pods.iter().any(|p| p.id == pod_id), "{pods:?}");
    let containers: Vec<_> = drain(
        rt.stream_containers(cri::StreamContainersRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|r| r.containers)
    .collect();
    assert_eq!(
        containers.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [server.as_str()]
    );
    let cstats: Vec<_> = drain(
        rt.stream_container_stats(cri::StreamContainerStatsRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|r| r.container_stats)
    .collect();
    assert_eq!(cstats.len(), 1, "{cstats:?}");
    let pstats: Vec<_> = drain(
        rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|r| r.pod_sandbox_stats)
    .collect();
    assert_eq!(pstats.len(), 1, "{pstats:?}");
    let streamed: Vec<_> = drain(
        rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .into_iter()
    .flat_map(|r| r.pod_sandbox_metrics)
    .collect();
    assert!(streamed.iter().any(|m| m.pod_sandbox_id == pod_id));

    env.stop_and_remove_pod(&pod_id).await;
    assert!(
        rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .stats
            .is_empty()
    );
}

async fn pod_resources_and_runtime_config(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut rt = env.rt();
    let (pod_id, _pod, _server, ip, info) = server_pod(&env, "resize").await;

    // UpdatePodSandboxResources: the pod cgroup's limits change on the host.
    let cgroup = info["cgroupPath"].as_str().expect("cgroupPath").to_string();
    let update = |resources: cri::LinuxContainerResources| {
        let mut rt = env.rt();
        let pod_id = pod_id.clone();
        async move {
            rt.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: pod_id,
                overhead: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 16 * MIB as i64,
                    ..Default::default()
                }),
                resources: Some(resources),
            })
            .await
        }
    };
    update(cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 256 * MIB as i64,
        ..Default::default()
    })
    .await
    .expect("UpdatePodSandboxResources");
    let v2 = find_cgroup_file(&cgroup, "memory.max").is_some();
    if v2 {
        assert_eq!(
            read_trimmed(&cgroup_file(&cgroup, "cpu.max")),
            "50000 100000"
        );
        assert_eq!(
            read_trimmed(&cgroup_file(&cgroup, "memory.max")),
            (272 * MIB).to_string()
        );
    } else {
        assert_eq!(
            read_trimmed(&cgroup_file(&cgroup, "cpu.cfs_quota_us")),
            "50000"
        );
        assert_eq!(read_trimmed(&cgroup_file(&cgroup, "cpu.shares")), "512");
        assert_eq!(
            read_trimmed(&cgroup_file(&cgroup, "memory.limit_in_bytes")),
            (272 * MIB).to_string()
        );
    }
    // The pod keeps serving under its new limits.
    http_get(&ip, 8080).await;
    for (bad, what) in [
        (
            cri::LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            },
            "negative memory",
        ),
        (
            cri::LinuxContainerResources {
                cpu_quota: 10,
                ..Default::default()
            },
            "tiny quota",
        ),
        (
            cri::LinuxContainerResources {
                cpu_period: 5,
                ..Default::default()
            },
            "tiny period",
        ),
    ] {
        let err = update(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
    }
    let quota_file = if v2 { "cpu.max" } else { "cpu.cfs_quota_us" };
    assert!(
        read_trimmed(&cgroup_file(&cgroup, quota_file)).starts_with("50000"),
        "refused updates changed nothing"
    );
    let err = rt
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "nosuchpod".into(),
            resources: Some(Default::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // UpdateRuntimeConfig records the pod CIDR (verbose Status shows it).
    rt.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: "10.244.7.0/24".into(),
            }),
        }),
    })
    .await
    .expect("UpdateRuntimeConfig");
    let status = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let recorded: serde_json::Value = serde_json::from_str(&status.info["runtimeConfig"]).unwrap();
    assert_eq!(recorded["podCIDR"], "10.244.7.0/24");
    let err = rt
        .update_runtime_config(cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig {
                    pod_cidr: "10.244.7.0".into(),
                }),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    env.stop_and_remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_network_layer_and_metrics_runc() {
    stats_network_layer_and_metrics("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_network_layer_and_metrics_crun() {
    stats_network_layer_and_metrics("crun").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_resources_and_runtime_config_runc() {
    pod_resources_and_runtime_config("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_resources_and_runtime_config_crun() {
    pod_resources_and_runtime_config("crun").await;
}

/// What CheckpointContainer must answer on this host: CRIU missing or
/// broken → FailedPrecondition naming it, working → Unimplemented naming
/// the missing handler-contract operation.
async fn expected_checkpoint_refusal() -> (Code, &'static str) {
    tokio::task::spawn_blocking(
        || match std::process::Command::new("criu").arg("check").output() {
            Err(_) => (Code::FailedPrecondition, "CRIU is not installed"),
            Ok(out) if !out.status.success() => (Code::FailedPrecondition, "check` failed"),
            Ok(_) => (Code::Unimplemented, "handler contract"),
        },
    )
    .await
    .unwrap()
}

async fn checkpoint_is_refused_precisely(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut rt = env.rt();
    let pod = env.pod_config("ckpt");
    let pod_id = env.run_pod(&pod).await;
    let running = env
        .create(&pod_id, &pod, "counter", &["sleep", "1000"])
        .await;
    env.start_container(&running).await;
    let created = env
        .create(&pod_id, &pod, "created", &["sleep", "1000"])
        .await;
    let out = tempfile::tempdir().unwrap();
    let location = out.path().join("counter.tar").display().to_string();
    let checkpoint = |container_id: &str, location: &str| {
        let mut rt = env.rt();
        let req = cri::CheckpointContainerRequest {
            container_id: container_id.to_string(),
            location: location.to_string(),
            timeout: 10,
        };
        async move { rt.checkpoint_container(req).await.unwrap_err() }
    };

    let (code, reason) = expected_checkpoint_refusal().await;
    let err = checkpoint(&running, &location).await;
    assert_eq!(err.code(), code, "{err}");
    assert!(err.message().contains(reason), "{err}");
    assert!(err.message().contains("CheckpointContainer"), "{err}");
    assert!(
        crius_tests::dir_entries(out.path()).is_empty(),
        "nothing written"
    );
    eprintln!(
        "{handler}: CheckpointContainer answers {:?}: {}",
        err.code(),
        err.message()
    );

    for (id, loc, want) in [
        ("", location.as_str(), Code::InvalidArgument),
        (running.as_str(), "", Code::InvalidArgument),
        (running.as_str(), "relative/ckpt.tar", Code::InvalidArgument),
        ("nosuchcontainer", location.as_str(), Code::NotFound),
        (
            created.as_str(),
            location.as_str(),
            Code::FailedPrecondition,
        ),
    ] {
        let err = checkpoint(id, loc).await;
        assert_eq!(err.code(), want, "{id:?} {loc:?}: {err}");
    }

    let err = rt
        .checkpoint_pod(cri::CheckpointPodRequest {
            pod_sandbox_id: pod_id.clone(),
            output_path: out.path().join("pod.tar").display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), code, "{err}");
    assert!(err.message().contains("CheckpointPod"), "{err}");
    let err = rt
        .checkpoint_pod(cri::CheckpointPodRequest {
            pod_sandbox_id: "nosuchpod".into(),
            output_path: "/tmp/x.tar".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    let restore = |path: String| {
        let mut rt = env.rt();
        let req = cri::RestorePodRequest {
            checkpoint_path: path,
            config: Some(env.pod_config("restored")),
            runtime_handler: handler.into(),
            ..Default::default()
        };
        async move { rt.restore_pod(req).await.unwrap_err() }
    };
    let err = restore(out.path().join("missing.tar").display().to_string()).await;
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = restore("relative.tar".into()).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let archive = out.path().join("given.tar");
    std::fs::write(&archive, b"not a checkpoint").unwrap();
    let err = restore(archive.display().to_string()).await;
    assert_eq!(err.code(), code, "{err}");
    assert!(err.message().contains(reason), "{err}");
    // No pod was made by the refused restore.
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [pod_id.as_str()]
    );
    env.stop_and_remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_is_refused_precisely_runc() {
    checkpoint_is_refused_precisely("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_is_refused_precisely_crun() {
    checkpoint_is_refused_precisely("crun").await;
}

/// A kata pod (no pod-level SandboxStats in the VM handler): the network
/// counters come from the pod's namespace (the VM's tap lives there), CPU
/// and memory as the sum of its containers (measured in the guest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kata_pod_stats_network_and_containers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(env) = setup_kata(&format!("metrics_address: \"127.0.0.1:{port}\"\n")).await else {
        return;
    };
    let mut rt = env.rt();
    let (pod_id, _pod, server, ip, _info) = server_pod(&env, "katastats").await;
    let before = env.pod_stats(&pod_id).await;
    for _ in 0..5 {
        http_get(&ip, 8080).await;
    }
    let after = env.pod_stats(&pod_id).await;
    let rx = |s: &cri::PodSandboxStats| {
        let n = s
            .linux
            .as_ref()
            .unwrap()
            .network
            .as_ref()
            .expect("pod network stats");
        let i = n.default_interface.as_ref().expect("default interface");
        (v(&i.rx_bytes), v(&i.tx_bytes))
    };
    let ((rx0, tx0), (rx1, tx1)) = (rx(&before), rx(&after));
    assert!(
        rx1 > rx0 && tx1 > tx0,
        "kata pod traffic: rx {rx0}->{rx1} tx {tx0}->{tx1}"
    );
    let linux = after.linux.clone().unwrap();
    assert_eq!(linux.containers.len(), 1, "{linux:?}");
    assert_eq!(linux.containers[0].attributes.as_ref().unwrap().id, server);
    assert!(
        v(&linux.memory.as_ref().expect("pod memory").working_set_bytes) > 0,
        "{linux:?}"
    );
    assert!(
        v(&linux.cpu.as_ref().expect("pod cpu").usage_core_nano_seconds) > 0,
        "{linux:?}"
    );
    let metrics = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    let pm = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod_id)
        .expect("kata pod metrics");
    assert!(
        pm.metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total" && v(&m.value) > 0)
    );
    eprintln!("kata: pod rx {rx0} -> {rx1}, tx {tx0} -> {tx1}");

    // The VM's host-side cost on the metrics endpoint: QEMU and the shim.
    let scrape = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    };
    for process in ["qemu", "shim"] {
        let line = scrape
            .lines()
            .find(|l| {
                l.starts_with("crius_pod_overhead_rss_bytes{")
                    && l.contains(&format!("pod_id=\"{pod_id}\""))
                    && l.contains(&format!("process=\"{process}\""))
            })
            .unwrap_or_else(|| panic!("no {process} overhead series:\n{scrape}"));
        let bytes: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(bytes > 1024.0 * 1024.0, "{line}");
        eprintln!("kata: {line}");
    }
    env.stop_and_remove_pod(&pod_id).await;
}
