//! `criusctl bench` against a real daemon, read through its JSON output:
//! the serial pods with each RPC timed, the daemon's RSS and CPU by pid, the
//! per-pod helpers (conmon) by name, a burst of pods at once, and cold pulls.
//! The figures themselves are the bench's business; this checks that each
//! is measured from what really ran.

use crius_tests::pods::{PodEnv, PodEnvOptions};
use serde_json::Value;

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_measures_pods_daemon_helpers_bursts_and_pulls() {
    let Some(env) = PodEnv::start("runc", PodEnvOptions::default()).await else {
        return;
    };
    let criusctl = crius_tests::daemon::crius_bin()
        .parent()
        .expect("the binaries' directory")
        .join("criusctl");
    let pid = env.daemon.pid().expect("the daemon runs");
    let out = tokio::process::Command::new(&criusctl)
        .arg("-s")
        .arg(env.daemon.socket())
        .args(["bench", "--handlers", "runc", "--pods", "2", "--image"])
        .arg(&env.image)
        .arg("--log-root")
        .arg(env.log_dir.path())
        .arg("--daemon")
        .arg(format!("crius={pid}"))
        .args(["--helpers", "crius=conmon", "--concurrent", "3"])
        .arg("--pull-image")
        .arg(&env.image)
        .args(["--pull-runs", "2", "--json"])
        .output()
        .await
        .expect("criusctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let endpoint = &report["handlers"][0]["endpoints"][0];
    assert_eq!(endpoint["name"], "crius", "{report}");
    assert_eq!(endpoint["pod_start"]["count"], 2, "{report}");
    for rpc in [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopPodSandbox",
    ] {
        assert!(
            number(&endpoint["rpc"][rpc]["p50_ms"], rpc) > 0.0,
            "{rpc}: {report}"
        );
    }

    let host = &endpoint["host"];
    let rss = &host["daemon_rss_kib"];
    for when in ["idle", "with_pods", "after"] {
        assert!(number(&rss[when], when) > 1024.0, "RSS {when}: {report}");
    }
    assert!(
        number(&host["daemon_cpu_ms_per_pod"], "daemon CPU") > 0.0,
        "starting and removing pods costs the daemon CPU: {report}"
    );
    // Each pod's infra and app container has its conmon while the pods are up.
    let helpers = &host["helpers"];
    assert_eq!(helpers["processes"], 4, "{report}");
    assert!(number(&helpers["pss_kib_per_pod"], "PSS") > 0.0, "{report}");

    let bursts = endpoint["concurrent"].as_array().expect("bursts");
    assert_eq!(bursts.len(), 1, "{report}");
    assert_eq!(bursts[0]["pods"], 3, "{report}");
    assert_eq!(bursts[0]["pod_start"]["count"], 3, "{report}");
    let all = number(&bursts[0]["all_started_ms"], "burst");
    let slowest = number(&bursts[0]["pod_start"]["max_ms"], "slowest pod");
    assert!(
        all >= slowest,
        "the burst lasts as long as its slowest pod: {report}"
    );

    let pulls = &report["pull"]["endpoints"][0];
    assert_eq!(pulls["time"]["count"], 2, "{report}");
    assert!(number(&pulls["size_bytes"], "size") > 0.0, "{report}");
    assert!(
        number(&pulls["mib_per_s_p50"], "throughput") > 0.0,
        "{report}"
    );

    // Everything the bench started is gone again.
    let pods = env
        .rt()
        .list_pod_sandbox(crius_proto::cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
}
