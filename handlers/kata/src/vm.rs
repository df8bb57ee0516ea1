//! One pod's VM: the host processes behind it (vhost-device-vsock, virtiofsd,
//! QEMU), their files in the pod's state dir, boot and teardown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{SharedFs, VmConfig, VsockMode};
use crate::qemu::{NetDevice, QBOOT, SharedDevice, VmSpec, VsockDevice, kernel_cmdline, qemu_args};
use crate::spawn::{ChildProcess, ProcessSpawner, ProcessSpec, kill_and_reap, log_tail};

/// The vsock port the guest agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// 9p mount tag / virtio-fs tag of the pod's shared directory.
pub const SHARED_TAG: &str = "crius";

/// Where a pod's VM files live. Sockets go to a short directory of the
/// handler's own (`HandlerParams.state_dir`, under the daemon's
/// `state_dir`) when the pod's state dir is too deep for a unix socket path
/// (108 bytes): never to a fixed host-wide path another daemon could share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLayout {
    pub state_dir: PathBuf,
    pub socket_dir: PathBuf,
}

/// The longest one readiness probe of the agent may take.
const PROBE_ATTEMPT: Duration = Duration::from_secs(4);

/// Longest socket path we create (the kernel's limit is 107 bytes + NUL;
/// leave room).
pub const SOCKET_PATH_MAX: usize = 100;
/// The longest socket name in the socket dir: hybrid vsock appends
/// `_<port>` for guest-initiated connections.
const LONGEST_SOCKET: &str = "/vsock.sock_4294967295";

/// Creates `dir` and any missing parent 0700 and tightens `dir` if it is
/// wider: the sockets in it reach the guest agent and the VM's devices,
/// root only.
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
    /// `short_root` is the handler's state dir ("" = none: sockets stay in
    /// the pod's state dir, and [`VmLayout::check_socket_paths`] says
    /// whether they fit).
    pub fn new(state_dir: &Path, short_root: &Path, sandbox_id: &str) -> Self {
        let fits = state_dir.as_os_str().len() + LONGEST_SOCKET.len() <= SOCKET_PATH_MAX;
        let socket_dir = if fits || short_root.as_os_str().is_empty() {
            state_dir.to_path_buf()
        } else {
            let short: String = sandbox_id
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(16)
                .collect();
            short_root.join(short)
        };
        Self {
            state_dir: state_dir.to_path_buf(),
            socket_dir,
        }
    }
    /// An error naming the socket dir when its sockets would be longer
    /// than a unix socket path may be.
    pub fn check_socket_paths(&self) -> Result<(), String> {
        let len = self.socket_dir.as_os_str().len() + LONGEST_SOCKET.len();
        if len <= SOCKET_PATH_MAX {
            return Ok(());
        }
        Err(format!(
            "the VM socket dir {} is too deep for unix socket paths ({len} > {SOCKET_PATH_MAX} bytes); \
             configure a shorter daemon state_dir",
            self.socket_dir.display()
        ))
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

/// The accessors of a VM's files, `name = dir / "file";` each: sockets in
/// `socket_dir` (kept short), the rest in the pod's `state_dir`.
macro_rules! vm_files {
    ($($(#[$doc:meta])* $name:ident = $dir:ident / $file:literal;)*) => {
        impl VmLayout {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> PathBuf {
                    self.$dir.join($file)
                }
            )*
        }
    };
}

vm_files! {
    vhost_user_vsock = socket_dir / "vhu-vsock.sock";
    /// Hybrid vsock: the host side of the guest's ports.
    vsock_uds = socket_dir / "vsock.sock";
    virtiofs_socket = socket_dir / "virtiofs.sock";
    /// QEMU's QMP monitor (resizing the VM).
    qmp_socket = socket_dir / "qmp.sock";
    /// Shared into the guest (9p / virtio-fs): container rootfs and volumes.
    shared_dir = state_dir / "shared";
    console_log = state_dir / "console.log";
    qemu_log = state_dir / "qemu.log";
    qemu_pidfile = state_dir / "qemu.pid";
}

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmParams {
    pub sandbox_id: String,
    pub qemu_path: PathBuf,
    pub config: VmConfig,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Room to grow by hot-plug (see [`VmConfig`]'s `max_*`), resolved.
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
    pub extra_kernel_params: String,
    /// The guest's vsock CID (allocated per VM with `vsock: vhost`).
    pub guest_cid: u32,
    pub layout: VmLayout,
    /// The pod's netns (QEMU runs in it to open the tap).
    pub netns: Option<PathBuf>,
    pub net: Option<NetDevice>,
    /// `cgroup.procs` of the pod's VM cgroup in each hierarchy: QEMU and
    /// every helper start there.
    pub cgroup_procs: Vec<PathBuf>,
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
    #[error(
        "the guest agent did not answer within {timeout:?} (last probe: {last_probe}; guest console: {console})"
    )]
    Timeout {
        timeout: Duration,
        /// Why the last probe failed (or that none finished in time).
        last_probe: String,
        console: String,
    },
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
        layout.check_socket_paths().map_err(BootError::Prepare)?;
        tokio::fs::create_dir_all(&layout.state_dir)
            .await
            .map_err(|e| prepare("state dir", e))?;
        create_private_dir(&layout.socket_dir).map_err(|e| prepare("socket dir", e))?;
        tokio::fs::create_dir_all(layout.shared_dir())
            .await
            .map_err(|e| prepare("shared dir", e))?;
        for stale in [
            layout.vhost_user_vsock(),
            layout.vsock_uds(),
            layout.virtiofs_socket(),
        ] {
            let _ = tokio::fs::remove_file(stale).await;
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
                            params.guest_cid.to_string().into(),
                            "--socket".into(),
                            socket.clone().into(),
                            "--uds-path".into(),
                            layout.vsock_uds().into(),
                        ],
                        log: layout.helper_log("vhost-device-vsock"),
                        netns: None,
                        cgroup_procs: params.cgroup_procs.clone(),
                    };
                    start_helper(spawner, &spec, &socket, &mut helpers).await?;
                    VsockDevice::Hybrid {
                        vhost_user_socket: socket,
                    }
                }
                VsockMode::Vhost => VsockDevice::Vhost {
                    guest_cid: params.guest_cid,
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
                        cgroup_procs: params.cgroup_procs.clone(),
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
                max_vcpus: params.max_vcpus,
                memory_mib: params.memory_mib,
                max_memory_mib: params.max_memory_mib,
                qmp_socket: layout.qmp_socket(),
                kernel: config.kernel.clone(),
                initrd: config.initrd.clone(),
                kernel_cmdline: kernel_cmdline(&[
                    // Hot-plugged DIMMs come online by themselves.
                    "memhp_default_state=online",
                    &config.kernel_params,
                    &params.extra_kernel_params,
                ]),
                vsock,
                shared,
                net: params.net.clone(),
                console_log: layout.console_log(),
                pidfile: layout.qemu_pidfile(),
                // microvm has its own minimal firmware already.
                firmware: (config.machine == crate::config::Machine::Q35
                    && Path::new(QBOOT).exists())
                .then(|| PathBuf::from(QBOOT)),
                tcg_tb_size_mib: config.tcg_tb_size_mib,
                free_page_reporting: config.free_page_reporting,
            };
            let qemu_spec = ProcessSpec {
                name: "qemu".into(),
                program: params.qemu_path.clone(),
                args: qemu_args(&spec),
                log: layout.qemu_log(),
                netns: params.netns.clone(),
                cgroup_procs: params.cgroup_procs.clone(),
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
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = self.started + timeout;
        let mut last_probe = String::from("no probe finished");
        loop {
            if let Some(err) = self.exited() {
                return Err(err);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(BootError::Timeout {
                    timeout,
                    last_probe,
                    console: log_tail(&self.layout.console_log(), 1500),
                });
            }
            // Each attempt is bounded on its own: a hybrid vsock connect
            // made before the guest listened may never be answered, and
            // must not hold the boot until the deadline (seen under load:
            // the agent ready after 7 s, the pod failed after 150 s).
            let attempt = PROBE_ATTEMPT.min(remaining);
            match tokio::time::timeout(attempt, probe()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(why)) => last_probe = why,
                Err(_) => last_probe = format!("no answer within {attempt:?}"),
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
            self.layout.qmp_socket(),
        ] {
            let _ = tokio::fs::remove_file(socket).await;
        }
        let _ = tokio::fs::remove_file(self.layout.qemu_pidfile()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::RealSpawner;

    #[test]
    fn deep_state_dirs_get_a_short_socket_dir() {
        let handler_dir = Path::new("/run/crius-a/plugins/kata");
        let shallow = VmLayout::new(Path::new("/run/crius/pods/abc"), handler_dir, "abc");
        assert_eq!(shallow.socket_dir, Path::new("/run/crius/pods/abc"));
        assert!(shallow.check_socket_paths().is_ok());
        let deep_dir = PathBuf::from("/tmp/crius-test-xyz/state/pods").join("f".repeat(64));
        let id = "0123456789abcdef".repeat(4);
        let deep = VmLayout::new(&deep_dir, handler_dir, &id);
        // Under the daemon's own state dir, not a host-wide path: two
        // daemons never share it.
        assert_eq!(
            deep.socket_dir,
            Path::new("/run/crius-a/plugins/kata/0123456789abcdef")
        );
        assert!(deep.vsock_uds().as_os_str().len() < SOCKET_PATH_MAX);
        assert!(deep.check_socket_paths().is_ok());
        let other = VmLayout::new(&deep_dir, Path::new("/run/crius-b/plugins/kata"), &id);
        assert_ne!(other.socket_dir, deep.socket_dir);

        // Too deep everywhere: refused by name before anything starts.
        let long_root = PathBuf::from("/").join("d".repeat(90));
        let err = VmLayout::new(&deep_dir, &long_root, &id)
            .check_socket_paths()
            .unwrap_err();
        assert!(
            err.contains("too deep") && err.contains("state_dir"),
            "{err}"
        );
        assert!(
            VmLayout::new(&deep_dir, Path::new(""), &id)
                .check_socket_paths()
                .is_err()
        );
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
            max_vcpus: 1,
            max_memory_mib: 128,
            extra_kernel_params: String::new(),
            guest_cid: 3,
            layout: VmLayout::new(dir, Path::new(""), "test"),
            netns: None,
            cgroup_procs: Vec::new(),
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

    /// QEMU replaced by `sleep 100` (it rejects QEMU's flags): a VM whose
    /// agent never answers.
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

    async fn start_sleeping_vm(dir: &Path) -> Vm {
        Vm::start(
            &SleepQemu(FakeHelper(RealSpawner)),
            &params(dir, "/bin/sleep"),
        )
        .await
        .unwrap()
    }

    fn assert_gone(pids: &[u32]) {
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} left behind"
            );
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
            .wait_ready(Duration::from_secs(5), || async {
                Err::<(), _>("not yet".to_string())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, BootError::Exited { ref name, .. } if name == "qemu"),
            "{err}"
        );
        vm.stop().await;
        assert_gone(&pids);
        assert!(!params.layout.vhost_user_vsock().exists());
    }

    /// A probe that hangs (a connect made before the guest listened) is
    /// abandoned and the next one finds the agent, well before the deadline.
    #[tokio::test]
    async fn a_hanging_probe_does_not_hold_the_boot_until_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = start_sleeping_vm(dir.path()).await;
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let started = Instant::now();
        let got = vm
            .wait_ready(Duration::from_secs(60), || {
                let attempts = attempts.clone();
                async move {
                    if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok(7)
                }
            })
            .await
            .expect("the second probe answers");
        assert_eq!(got, 7);
        assert!(
            started.elapsed() < PROBE_ATTEMPT + Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        vm.stop().await;
    }

    #[tokio::test]
    async fn agent_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = start_sleeping_vm(dir.path()).await;
        let started = Instant::now();
        let err = vm
            .wait_ready(Duration::from_millis(300), || async {
                Err::<(), _>("connection refused".to_string())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, BootError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("last probe: connection refused"),
            "the timeout says why the last probe failed: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        let pids = vm.pids();
        vm.stop().await;
        assert_gone(&pids);
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
