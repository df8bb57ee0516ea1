//! What the interactive tests share: a daemon with a registry and a busybox
//! image, host-network pods, and the clients that drive the streaming
//! URLs: the Python `kubernetes` package (WebSocket), moby/spdystream in Go
//! (SPDY), `criusctl` (ours), and a raw HTTP request.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use crius_tests::cri::{configs, images};
use crius_tests::image::{self, BUSYBOX_STATIC};
use crius_tests::registry::{REGISTRY_BIN, Registry};
use crius_tests::{Daemon, require, require_root_and_tools};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub type Runtime = RuntimeServiceClient<Channel>;

const CONMON: &str = "/usr/bin/conmon";
const CATATONIT: &str = "/usr/bin/catatonit";
const APPLETS: &[&str] = &["httpd", "stty", "tty", "nc", "tr", "tail", "wget"];

pub fn runtime_binary(handler: &str) -> &'static str {
    match handler {
        "runc" => "/usr/sbin/runc",
        "crun" => "/usr/bin/crun",
        // The example plugin drives runc itself.
        _ => "/usr/sbin/runc",
    }
}

pub struct Env {
    // Field order is drop order: the daemon stops before the registry.
    pub daemon: Daemon,
    pub handler: String,
    pub image: String,
    pub log_dir: tempfile::TempDir,
    _registry: Registry,
}

/// Root, the tools, the Python client and the Go SPDY client's sources; a
/// registry with the image and a daemon configured with `extra_yaml`.
/// `None` (skipped, reason printed) when something is missing.
pub async fn setup(handler: &str, daemon: crius_tests::daemon::DaemonBuilder) -> Option<Env> {
    if !require_root_and_tools(&[
        REGISTRY_BIN,
        BUSYBOX_STATIC,
        CONMON,
        CATATONIT,
        runtime_binary(handler),
        "python3",
        "go",
        "openssl",
    ]) {
        return None;
    }
    let python_ok = std::process::Command::new("python3")
        .args(["-c", "import kubernetes.stream.ws_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(python_ok, "python3 with the `kubernetes` package") {
        return None;
    }
    if !require(
        Path::new(SPDYSTREAM_SRC).exists(),
        "golang-github-docker-spdystream-dev (moby/spdystream sources)",
    ) {
        return None;
    }
    let registry = Registry::start().await.expect("registry starts");
    let image = image::push_busybox_with_applets(&registry, "ibox", "1", APPLETS)
        .await
        .expect("push image");
    let daemon = daemon
        .registry(&registry)
        .start()
        .await
        .expect("daemon starts");
    images::pull(&mut daemon.image(), &image)
        .await
        .expect("pull image");
    let log_dir = tempfile::Builder::new()
        .prefix("crius-ilogs-")
        .tempdir()
        .unwrap();
    Some(Env {
        daemon,
        handler: handler.to_string(),
        image,
        log_dir,
        _registry: registry,
    })
}

impl Env {
    pub fn rt(&self) -> Runtime {
        self.daemon.runtime()
    }

    /// A host-network pod.
    pub async fn pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let mut pod = configs::pod(
            name,
            "crius-test",
            self.log_dir.path(),
            cri::NamespaceMode::Node,
        );
        pod.labels = HashMap::from([("app".to_string(), name.to_string())]);
        let id = self
            .rt()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: self.handler.clone(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        (id, pod)
    }

    pub fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        configs::container_with_namespaces(name, &self.image, command, cri::NamespaceMode::Node)
    }

    pub async fn create(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
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

    pub async fn start(&self, id: &str) {
        self.rt()
            .start_container(cri::StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .expect("StartContainer");
    }

    pub async fn run(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self.create(pod_id, pod, config).await;
        self.start(&id).await;
        id
    }

    pub async fn state(&self, id: &str) -> cri::ContainerStatus {
        self.rt()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    pub async fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.state(id).await;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(Instant::now() < deadline, "{id} did not exit: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn exec_url(&self, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
        self.rt()
            .exec(cri::ExecRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .expect("Exec")
            .into_inner()
            .url
    }

    pub async fn attach_url(&self, id: &str, stdin: bool) -> String {
        self.rt()
            .attach(cri::AttachRequest {
                container_id: id.to_string(),
                stdin,
                tty: false,
                stdout: true,
                stderr: true,
            })
            .await
            .expect("Attach")
            .into_inner()
            .url
    }

    pub async fn port_forward_url(&self, pod_id: &str, port: u16) -> String {
        self.rt()
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod_id.to_string(),
                port: vec![i32::from(port)],
            })
            .await
            .expect("PortForward")
            .into_inner()
            .url
    }

    /// ExecSync's stdout.
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let out = self
            .rt()
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 10,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The session socket directories left under `<state_dir>/io/`.
    pub fn io_left(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.daemon.state_dir().join("io")) {
            Ok(dir) => dir.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn remove_pod(&self, pod_id: &str) {
        let mut rt = self.rt();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("StopPodSandbox");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("RemovePodSandbox");
    }

    /// `criusctl -s <socket> args...`
    pub fn criusctl(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(criusctl_bin());
        cmd.arg("-s").arg(self.daemon.socket()).kill_on_drop(true);
        cmd
    }
}

impl Drop for Env {
    /// A test that failed half-way leaves pods running (they outlive the
    /// daemon): remove whatever is left while the daemon still runs.
    fn drop(&mut self) {
        let socket = self.daemon.socket().to_path_buf();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut c) = crius_tests::cri::connect(&socket).await else {
                    return;
                };
                let Ok(pods) = c
                    .runtime
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                    .await
                else {
                    return;
                };
                for pod in pods.into_inner().items {
                    let _ = c
                        .runtime
                        .stop_pod_sandbox(cri::StopPodSandboxRequest {
                            pod_sandbox_id: pod.id.clone(),
                        })
                        .await;
                    let _ = c
                        .runtime
                        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                            pod_sandbox_id: pod.id,
                        })
                        .await;
                }
            });
        })
        .join();
    }
}

/// Polls `check` for up to 10 s.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn criusctl_bin() -> PathBuf {
    crius_tests::daemon::crius_bin()
        .parent()
        .expect("target dir")
        .join("criusctl")
}

fn client_script() -> PathBuf {
    crius_tests::workspace_root().join("tests/clients/k8s_ws_client.py")
}

/// The Python client, finished; its raw output.
pub async fn python_raw(args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(client_script())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python client finishes")
    .expect("python3 runs")
}

/// The Python client's JSON answer (it must succeed).
pub async fn python(args: &[&str]) -> serde_json::Value {
    let out = python_raw(args).await;
    assert!(
        out.status.success(),
        "k8s_ws_client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

/// The Python client, running (for tests that kill it).
pub fn python_spawn(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("python3")
        .arg(client_script())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs")
}

const SPDYSTREAM_SRC: &str = "/usr/share/gocode/src/github.com/moby/spdystream";

/// The Go spdystream client binary, built once per test process.
pub async fn spdy_binary() -> PathBuf {
    static BINARY: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BINARY
        .get_or_init(|| async {
            let out_dir = crius_tests::workspace_root().join("target/spdy-client");
            std::fs::create_dir_all(&out_dir).expect("mkdir");
            let source = crius_tests::workspace_root().join("tests/clients/spdy_client.go");
            // One binary per version of the source, built once; a build
            // goes to a file of this process first (test binaries run in
            // parallel) and is renamed into place.
            let digest = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(
                    std::fs::read(&source).expect("read source"),
                ))
            };
            let binary = out_dir.join(format!("spdy_client-{}", &digest[..16]));
            if binary.exists() {
                return binary;
            }
            let partial = out_dir.join(format!("spdy_client.{}.partial", std::process::id()));
            let output = tokio::process::Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(&partial)
                .arg(&source)
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", out_dir.join("cache"))
                .env("GOFLAGS", "")
                .output()
                .await
                .expect("go runs");
            assert!(
                output.status.success(),
                "go build: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::rename(&partial, &binary).expect("rename the built client");
            binary
        })
        .await
        .clone()
}

/// The SPDY client's JSON answer.
pub async fn spdy(args: &[&str]) -> serde_json::Value {
    let binary = spdy_binary().await;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("spdy client finishes")
    .expect("spdy client runs");
    assert!(
        out.status.success(),
        "spdy_client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("spdy client prints JSON")
}

/// The HTTP status a plain GET of `url` gets.
pub async fn http_status(url: &str) -> u16 {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("path");
    let mut tcp = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a server certificate it signed for 127.0.0.1, in `dir`:
/// (CA certificate, server certificate, server key).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "1",
        "-subj",
        "/CN=crius-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&ca, dir);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    openssl(&csr, dir);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ],
        dir,
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// A pseudo-terminal: the master (the test's side) and the slave.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Pty {
    pub fn open(width: u16, height: u16) -> Pty {
        let mut master = -1;
        let mut slave = -1;
        // SAFETY: openpty writes two new descriptors into the out-pointers;
        // name, termios and winsize are optional and passed as null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let pty = unsafe {
            Pty {
                master: OwnedFd::from_raw_fd(master),
                slave: OwnedFd::from_raw_fd(slave),
            }
        };
        pty.resize(width, height);
        pty
    }

    /// Sets the window size (the kernel signals SIGWINCH to the terminal's
    /// foreground process group).
    pub fn resize(&self, width: u16, height: u16) {
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// The slave's local modes (`c_lflag`).
    pub fn lflag(&self) -> libc::tcflag_t {
        // SAFETY: termios is plain old data, overwritten by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into the valid pointer.
        let rc = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        t.c_lflag
    }

    /// `cmd` with the slave as stdin, stdout and stderr and controlling
    /// terminal of a new session.
    pub fn command(&self, mut cmd: std::process::Command) -> std::process::Command {
        let dup = || std::process::Stdio::from(self.slave.try_clone().expect("dup"));
        cmd.stdin(dup()).stdout(dup()).stderr(dup());
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid and the TIOCSCTTY ioctl are async-signal-safe, as
        // required between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// A reader of the master in a task: everything read so far.
    pub fn reader(&self) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut file = std::fs::File::from(self.master.try_clone().expect("dup"));
        let out = seen.clone();
        // A thread of its own, not joined: the read ends when the last
        // slave descriptor closes.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        seen
    }

    pub fn write(&self, data: &[u8]) {
        use std::io::Write;
        let mut file = std::fs::File::from(self.master.try_clone().expect("dup"));
        file.write_all(data).expect("write to the pty");
    }
}
