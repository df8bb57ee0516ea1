//! Probes the runtime binaries installed on this machine. Each test skips
//! (with a printed reason; a failure under `CI=true`) when its binary is
//! absent.

use crius_handler_runc::{
    DEFAULT_MONITOR_PATH, FeatureProbe, OciHandler, RUNC_DEFAULT_RUNTIME_PATH, parse_features,
    runc_config,
};
use crius_shim_api::RuntimeHandler;

#[tokio::test]
async fn runc_reports_its_features_document() {
    if !crius_testkit::require_tools(&[RUNC_DEFAULT_RUNTIME_PATH, DEFAULT_MONITOR_PATH]) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let h = OciHandler::new(runc_config(
        "runc",
        RUNC_DEFAULT_RUNTIME_PATH,
        root.path(),
        DEFAULT_MONITOR_PATH,
    ))
    .await;
    h.check_ready().await.unwrap();

    let raw = std::process::Command::new(RUNC_DEFAULT_RUNTIME_PATH)
        .arg("features")
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "runc >= 1.1 has a features subcommand"
    );
    let expected = parse_features(&raw.stdout).unwrap();
    assert_eq!(h.feature_probe(), &FeatureProbe::Reported(expected));
    assert_eq!(
        h.features().recursive_read_only_mounts,
        expected.recursive_read_only_mounts
    );
    // Every runc with a features subcommand (>= 1.1) supports rro mounts.
    assert!(h.features().recursive_read_only_mounts);
    // The runtime only joins the pod's user namespace (the core id-maps the
    // rootfs and volumes), so this holds whatever its idmap support.
    assert!(h.features().user_namespaces);
}

#[tokio::test]
async fn crun_probe_matches_the_binary() {
    let crun = "/usr/bin/crun";
    // Root: the rro trial mounts a tmpfs and creates a container.
    if !crius_testkit::require_root()
        || !crius_testkit::require_tools(&[crun, DEFAULT_MONITOR_PATH])
    {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let h = OciHandler::new(runc_config("crun", crun, root.path(), DEFAULT_MONITOR_PATH)).await;
    h.check_ready().await.unwrap();
    let raw = std::process::Command::new(crun)
        .arg("features")
        .output()
        .unwrap();
    if raw.status.success() {
        assert_eq!(
            h.feature_probe(),
            &FeatureProbe::Reported(parse_features(&raw.stdout).unwrap())
        );
    } else {
        // crun 1.8.1 has no features subcommand: recursive read-only
        // mounts are tried (crun has applied `rro` since 1.4); user
        // namespaces are not claimed.
        match h.feature_probe() {
            FeatureProbe::Tried { reason, .. } => {
                assert!(reason.contains("features"), "{reason}")
            }
            other => panic!("crun has no features subcommand but probe says {other:?}"),
        }
        assert!(h.features().recursive_read_only_mounts);
        assert!(h.features().user_namespaces);
        // The trial left nothing: no container in crun's state, no scratch
        // dir beside it, no mount.
        let list = std::process::Command::new(crun)
            .arg("--root")
            .arg(root.path())
            .args(["list", "-q"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "");
        let scratch: Vec<_> = std::fs::read_dir(root.path().parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("rro-probe"))
            .collect();
        assert!(scratch.is_empty(), "{scratch:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains("rro-probe"), "{mounts}");
    }
}

#[tokio::test]
async fn missing_runtime_binary_is_not_ready_with_reason() {
    let root = tempfile::tempdir().unwrap();
    let h = OciHandler::new(runc_config(
        "ghost",
        "/nonexistent/ghost-runtime",
        root.path(),
        DEFAULT_MONITOR_PATH,
    ))
    .await;
    assert!(matches!(
        h.feature_probe(),
        FeatureProbe::Unavailable { .. }
    ));
    let err = h.check_ready().await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ghost-runtime"), "{err}");
}
