//! Shared setup of `stats.rs` and `container_events.rs`: a registry with a
//! busybox image (httpd, dd), a CNI network and a daemon of the test's own,
//! and small CRI helpers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_tests::cri::configs;
use crius_tests::host::wait_for_log;
use crius_tests::pods::{PodEnv, PodEnvOptions};

#[allow(unused_imports)] // container_events.rs names it
pub use crius_tests::pods::Runtime;

pub const EXTRA_APPLETS: &[&str] = &["httpd", "dd", "seq"];
pub const MIB: u64 = 1024 * 1024;

/// The shared pod environment plus the stats suites' own helpers.
pub struct Env {
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

pub async fn setup(handler: &'static str) -> Option<Env> {
    setup_with(handler, "").await
}

/// [`setup`] with extra top-level config keys.
pub async fn setup_with(handler: &'static str, extra_yaml: &str) -> Option<Env> {
    start(
        handler,
        PodEnvOptions {
            extra_yaml,
            ..PodEnvOptions::default()
        },
    )
    .await
}

/// [`setup`] with a `kata` handler (as in kata.rs): needs QEMU, the guest
/// image, vhost-device-vsock and the VM shim.
pub async fn setup_kata(extra_yaml: &str) -> Option<Env> {
    start(
        "kata",
        PodEnvOptions {
            extra_yaml,
            ..PodEnvOptions::default()
        },
    )
    .await
}

/// A [`PodEnv`] with the stats applets and the stats pods' namespace.
async fn start(handler: &'static str, options: PodEnvOptions<'_>) -> Option<Env> {
    let options = PodEnvOptions {
        applets: EXTRA_APPLETS,
        namespace: "crius-stats",
        ..options
    };
    Some(Env {
        env: PodEnv::start(handler, options).await?,
    })
}

impl Env {
    pub async fn run_pod(&self, config: &cri::PodSandboxConfig) -> String {
        self.env.run_pod(config).await.expect("RunPodSandbox")
    }

    pub async fn create(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        name: &str,
        cmd: &[&str],
    ) -> String {
        self.create_limited(pod_id, pod, name, cmd, 0).await
    }

    /// [`Env::create`] with a memory limit (0 = none).
    pub async fn create_limited(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        name: &str,
        cmd: &[&str],
        memory_limit: i64,
    ) -> String {
        let mut config =
            configs::container_with_namespaces(name, &self.image, cmd, cri::NamespaceMode::Pod);
        config.labels = HashMap::from([("container".to_string(), name.to_string())]);
        if memory_limit > 0
            && let Some(linux) = config.linux.as_mut()
        {
            linux.resources = Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: memory_limit,
                ..Default::default()
            });
        }
        self.rt()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.to_string(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id
    }

    pub async fn exec(&self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        self.rt()
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 60,
            })
            .await
            .expect("ExecSync")
            .into_inner()
    }

    pub async fn pod_info(&self, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
        let resp = self
            .rt()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let info = serde_json::from_str(&resp.info["info"]).expect("verbose info is JSON");
        (resp.status.unwrap(), info)
    }

    pub async fn pod_stats(&self, id: &str) -> cri::PodSandboxStats {
        self.rt()
            .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .expect("PodSandboxStats")
            .into_inner()
            .stats
            .expect("stats")
    }

    pub async fn container_stats(&self, id: &str) -> cri::ContainerStats {
        self.rt()
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.to_string(),
            })
            .await
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("stats")
    }
}

pub fn v(x: &Option<cri::UInt64Value>) -> u64 {
    x.as_ref().map(|v| v.value).unwrap_or(0)
}

/// An HTTP GET from the host to the pod's address: traffic through the
/// pod's eth0 (loopback is not counted). Retries until httpd listens.
pub async fn http_get(ip: &str, port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
            let mut body = String::new();
            s.read_to_string(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(body)) if body.contains("hello-stats") => return body,
            other => assert!(
                Instant::now() < deadline,
                "no answer from {ip}:{port}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The file `file` of cgroupfs path `cgroup` in whichever hierarchy has it.
pub fn find_cgroup_file(cgroup: &str, file: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mount| {
            Path::new(mount)
                .join(cgroup.trim_start_matches('/'))
                .join(file)
        })
        .find(|p| p.exists())
}

pub fn cgroup_file(cgroup: &str, file: &str) -> PathBuf {
    find_cgroup_file(cgroup, file).unwrap_or_else(|| panic!("no cgroup file {file} for {cgroup}"))
}

pub fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A pod running busybox httpd on port 8080 (serving `hello-stats`),
/// once it listens: (pod id, pod config, container id, pod IP, verbose info).
pub async fn server_pod(
    env: &Env,
    name: &str,
) -> (
    String,
    cri::PodSandboxConfig,
    String,
    String,
    serde_json::Value,
) {
    let pod = env.pod_config(name);
    let pod_id = env.run_pod(&pod).await;
    let server = env
        .create(
            &pod_id,
            &pod,
            "server",
            &["sh", "-c", "mkdir -p /www && echo hello-stats > /www/index.html && echo up && exec httpd -f -p 8080 -h /www"],
        )
        .await;
    env.start_container(&server).await;
    wait_for_log(
        &Path::new(&pod.log_directory).join("server/0.log"),
        "stdout F up",
        Duration::from_secs(20),
    )
    .await;
    let (status, info) = env.pod_info(&pod_id).await;
    let ip = status.network.expect("pod network").ip;
    http_get(&ip, 8080).await;
    (pod_id, pod, server, ip, info)
}
