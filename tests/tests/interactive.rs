//! `kubectl exec`, `attach` and `port-forward` end to end on runc and crun
//! pods: the CRI Exec/Attach/PortForward URLs of the real daemon, driven by
//! clients we did not write (the Python `kubernetes` package over
//! WebSocket v5/v4, moby/spdystream over SPDY/3.1) and by `criusctl`
//! (WebSocket, a pty for `-t`), into real containers through the handler
//! contract. The pods use the host network, so port-forward reaches a
//! server on the host's loopback (the pod-network case is in pods.rs).

#[path = "interactive/support.rs"]
mod support;

use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_tests::Daemon;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tonic::Code;

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
    exec_with_independent_clients,
    attach_echoes_stdin,
    port_forward_into_a_host_network_pod,
    disconnected_clients_leave_nothing_behind,
    tokens_and_bad_requests,
    criusctl_over_tls_with_a_pty,
    exec_latency_url_to_first_byte,
);

/// A pod with one long-running container: (env, pod id, container id).
async fn one_container(
    handler: &str,
    daemon: crius_tests::DaemonBuilder,
) -> Option<(Env, String, String)> {
    let env = setup(handler, daemon).await?;
    let (pod_id, pod) = env.pod("ia").await;
    let id = env
        .run(
            &pod_id,
            &pod,
            env.container_config("main", &["tail", "-f", "/dev/null"]),
        )
        .await;
    Some((env, pod_id, id))
}

/// Exec with and without a terminal and stdin, exit codes, resize, over
/// WebSocket (v5 and v4) and SPDY (v4 and v2).
async fn exec_with_independent_clients(handler: &'static str) {
    let Some((env, pod_id, id)) = one_container(handler, Daemon::builder()).await else {
        return;
    };
    // WebSocket v5, no stdin: both streams and a non-zero exit.
    let url = env
        .exec_url(
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        )
        .await;
    let answer = python(&["exec", &url]).await;
    assert_eq!(answer["subprotocol"], "v5.channel.k8s.io", "{answer}");
    assert_eq!(answer["stdout"], "out\n", "{answer}");
    assert_eq!(answer["stderr"], "err\n", "{answer}");
    assert_eq!(answer["returncode"], 3, "{answer}");
    // v4, stdin echoed by cat, closed by the client (v5 close frame).
    let url = env.exec_url(&id, &["cat"], true, false).await;
    let answer = python(&["exec", &url, "--stdin", "ping\n", "--close-stdin"]).await;
    assert_eq!(answer["stdout"], "ping\n", "{answer}");
    assert_eq!(answer["returncode"], 0, "{answer}");
    let url = env.exec_url(&id, &["true"], false, false).await;
    let answer = python(&["exec", &url, "--protocol", "v4.channel.k8s.io"]).await;
    assert_eq!(answer["subprotocol"], "v4.channel.k8s.io", "{answer}");
    assert_eq!(answer["returncode"], 0, "{answer}");
    // A terminal: the resize reaches it before the command reads stdin.
    let url = env
        .exec_url(&id, &["sh", "-c", "read x; stty size; tty"], true, true)
        .await;
    let answer = python(&["exec", &url, "--resize", "123x45", "--stdin", "go\n"]).await;
    let stdout = answer["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.contains("45 123"),
        "stty size after resize: {answer}"
    );
    assert!(stdout.contains("/dev/pts/"), "a terminal: {answer}");
    assert_eq!(answer["returncode"], 0, "{answer}");

    // SPDY v4: stdin, stdout, stderr and the exit status.
    let url = env
        .exec_url(&id, &["sh", "-c", "cat; echo err >&2; exit 7"], true, false)
        .await;
    let answer = spdy(&[
        "-mode",
        "exec",
        "-url",
        &url,
        "-with-stdin",
        "-stdin",
        "hello spdy\n",
        "-stderr",
    ])
    .await;
    assert_eq!(answer["protocol"], "v4.channel.k8s.io", "{answer}");
    assert_eq!(answer["stdout"], "hello spdy\n", "{answer}");
    assert_eq!(answer["stderr"], "err\n", "{answer}");
    assert_eq!(answer["status"]["reason"], "NonZeroExitCode", "{answer}");
    assert_eq!(
        answer["status"]["details"]["causes"][0]["message"], "7",
        "{answer}"
    );
    // SPDY with a terminal and a resize.
    let url = env
        .exec_url(&id, &["sh", "-c", "read x; stty size"], true, true)
        .await;
    let answer = spdy(&[
        "-mode",
        "exec",
        "-url",
        &url,
        "-tty",
        "-with-stdin",
        "-stdin",
        "go\n",
        "-resize",
        "99x33",
    ])
    .await;
    assert!(
        answer["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("33 99"),
        "{answer}"
    );
    assert_eq!(answer["status"]["status"], "Success", "{answer}");
    // SPDY v2 (text status: empty on success).
    let url = env.exec_url(&id, &["echo", "old"], false, false).await;
    let answer = spdy(&[
        "-mode",
        "exec",
        "-url",
        &url,
        "-protocol",
        "v2.channel.k8s.io",
        "-stderr",
    ])
    .await;
    assert_eq!(answer["protocol"], "v2.channel.k8s.io", "{answer}");
    assert_eq!(answer["stdout"], "old\n", "{answer}");
    assert!(answer["status"].is_null(), "{answer}");

    assert!(env.io_left().is_empty(), "{:?}", env.io_left());
    env.remove_pod(&pod_id).await;
}

/// Attach to a container created with `stdin: true` that echoes its
/// stdin: the Python client and `criusctl attach -i`; the exit code of the
/// main process ends criusctl's session. Then a container with a terminal
/// through `criusctl attach -i -t` on a pty, sizes included.
async fn attach_echoes_stdin(handler: &'static str) {
    let Some(env) = setup(handler, Daemon::builder()).await else {
        return;
    };
    let (pod_id, pod) = env.pod("attach").await;
    let mut config = env.container_config(
        "echo",
        &[
            "sh",
            "-c",
            "while read l; do echo got:$l; [ \"$l\" = bye ] && exit 6; done",
        ],
    );
    config.stdin = true;
    config.stdin_once = false;
    let id = env.run(&pod_id, &pod, config).await;

    let url = env.attach_url(&id, true).await;
    let answer = python(&["exec", &url, "--stdin", "py\n", "--timeout", "4"]).await;
    assert_eq!(answer["stdout"], "got:py\n", "{answer}");
    assert_eq!(
        answer["timed_out"], true,
        "the container still runs: {answer}"
    );

    let mut child = env
        .criusctl()
        .args(["attach", "-i", &id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("criusctl runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"hi\n").await.expect("write");
    // The reply comes before we say bye: a live session, not a replay.
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
        .await
        .expect("a reply in time")
        .expect("read");
    assert_eq!(line, "got:hi\n");
    stdin.write_all(b"bye\n").await.expect("write");
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.expect("read");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("criusctl ends with the container")
        .expect("wait");
    assert_eq!(rest, "got:bye\n");
    assert_eq!(status.code(), Some(6), "the main process's exit code");
    assert_eq!(env.wait_exited(&id).await.exit_code, 6);

    // A container with a terminal: criusctl attach -i -t on a pty; the
    // pty's size and a later resize reach the container's terminal
    // (through conmon's control FIFO).
    let mut config = env.container_config(
        "term",
        &[
            "sh",
            "-c",
            "while read l; do echo got:$l; stty size; [ \"$l\" = bye ] && exit 8; done",
        ],
    );
    config.stdin = true;
    config.stdin_once = false;
    config.tty = true;
    let term = env.run(&pod_id, &pod, config).await;
    let pty = Pty::open(90, 20);
    let mut cmd = std::process::Command::new(criusctl_bin());
    cmd.arg("-s")
        .arg(env.daemon.socket())
        .args(["attach", "-i", "-t", &term]);
    let mut child = KillOnDrop(pty.command(cmd).spawn().expect("criusctl runs"));
    let seen = pty.reader();
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    tokio::time::sleep(Duration::from_millis(700)).await;
    pty.write(b"one\r");
    wait_for_text(&text, "got:one").await;
    wait_for_text(&text, "20 90").await;
    pty.resize(110, 25);
    tokio::time::sleep(Duration::from_millis(700)).await;
    pty.write(b"bye\r");
    wait_for_text(&text, "25 110").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "criusctl attach -it did not end: {}",
            text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(8), "{}", text());

    // Attach with stdin needs `stdin: true`.
    let plain = env
        .run(
            &pod_id,
            &pod,
            env.container_config("plain", &["tail", "-f", "/dev/null"]),
        )
        .await;
    let status = env
        .rt()
        .attach(cri::AttachRequest {
            container_id: plain,
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(env.io_left().is_empty(), "{:?}", env.io_left());
    env.remove_pod(&pod_id).await;
}

/// Port-forward into a host-network pod: busybox httpd on 127.0.0.1:<free
/// port>, through WebSocket, SPDY and `criusctl port-forward`.
async fn port_forward_into_a_host_network_pod(handler: &'static str) {
    let Some(env) = setup(handler, Daemon::builder()).await else {
        return;
    };
    let (pod_id, pod) = env.pod("pf").await;
    let port = free_port();
    let script = format!(
        "mkdir -p /www && echo hello-from-{handler} > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"
    );
    let web = env
        .run(
            &pod_id,
            &pod,
            env.container_config("web", &["sh", "-c", &script]),
        )
        .await;
    eventually("httpd listens", async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let expected = format!("hello-from-{handler}");
    let get = "GET /index.html HTTP/1.0\r\n\r\n";

    let url = env.port_forward_url(&pod_id, port).await;
    let answer = python(&["portforward", &url, &port.to_string(), get]).await;
    assert!(
        answer["received"]
            .as_str()
            .unwrap_or_default()
            .contains(&expected),
        "{answer}"
    );
    let url = env.port_forward_url(&pod_id, port).await;
    let answer = spdy(&[
        "-mode",
        "portforward",
        "-url",
        &url,
        "-port",
        &port.to_string(),
        "-send",
        get,
    ])
    .await;
    assert!(
        answer["received"]
            .as_str()
            .unwrap_or_default()
            .contains(&expected),
        "{answer}"
    );
    assert_eq!(answer["error"], "", "{answer}");

    let mut forward = env
        .criusctl()
        .args(["port-forward", &pod_id, &format!("0:{port}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("criusctl runs");
    let mut lines = tokio::io::BufReader::new(forward.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("criusctl says where it listens")
        .expect("read")
        .expect("a line");
    let local = line
        .strip_prefix("Forwarding from ")
        .and_then(|rest| rest.split(" -> ").next())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_string();
    // Two connections one after the other: each gets a URL of its own.
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(&local)
            .await
            .expect("connect to criusctl");
        tcp.write_all(get.as_bytes()).await.expect("write");
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut received))
            .await
            .expect("the answer in time")
            .expect("read");
        let received = String::from_utf8_lossy(&received);
        assert!(received.contains(&expected), "{received:?}");
    }
    // SAFETY: kill only sends a signal to the child we started.
    unsafe { libc::kill(forward.id().expect("pid") as i32, libc::SIGTERM) };
    let status = forward.wait().await.expect("wait");
    assert!(
        status.success(),
        "criusctl port-forward on SIGTERM: {status}"
    );

    // Port-forward to a port nobody listens on: an error, not a hang.
    let closed = free_port();
    let url = env.port_forward_url(&pod_id, closed).await;
    let answer = spdy(&[
        "-mode",
        "portforward",
        "-url",
        &url,
        "-port",
        &closed.to_string(),
        "-send",
        "x",
    ])
    .await;
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("error forwarding port"),
        "{answer}"
    );
    assert_eq!(
        env.state(&web).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "httpd survives its forwarded connections"
    );
    assert!(env.io_left().is_empty(), "{:?}", env.io_left());
    env.remove_pod(&pod_id).await;
}

/// The exec processes running `sleep <marker>` seen from the host.
fn sleepers(marker: &str) -> Vec<String> {
    let wanted = format!("sleep {marker}");
    crius_tests::host::processes_matching(&[&wanted])
        .into_iter()
        .filter(|p| {
            p.split_once(": ")
                .is_some_and(|(_, cmd)| cmd.starts_with(&wanted))
        })
        .collect()
}

/// Clients killed mid-stream: the exec process goes, and so do the
/// session's sockets under `<state_dir>/io/`.
async fn disconnected_clients_leave_nothing_behind(handler: &'static str) {
    let Some((env, pod_id, id)) = one_container(handler, Daemon::builder()).await else {
        return;
    };
    // WebSocket (Python) and SPDY (Go) clients, with and without a tty.
    for (n, tty) in [(1001, false), (1002, true)] {
        let marker = n.to_string();
        let cmd = format!("echo started; exec sleep {marker}");
        let url = env.exec_url(&id, &["sh", "-c", &cmd], true, tty).await;
        let mut client = python_spawn(&["exec", &url, "--timeout", "120"]);
        eventually("the exec runs", async || !sleepers(&marker).is_empty()).await;
        if let Ok(Some(status)) = client.try_wait() {
            let mut err = String::new();
            let _ = client
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .await;
            panic!("the client ended by itself: {status} {err}");
        }
        client.kill().await.expect("kill the client");
        eventually("the exec is gone after the client", async || {
            sleepers(&marker).is_empty()
        })
        .await;
    }
    for (n, tty) in [(1003, false), (1004, true)] {
        let marker = n.to_string();
        let cmd = format!("exec sleep {marker}");
        let url = env.exec_url(&id, &["sh", "-c", &cmd], false, tty).await;
        let binary = spdy_binary().await;
        let mut args = vec!["-mode", "exec", "-url", &url];
        args.push(if tty { "-tty" } else { "-stderr" });
        let mut client = tokio::process::Command::new(binary)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spdy client runs");
        eventually("the exec runs", async || !sleepers(&marker).is_empty()).await;
        client.kill().await.expect("kill the client");
        eventually("the exec is gone after the client", async || {
            sleepers(&marker).is_empty()
        })
        .await;
    }
    // Inside the container too (its pid namespace): only the main process
    // and this ExecSync's shell are left.
    let left = env
        .sh(
            &id,
            "for f in /proc/[0-9]*/comm; do read c < $f; echo $c; done",
        )
        .await;
    assert!(!left.contains("sleep"), "left in the container: {left}");
    eventually("no session sockets are left", async || {
        env.io_left().is_empty()
    })
    .await;
    // The handler's runtime exec processes are gone as well.
    let runtime = runtime_binary(handler);
    let execs = crius_tests::host::processes_matching(&[runtime, "exec", &id]);
    assert!(execs.is_empty(), "{execs:?}");
    env.remove_pod(&pod_id).await;
}

/// Single-use and expiring tokens; Exec/Attach/PortForward refused before
/// any URL for unknown, stopped and never-started containers and ports
/// outside 1-65535.
async fn tokens_and_bad_requests(handler: &'static str) {
    let daemon = Daemon::builder().extra_yaml("streaming:\n  token_ttl_seconds: 4\n");
    let Some((env, pod_id, id)) = one_container(handler, daemon).await else {
        return;
    };
    let url = env.exec_url(&id, &["echo", "once"], false, false).await;
    let answer = python(&["exec", &url]).await;
    assert_eq!(answer["stdout"], "once\n", "{answer}");
    assert_eq!(http_status(&url).await, 404, "a reused token");
    let again = python_raw(&["exec", &url]).await;
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("once"),
        "a reused token ran again"
    );
    let url = env.exec_url(&id, &["echo", "late"], false, false).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(http_status(&url).await, 404, "an expired token");
    let url = env.port_forward_url(&pod_id, 80).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        http_status(&url).await,
        404,
        "an expired port-forward token"
    );

    let mut rt = env.rt();
    let exec = |container_id: &str| cri::ExecRequest {
        container_id: container_id.into(),
        cmd: vec!["true".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
    };
    let attach = |container_id: &str| cri::AttachRequest {
        container_id: container_id.into(),
        stdin: false,
        tty: false,
        stdout: true,
        stderr: false,
    };
    let status = rt.exec(exec("no-such-container")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = rt.attach(attach("no-such-container")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let (other_pod, pod) = env.pod("stopped").await;
    let created = env
        .create(&other_pod, &pod, env.container_config("created", &["true"]))
        .await;
    let exited = env
        .run(&other_pod, &pod, env.container_config("exited", &["true"]))
        .await;
    env.wait_exited(&exited).await;
    for container in [&created, &exited] {
        let status = rt.exec(exec(container)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("not running"), "{status:?}");
        let status = rt.attach(attach(container)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
    for port in [0, 70000, -1] {
        let status = rt
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![port],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "port {port}");
        assert!(status.message().contains("1-65535"), "{status:?}");
    }
    assert!(env.io_left().is_empty(), "{:?}", env.io_left());
    env.remove_pod(&other_pod).await;
    env.remove_pod(&pod_id).await;
}

/// A daemon with HTTPS streaming URLs; `criusctl exec` given the CA: piped
/// stdin and exit codes, then `-it` on a pty: raw mode while it runs, the
/// pty's size and a SIGWINCH resize reach `stty size`, the exit code comes
/// back and the terminal is restored.
async fn criusctl_over_tls_with_a_pty(handler: &'static str) {
    let certs = tempfile::tempdir().expect("tempdir");
    if !crius_tests::require_root_and_tools(&["openssl"]) {
        return;
    }
    let (ca, cert, key) = test_pki(certs.path());
    let daemon = Daemon::builder().extra_yaml(&format!(
        "streaming:\n  tls_cert: \"{}\"\n  tls_key: \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let Some((env, pod_id, id)) = one_container(handler, daemon).await else {
        return;
    };
    let url = env.exec_url(&id, &["echo", "tls"], false, false).await;
    assert!(url.starts_with("https://"), "{url}");
    let ca = ca.display().to_string();
    let answer = python(&["exec", &url, "--ca", &ca]).await;
    assert_eq!(answer["stdout"], "tls\n", "{answer}");

    // Without the CA, criusctl refuses the server.
    let out = env
        .criusctl()
        .args(["exec", &id, "--", "true"])
        .output()
        .await
        .expect("criusctl runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = env
        .criusctl()
        .args(["--streaming-ca", &ca, "exec", "-i", &id, "--"])
        .args(["sh", "-c", "cat; echo err >&2; exit 7"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("criusctl runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"piped\n").await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("criusctl ends")
        .expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\n", "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));

    // A command that cannot start: 127, as a shell reports it.
    let out = env
        .criusctl()
        .args(["--streaming-ca", &ca, "exec", &id, "--", "/no/such/binary"])
        .output()
        .await
        .expect("criusctl runs");
    assert_eq!(out.status.code(), Some(127), "{out:?}");

    let pty = Pty::open(100, 30);
    let cooked = pty.lflag();
    assert_ne!(cooked & libc::ICANON, 0, "a new pty is in canonical mode");
    let mut cmd = std::process::Command::new(criusctl_bin());
    cmd.arg("-s")
        .arg(env.daemon.socket())
        .args(["--streaming-ca", &ca, "exec", "-i", "-t", &id, "--"])
        .args(["sh", "-c", "read x; stty size; read y; stty size; exit 5"]);
    let mut child = KillOnDrop(pty.command(cmd).spawn().expect("criusctl runs"));
    let seen = pty.reader();
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    // The command reads before it looks (crun applies a terminal's size
    // only once the process runs, so an immediate `stty size` races it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    pty.write(b"\r");
    wait_for_text(&text, "30 100").await;
    assert_eq!(pty.lflag() & libc::ICANON, 0, "raw mode while it runs");
    pty.resize(120, 40);
    // The resize is asynchronous: give it a moment before the command
    // reads its size again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    pty.write(b"\r");
    wait_for_text(&text, "40 120").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "criusctl -it did not end: {}",
            text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(5), "{}", text());
    assert_eq!(pty.lflag(), cooked, "the terminal is restored");
    assert!(env.io_left().is_empty(), "{:?}", env.io_left());
    env.remove_pod(&pod_id).await;
}

/// Waits until `text()` contains `needle`; panics with what it has.
async fn wait_for_text(text: &impl Fn() -> String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in {:?}", text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// URL issued → first stdout byte, measured by `criusctl exec --latency`
/// over 20 runs; prints p50 and p90 (see the report for figures).
async fn exec_latency_url_to_first_byte(handler: &'static str) {
    let Some((env, pod_id, id)) = one_container(handler, Daemon::builder()).await else {
        return;
    };
    let mut samples = Vec::new();
    for _ in 0..20 {
        let out = env
            .criusctl()
            .args(["exec", "--latency", &id, "--", "echo", "x"])
            .output()
            .await
            .expect("criusctl runs");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ms: f64 = stderr
            .lines()
            .find_map(|l| l.strip_prefix("url-to-first-byte-ms: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no latency in {stderr:?}"));
        samples.push(ms);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let p50 = samples[samples.len() / 2];
    let p90 = samples[samples.len() * 9 / 10];
    println!(
        "exec latency {handler}: URL issued -> first stdout byte over {} runs: p50 {p50:.1} ms, p90 {p90:.1} ms, min {:.1} ms, max {:.1} ms",
        samples.len(),
        samples[0],
        samples[samples.len() - 1]
    );
    // Generous: a hang or a retry loop, not a slow machine, fails this.
    assert!(p50 < 3000.0, "p50 {p50} ms");
    env.remove_pod(&pod_id).await;
}

#[path = "interactive/plugin.rs"]
mod plugin;
