//! The Prometheus metrics endpoint (`metrics_address`): after a pod runs
//! and a call fails, `GET /metrics` answers text that parses under the
//! Prometheus/OpenMetrics text format rules (checked line by line here,
//! and by prometheus-client's OpenMetrics parser, which we did not write)
//! with the request counters by method and code, latency histograms, pod
//! and container gauges and the pod start latency phases.

mod stats_env;

use std::collections::HashMap;

use crius_proto::cri;
use stats_env::*;
use tonic::Code;

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses the text exposition format strictly enough to fail on malformed
/// output: `# TYPE`/`# HELP`/`# UNIT` comments, samples
/// `name{k="v",...} value`, each sample belonging to a family declared by a
/// `# TYPE` line before it, and the closing `# EOF`.
fn parse_exposition(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    let mut saw_eof = false;
    for line in text.lines() {
        assert!(!saw_eof, "content after # EOF: {line:?}");
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next(), parts.next(), parts.next());
            match kind {
                Some("TYPE") => {
                    let t = value.expect("TYPE has a type");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram"
                        ]
                        .contains(&t),
                        "type {t:?}"
                    );
                    types.insert(
                        name.expect("TYPE names a family").to_string(),
                        t.to_string(),
                    );
                }
                Some("HELP") | Some("UNIT") => {}
                other => panic!("unexpected comment {other:?} in {line:?}"),
            }
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                        assert!(
                            k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                            "label name {k:?}"
                        );
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "name {name:?}"
        );
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(&name);
        assert!(
            types.contains_key(family),
            "sample {name} of no declared family"
        );
        samples.push((name, labels, value));
    }
    assert!(saw_eof, "no # EOF at the end");
    (types, samples)
}

/// The same text through prometheus-client's strict OpenMetrics parser
/// (Python, installed by scripts/setup): a parser we did not write. Every
/// sample ours found must be there with the same labels and value.
fn check_with_prometheus_client(text: &str, ours: &[Sample]) -> serde_json::Value {
    use std::io::Write;
    // Values travel as Python's repr, which round-trips exactly through
    // Rust's f64 parser; serde_json's default number parsing can be one ulp
    // off, which made an exact comparison fail on a CI run.
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type,
                   "samples": [[s.name, sorted(s.labels.items()), repr(s.value)] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus-client refused the exposition (pip install prometheus-client; \
         scripts/setup does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs: Vec<Sample> = families
        .as_object()
        .unwrap()
        .values()
        .flat_map(|f| f["samples"].as_array().unwrap().clone())
        .map(|s| {
            let labels = s[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|kv| {
                    (
                        kv[0].as_str().unwrap().to_string(),
                        kv[1].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (
                s[0].as_str().unwrap().to_string(),
                labels,
                s[2].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect();
    for (name, labels, value) in ours {
        let mut labels = labels.clone();
        labels.sort();
        assert!(
            theirs
                .iter()
                .any(|(n, l, v)| n == name && *l == labels && v == value),
            "prometheus-client did not read {name}{labels:?} = {value}"
        );
    }
    families
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
}

async fn http(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics endpoint listens");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_rpcs_pods_and_start_latency() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let Some(env) = setup_with("runc", &format!("metrics_address: \"{addr}\"\n")).await else {
        return;
    };
    let (pod_id, pod, _server, _ip, _info) = server_pod(&env, "metered").await;
    let err = env
        .rt()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nosuchpod".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A container killed for exceeding its 16 MiB limit.
    let hog = env
        .create_limited(
            &pod_id,
            &pod,
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
            16 << 20,
        )
        .await;
    env.start_container(&hog).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = env
            .rt()
            .container_status(cri::ContainerStatusRequest {
                container_id: hog.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == cri::ContainerState::ContainerExited as i32 {
            assert_eq!(s.reason, "OOMKilled", "{s:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The exit watcher counts it (asynchronously).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = http(&addr, "/metrics").await;
        if body.contains("crius_container_oom_kills_total{handler=\"runc\"} 1")
            || std::time::Instant::now() > deadline
        {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{body}");
    let (types, samples) = parse_exposition(&body);
    assert_eq!(
        types.get("crius_cri_requests").map(String::as_str),
        Some("counter")
    );
    let families = check_with_prometheus_client(&body, &samples);
    assert_eq!(families["crius_cri_requests"]["type"], "counter");
    assert_eq!(
        types
            .get("crius_cri_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(types.get("crius_pods").map(String::as_str), Some("gauge"));
    let rt = "runtime.v1.RuntimeService";
    assert_eq!(
        value_of(
            &samples,
            "crius_cri_requests_total",
            &[("service", rt), ("method", "RunPodSandbox"), ("code", "OK")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value_of(
            &samples,
            "crius_cri_requests_total",
            &[("method", "PodSandboxStatus"), ("code", "NOT_FOUND")]
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        value_of(
            &samples,
            "crius_cri_requests_total",
            &[
                ("service", "runtime.v1.ImageService"),
                ("method", "PullImage"),
                ("code", "OK")
            ]
        ) >= Some(1.0),
        "{body}"
    );
    assert_eq!(
        value_of(
            &samples,
            "crius_cri_request_duration_seconds_count",
            &[("method", "RunPodSandbox")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &samples,
            "crius_cri_request_duration_seconds_bucket",
            &[("method", "RunPodSandbox"), ("le", "+Inf")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &samples,
            "crius_pods",
            &[("handler", "runc"), ("state", "ready")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value_of(
            &samples,
            "crius_containers",
            &[("handler", "runc"), ("state", "running")]
        ),
        Some(1.0),
        "{body}"
    );
    for phase in ["total", "cni", "handler"] {
        assert_eq!(
            value_of(
                &samples,
                "crius_pod_start_duration_seconds_count",
                &[("handler", "runc"), ("phase", phase)]
            ),
            Some(1.0),
            "{phase}: {body}"
        );
    }
    let total = value_of(
        &samples,
        "crius_pod_start_duration_seconds_sum",
        &[("phase", "total")],
    )
    .unwrap();
    let cni = value_of(
        &samples,
        "crius_pod_start_duration_seconds_sum",
        &[("phase", "cni")],
    )
    .unwrap();
    assert!(
        total > 0.0 && cni > 0.0 && cni < total,
        "cni {cni} within total {total}"
    );

    assert_eq!(
        value_of(
            &samples,
            "crius_container_oom_kills_total",
            &[("handler", "runc")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value_of(
            &samples,
            "crius_containers",
            &[("handler", "runc"), ("state", "exited")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value_of(&samples, "crius_image_pulls_total", &[("result", "ok")]),
        Some(1.0),
        "{body}"
    );
    assert!(value_of(&samples, "crius_image_pulled_size_bytes_total", &[]) > Some(0.0));
    assert_eq!(
        value_of(&samples, "crius_image_pull_duration_seconds_count", &[]),
        Some(1.0)
    );
    assert!(
        value_of(&samples, "crius_restore_duration_seconds", &[]) > Some(0.0),
        "{body}"
    );

    let (status, _) = http(&addr, "/other").await;
    assert_eq!(status, 404);

    env.stop_and_remove_pod(&pod_id).await;
    let (_, body) = http(&addr, "/metrics").await;
    let (_, samples) = parse_exposition(&body);
    assert_eq!(
        value_of(&samples, "crius_pods", &[("handler", "runc")]),
        None,
        "no pods left: {body}"
    );
}
