//! Interactive processes of kata pods through the daemon's CRI socket and
//! the streaming URL it returns, driven by clients we did not write (the
//! Python `kubernetes` WebSocket client; moby/spdystream in Go), plus the
//! pod-behaviour fixes: exit codes of commands that cannot start, ExecSync
//! timeouts, stop timing, and what RunPodSandbox refuses for a VM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_tests::host::wait_for_log;

use super::{ANNOTATION_KERNEL_PARAMS, Env, setup, vm_processes};

/// Runs the Python kubernetes client (`tests/clients/k8s_ws_client.py`).
fn k8s_ws_client(args: &[&str]) -> serde_json::Value {
    let script = crius_tests::workspace_root().join("tests/clients/k8s_ws_client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "k8s_ws_client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

fn python_client_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import kubernetes.stream.ws_client"])
        .status()
        .is_ok_and(|s| s.success());
    crius_tests::require(ok, "python3 with the `kubernetes` package")
}

/// Builds the Go spdystream client once; `None` (skip reason printed, or a
/// failure under CI) when go or the library is missing.
fn spdy_client_binary() -> Option<PathBuf> {
    static BINARY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let gopath = Path::new("/usr/share/gocode/src/github.com/moby/spdystream");
            let go = std::process::Command::new("go")
                .arg("version")
                .output()
                .is_ok();
            if !crius_tests::require(
                go && gopath.exists(),
                "go and golang-github-docker-spdystream-dev",
            ) {
                return None;
            }
            let root = crius_tests::workspace_root();
            let out_dir = root.join("target/spdy-client-kata");
            std::fs::create_dir_all(&out_dir).expect("mkdir");
            let binary = out_dir.join("spdy_client");
            let output = std::process::Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(&binary)
                .arg(root.join("tests/clients/spdy_client.go"))
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", out_dir.join("cache"))
                .env("GOFLAGS", "")
                .output()
                .expect("go runs");
            assert!(
                output.status.success(),
                "go build: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Some(binary)
        })
        .clone()
}

fn spdy_client(binary: &Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(binary)
        .args(args)
        .output()
        .expect("spdy client runs");
    assert!(
        out.status.success(),
        "spdy_client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

impl Env {
    /// An Exec URL and how long the CRI call took.
    async fn exec_url(&self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> (String, Duration) {
        let started = Instant::now();
        let url = self
            .rt()
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
            .url;
        (url, started.elapsed())
    }

    /// The number of processes in container `id` whose command line
    /// contains `needle` (the ExecSync itself excluded).
    async fn processes_in(&self, id: &str, needle: &str) -> usize {
        let script = format!(
            "n=0; for f in /proc/[0-9]*/cmdline; do [ \"${{f%/cmdline}}\" = /proc/$$ ] && continue; \
             tr '\\0' ' ' < $f 2>/dev/null | grep -q -- '{needle}' && n=$((n+1)); done; echo $n"
        );
        let out = self.exec(id, &["sh", "-c", &script]).await;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("process count: {out:?}"))
    }
}

/// `kubectl exec`, `attach` and `port-forward` on a kata pod: exit codes,
/// stdin, a terminal with resize, an attach whose output also reaches the
/// CRI log, port-forward to the guest's loopback, and a client that goes
/// away leaves no process in the guest.
#[tokio::test(flavor = "multi_thread")]
async fn kata_exec_attach_and_port_forward_through_the_streaming_url() {
    let Some(env) = setup(5).await else { return };
    if !python_client_available() {
        return;
    }
    let pod = env.pod_config("stream");
    let pod_id = env.run_pod(&pod, "kata").await.expect("RunPodSandbox");
    // httpd listens on the guest's loopback only: port-forward must reach
    // it inside the VM, not through the tap.
    let web = env
        .create_and_start(
            &pod_id,
            &pod,
            env.container_config(
                "web",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo hello-through-pf > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www",
                ],
            ),
        )
        .await;

    // Exec without stdin: output, stderr, exit codes.
    let (url, exec_call) = env
        .exec_url(
            &web,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        )
        .await;
    let started = Instant::now();
    let answer = k8s_ws_client(&["exec", &url]);
    let url_to_exit = started.elapsed();
    assert_eq!(answer["stdout"], "out\n", "{answer}");
    assert_eq!(answer["stderr"], "err\n", "{answer}");
    assert_eq!(answer["returncode"], 3, "{answer}");
    let (url, _) = env.exec_url(&web, &["echo", "hello"], false, false).await;
    let answer = k8s_ws_client(&["exec", &url]);
    assert_eq!(
        (answer["stdout"].as_str(), answer["returncode"].as_i64()),
        (Some("hello\n"), Some(0)),
        "{answer}"
    );
    eprintln!(
        "kata exec: CRI Exec call {exec_call:?}; URL to exit status (python client, incl. its start) {url_to_exit:?}"
    );

    // Stdin: cat echoes it and exits at the client's EOF.
    let (url, _) = env.exec_url(&web, &["cat"], false, true).await;
    let answer = k8s_ws_client(&["exec", &url, "--stdin", "ping\n", "--close-stdin"]);
    assert_eq!(answer["stdout"], "ping\n", "{answer}");
    assert_eq!(answer["returncode"], 0, "{answer}");

    // A terminal, sized by the client's resize message.
    let (url, _) = env
        .exec_url(
            &web,
            &["sh", "-c", "sleep 1; stty size; exit 5"],
            true,
            true,
        )
        .await;
    let answer = k8s_ws_client(&["exec", &url, "--resize", "99x33"]);
    assert!(
        answer["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("33 99"),
        "{answer}"
    );
    assert_eq!(answer["returncode"], 5, "{answer}");

    // A command that does not exist: 127, as a shell says it.
    let (url, _) = env.exec_url(&web, &["/nonexistent"], false, false).await;
    let answer = k8s_ws_client(&["exec", &url]);
    assert_eq!(answer["returncode"], 127, "{answer}");

    // SPDY (the kubelet's protocol) with an independent implementation:
    // exec, and the first byte's latency from the URL.
    if let Some(spdy) = spdy_client_binary() {
        let (url, _) = env
            .exec_url(&web, &["sh", "-c", "echo spdy-out; exit 4"], false, false)
            .await;
        let started = Instant::now();
        let answer = spdy_client(&spdy, &["-mode", "exec", "-url", &url, "-stderr"]);
        eprintln!(
            "kata exec over SPDY: URL to exit status {:?}",
            started.elapsed()
        );
        assert_eq!(answer["stdout"], "spdy-out\n", "{answer}");
        assert_eq!(
            answer["status"]["details"]["causes"][0]["message"], "4",
            "{answer}"
        );
        let (url, _) = env
            .exec_url(&web, &["sh", "-c", "sleep 1; stty size"], true, false)
            .await;
        let answer = spdy_client(
            &spdy,
            &["-mode", "exec", "-url", &url, "-tty", "-resize", "120x40"],
        );
        assert!(
            answer["stdout"]
                .as_str()
                .unwrap_or_default()
                .contains("40 120"),
            "{answer}"
        );
    }

    // A client that goes away mid-stream: its process in the guest dies.
    let (url, _) = env.exec_url(&web, &["sleep", "4242"], false, true).await;
    let answer = k8s_ws_client(&["exec", &url, "--timeout", "3"]);
    assert_eq!(
        answer["timed_out"], true,
        "the exec was still running: {answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = env.processes_in(&web, "sleep 4242").await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} exec processes left after the client went away"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        env.processes_in(&web, "cat").await,
        0,
        "the stdin exec is gone"
    );

    // Port-forward to the server on the guest's loopback.
    let url = env
        .rt()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let answer = k8s_ws_client(&[
        "portforward",
        &url,
        "8080",
        "GET /index.html HTTP/1.0\r\n\r\n",
    ]);
    let received = answer["received"].as_str().unwrap_or_default();
    assert!(received.contains("hello-through-pf"), "{answer}");
    if let Some(spdy) = spdy_client_binary() {
        let url = env
            .rt()
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![8080],
            })
            .await
            .expect("PortForward")
            .into_inner()
            .url;
        let answer = spdy_client(
            &spdy,
            &[
                "-mode",
                "portforward",
                "-url",
                &url,
                "-port",
                "8080",
                "-send",
                "GET /index.html HTTP/1.0\r\n\r\n",
            ],
        );
        assert!(
            answer["received"]
                .as_str()
                .unwrap_or_default()
                .contains("hello-through-pf"),
            "{answer}"
        );
    }

    // Attach: a container reading its stdin (stdin_once) gets the client's
    // line, and its answer reaches both the client and the CRI log.
    let mut echoer = env.container_config(
        "echoer",
        &[
            "sh",
            "-c",
            "echo ready; while read line; do echo got:$line; done; echo bye",
        ],
    );
    echoer.stdin = true;
    echoer.stdin_once = true;
    let echoer = env.create_and_start(&pod_id, &pod, echoer).await;
    wait_for_log(
        &env.log_path(&pod, "echoer"),
        "ready",
        Duration::from_secs(20),
    )
    .await;
    let url = env
        .rt()
        .attach(cri::AttachRequest {
            container_id: echoer.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let answer = k8s_ws_client(&["exec", &url, "--stdin", "ping\n", "--close-stdin"]);
    let out = answer["stdout"].as_str().unwrap_or_default();
    assert!(out.contains("got:ping"), "{answer}");
    let log = wait_for_log(
        &env.log_path(&pod, "echoer"),
        "stdout F bye",
        Duration::from_secs(20),
    )
    .await;
    assert!(log.contains(" stdout F got:ping"), "{log}");
    let status = env.wait_exited(&echoer, Duration::from_secs(20)).await;
    assert_eq!(
        status.exit_code, 0,
        "stdin_once closed its stdin: {status:?}"
    );

    // Attach with a terminal: the resize reaches the container's pty.
    let mut console = env.container_config(
        "console",
        &["sh", "-c", "read line; stty size; echo got:$line"],
    );
    console.stdin = true;
    console.stdin_once = true;
    console.tty = true;
    let console = env.create_and_start(&pod_id, &pod, console).await;
    let url = env
        .rt()
        .attach(cri::AttachRequest {
            container_id: console.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("Attach with a tty")
        .into_inner()
        .url;
    let answer = k8s_ws_client(&["exec", &url, "--resize", "77x22", "--stdin", "tty-in\n"]);
    let out = answer["stdout"].as_str().unwrap_or_default();
    assert!(
        out.contains("22 77") && out.contains("got:tty-in"),
        "{answer}"
    );

    env.stop_and_remove_pod(&pod_id).await;
    assert!(
        vm_processes(&pod_id).is_empty(),
        "{:?}",
        vm_processes(&pod_id)
    );
    env.assert_nothing_left("after the streaming sessions");
}

/// ExecSync and StopContainer on a kata pod behave as on runc: a missing
/// binary is exit 127 (not an error), a timed-out command is
/// DeadlineExceeded at its timeout, a SIGTERM-handling container stops
/// as soon as it exits, and an exited one at once.
#[tokio::test(flavor = "multi_thread")]
async fn kata_exec_sync_exit_codes_and_stop_timing() {
    let Some(env) = setup(6).await else { return };
    let pod = env.pod_config("probe");
    let pod_id = env.run_pod(&pod, "kata").await.expect("RunPodSandbox");
    let cmd = [
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
    ];
    let id = env
        .create_and_start(&pod_id, &pod, env.container_config("svc", &cmd))
        .await;

    let out = env.exec(&id, &["/nonexistent"]).await;
    assert_eq!(out.exit_code, 127, "{out:?}");
    assert!(!out.stderr.is_empty(), "the reason is on stderr: {out:?}");
    let out = env.exec(&id, &["/etc/passwd"]).await;
    assert_eq!(out.exit_code, 126, "not executable: {out:?}");

    let started = Instant::now();
    let err = env
        .rt()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo partial; sleep 30".into()],
            timeout: 2,
        })
        .await
        .expect_err("the command outlives its timeout");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at the timeout, not the command's end: {:?}",
        started.elapsed()
    );
    assert_eq!(
        env.processes_in(&id, "sleep 30").await,
        0,
        "the timed-out command was killed"
    );

    let started = Instant::now();
    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 60,
        })
        .await
        .expect("StopContainer");
    let stop = started.elapsed();
    eprintln!("kata StopContainer of a SIGTERM-handling container: {stop:?}");
    assert!(
        stop < Duration::from_secs(3),
        "stop took {stop:?} of its 60 s grace"
    );
    let status = env.wait_exited(&id, Duration::from_secs(1)).await;
    assert_eq!(status.exit_code, 0, "{status:?}");

    let started = Instant::now();
    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 60,
        })
        .await
        .expect("StopContainer of an exited container");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an exited container stops at once: {:?}",
        started.elapsed()
    );
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left("after the probe pod");
}

/// What a VM cannot honour is refused at RunPodSandbox with
/// InvalidArgument before anything starts: kernel parameters that would
/// replace the guest's init or console (or reach the agent), and host
/// namespaces.
#[tokio::test(flavor = "multi_thread")]
async fn kata_refuses_unsafe_kernel_params_and_host_namespaces() {
    let Some(env) = setup(7).await else { return };
    for params in [
        "init=/bin/sh",
        "rdinit=/bin/sh quiet",
        "console=ttyS1",
        "agent.debug_console",
        "crius.agent_log=debug -- x",
        "quiet \"init=/bin/sh\"",
    ] {
        let mut pod = env.pod_config("kparams");
        pod.annotations
            .insert(ANNOTATION_KERNEL_PARAMS.to_string(), params.to_string());
        let err = env
            .run_pod(&pod, "kata")
            .await
            .expect_err(&format!("kernel params {params:?} are refused"));
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{params:?}: {err:?}"
        );
        assert!(err.message().contains("kernel"), "{params:?}: {err:?}");
    }
    for (what, ns) in [
        (
            "network",
            cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ),
        (
            "pid",
            cri::NamespaceOption {
                network: cri::NamespaceMode::Pod as i32,
                pid: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ),
        (
            "ipc",
            cri::NamespaceOption {
                network: cri::NamespaceMode::Pod as i32,
                ipc: cri::NamespaceMode::Node as i32,
                ..Default::default()
            },
        ),
    ] {
        let mut pod = env.pod_config("hostns");
        pod.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .namespace_options = Some(ns);
        let err = env
            .run_pod(&pod, "kata")
            .await
            .expect_err(&format!("a host {what} namespace is refused"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(&format!("host {what} namespace")),
            "{what}: {err:?}"
        );
    }
    let listed = env
        .rt()
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(listed.is_empty(), "refused pods are not listed: {listed:?}");
    env.assert_nothing_left("after the refused pods");

    // A harmless parameter is fine.
    let mut pod = env.pod_config("kparams-ok");
    pod.annotations.insert(
        ANNOTATION_KERNEL_PARAMS.to_string(),
        "loglevel=4 printk.devkmsg=on".to_string(),
    );
    let pod_id = env
        .run_pod(&pod, "kata")
        .await
        .expect("allowed kernel params");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left("after the pod with allowed params");
}
