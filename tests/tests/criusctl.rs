//! `criusctl` at crictl parity, driven as an operator would: a pod and
//! containers from crictl's JSON and YAML config files (`runp`, `create`,
//! `start`), the list verbs with crictl's columns and `-o json|yaml`,
//! `logs --tail/--since/-t/-f`, `stats`/`statsp`, `update`, `events`,
//! `info`, `inspect*`, `rm`/`stopp`/`rmp`, `--timeout` and `completion`.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crius_tests::pods::{PodEnv, PodEnvOptions};
use serde_json::Value;

fn criusctl_bin() -> std::path::PathBuf {
    crius_tests::daemon::crius_bin()
        .parent()
        .expect("the binaries' directory")
        .join("criusctl")
}

async fn ctl(socket: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(criusctl_bin())
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .await
        .expect("criusctl runs")
}

/// Runs criusctl, asserts success, returns its stdout.
async fn ok(socket: &Path, args: &[&str]) -> String {
    let out = ctl(socket, args).await;
    assert!(
        out.status.success(),
        "criusctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

async fn json(socket: &Path, args: &[&str]) -> Value {
    let text = ok(socket, args).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// A `UInt64Value` in the protobuf JSON mapping (64-bit numbers are strings).
fn u64_of(v: &Value) -> u64 {
    match &v["value"] {
        Value::String(s) => s.parse().expect("a number"),
        Value::Number(n) => n.as_u64().expect("a u64"),
        other => panic!("not a UInt64Value: {other}"),
    }
}

/// The cells of a table line (columns are at least three spaces apart).
fn columns(line: &str) -> Vec<&str> {
    line.split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn criusctl_runs_a_pod_from_crictl_config_files_and_inspects_it_like_crictl() {
    let Some(env) = PodEnv::start("runc", PodEnvOptions::default()).await else {
        return;
    };
    let socket = env.daemon.socket().to_path_buf();
    let files = tempfile::tempdir().unwrap();
    let logs = env.log_dir.path().join("ctl-pod");

    // crictl's pod config: proto field names, an enum as a number, and a
    // field this CRI does not have (skipped, as crictl does).
    let pod_json = files.path().join("pod.json");
    std::fs::write(
        &pod_json,
        serde_json::json!({
            "metadata": {"name": "ctl-pod", "namespace": env.namespace, "uid": "ctl-uid-1", "attempt": 0},
            "hostname": "ctl-pod",
            "log_directory": logs.display().to_string(),
            "labels": {"app": "ctl"},
            "linux": {"security_context": {"namespace_options": {"network": 0, "pid": 1}}},
            "not_a_cri_field": {"ignored": true}
        })
        .to_string(),
    )
    .unwrap();
    // The container's config as YAML, enum by name.
    let ctr_yaml = files.path().join("container.yaml");
    std::fs::write(
        &ctr_yaml,
        format!(
            "metadata:\n  name: worker\nimage:\n  image: {image}\n\
             command: [sh, -c, 'echo line1; echo line2; echo line3; head -c 2097152 /dev/zero > /big; exec sleep 600']\n\
             log_path: worker.log\nlabels:\n  role: worker\n\
             linux:\n  security_context:\n    namespace_options:\n      pid: POD\n",
            image = env.image
        ),
    )
    .unwrap();

    let pod = ok(&socket, &["runp", "-r", "runc", pod_json.to_str().unwrap()])
        .await
        .trim()
        .to_string();
    assert_eq!(pod.len(), 64, "a pod id: {pod}");
    assert_eq!(ok(&socket, &["pods", "-q"]).await.trim(), pod);
    let table = ok(&socket, &["pods"]).await;
    let mut lines = table.lines();
    let header = columns(lines.next().unwrap());
    assert_eq!(
        header,
        [
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME"
        ]
    );
    let row = lines.next().expect("one pod row");
    assert!(
        row.starts_with(&pod[..13]) && !row.contains(&pod[..14]),
        "{row}"
    );
    assert!(
        row.contains("Ready") && row.contains("ctl-pod") && row.contains("runc"),
        "{row}"
    );
    let listed = json(&socket, &["pods", "-o", "json", "--label", "app=ctl"]).await;
    assert_eq!(listed["items"][0]["id"], pod.as_str());
    assert_eq!(listed["items"][0]["state"], "SANDBOX_READY");
    assert_eq!(listed["items"][0]["metadata"]["uid"], "ctl-uid-1");
    let none = json(&socket, &["pods", "-o", "json", "--label", "app=other"]).await;
    assert!(none["items"].as_array().is_none_or(Vec::is_empty), "{none}");

    let ctr = ok(
        &socket,
        &[
            "create",
            "--with-pull",
            &pod,
            ctr_yaml.to_str().unwrap(),
            pod_json.to_str().unwrap(),
        ],
    )
    .await
    .trim()
    .to_string();
    assert_eq!(ctr.len(), 64, "a container id: {ctr}");
    // `ps` lists running containers; `-a` all of them.
    assert!(!ok(&socket, &["ps", "-q"]).await.contains(&ctr));
    let all = ok(&socket, &["ps", "-a"]).await;
    assert!(
        all.lines().next().unwrap().starts_with("CONTAINER"),
        "{all}"
    );
    assert!(
        all.contains(&ctr[..13]) && all.contains("Created") && all.contains("ctl-pod"),
        "{all}"
    );
    assert_eq!(ok(&socket, &["start", &ctr]).await.trim(), ctr);
    let running = ok(&socket, &["ps", "--no-trunc", "-p", &pod]).await;
    assert!(
        running.contains(&ctr) && running.contains("Running") && running.contains("worker"),
        "{running}"
    );

    // Logs: --tail counts whole lines, -t prefixes the time, --since filters.
    eventually("the container's three lines", || async {
        ok(&socket, &["logs", &ctr]).await.contains("line3")
    })
    .await;
    assert_eq!(ok(&socket, &["logs", &ctr]).await, "line1\nline2\nline3\n");
    assert_eq!(
        ok(&socket, &["logs", "--tail", "2", &ctr]).await,
        "line2\nline3\n"
    );
    let stamped = ok(&socket, &["logs", "-t", "--tail", "1", &ctr]).await;
    let (stamp, text) = stamped.trim_end().split_once(' ').unwrap();
    // RFC 3339 with nanoseconds, as the CRI log format writes it.
    assert!(
        stamp.len() >= 20 && stamp.as_bytes()[10] == b'T' && stamp.starts_with("20"),
        "{stamped}"
    );
    assert_eq!(text, "line3");
    assert_eq!(
        ok(&socket, &["logs", "--since", "1h", &ctr]).await,
        "line1\nline2\nline3\n"
    );
    assert_eq!(
        ok(&socket, &["logs", "--since", "2100-01-01T00:00:00Z", &ctr]).await,
        ""
    );

    // Stats: the writable layer holds the 2 MiB the container wrote.
    eventually("the writable layer to hold /big", || async {
        let stats = json(&socket, &["stats", "-o", "json", &ctr]).await;
        stats["stats"][0]["writable_layer"]["used_bytes"]
            .as_object()
            .is_some_and(|_| u64_of(&stats["stats"][0]["writable_layer"]["used_bytes"]) >= 2 << 20)
    })
    .await;
    let table = ok(&socket, &["stats"]).await;
    let header = columns(table.lines().next().unwrap());
    assert_eq!(
        header,
        [
            "CONTAINER",
            "NAME",
            "CPU %",
            "MEM",
            "DISK",
            "INODES",
            "SWAP"
        ],
        "{table}"
    );
    assert!(
        table.contains(&ctr[..13]) && table.contains("worker"),
        "{table}"
    );
    let pods = json(&socket, &["statsp", "-o", "json", &pod]).await;
    assert_eq!(pods["stats"][0]["attributes"]["id"], pod.as_str());
    let table = ok(&socket, &["statsp"]).await;
    assert!(
        table.starts_with("POD") && table.contains("ctl-pod"),
        "{table}"
    );

    // Update: the new memory limit is what the container now has.
    assert_eq!(
        ok(&socket, &["update", "--memory", "64m", &ctr])
            .await
            .trim(),
        ctr
    );
    let inspected = json(&socket, &["inspect", &ctr]).await;
    let limit = &inspected["status"]["resources"]["linux"]["memory_limit_in_bytes"];
    assert_eq!(
        limit
            .as_str()
            .map(str::to_string)
            .unwrap_or(limit.to_string()),
        (64u64 << 20).to_string()
    );
    let (code, stdout, _) = env
        .exec_sync(
            &ctr,
            &["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"],
        )
        .await;
    if code == 0 {
        assert_eq!(stdout.trim(), (64u64 << 20).to_string());
    }
    let yaml = ok(&socket, &["inspect", "-o", "yaml", &ctr]).await;
    assert!(yaml.contains("status:") && yaml.contains(&ctr), "{yaml}");
    let summary = ok(&socket, &["inspectp", "-o", "table", &pod]).await;
    assert!(
        summary.contains("State: Ready") && summary.contains("Name: ctl-pod"),
        "{summary}"
    );
    let info = json(&socket, &["info"]).await;
    assert!(
        info["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{info}"
    );

    // Events of a short-lived container, and `logs -f` that ends when it does.
    let mut events = tokio::process::Command::new(criusctl_bin())
        .arg("-s")
        .arg(&socket)
        .args(["events", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let short_yaml = files.path().join("short.yaml");
    std::fs::write(
        &short_yaml,
        format!(
            "metadata: {{name: short}}\nimage: {{image: {}}}\ncommand: [sh, -c, 'echo first; sleep 2; echo second']\nlog_path: short.log\n",
            env.image
        ),
    )
    .unwrap();
    let short = ok(
        &socket,
        &[
            "create",
            &pod,
            short_yaml.to_str().unwrap(),
            pod_json.to_str().unwrap(),
        ],
    )
    .await
    .trim()
    .to_string();
    ok(&socket, &["start", &short]).await;
    let followed = tokio::time::timeout(
        Duration::from_secs(30),
        ok(&socket, &["logs", "-f", &short]),
    )
    .await
    .expect("logs -f ends when the container exits");
    assert_eq!(followed, "first\nsecond\n");
    env.wait_exited(&short, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    events.start_kill().unwrap();
    let out = events.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let kinds: Vec<String> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(|e| e.expect("one JSON document an event"))
        .filter(|e| e["container_id"] == short.as_str())
        .map(|e| {
            e["container_event_type"]
                .as_str()
                .unwrap_or("CONTAINER_CREATED_EVENT")
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "CONTAINER_CREATED_EVENT",
            "CONTAINER_STARTED_EVENT",
            "CONTAINER_STOPPED_EVENT"
        ],
        "{text}"
    );

    // rm refuses a running container unless -f; stopp, then rmp.
    let refused = ctl(&socket, &["rm", &ctr]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("running"),
        "{refused:?}"
    );
    assert_eq!(
        ok(&socket, &["rm", "-f", &ctr, &short]).await,
        format!("{ctr}\n{short}\n")
    );
    assert!(ok(&socket, &["ps", "-a", "-q"]).await.trim().is_empty());
    ok(&socket, &["stopp", &pod]).await;
    assert!(
        ok(&socket, &["pods", "--state", "notready"])
            .await
            .contains("NotReady")
    );
    ok(&socket, &["rmp", &pod]).await;
    assert!(ok(&socket, &["pods", "-q"]).await.trim().is_empty());

    // A config that is not a CRI config is refused with the file named.
    let bad = files.path().join("bad.json");
    std::fs::write(&bad, r#"{"metadata": "not an object"}"#).unwrap();
    let out = ctl(&socket, &["runp", bad.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.json"),
        "{out:?}"
    );

    // --timeout before the verb; completion needs no daemon.
    let version = ok(&socket, &["--timeout", "5", "version"]).await;
    assert!(version.contains("RuntimeName: crius"), "{version}");
    let completion = ok(Path::new("/nonexistent.sock"), &["completion", "bash"]).await;
    assert!(
        completion.contains("criusctl") && completion.contains("runp"),
        "{completion}"
    );
}
