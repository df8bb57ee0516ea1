//! A pod test environment: a registry with a busybox image, a CNI network
//! of the test's own (network name, bridge, subnet, IPAM dir) and a daemon
//! using both, plus the CRI calls pod tests repeat. Each environment is
//! independent, so tests using it run in parallel.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::cri::{configs, images};
use crate::image::{
    self, BUSYBOX_STATIC, Compression, ImageConfig, Layer, LayerBuilder, ManifestFormat,
};
use crate::registry::{REGISTRY_BIN, Registry};
use crate::{Daemon, require_root_and_tools, unique_token};

pub type Runtime = RuntimeServiceClient<Channel>;

pub const CONMON: &str = "/usr/bin/conmon";
pub const CATATONIT: &str = "/usr/bin/catatonit";
pub const CNI_PLUGINS: [&str; 3] = [
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/portmap",
];

/// The OCI runtime binary of a built-in handler.
pub fn runtime_binary(handler: &str) -> &'static str {
    match handler {
        "runc" => "/usr/sbin/runc",
        "crun" => "/usr/bin/crun",
        other => panic!("no binary known for handler {other}"),
    }
}

/// Distinct /24 subnets for the environments of one test binary, skipping
/// any the host already routes (a bridge another suite left, or one of a
/// concurrent run): a second route to the same subnet makes the pods
/// unreachable from the host.
fn next_subnet() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let routed = routed_prefixes();
    let base = 150 + (std::process::id() % 50);
    for _ in 0..250 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("10.{base}.{}", n % 250);
        if !routed.contains(&prefix) {
            return prefix;
        }
    }
    panic!("every subnet 10.{base}.0-249.0/24 is already routed on this host");
}

/// `a.b.c` of every IPv4 route's destination in /proc/net/route.
fn routed_prefixes() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|dest| u32::from_str_radix(dest, 16).ok())
        .map(|dest| {
            let [a, b, c, _] = dest.to_le_bytes();
            format!("{a}.{b}.{c}")
        })
        .collect()
}

/// `podbox:1`: the busybox rootfs plus a layer with the applet links and
/// the files.
async fn push_podbox(
    registry: &Registry,
    applets: &[&str],
    files: &[(&str, &[u8], u32)],
) -> anyhow::Result<String> {
    let mut extra = LayerBuilder::new();
    extra.dir("bin", 0o755)?;
    for applet in applets {
        extra.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    for (path, contents, mode) in files {
        extra.file(path, contents, *mode)?;
    }
    let layers = vec![
        Layer::new(image::busybox_rootfs_tar()?, Compression::Gzip),
        Layer::new(extra.finish()?, Compression::Gzip),
    ];
    image::push_image(
        registry,
        "podbox",
        "1",
        layers,
        &ImageConfig::default(),
        ManifestFormat::Docker,
    )
    .await?;
    Ok(registry.image_ref("podbox", "1"))
}

/// What to build a [`PodEnv`] with.
#[derive(Default)]
pub struct PodEnvOptions<'a> {
    /// Busybox applets beyond the standard image's.
    pub applets: &'a [&'a str],
    /// Files `(path, contents, mode)` the image carries in its second layer
    /// (with the applet links; `bin/` exists there).
    pub files: &'a [(&'a str, &'a [u8], u32)],
    /// Extra top-level daemon config (YAML).
    pub extra_yaml: &'a str,
    /// Host tools the test needs beyond the pod basics.
    pub tools: &'a [&'a str],
    /// The daemon's handler table (YAML with `runtime_handlers:`); empty =
    /// the built-in runc/crun table, plus a default VM entry when the
    /// handler is `kata`.
    pub handlers_yaml: &'a str,
    /// The pods' namespace; empty = `crius-test`.
    pub namespace: &'a str,
    /// The daemon's `storage_driver`; empty = `$CRIUS_TEST_STORAGE_DRIVER`,
    /// or the daemon's default (overlay) when that is unset too.
    pub storage_driver: &'a str,
    /// A command the daemon runs under (see `DaemonBuilder::command_prefix`).
    pub daemon_prefix: Vec<String>,
    /// A process in the daemon's mount namespace, when that is not the
    /// test's (its mounts are read there).
    pub daemon_mount_ns: Option<i32>,
}

/// The environment variable that runs a whole suite with another storage
/// driver (`scripts/test` runs the pod suites once more with `vfs`).
pub const STORAGE_DRIVER_ENV: &str = "CRIUS_TEST_STORAGE_DRIVER";

pub struct PodEnv {
    // Field order is drop order: the daemon stops before the registry goes away.
    pub daemon: Daemon,
    pub handler: &'static str,
    pub image: String,
    /// The namespace of [`PodEnv::pod_config`]'s pods.
    pub namespace: String,
    /// The daemon's storage driver (`overlay` or `vfs`).
    pub storage_driver: String,
    pub subnet_prefix: String,
    /// The test network's bridge (the bridge plugin never deletes it).
    pub bridge: String,
    pub log_dir: tempfile::TempDir,
    pub cni_dir: tempfile::TempDir,
    pub registry: Registry,
    /// Whose mountinfo shows the daemon's mounts.
    mounts_process: String,
}

impl PodEnv {
    /// `None` (skipped with the reason; a failure under CI) without root or
    /// the tools.
    pub async fn start(handler: &'static str, options: PodEnvOptions<'_>) -> Option<Self> {
        let mut tools = vec![REGISTRY_BIN, BUSYBOX_STATIC, CONMON, CATATONIT];
        // `kata` without a table of the test's own: the built-in runc and
        // crun entries plus a default VM entry.
        let mut handlers_yaml = options.handlers_yaml.to_string();
        if handler == "kata" && handlers_yaml.is_empty() {
            let vm = crate::kata::VmParts::find()?;
            handlers_yaml = format!(
                "default_runtime_handler: runc\nruntime_handlers:\n  runc:\n    kind: oci\n    \
                 runtime_path: {}\n    monitor_path: {CONMON}\n  crun:\n    kind: oci\n    \
                 runtime_path: {}\n    monitor_path: {CONMON}\n{}",
                runtime_binary("runc"),
                runtime_binary("crun"),
                vm.entry_yaml("kata", &crate::kata::VmEntry::default())
            );
            tools.extend([runtime_binary("runc"), runtime_binary("crun")]);
        } else if handlers_yaml.is_empty() || matches!(handler, "runc" | "crun") {
            // A handler of a custom table brings its own tools (in `tools`).
            tools.push(runtime_binary(handler));
        }
        tools.extend(CNI_PLUGINS);
        tools.extend(options.tools);
        if !require_root_and_tools(&tools) {
            return None;
        }
        let registry = Registry::start().await.expect("registry starts");
        let image = push_podbox(&registry, options.applets, options.files)
            .await
            .expect("push podbox image");
        let token = unique_token();
        let cni_dir = tempfile::Builder::new()
            .prefix("crius-cni-")
            .tempdir()
            .unwrap();
        let subnet_prefix = next_subnet();
        let bridge = format!("crp{}", &token[..8]);
        crate::host::write_test_cni_config(
            cni_dir.path(),
            &format!("crius-test-{token}"),
            &bridge,
            &subnet_prefix,
        );
        let mut builder = Daemon::builder()
            .registry(&registry)
            .command_prefix(options.daemon_prefix.clone());
        if !handlers_yaml.is_empty() {
            builder = builder.runtime_handlers_yaml(&handlers_yaml);
        }
        let storage_driver = match options.storage_driver {
            "" => std::env::var(STORAGE_DRIVER_ENV).unwrap_or_else(|_| "overlay".into()),
            other => other.to_string(),
        };
        let daemon = builder
            .extra_yaml(&format!(
                "cni:\n  conf_dir: \"{}\"\n  bin_dirs: [/usr/lib/cni]\nstorage_driver: {}\n{}",
                cni_dir.path().display(),
                storage_driver,
                options.extra_yaml
            ))
            .start()
            .await
            .expect("daemon starts");
        images::pull(&mut daemon.image(), &image)
            .await
            .expect("pull podbox");
        let log_dir = tempfile::Builder::new()
            .prefix("crius-podlogs-")
            .tempdir()
            .unwrap();
        let namespace = match options.namespace {
            "" => "crius-test",
            other => other,
        };
        Some(Self {
            daemon,
            handler,
            image,
            namespace: namespace.to_string(),
            storage_driver,
            subnet_prefix,
            bridge,
            log_dir,
            cni_dir,
            registry,
            mounts_process: options
                .daemon_mount_ns
                .map_or_else(|| "self".to_string(), |pid| pid.to_string()),
        })
    }

    pub fn rt(&self) -> Runtime {
        self.daemon.runtime()
    }

    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let mut pod = configs::pod(
            name,
            &self.namespace,
            self.log_dir.path(),
            cri::NamespaceMode::Pod,
        );
        pod.labels = HashMap::from([("app".to_string(), name.to_string())]);
        pod
    }

    pub async fn run_pod(&self, config: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        self.run_pod_on(config, self.handler).await
    }

    /// RunPodSandbox on the named handler.
    pub async fn run_pod_on(
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

    pub fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        let mut config =
            configs::container_with_namespaces(name, &self.image, command, cri::NamespaceMode::Pod);
        config.labels = HashMap::from([("container".to_string(), name.to_string())]);
        config
    }

    pub async fn create(
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
        let id = self
            .rt()
            .create_container(req)
            .await?
            .into_inner()
            .container_id;
        self.assert_storage_driver(pod_id, &id);
        Ok(id)
    }

    /// The container's rootfs is what the storage driver makes: an overlay
    /// mount, or (vfs) a plain directory with no mount at all. Checked on
    /// every container a suite creates, so a suite run with
    /// [`STORAGE_DRIVER_ENV`] fails if the daemon ignored the driver.
    pub fn assert_storage_driver(&self, pod_id: &str, container_id: &str) {
        let rootfs = self
            .daemon
            .pods_dir()
            .join(pod_id)
            .join("containers")
            .join(container_id)
            .join("rootfs");
        let needle = format!("{}/", container_id);
        let overlays: Vec<_> = crate::host::mounts_of(&self.mounts_process, &needle)
            .into_iter()
            .filter(|l| l.contains(" - overlay "))
            .collect();
        match self.storage_driver.as_str() {
            "vfs" => {
                assert!(overlays.is_empty(), "vfs: overlay mounts {overlays:?}");
                assert!(
                    rootfs.join("bin").is_dir(),
                    "vfs: no image copy at {}",
                    rootfs.display()
                );
            }
            _ => assert!(
                !overlays.is_empty(),
                "overlay: {} is not mounted",
                rootfs.display()
            ),
        }
    }

    pub async fn create_and_start(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self
            .create(pod_id, pod, config)
            .await
            .expect("CreateContainer");
        self.start_container(&id).await;
        id
    }

    pub async fn start_container(&self, id: &str) {
        self.rt()
            .start_container(cri::StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .expect("StartContainer");
    }

    pub async fn container_status(&self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.rt()
            .container_status(req)
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .unwrap()
    }

    /// Polls until the container is EXITED (or panics after `timeout`).
    pub async fn wait_exited(&self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id).await;
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

    /// ExecSync with a 30 s timeout: (exit code, stdout, stderr).
    pub async fn exec_sync(&self, id: &str, cmd: &[&str]) -> (i32, String, String) {
        let out = self
            .rt()
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The container's CRI log, once it contains `needle`.
    pub async fn log_with(
        &self,
        pod: &cri::PodSandboxConfig,
        container: &str,
        needle: &str,
    ) -> String {
        let log = Path::new(&pod.log_directory).join(format!("{container}/0.log"));
        crate::host::wait_for_log(&log, needle, Duration::from_secs(20)).await
    }

    pub async fn stop_and_remove_pod(&self, id: &str) {
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
}

impl Drop for PodEnv {
    fn drop(&mut self) {
        // A failed VM test leaves its pod: SIGTERM makes each VM shim stop
        // its VM and exit, so no QEMU outlives the test.
        let state = self.daemon.state_dir().display().to_string();
        for shim in crate::host::processes_matching(&["crius-kata-shim", &state]) {
            if let Some(Ok(pid)) = shim.split(':').next().map(str::parse::<i32>) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        // The netns directory is a (shared) bind mount of itself; detach it
        // so the daemon's temporary directory can be deleted.
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
