//! The example plugin handler (examples/handler-hello) as a library and as
//! a shim: exec without a terminal through the URL with the independent
//! clients and criusctl, exit codes, a killed client, and a terminal
//! (which the example does not implement) refused by name.

use super::*;
use std::os::unix::fs::PermissionsExt;

/// Copies of the built example in a root-owned 0755 directory (the
/// plugin loader refuses writable or foreign files).
fn artifacts(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let built = crius_tests::daemon::crius_bin()
        .parent()
        .expect("target dir")
        .to_path_buf();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut out = Vec::new();
    for name in ["libhandler_hello.so", "handler-hello-shim"] {
        let from = built.join(name);
        assert!(
            from.exists(),
            "{} is missing: build the example handler first (`cargo build --workspace --all-targets`)",
            from.display()
        );
        let to = dir.join(name);
        std::fs::copy(&from, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        out.push(to);
    }
    (out[0].clone(), out[1].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_through_the_url_in_library_and_shim_mode() {
    if !crius_tests::require_root() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("crius-iplugins-")
        .tempdir()
        .unwrap();
    let (lib, shim) = artifacts(dir.path());
    let handlers = format!(
        "default_runtime_handler: runc\nruntime_handlers:\n  runc:\n    kind: oci\n    runtime_path: /usr/sbin/runc\n    monitor_path: /usr/bin/conmon\n  hello-lib:\n    kind: plugin\n    runtime_path: \"{}\"\n    plugin:\n      mode: library\n      options: {{}}\n  hello-shim:\n    kind: plugin\n    runtime_path: \"{}\"\n    plugin:\n      mode: process\n      options: {{}}\n",
        lib.display(),
        shim.display()
    );
    let Some(mut env) = setup(
        "hello-lib",
        Daemon::builder().runtime_handlers_yaml(&handlers),
    )
    .await
    else {
        return;
    };
    for handler in ["hello-lib", "hello-shim"] {
        env.handler = handler.to_string();
        let (pod_id, pod) = env.pod(&format!("p-{handler}")).await;
        let id = env
            .run(
                &pod_id,
                &pod,
                env.container_config("main", &["tail", "-f", "/dev/null"]),
            )
            .await;

        let url = env
            .exec_url(&id, &["sh", "-c", "cat; echo err >&2; exit 3"], true, false)
            .await;
        let answer = python(&["exec", &url, "--stdin", "in\n", "--close-stdin"]).await;
        assert_eq!(answer["stdout"], "in\n", "{handler}: {answer}");
        assert_eq!(answer["stderr"], "err\n", "{handler}: {answer}");
        assert_eq!(answer["returncode"], 3, "{handler}: {answer}");

        let url = env
            .exec_url(&id, &["sh", "-c", "echo $0; exit 4", handler], false, false)
            .await;
        let answer = spdy(&["-mode", "exec", "-url", &url, "-stderr"]).await;
        assert_eq!(answer["stdout"], format!("{handler}\n"), "{answer}");
        assert_eq!(
            answer["status"]["details"]["causes"][0]["message"], "4",
            "{handler}: {answer}"
        );

        let mut child = env
            .criusctl()
            .args(["exec", "-i", &id, "--", "sh", "-c", "cat; exit 9"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("criusctl runs");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"via criusctl\n").await.expect("write");
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("criusctl ends")
            .expect("wait");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "via criusctl\n");
        assert_eq!(out.status.code(), Some(9), "{handler}");

        // A client that goes away: the exec is killed (KillProcess).
        let marker = if handler == "hello-lib" {
            "1011"
        } else {
            "1012"
        };
        let cmd = format!("exec sleep {marker}");
        let url = env.exec_url(&id, &["sh", "-c", &cmd], true, false).await;
        let mut client = python_spawn(&["exec", &url, "--timeout", "120"]);
        eventually("the exec runs", async || !sleepers(marker).is_empty()).await;
        client.kill().await.expect("kill the client");
        eventually("the exec is gone after the client", async || {
            sleepers(marker).is_empty()
        })
        .await;

        // A terminal is not implemented by the example: said by name.
        let out = env
            .criusctl()
            .args(["exec", "-t", &id, "--", "true"])
            .output()
            .await
            .expect("criusctl runs");
        assert!(!out.status.success(), "{handler}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Exec with a terminal"),
            "{handler}: {stderr}"
        );

        eventually("no session sockets are left", async || {
            env.io_left().is_empty()
        })
        .await;
        env.remove_pod(&pod_id).await;
    }
}
