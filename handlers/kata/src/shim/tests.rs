//! Unit tests of [`super::PodShim`] that need no VM.
use super::*;
use crius_shim_api::types::RestoreContainer;

fn params(options: serde_json::Value) -> HandlerParams {
    HandlerParams {
        name: "kata".into(),
        runtime_path: "/nonexistent/qemu-system-x86_64".into(),
        options: options.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_bad_vm_table_fails_construction_naming_the_key() {
    let err = PodShim::from_params(params(serde_json::json!({ "default_vcpus": 0 })))
        .err()
        .expect("refused");
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(err.message.contains("default_vcpus"), "{err}");
    let shim = PodShim::from_params(params(serde_json::json!({}))).unwrap();
    let err = shim.check_ready().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotReady);
    assert!(
        err.message
            .contains("QEMU /nonexistent/qemu-system-x86_64 does not exist"),
        "{err}"
    );
}

/// A fresh shim for a pod whose shim died: stop before restore is a
/// no-op, restore reports the pod not ready and its containers exited
/// with why, and remove releases the shared dir the dead shim left.
#[tokio::test]
async fn a_fresh_shim_takes_over_a_dead_pod_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("handler");
    std::fs::create_dir_all(state_dir.join("shared/c1/rootfs")).unwrap();
    let shim = PodShim::from_params(params(serde_json::json!({}))).unwrap();
    let pod = SandboxRef {
        sandbox_id: "p1".into(),
    };
    shim.stop_sandbox(pod.clone())
        .await
        .expect("nothing to stop");

    let restored = shim
        .restore_sandbox(RestoreSandboxRequest {
            sandbox_id: "p1".into(),
            state_dir: state_dir.display().to_string(),
            handler_state: br#"{"qemu_pid":0,"helper_pids":[],"socket_dir":"","boot_ms":0}"#
                .to_vec(),
            containers: vec![RestoreContainer {
                container_id: "c1".into(),
                ..Default::default()
            }],
            config: None,
        })
        .await
        .unwrap();
    assert!(!restored.ready);
    let status = shim
        .container_status(ContainerRef {
            sandbox_id: "p1".into(),
            container_id: "c1".into(),
        })
        .await
        .unwrap();
    assert_eq!(status.state, ContainerState::Exited as i32);
    assert!(status.message.contains("shim died"), "{status:?}");
    let sandbox = shim.sandbox_status(pod.clone()).await.unwrap();
    assert!(!sandbox.ready);
    assert!(sandbox.info["reason"].contains("shim died"), "{sandbox:?}");

    let other = shim
        .stop_sandbox(SandboxRef {
            sandbox_id: "p2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.kind, ErrorKind::NotFound);

    shim.stop_sandbox(pod.clone()).await.unwrap();
    shim.remove_sandbox(pod.clone()).await.unwrap();
    assert!(
        !state_dir.join("shared").exists(),
        "the dead shim's shares are gone"
    );
    shim.remove_sandbox(pod).await.expect("idempotent");
}

#[test]
fn the_image_stop_signal_is_read_from_the_core_annotation() {
    let spec = |key: &str, value: &str| -> crius_agent_proto::oci_spec::runtime::Spec {
        serde_json::from_value(
            serde_json::json!({"ociVersion": "1.0.2", "annotations": { key: value } }),
        )
        .unwrap()
    };
    for (key, value, signal) in [
        (
            "org.opencontainers.image.stopSignal",
            "SIGINT",
            libc::SIGINT,
        ),
        ("org.opencontainers.image.stopSignal", "quit", libc::SIGQUIT),
        ("io.crius.image.stop-signal", "10", libc::SIGUSR1),
        (
            "org.opencontainers.image.stopSignal",
            "SIGBOGUS",
            libc::SIGTERM,
        ),
    ] {
        assert_eq!(
            stop_signal(&spec(key, value)),
            signal as u32,
            "{key}={value}"
        );
    }
    assert_eq!(stop_signal(&Default::default()), libc::SIGTERM as u32);
}
