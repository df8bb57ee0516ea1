//! One pod's VM: the host processes behind it (vhost-device-vsock, virtiofsd,
//! QEMU), their files in the pod's state dir, boot and teardown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::config::{SharedFs, VmConfig, VsockMode};
use crate::qemu::{NetDevice, SharedDevice, VmSpec, VsockDevice, kernel_cmdline, qemu_args};
use crate::spawn::{ChildProcess, ProcessSpawner, ProcessSpec, kill_and_reap, log_tail};

/// The vsock port the guest agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// 9p mount tag / virtio-fs tag of the pod's shared directory.
pub const SHARED_TAG: &str = "crius";

/// Where a pod's VM files live. Sockets go to a short directory when the
/// state dir is too deep for a unix socket path (108 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLayout {
    pub state_dir: PathBuf,
    pub socket_dir: PathBuf,
}

const SOCKET_PATH_MAX: usize = 100;
/// Where sockets go when the state dir is too deep.
pub const SHORT_SOCKET_ROOT: &str = "/run/crius-kata";

/// Creates `dir` and any missing parent 0700 (the shared root
/// [`SHORT_SOCKET_ROOT`] included) and tightens `dir` if it is wider: the
/// sockets in it reach the guest agent and the VM's devices, root only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if std::fs::metadata(dir)?.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl VmLayout {
    pub fn new(state_dir: &Path, sandbox_id: &str) -> Self {
        // The longest socket name below is `vsock.sock_1024` (hybrid vsock
        // appends `_<port>` for guest-initiated connections).
        let fits = state_dir.as_os_str().len() + "/vsock.sock_4294967295".len() <= SOCKET_PATH_MAX;
        let socket_dir = if fits {
            state_dir.to_path_buf()
        } else {
            let short: String = sandbox_id
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(16)
                .collect();
            PathBuf::from(SHORT_SOCKET_ROOT).join(short)
        };
        Self {
            state_dir: state_dir.to_path_buf(),
            socket_dir,
        }
    }
    pub fn vhost_user_vsock(&self) -> PathBuf {
        self.socket_dir.join("vhu-vsock.sock")
    }
    /// Hybrid vsock: the host side of the guest's ports.
    pub fn vsock_uds(&self) -> PathBuf {
        self.socket_dir.join("vsock.sock")
    }
    pub fn virtiofs_socket(&self) -> PathBuf {
        self.socket_dir.join("virtiofs.sock")
    }
    /// Shared into the guest (9p / virtio-fs): container rootfs and volumes.
    pub fn shared_dir(&self) -> PathBuf {
        self.state_dir.join("shared")
    }
    pub fn console_log(&self) -> PathBuf {
        self.state_dir.join("console.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.state_dir.join("qemu.log")
    }
    pub fn qemu_pidfile(&self) -> PathBuf {
        self.state_dir.join("qemu.pid")
    }
    pub fn helper_log(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.log"))
    }
    /// Removes the socket directory if it is a separate one.
    pub fn remove_socket_dir(&self) {
        if self.socket_dir != self.state_dir {
            let _ = std::fs::remove_dir_all(&self.socket_dir);
        }
    }
}

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmParams {
    pub sandbox_id: String,
    pub qemu_path: PathBuf,
    pub config: VmConfig,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub extra_kernel_params: String,
    pub layout: VmLayout,
    /// The pod's netns (QEMU runs in it to open the tap).
    pub netns: Option<PathBuf>,
    pub net: Option<NetDevice>,
}

/// Why a VM did not come up.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot prepare the VM: {0}")]
    Prepare(String),
    #[error("{name} exited during VM start ({status}): {log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("the guest agent did not answer within {timeout:?} (guest console: {console})")]
    Timeout { timeout: Duration, console: String },
}

/// A running VM and its helper processes.
pub struct Vm {
    pub layout: VmLayout,
    qemu: Box<dyn ChildProcess>,
    helpers: Vec<(String, Box<dyn ChildProcess>)>,
    pub started: Instant,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("qemu_pid", &self.qemu.pid())
            .finish()
    }
}

impl Vm {
    /// Starts the helpers and QEMU. On failure everything started is killed.
    pub async fn start(spawner: &dyn ProcessSpawner, params: &VmParams) -> Result<Vm, BootError> {
        let layout = &params.layout;
        let prepare =
            |what: &str, err: std::io::Error| BootError::Prepare(format!("{what}: {err}"));
        std::fs::create_dir_all(&layout.state_dir).map_err(|e| prepare("state dir", e))?;
        create_private_dir(&layout.socket_dir).map_err(|e| prepare("socket dir", e))?;
        std::fs::create_dir_all(layout.shared_dir()).map_err(|e| prepare("shared dir", e))?;
        for stale in [
            layout.vhost_user_vsock(),
            layout.vsock_uds(),
            layout.virtiofs_socket(),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        let config = &params.config;
        let mut helpers: Vec<(String, Box<dyn ChildProcess>)> = Vec::new();
        let result = async {
            let vsock = match config.vsock {
                VsockMode::Hybrid => {
                    let socket = layout.vhost_user_vsock();
                    let spec = ProcessSpec {
                        name: "vhost-device-vsock".into(),
                        program: config.vhost_device_vsock_path.clone(),
                        args: vec![
                            "--guest-cid".into(),
                            config.guest_cid.to_string().into(),
                            "--socket".into(),
                            socket.clone().into(),
                            "--uds-path".into(),
                            layout.vsock_uds().into(),
                        ],
                        log: layout.helper_log("vhost-device-vsock"),
                        netns: None,
                    };
                    start_helper(spawner, &spec, &socket, &mut helpers).await?;
                    VsockDevice::Hybrid {
                        vhost_user_socket: socket,
                    }
                }
                VsockMode::Vhost => VsockDevice::Vhost {
                    guest_cid: config.guest_cid,
                },
            };
            let shared = match config.shared_fs {
                SharedFs::NineP => SharedDevice::NineP {
                    path: layout.shared_dir(),
                    tag: SHARED_TAG.into(),
                },
                SharedFs::Virtiofs => {
                    let socket = layout.virtiofs_socket();
                    let mut shared_dir = std::ffi::OsString::from("--shared-dir=");
                    shared_dir.push(layout.shared_dir());
                    let mut socket_arg = std::ffi::OsString::from("--socket-path=");
                    socket_arg.push(&socket);
                    let spec = ProcessSpec {
                        name: "virtiofsd".into(),
                        program: config.virtiofsd_path.clone(),
                        args: vec![
                            socket_arg,
                            shared_dir,
                            "--cache=auto".into(),
                            "--sandbox=none".into(),
                        ],
                        log: layout.helper_log("virtiofsd"),
                        netns: None,
                    };
                    start_helper(spawner, &spec, &socket, &mut helpers).await?;
                    SharedDevice::Virtiofs {
                        vhost_user_socket: socket,
                        tag: SHARED_TAG.into(),
                    }
                }
            };
            let spec = VmSpec {
                name: params.sandbox_id.clone(),
                machine: config.machine,
                accelerator: config.accelerator,
                cpu: config.cpu(),
                vcpus: params.vcpus,
                memory_mib: params.memory_mib,
                kernel: config.kernel.clone(),
                initrd: config.initrd.clone(),
                kernel_cmdline: kernel_cmdline(&[
                    &config.kernel_params,
                    &params.extra_kernel_params,
                ]),
                vsock,
                shared,
                net: params.net.clone(),
                console_log: layout.console_log(),
                pidfile: layout.qemu_pidfile(),
            };
            let qemu_spec = ProcessSpec {
                name: "qemu".into(),
                program: params.qemu_path.clone(),
                args: qemu_args(&spec),
                log: layout.qemu_log(),
                netns: params.netns.clone(),
            };
            tracing::info!(sandbox = %params.sandbox_id, args = ?qemu_spec.args, "starting QEMU");
            spawner
                .spawn(&qemu_spec)
                .map_err(|err| BootError::Prepare(err.to_string()))
        }
        .await;
        match result {
            Ok(qemu) => Ok(Vm {
                layout: layout.clone(),
                qemu,
                helpers,
                started: Instant::now(),
            }),
            Err(err) => {
                for (_, helper) in &mut helpers {
                    kill_and_reap(helper.as_mut()).await;
                }
                Err(err)
            }
        }
    }

    pub fn qemu_pid(&self) -> u32 {
        self.qemu.pid()
    }

    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.qemu.pid())
            .chain(self.helpers.iter().map(|(_, h)| h.pid()))
            .collect()
    }

    /// Why the VM is gone, if QEMU or a helper exited.
    pub fn exited(&mut self) -> Option<BootError> {
        if let Ok(Some(status)) = self.qemu.try_wait() {
            let mut log = log_tail(&self.layout.qemu_log(), 2000);
            let console = log_tail(&self.layout.console_log(), 1500);
            if !console.is_empty() {
                log = format!("{log} (guest console: {console})");
            }
            return Some(BootError::Exited {
                name: "qemu".into(),
                status: status.to_string(),
                log,
            });
        }
        for (name, helper) in &mut self.helpers {
            if let Ok(Some(status)) = helper.try_wait() {
                let log = log_tail(&self.layout.helper_log(name), 2000);
                return Some(BootError::Exited {
                    name: name.clone(),
                    status: status.to_string(),
                    log,
                });
            }
        }
        None
    }

    /// Waits until `probe` succeeds (the agent answers), QEMU exits, or
    /// `timeout` passes. Does not stop the VM on failure: the caller does.
    pub async fn wait_ready<T, F, Fut>(
        &mut self,
        timeout: Duration,
        mut probe: F,
    ) -> Result<T, BootError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = self.started + timeout;
        loop {
            if let Some(err) = self.exited() {
                return Err(err);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(BootError::Timeout {
                    timeout,
                    console: log_tail(&self.layout.console_log(), 1500),
                });
            }
            if let Ok(Some(value)) = tokio::time::timeout(remaining, probe()).await {
                return Ok(value);
            }
            tokio::time::sleep(Duration::from_millis(50).min(remaining)).await;
        }
    }

    /// Kills QEMU and its helpers and removes their sockets. Idempotent.
    /// The socket dir itself stays (the shim's socket lives there too).
    pub async fn stop(&mut self) {
        kill_and_reap(self.qemu.as_mut()).await;
        for (_, helper) in &mut self.helpers {
            kill_and_reap(helper.as_mut()).await;
        }
        for socket in [
            self.layout.vhost_user_vsock(),
            self.layout.vsock_uds(),
            self.layout.virtiofs_socket(),
        ] {
            let _ = std::fs::remove_file(socket);
        }
        let _ = std::fs::remove_file(self.layout.qemu_pidfile());
    }
}

/// Starts a vhost-user backend and waits until its socket exists.
async fn start_helper(
    spawner: &dyn ProcessSpawner,
    spec: &ProcessSpec,
    socket: &Path,
    helpers: &mut Vec<(String, Box<dyn ChildProcess>)>,
) -> Result<(), BootError> {
    let mut child = spawner
        .spawn(spec)
        .map_err(|err| BootError::Prepare(err.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if socket.exists() {
            helpers.push((spec.name.clone(), child));
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BootError::Exited {
                name: spec.name.clone(),
                status: status.to_string(),
                log: log_tail(&spec.log, 2000),
            });
        }
        if Instant::now() > deadline {
            kill_and_reap(child.as_mut()).await;
            return Err(BootError::Prepare(format!(
                "{} did not create {} within 10 s",
                spec.name,
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a hybrid-vsock connection to guest `port` through the
/// vhost-device-vsock unix socket (`CONNECT <port>\n` → `OK <n>\n`).
pub async fn connect_hybrid(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: whatever follows the newline belongs to the guest.
    while line.len() < 64 {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("vsock port {port} closed the connection (nothing listening yet)"),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    if line.starts_with(b"OK") {
        Ok(stream)
    } else {
        Err(std::io::Error::other(format!(
            "unexpected hybrid vsock answer {:?}",
            String::from_utf8_lossy(&line)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::RealSpawner;

    #[test]
    fn deep_state_dirs_get_a_short_socket_dir() {
        let shallow = VmLayout::new(Path::new("/run/crius/pods/abc"), "abc");
        assert_eq!(shallow.socket_dir, Path::new("/run/crius/pods/abc"));
        let deep_dir = PathBuf::from("/tmp/crius-test-xyz/state/pods").join("f".repeat(64));
        let deep = VmLayout::new(&deep_dir, &"0123456789abcdef".repeat(4));
        assert_eq!(
            deep.socket_dir,
            Path::new("/run/crius-kata/0123456789abcdef")
        );
        assert!(deep.vsock_uds().as_os_str().len() < SOCKET_PATH_MAX);
    }

    fn params(dir: &Path, qemu: &str) -> VmParams {
        let config = VmConfig {
            // A helper that creates its "socket" and then sleeps stands in
            // for vhost-device-vsock.
            vhost_device_vsock_path: "/bin/sh".into(),
            ..Default::default()
        };
        VmParams {
            sandbox_id: "test".into(),
            qemu_path: qemu.into(),
            config,
            vcpus: 1,
            memory_mib: 128,
            extra_kernel_params: String::new(),
            layout: VmLayout::new(dir, "test"),
            netns: None,
            net: None,
        }
    }

    /// Replaces the helper's arguments: touch the socket path and sleep.
    struct FakeHelper(RealSpawner);

    impl ProcessSpawner for FakeHelper {
        fn spawn(&self, spec: &ProcessSpec) -> std::io::Result<Box<dyn ChildProcess>> {
            let mut spec = spec.clone();
            if spec.name == "vhost-device-vsock" {
                let socket = spec.args[3].clone().into_string().unwrap();
                spec.args = vec![
                    "-c".into(),
                    format!("touch {socket}; exec sleep 100").into(),
                ];
            }
            self.0.spawn(&spec)
        }
    }

    #[tokio::test]
    async fn qemu_that_exits_is_reported_with_its_log_and_helpers_die() {
        let dir = tempfile::tempdir().unwrap();
        let params = params(dir.path(), "/bin/false");
        let mut vm = Vm::start(&FakeHelper(RealSpawner), &params).await.unwrap();
        let pids = vm.pids();
        assert_eq!(pids.len(), 2);
        let err = vm
            .wait_ready(Duration::from_secs(5), || async { None::<()> })
            .await
            .unwrap_err();
        assert!(
            matches!(err, BootError::Exited { ref name, .. } if name == "qemu"),
            "{err}"
        );
        vm.stop().await;
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} left behind"
            );
        }
        assert!(!params.layout.vhost_user_vsock().exists());
    }

    #[tokio::test]
    async fn agent_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let params = params(dir.path(), "/bin/sleep");
        // `sleep` rejects QEMU's flags; wrap it so it just sleeps.
        struct SleepQemu(FakeHelper);
        impl ProcessSpawner for SleepQemu {
            fn spawn(&self, spec: &ProcessSpec) -> std::io::Result<Box<dyn ChildProcess>> {
                let mut spec = spec.clone();
                if spec.name == "qemu" {
                    spec.args = vec!["100".into()];
                }
                self.0.spawn(&spec)
            }
        }
        let mut vm = Vm::start(&SleepQemu(FakeHelper(RealSpawner)), &params)
            .await
            .unwrap();
        let started = Instant::now();
        let err = vm
            .wait_ready(Duration::from_millis(300), || async { None::<()> })
            .await
            .unwrap_err();
        assert!(matches!(err, BootError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let pids = vm.pids();
        vm.stop().await;
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} left behind"
            );
        }
    }

    #[tokio::test]
    async fn missing_helper_fails_before_qemu_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = params(dir.path(), "/bin/false");
        params.config.vhost_device_vsock_path = "/nonexistent/vhost-device-vsock".into();
        let err = Vm::start(&RealSpawner, &params).await.unwrap_err();
        assert!(err.to_string().contains("vhost-device-vsock"), "{err}");
    }
}
