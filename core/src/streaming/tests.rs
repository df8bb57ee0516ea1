//! The streaming server against clients we did not write (the Python
//! `kubernetes` package for WebSocket, moby/spdystream in Go for SPDY) and
//! a few raw HTTP checks, with a test-only backend that runs processes on
//! the host. The backend is test code: the daemon never uses it.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;
use crate::config::StreamingConfig;

type Writer = Pin<Box<dyn AsyncWrite + Send>>;
type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// Runs `cmd` on the host (attach runs `cat`), optionally on a pty;
/// port-forward connects to 127.0.0.1.
#[derive(Default)]
pub(super) struct HostBackend {
    pids: Mutex<Vec<u32>>,
}

fn open_pty() -> (OwnedFd, OwnedFd) {
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
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn set_size(fd: i32, size: TerminalSize) {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid
    // for the duration of the call.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

impl HostBackend {
    /// The pids of every process started so far, oldest first.
    fn pids(&self) -> Vec<u32> {
        self.pids.lock().expect("pids lock").clone()
    }

    fn last_pid(&self) -> u32 {
        *self.pids().last().expect("a process")
    }

    fn start(&self, cmd: &[String], tty: bool) -> Result<ProcessStreams, StreamError> {
        let mut command = tokio::process::Command::new(&cmd[0]);
        command.args(&cmd[1..]).kill_on_drop(true);
        let mut resize = None;
        let (stdin, stdout, stderr): (Option<Writer>, Option<Reader>, Option<Reader>);
        if tty {
            let (master, slave) = open_pty();
            set_size(
                master.as_raw_fd(),
                TerminalSize {
                    width: 80,
                    height: 24,
                },
            );
            command
                .stdin(Stdio::from(slave.try_clone().expect("dup")))
                .stdout(Stdio::from(slave.try_clone().expect("dup")))
                .stderr(Stdio::from(slave));
            // SAFETY: setsid and the TIOCSCTTY ioctl are async-signal-safe,
            // as required between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    libc::setsid();
                    libc::ioctl(0, libc::TIOCSCTTY, 0);
                    Ok(())
                });
            }
            let keep = master.try_clone().expect("dup");
            let reader =
                tokio::fs::File::from_std(std::fs::File::from(master.try_clone().expect("dup")));
            let writer = tokio::fs::File::from_std(std::fs::File::from(master));
            let (tx, mut rx) = mpsc::channel::<TerminalSize>(4);
            tokio::spawn(async move {
                let keep = keep;
                while let Some(size) = rx.recv().await {
                    set_size(keep.as_raw_fd(), size);
                }
            });
            resize = Some(tx);
            stdin = Some(Box::pin(writer));
            stdout = Some(Box::pin(reader));
            stderr = None;
        } else {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            stdin = None;
            stdout = None;
            stderr = None;
        }
        let mut child = command
            .spawn()
            .map_err(|e| StreamError::Failed(format!("spawn {cmd:?}: {e}")))?;
        let pid = child.id().expect("pid");
        self.pids.lock().expect("pids lock").push(pid);
        let (stdin, stdout, stderr) = if tty {
            (stdin, stdout, stderr)
        } else {
            (
                child.stdin.take().map(|s| Box::pin(s) as Writer),
                child.stdout.take().map(|s| Box::pin(s) as Reader),
                child.stderr.take().map(|s| Box::pin(s) as Reader),
            )
        };
        Ok(ProcessStreams {
            stdin,
            stdout,
            stderr,
            resize,
            exit: Box::pin(async move {
                let status = child
                    .wait()
                    .await
                    .map_err(|e| StreamError::Failed(e.to_string()))?;
                Ok(status.code().unwrap_or(128))
            }),
            cancel: Box::new(move || {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }),
        })
    }
}

#[async_trait]
impl StreamBackend for HostBackend {
    async fn exec(
        &self,
        req: ExecSpec,
        _initial_size: Option<TerminalSize>,
    ) -> Result<ProcessStreams, StreamError> {
        self.start(&req.cmd, req.tty)
    }
    async fn attach(&self, req: AttachSpec) -> Result<ProcessStreams, StreamError> {
        self.start(&["cat".to_string()], req.tty)
    }
    async fn port_forward(&self, _pod_id: &str, port: u16) -> Result<BoxedDuplex, StreamError> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(StreamError::io(format!("connecting to port {port}")))?;
        Ok(Box::pin(stream))
    }
}

pub(super) async fn server_with(
    config: StreamingConfig,
) -> (Arc<StreamingServer>, Arc<HostBackend>) {
    let backend = Arc::new(HostBackend::default());
    let server = StreamingServer::start(&config, backend.clone())
        .await
        .expect("server starts");
    (server, backend)
}

async fn server() -> (Arc<StreamingServer>, Arc<HostBackend>) {
    server_with(StreamingConfig::default()).await
}

/// A URL for one exec of `cmd` (see `exec`).
fn exec_url(server: &StreamingServer, cmd: &str, stdin: bool, tty: bool) -> String {
    server.url(exec(cmd, stdin, tty)).expect("url")
}

fn port_forward_url(server: &StreamingServer, ports: Vec<u16>) -> String {
    server
        .url(StreamRequest::PortForward {
            pod_id: "p".into(),
            ports,
        })
        .expect("url")
}

pub(super) fn exec(cmd: &str, stdin: bool, tty: bool) -> StreamRequest {
    StreamRequest::Exec(ExecSpec {
        container_id: "c".into(),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
        tty,
        stdin,
        stdout: true,
        stderr: true,
    })
}

/// `None` (after saying why) when a tool is missing outside CI.
fn require(ok: bool, what: &str) -> Option<()> {
    crius_testkit::require(
        ok,
        format!("{what} is not installed (scripts/setup installs it)"),
    )
    .then_some(())
}

pub(super) fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs the Python `kubernetes` client script; `None` when unavailable.
pub(super) async fn python(args: &[&str]) -> Option<serde_json::Value> {
    let available = std::process::Command::new("python3")
        .args(["-c", "import kubernetes.stream.ws_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    require(available, "python3 with the `kubernetes` package")?;
    let output = tokio::process::Command::new("python3")
        .arg(repo_file("tests/clients/k8s_ws_client.py"))
        .args(args)
        .output()
        .await
        .expect("python runs");
    Some(client_json(&output, "python client"))
}

/// The JSON a test client printed, after checking that it succeeded.
fn client_json(output: &std::process::Output, client: &str) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{client} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{client} prints no JSON: {e}"))
}

fn go_installed() -> bool {
    std::process::Command::new("go")
        .arg("version")
        .output()
        .is_ok()
}

fn spdy_client_dir() -> PathBuf {
    repo_file("target/spdy-client")
}

/// Builds (once) and runs the Go spdystream client; `None` when unavailable.
async fn spdy_client(args: &[&str]) -> Option<serde_json::Value> {
    static BINARY: tokio::sync::OnceCell<Option<PathBuf>> = tokio::sync::OnceCell::const_new();
    let binary = BINARY
        .get_or_init(|| async {
            let gopath = Path::new("/usr/share/gocode/src/github.com/moby/spdystream");
            require(
                go_installed() && gopath.exists(),
                "go and golang-github-docker-spdystream-dev",
            )?;
            let out_dir = spdy_client_dir();
            std::fs::create_dir_all(&out_dir).expect("mkdir");
            let binary = out_dir.join("spdy_client");
            let output = tokio::process::Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(&binary)
                .arg(repo_file("tests/clients/spdy_client.go"))
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
            Some(binary)
        })
        .await
        .clone()?;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(binary).args(args).output(),
    )
    .await
    .expect("spdy client finishes")
    .expect("spdy client runs");
    Some(client_json(&output, "spdy client"))
}

/// Forwards "abc" to `port` through the spdystream client.
async fn spdy_port_forward(url: &str, port: u16) -> Option<serde_json::Value> {
    spdy_client(&[
        "-mode",
        "portforward",
        "-url",
        url,
        "-port",
        &port.to_string(),
        "-send",
        "abc",
    ])
    .await
}

/// A listener on a free local port, for port-forward targets.
async fn local_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

/// A raw HTTP GET; returns the status code.
async fn http_status(url: &str, extra_headers: &str) -> u16 {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut tcp = TcpStream::connect(host).await.expect("connect");
    let request =
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response)).await;
    let line = String::from_utf8_lossy(&response);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {line:?}"))
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Polls `probe` every `every` until it yields a value or ten seconds pass.
async fn poll<T>(every: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(value) = probe() {
            return Some(value);
        }
        tokio::time::sleep(every).await;
    }
    None
}

async fn wait_gone(pid: u32) -> bool {
    poll(Duration::from_millis(100), || {
        process_gone(pid).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test]
async fn websocket_exec_reports_output_and_exit_codes_to_the_python_client() {
    let (server, _) = server().await;
    let url = exec_url(&server, "echo out; echo err >&2; exit 3", false, false);
    let Some(result) = python(&["exec", &url]).await else {
        return;
    };
    assert_eq!(result["subprotocol"], "v5.channel.k8s.io");
    assert_eq!(result["stdout"], "out\n");
    assert_eq!(result["stderr"], "err\n");
    assert_eq!(result["returncode"], 3);

    let url = exec_url(&server, "true", false, false);
    let result = python(&["exec", &url, "--protocol", "v4.channel.k8s.io"])
        .await
        .expect("python");
    assert_eq!(result["subprotocol"], "v4.channel.k8s.io");
    assert_eq!(result["returncode"], 0);
}

#[tokio::test]
async fn websocket_v5_close_ends_stdin() {
    let (server, _) = server().await;
    let url = exec_url(&server, "cat; echo done", true, false);
    let Some(result) = python(&["exec", &url, "--stdin", "hello\n", "--close-stdin"]).await else {
        return;
    };
    assert_eq!(result["stdout"], "hello\ndone\n");
    assert_eq!(result["returncode"], 0);
    assert_eq!(result["timed_out"], false);
}

#[tokio::test]
async fn websocket_tty_resize_reaches_the_terminal() {
    let (server, _) = server().await;
    let url = exec_url(&server, "read line; stty size", true, true);
    let Some(result) = python(&["exec", &url, "--resize", "123x45", "--stdin", "go\n"]).await
    else {
        return;
    };
    let stdout = result["stdout"].as_str().expect("stdout");
    assert!(
        stdout.contains("45 123"),
        "stty size after resize: {stdout:?}"
    );
    assert_eq!(result["returncode"], 0);
}

#[tokio::test]
async fn websocket_port_forward_with_the_python_client() {
    let (server, _) = server().await;
    let (listener, port) = local_listener().await;
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.expect("read");
        conn.write_all(format!("pong:{}", String::from_utf8_lossy(&buf)).as_bytes())
            .await
            .expect("write");
    });
    let url = port_forward_url(&server, vec![port]);
    let Some(result) = python(&["portforward", &url, &port.to_string(), "ping"]).await else {
        return;
    };
    assert_eq!(result["received"], "pong:ping");
}

#[tokio::test]
async fn spdy_exec_with_spdystream() {
    let (server, _) = server().await;
    let url = exec_url(&server, "cat; echo err >&2; exit 7", true, false);
    let Some(result) = spdy_client(&[
        "-mode",
        "exec",
        "-url",
        &url,
        "-with-stdin",
        "-stdin",
        "hello spdy\n",
        "-stderr",
    ])
    .await
    else {
        return;
    };
    assert_eq!(result["protocol"], "v4.channel.k8s.io");
    assert_eq!(result["stdout"], "hello spdy\n");
    assert_eq!(result["stderr"], "err\n");
    assert_eq!(result["status"]["status"], "Failure");
    assert_eq!(result["status"]["reason"], "NonZeroExitCode");
    assert_eq!(
        result["status"]["details"]["causes"][0]["reason"],
        "ExitCode"
    );
    assert_eq!(result["status"]["details"]["causes"][0]["message"], "7");

    let url = exec_url(&server, "echo ok", false, false);
    let result = spdy_client(&["-mode", "exec", "-url", &url, "-stderr"])
        .await
        .expect("client");
    assert_eq!(result["stdout"], "ok\n");
    assert_eq!(result["status"]["status"], "Success");
}

#[tokio::test]
async fn spdy_exec_large_output_is_not_stalled_by_flow_control() {
    // spdystream never sends WINDOW_UPDATE: more than the 64 KiB initial
    // window must still arrive.
    let (server, _) = server().await;
    let url = exec_url(
        &server,
        "head -c 1000000 /dev/zero | tr '\\0' x",
        false,
        false,
    );
    let Some(result) = spdy_client(&["-mode", "exec", "-url", &url, "-stderr"]).await else {
        return;
    };
    assert_eq!(result["stdout"].as_str().expect("stdout").len(), 1_000_000);
    assert_eq!(result["status"]["status"], "Success");
}

#[tokio::test]
async fn spdy_tty_resize_and_older_protocols() {
    let (server, _) = server().await;
    let url = exec_url(&server, "stty size", false, true);
    let Some(result) =
        spdy_client(&["-mode", "exec", "-url", &url, "-tty", "-resize", "99x33"]).await
    else {
        return;
    };
    let stdout = result["stdout"].as_str().expect("stdout");
    assert!(stdout.contains("33 99"), "stty size: {stdout:?}");

    // v3 reports failures as text, nothing on success.
    let url = exec_url(&server, "exit 2", false, false);
    let result = spdy_client(&[
        "-mode",
        "exec",
        "-url",
        &url,
        "-protocol",
        "v3.channel.k8s.io",
        "-stderr",
    ])
    .await
    .expect("client");
    assert_eq!(result["protocol"], "v3.channel.k8s.io");
    assert_eq!(
        result["status"],
        "command terminated with non-zero exit code: 2"
    );
}

#[tokio::test]
async fn spdy_port_forward_with_spdystream() {
    let (server, _) = server().await;
    let (listener, port) = local_listener().await;
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        conn.read_to_end(&mut request).await.expect("read");
        conn.write_all(&request.repeat(2)).await.expect("write");
    });
    let url = port_forward_url(&server, vec![]);
    let Some(result) = spdy_port_forward(&url, port).await else {
        return;
    };
    assert_eq!(result["received"], "abcabc");
    assert_eq!(result["error"], "");

    // A port outside the request's list is refused on the error stream.
    let url = port_forward_url(&server, vec![1]);
    let result = spdy_port_forward(&url, port).await.expect("client");
    assert_eq!(result["received"], "");
    assert!(
        result["error"]
            .as_str()
            .expect("error")
            .contains("not among the ports"),
        "{result}"
    );
}

#[tokio::test]
async fn tokens_are_single_use_and_expire() {
    let (server, _) = server_with(StreamingConfig {
        token_ttl_seconds: 1,
        ..StreamingConfig::default()
    })
    .await;
    let url = exec_url(&server, "true", false, false);
    // Spent by a request that does not even upgrade.
    assert_eq!(http_status(&url, "").await, 400);
    assert_eq!(http_status(&url, "").await, 404, "reused token");

    let url = exec_url(&server, "true", false, false);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(http_status(&url, "").await, 404, "expired token");

    let base = format!("http://{}", server.local_addr());
    assert_eq!(http_status(&format!("{base}/exec/nonsense"), "").await, 404);
    assert_eq!(http_status(&format!("{base}/other/x"), "").await, 404);

    // An exec token does not open a port-forward.
    let url = exec_url(&server, "true", false, false);
    let token = url.rsplit('/').next().expect("token");
    assert_eq!(
        http_status(&format!("{base}/portforward/{token}"), "").await,
        404
    );
}

async fn ws_connect(
    url: &str,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .replace("http://", "ws://")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocol.parse().expect("header value"),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connects");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap_or("")),
        Some(protocol)
    );
    ws
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_no_process_behind() {
    use futures::StreamExt;
    let (server, backend) = server().await;
    let url = exec_url(&server, "echo started; exec sleep 1000", false, false);
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    // Wait until the process has written (so it surely runs).
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("started") {
        let message = ws.next().await.expect("message").expect("ok");
        seen.extend_from_slice(&message.into_data());
    }
    let pid = backend.last_pid();
    assert!(!process_gone(pid));
    drop(ws);
    assert!(
        wait_gone(pid).await,
        "process {pid} still runs after the client left"
    );
}

#[tokio::test]
async fn a_spdy_client_that_disconnects_leaves_no_process_behind() {
    let (server, backend) = server().await;
    let url = exec_url(&server, "exec sleep 1000", false, false);
    let Some(()) = require(go_installed(), "go") else {
        return;
    };
    // The Go client waits for output that never comes; kill it.
    let binary = {
        // Build through the shared helper with a harmless session first.
        let warm = exec_url(&server, "true", false, false);
        spdy_client(&["-mode", "exec", "-url", &warm, "-stderr"]).await;
        spdy_client_dir().join("spdy_client")
    };
    let mut child = tokio::process::Command::new(binary)
        .args(["-mode", "exec", "-url", &url, "-stderr"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = poll(Duration::from_millis(50), || backend.pids().get(1).copied())
        .await
        .expect("no exec started");
    assert!(!process_gone(pid));
    child.kill().await.expect("kill client");
    assert!(
        wait_gone(pid).await,
        "process {pid} still runs after the client left"
    );
}

#[tokio::test]
async fn sessions_are_bounded_and_idle_sessions_closed() {
    use futures::StreamExt;
    let (server, backend) = server_with(StreamingConfig {
        max_sessions: 1,
        idle_timeout_seconds: 2,
        ..StreamingConfig::default()
    })
    .await;
    let url = exec_url(&server, "exec sleep 1000", false, false);
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    let _first = ws.next().await;
    let second = exec_url(&server, "true", false, false);
    assert_eq!(
        http_status(&second, "").await,
        429,
        "a second session over max_sessions"
    );
    // Idle for longer than the timeout: the session ends, the process too.
    let started = Instant::now();
    while let Some(Ok(_)) = ws.next().await {}
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(8),
        "idle session closed after {waited:?}"
    );
    let pid = backend.last_pid();
    assert!(wait_gone(pid).await, "idle session's process still runs");
    // The slot is free again, and the refused URL was not spent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http_status(&second, "").await, 400);
}

#[tokio::test]
async fn a_reconfigured_session_bound_applies_to_the_next_admissions() {
    use futures::StreamExt;
    let (server, _) = server_with(StreamingConfig {
        max_sessions: 1,
        ..StreamingConfig::default()
    })
    .await;
    let url = exec_url(&server, "exec sleep 1000", false, false);
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    let _first = ws.next().await;
    let second = exec_url(&server, "true", false, false);
    assert_eq!(http_status(&second, "").await, 429);

    let raised = StreamingConfig {
        max_sessions: 2,
        ..StreamingConfig::default()
    };
    server.reconfigure(&raised);
    // Admitted now (and refused as a plain GET without an upgrade).
    assert_eq!(http_status(&second, "").await, 400);

    // Lowered below what runs: the running session stays, no new one.
    server.reconfigure(&StreamingConfig {
        max_sessions: 1,
        ..StreamingConfig::default()
    });
    let third = exec_url(&server, "true", false, false);
    assert_eq!(http_status(&third, "").await, 429);
    drop(ws);
}

#[tokio::test]
async fn attach_echoes_stdin_over_websocket() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (server, _) = server().await;
    let url = server
        .url(StreamRequest::Attach(AttachSpec {
            container_id: "c".into(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: false,
        }))
        .expect("url");
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    ws.send(Message::binary(b"\x00ping\n".to_vec()))
        .await
        .expect("send");
    ws.send(Message::binary(vec![255, 0]))
        .await
        .expect("close stdin");
    let mut channels: BTreeSet<u8> = BTreeSet::new();
    let mut stdout = Vec::new();
    let mut status = Vec::new();
    while let Some(Ok(message)) = ws.next().await {
        let data = message.into_data();
        if let Some((&channel, rest)) = data.split_first() {
            channels.insert(channel);
            match channel {
                1 => stdout.extend_from_slice(rest),
                3 => status.extend_from_slice(rest),
                _ => {}
            }
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "ping\n");
    let status: serde_json::Value = serde_json::from_slice(&status).expect("status json");
    assert_eq!(status["status"], "Success");
    assert!(!channels.contains(&2), "no stderr channel was asked for");
}
