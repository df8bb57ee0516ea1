//! The handler contract, kind by kind: one daemon with every kind of
//! handler (runc and crun under conmon, kata in a VM, the example plugin as
//! a library and as a shim) runs the same scenario through the CRI socket
//! and the streaming URLs, driven by the Python `kubernetes` client:
//!
//! lifecycle (pod on the CNI network, two containers), exec with stdin and
//! an exit code (the handler's Exec + Wait), attach to a main process
//! reading stdin, port-forward to httpd inside the pod, the exit code of a
//! stopped container (Wait/status), teardown.
//!
//! What a kind does not implement must be refused by name (`Unimplemented`
//! reaching the client), never answered wrongly: the example plugin has no
//! Attach and no PortForward, and says so.

#[allow(dead_code)]
#[path = "interactive/support.rs"]
mod support;

use std::path::PathBuf;
use std::time::Duration;

use crius_proto::cri;
use crius_tests::pods::{PodEnv, PodEnvOptions};
use support::python;

/// What a handler kind implements of the interactive part of the contract.
struct Kind {
    handler: &'static str,
    attach: bool,
    port_forward: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        handler: "runc",
        attach: true,
        port_forward: true,
    },
    Kind {
        handler: "crun",
        attach: true,
        port_forward: true,
    },
    Kind {
        handler: "hello-lib",
        attach: false,
        port_forward: false,
    },
    Kind {
        handler: "hello-shim",
        attach: false,
        port_forward: false,
    },
    Kind {
        handler: "kata",
        attach: true,
        port_forward: true,
    },
];

/// Copies of the example plugin's library and shim in a root-owned 0755
/// dir (the loader refuses writable or foreign files).
fn example_artifacts(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let built = crius_tests::daemon::crius_bin()
        .parent()
        .expect("target dir")
        .to_path_buf();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = |name: &str| {
        let from = built.join(name);
        assert!(
            from.exists(),
            "{} is missing: build the workspace",
            from.display()
        );
        let to = dir.join(name);
        std::fs::copy(&from, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        to
    };
    (copy("libhandler_hello.so"), copy("handler-hello-shim"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_handler_kind_serves_the_same_scenario() {
    tokio::time::timeout(Duration::from_secs(600), scenario_for_every_kind())
        .await
        .expect("the contract scenario finishes");
}

async fn scenario_for_every_kind() {
    let Some(vm) = crius_tests::kata::VmParts::find() else {
        return;
    };
    let plugin_dir = tempfile::Builder::new()
        .prefix("crius-contract-")
        .tempdir()
        .unwrap();
    let (lib, shim) = example_artifacts(plugin_dir.path());
    let handlers = format!(
        "default_runtime_handler: runc\nruntime_handlers:\n  \
         runc:\n    kind: oci\n    runtime_path: /usr/sbin/runc\n    monitor_path: /usr/bin/conmon\n  \
         crun:\n    kind: oci\n    runtime_path: /usr/bin/crun\n    monitor_path: /usr/bin/conmon\n  \
         hello-lib:\n    kind: plugin\n    runtime_path: \"{lib}\"\n    plugin:\n      mode: library\n  \
         hello-shim:\n    kind: plugin\n    runtime_path: \"{shim}\"\n    plugin:\n      mode: process\n{}",
        vm.entry_yaml("kata", &crius_tests::kata::VmEntry::default()),
        lib = lib.display(),
        shim = shim.display(),
    );
    let Some(env) = PodEnv::start(
        "runc",
        PodEnvOptions {
            applets: &["httpd", "tail"],
            handlers_yaml: &handlers,
            tools: &["/usr/bin/crun", "python3"],
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    for kind in KINDS {
        scenario(&env, kind).await;
    }
}

async fn scenario(env: &PodEnv, kind: &Kind) {
    let handler = kind.handler;
    // Lifecycle: a pod on the CNI network with two containers.
    let pod = env.pod_config(&format!("contract-{handler}"));
    let pod_id = env
        .run_pod_on(&pod, handler)
        .await
        .unwrap_or_else(|e| panic!("{handler}: RunPodSandbox: {e:?}"));
    let web = env
        .create_and_start(
            &pod_id,
            &pod,
            env.container_config(
                "web",
                &[
                    "sh",
                    "-c",
                    "echo contract-$0 > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
                    handler,
                ],
            ),
        )
        .await;
    // A main process reading stdin, for Attach. A kind without Attach gives
    // its containers no stdin (they would read EOF and end): a plain
    // long-running process, for the refusal.
    let echo_command: &[&str] = if kind.attach {
        &["sh", "-c", "while read l; do echo got:$l; done"]
    } else {
        &["tail", "-f", "/dev/null"]
    };
    let mut echo = env.container_config("echo", echo_command);
    echo.stdin = true;
    let echo = env.create_and_start(&pod_id, &pod, echo).await;
    for id in [&web, &echo] {
        let state = env.container_status(id).await.state;
        assert_eq!(
            state,
            cri::ContainerState::ContainerRunning as i32,
            "{handler}: {id}"
        );
    }

    // Exec with stdin and an exit code (Exec + Wait).
    let mut rt = env.rt();
    let url = rt
        .exec(cri::ExecRequest {
            container_id: web.clone(),
            cmd: vec!["sh".into(), "-c".into(), "cat; exit 3".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{handler}: Exec: {e:?}"))
        .into_inner()
        .url;
    let answer = python(&[
        "exec",
        &url,
        "--stdin",
        "in\n",
        "--close-stdin",
        "--timeout",
        "60",
    ])
    .await;
    assert_eq!(answer["stdout"], "in\n", "{handler}: {answer}");
    assert_eq!(answer["returncode"], 3, "{handler}: {answer}");

    // Attach to the main process that reads stdin.
    let url = rt
        .attach(cri::AttachRequest {
            container_id: echo.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{handler}: Attach: {e:?}"))
        .into_inner()
        .url;
    if kind.attach {
        let answer = python(&["exec", &url, "--stdin", "hi\n", "--timeout", "8"]).await;
        assert_eq!(answer["stdout"], "got:hi\n", "{handler}: {answer}");
    } else {
        // The refusal reaches the client by name (criusctl prints the
        // stream's error).
        let out = tokio::process::Command::new(support::criusctl_bin())
            .arg("-s")
            .arg(env.daemon.socket())
            .args(["attach", "-i", &echo])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("criusctl runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{handler}: {stderr}");
        assert!(
            stderr.contains("does not implement Attach"),
            "{handler}: the refusal names the operation: {stderr}"
        );
    }

    // Port-forward to httpd inside the pod.
    let url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![8080],
        })
        .await
        .unwrap_or_else(|e| panic!("{handler}: PortForward: {e:?}"))
        .into_inner()
        .url;
    let get = "GET /index.html HTTP/1.0\r\n\r\n";
    let mut received = String::new();
    for _ in 0..20 {
        // httpd may still be starting (in a VM, slowly).
        let url = if received.is_empty() {
            url.clone()
        } else {
            rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![8080],
            })
            .await
            .expect("PortForward")
            .into_inner()
            .url
        };
        let out = support::python_raw(&["portforward", &url, "8080", get]).await;
        received = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The refusal may also reach the Python client as a broken
        // connection before it reads the error stream: try again.
        let done = if kind.port_forward {
            received.contains(&format!("contract-{handler}"))
        } else {
            received.contains("does not implement PortForward")
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if kind.port_forward {
        assert!(
            received.contains(&format!("contract-{handler}")),
            "{handler}: port-forward reached httpd: {received}"
        );
    } else {
        assert!(
            received.contains("does not implement PortForward"),
            "{handler}: the refusal names the operation: {received}"
        );
    }

    // A stopped container reports its exit (Wait / status).
    rt.stop_container(cri::StopContainerRequest {
        container_id: echo.clone(),
        timeout: 2,
    })
    .await
    .unwrap_or_else(|e| panic!("{handler}: StopContainer: {e:?}"));
    let status = env.wait_exited(&echo, Duration::from_secs(30)).await;
    assert_ne!(
        status.exit_code, 0,
        "{handler}: killed by the stop: {status:?}"
    );
    assert_ne!(status.finished_at, 0, "{handler}: {status:?}");

    env.stop_and_remove_pod(&pod_id).await;
}
