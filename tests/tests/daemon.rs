//! The daemon as a process: config errors, Version/Status/RuntimeConfig,
//! socket permissions and clean shutdown.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crius_proto::cri::{CgroupDriver, RuntimeConfigRequest, StatusRequest, VersionRequest};
use crius_tests::daemon::crius_bin;
use crius_tests::{Daemon, require_root};

/// Runs `crius --config <path>` expecting it to refuse the config quickly.
// Called from synchronous tests only: no executor to block.
#[allow(clippy::disallowed_methods)]
fn run_expecting_config_error(config: &std::path::Path) -> String {
    let bin = crius_bin();
    assert!(
        bin.exists(),
        "{} missing: build with `cargo build -p crius-core`",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A config error must stop the daemon before it serves anything.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("crius kept running with a bad config {}", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "crius accepted a bad config; stderr:\n{stderr}"
    );
    stderr
}

fn mentions_line(text: &str, line: u32) -> bool {
    text.contains(&format!(":{line}:"))
        || text.contains(&format!(":{line} "))
        || text.contains(&format!("line {line}"))
}

#[test]
fn unknown_key_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {}/crius.sock\nroot: {}/root\nbogus_key: 1\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let stderr = run_expecting_config_error(&config);
    assert!(
        stderr.contains(&config.display().to_string()),
        "file name missing from:\n{stderr}"
    );
    assert!(mentions_line(&stderr, 3), "line 3 missing from:\n{stderr}");
    assert!(
        stderr.contains("bogus_key"),
        "offending key missing from:\n{stderr}"
    );
    assert!(
        !dir.path().join("root").exists(),
        "a rejected config must not create state"
    );
}

#[test]
fn bad_drop_in_is_reported_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crius.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {}/crius.sock\nroot: {}/root\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let drop_ins = dir.path().join("crius.yaml.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(drop_ins.join("10-ok.yaml"), "log_level: debug\n").unwrap();
    let bad = drop_ins.join("20-bad.yaml");
    std::fs::write(
        &bad,
        "image:\n  max_concurrent_downloads: 2\n  no_such_setting: true\n",
    )
    .unwrap();
    let stderr = run_expecting_config_error(&config);
    assert!(
        stderr.contains(&bad.display().to_string()),
        "drop-in file missing from:\n{stderr}"
    );
    assert!(mentions_line(&stderr, 3), "line 3 missing from:\n{stderr}");
    assert!(
        stderr.contains("no_such_setting"),
        "offending key missing from:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn version_status_and_runtime_config() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start("").await.expect("daemon starts");
    let mut runtime = daemon.runtime();

    let version = runtime
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "crius");
    assert_eq!(version.runtime_api_version, "v1");
    assert!(!version.runtime_version.is_empty());

    let status = runtime
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conditions = status.status.expect("status.status").conditions;
    let ready = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady condition");
    assert!(ready.status, "RuntimeReady is false: {ready:?}");
    assert!(
        conditions.iter().any(|c| c.r#type == "NetworkReady"),
        "no NetworkReady condition: {conditions:?}"
    );
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    for handler in ["runc", "crun"] {
        assert!(
            names.contains(&handler),
            "{handler} missing from runtime_handlers {names:?}"
        );
    }
    assert!(
        status.runtime_handlers.iter().all(|h| h.features.is_some()),
        "every handler reports its features: {:?}",
        status.runtime_handlers
    );

    let config = runtime
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        config.linux.expect("linux runtime config").cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_is_0660_and_sigterm_shuts_down_cleanly() {
    if !require_root() {
        return;
    }
    let mut daemon = Daemon::start("").await.expect("daemon starts");
    let mode = std::fs::metadata(daemon.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {:o}", mode & 0o777);
    let status = daemon.terminate().expect("crius exits on SIGTERM");
    assert!(
        status.success(),
        "crius exited with {status} on SIGTERM:\n{}",
        daemon.stderr_text()
    );
    assert!(
        !daemon.socket().exists(),
        "socket left behind after a clean shutdown"
    );

    // A socket left by a crash does not stop the next start.
    daemon.restart().await.unwrap();
    daemon.kill9();
    assert!(daemon.socket().exists(), "SIGKILL cannot remove the socket");
    daemon.restart().await.expect("restart over a stale socket");
}
