//! Operating the daemon: the pull stall timeout
//! (`image.pull_progress_timeout_seconds`) against a registry that stops
//! sending, progress logging of slow pulls, SIGHUP reloading the
//! configuration (mirrors, log level, the handler table: added, removed and
//! changed handlers, with the pods of the old ones still served), and the
//! `crius config` / `crius check` commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_tests::cri::images;
use crius_tests::image::{Layer, LayerBuilder, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256_digest};
use crius_tests::pods::{CONMON, PodEnv, PodEnvOptions};
use crius_tests::{Daemon, files_below, require_root};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

/// How the fake registry serves the image's one layer blob.
#[derive(Debug, Clone, Copy)]
enum LayerMode {
    /// At once, like any registry.
    Whole,
    /// Headers and the first KiB, then nothing (the connection stays open).
    Stall,
    /// The blob in `pieces` parts with `gap` between them.
    Trickle { pieces: usize, gap: Duration },
}

/// A one-image registry on 127.0.0.1 speaking just enough of the
/// distribution API for a pull: `/v2/`, the manifest, the config blob and
/// the layer blob (served as `mode` says).
struct FakeRegistry {
    addr: SocketAddr,
    manifest_digest: String,
    layer_digest: String,
    /// Request lines seen (`GET /v2/...`).
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Content {
    repository: String,
    manifest: Vec<u8>,
    manifest_type: &'static str,
    blobs: HashMap<String, Vec<u8>>,
    layer_digest: String,
    mode: LayerMode,
}

impl FakeRegistry {
    /// Serves repository `repository` with a single-layer image (tag `1`).
    async fn start(repository: &str, mode: LayerMode) -> Self {
        Self::start_with(repository, mode, false).await
    }

    /// Like [`Self::start`], but the manifest is a Docker schema 1 one.
    async fn start_schema1(repository: &str) -> Self {
        Self::start_with(repository, LayerMode::Whole, true).await
    }

    async fn start_with(repository: &str, mode: LayerMode, schema1: bool) -> Self {
        // Uncompressed and not all zeros, so the blob is as large as its tar.
        let mut builder = LayerBuilder::new();
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        builder.file("data", &data, 0o644).unwrap();
        let layer = Layer::new(
            builder.finish().unwrap(),
            crius_tests::image::Compression::None,
        );
        let blob = layer.blob().unwrap();
        let layer_digest = sha256_digest(&blob);
        let config = crius_tests::image::ImageConfig::default().to_json(&[layer.diff_id()]);
        let config_digest = sha256_digest(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": OCI_LAYER, "digest": layer_digest, "size": blob.len() }],
        }))
        .unwrap();
        let (manifest, manifest_type) = if schema1 {
            let v1 = serde_json::to_vec(&json!({
                "schemaVersion": 1,
                "name": repository,
                "tag": "1",
                "architecture": "amd64",
                "fsLayers": [{ "blobSum": layer_digest }],
                "history": [{ "v1Compatibility": "{}" }],
            }))
            .unwrap();
            (v1, SCHEMA1_MANIFEST)
        } else {
            (manifest, OCI_MANIFEST)
        };
        let manifest_digest = sha256_digest(&manifest);
        let content = Arc::new(Content {
            repository: repository.to_string(),
            manifest,
            manifest_type,
            blobs: HashMap::from([(config_digest, config), (layer_digest.clone(), blob)]),
            layer_digest: layer_digest.clone(),
            mode,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_connection(conn, content.clone(), seen.clone()));
            }
        });
        Self {
            addr,
            manifest_digest,
            layer_digest,
            requests,
            task,
        }
    }

    /// `127.0.0.1:PORT`.
    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Answers the requests of one keep-alive connection in turn.
async fn serve_connection(
    mut conn: TcpStream,
    content: Arc<Content>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        // Request head (GETs and HEADs only: no bodies).
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let line = head.lines().next().unwrap_or_default().to_string();
        seen.lock().unwrap().push(line.clone());
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let head_only = method == "HEAD";
        let prefix = format!("/v2/{}/", content.repository);
        let reply = if path == "/v2/" || path == "/v2" {
            Some(("application/json", b"{}".to_vec(), None))
        } else if let Some(rest) = path.strip_prefix(&prefix) {
            if rest.starts_with("manifests/") {
                Some((
                    content.manifest_type,
                    content.manifest.clone(),
                    Some(sha256_digest(&content.manifest)),
                ))
            } else if let Some(digest) = rest.strip_prefix("blobs/") {
                if digest == content.layer_digest && !head_only {
                    serve_layer(&mut conn, &content).await;
                    return;
                }
                content
                    .blobs
                    .get(digest)
                    .map(|b| ("application/octet-stream", b.clone(), None))
            } else {
                None
            }
        } else {
            None
        };
        let response = match reply {
            Some((content_type, body, digest)) => {
                let mut head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
                    body.len()
                );
                if let Some(digest) = digest {
                    head.push_str(&format!("Docker-Content-Digest: {digest}\r\n"));
                }
                head.push_str("\r\n");
                let mut out = head.into_bytes();
                if !head_only {
                    out.extend_from_slice(&body);
                }
                out
            }
            None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        if conn.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// The layer blob, as the registry's mode says; the connection is not
/// reused afterwards.
async fn serve_layer(conn: &mut TcpStream, content: &Content) {
    let blob = &content.blobs[&content.layer_digest];
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        blob.len()
    );
    if conn.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    match content.mode {
        LayerMode::Whole => {
            let _ = conn.write_all(blob).await;
        }
        LayerMode::Stall => {
            let _ = conn.write_all(&blob[..1024]).await;
            let _ = conn.flush().await;
            // Nothing more; wait for the client to give up and close.
            let mut sink = [0u8; 1024];
            while let Ok(n) = conn.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
        LayerMode::Trickle { pieces, gap } => {
            for piece in blob.chunks(blob.len().div_ceil(pieces)) {
                if conn.write_all(piece).await.is_err() || conn.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(gap).await;
            }
        }
    }
}

/// Docker image manifest schema 1 (signed form), long deprecated.
const SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// `registries:` marking `addr` as a plain-HTTP registry.
fn insecure_registry_yaml(addr: &str) -> String {
    format!("registries:\n  - prefix: \"{addr}\"\n    insecure: true\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_layer_download_aborts_after_the_progress_timeout_and_keeps_nothing() {
    if !require_root() {
        return;
    }
    let registry = FakeRegistry::start("stall", LayerMode::Stall).await;
    let daemon = Daemon::builder()
        .registries_yaml(&insecure_registry_yaml(&registry.addr()))
        .extra_yaml("image:\n  pull_progress_timeout_seconds: 2\n")
        .start()
        .await
        .expect("daemon starts");
    let mut client = daemon.image();
    let started = Instant::now();
    let err = images::pull(&mut client, &format!("{}/stall:1", registry.addr()))
        .await
        .expect_err("a pull whose layer stalls");
    let took = started.elapsed();
    eprintln!("stalled pull aborted after {took:?}: {}", err.message());
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let message = err.message();
    assert!(
        message.contains(&registry.layer_digest)
            && message.contains("stalled")
            && message.contains("no bytes for 2 s")
            && message.contains("image.pull_progress_timeout_seconds"),
        "{message}"
    );
    // About the stall timeout: not the HTTP client's read timeout, nor
    // anything like the old fixed 120 s.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "the pull failed after {took:?}"
    );
    // The manifest and config were served; the layer was asked for.
    let requests = registry.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains(&format!("blobs/{}", registry.layer_digest))),
        "{requests:?}"
    );
    // Nothing partial kept: no image, no blob, nothing in tmp/.
    assert!(images::list(&mut client).await.unwrap().is_empty());
    for dir in ["blobs", "tmp", "layers"] {
        let left = files_below(&daemon.root().join(dir));
        assert!(left.is_empty(), "{dir}/ still holds {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_accepts_and_sends_nothing_aborts_the_pull_after_the_progress_timeout() {
    if !require_root() {
        return;
    }
    // Accepts connections, reads what comes, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let daemon = Daemon::builder()
        .registries_yaml(&insecure_registry_yaml(&addr))
        .extra_yaml("image:\n  pull_progress_timeout_seconds: 2\n")
        .start()
        .await
        .expect("daemon starts");
    let mut client = daemon.image();
    let started = Instant::now();
    let err = images::pull(&mut client, &format!("{addr}/silent:1"))
        .await
        .expect_err("a registry that never answers");
    let took = started.elapsed();
    silent.abort();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("manifest") && err.message().contains("stalled: no bytes for 2 s"),
        "{}",
        err.message()
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "the pull failed after {took:?}"
    );
    let left = files_below(&daemon.root().join("tmp"));
    assert!(left.is_empty(), "tmp/ still holds {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_pull_that_keeps_sending_is_not_cut_off_and_logs_its_progress() {
    if !require_root() {
        return;
    }
    // Six pieces 1.2 s apart: over 7 s in all, more than three times the
    // stall timeout, but never 2 s without a byte.
    let registry = FakeRegistry::start(
        "slow",
        LayerMode::Trickle {
            pieces: 6,
            gap: Duration::from_millis(1200),
        },
    )
    .await;
    let daemon = Daemon::builder()
        .registries_yaml(&insecure_registry_yaml(&registry.addr()))
        .extra_yaml("image:\n  pull_progress_timeout_seconds: 2\n")
        .start()
        .await
        .expect("daemon starts");
    let mut client = daemon.image();
    let started = Instant::now();
    let image_ref = images::pull(&mut client, &format!("{}/slow:1", registry.addr()))
        .await
        .expect("a slow but progressing pull succeeds");
    let took = started.elapsed();
    assert!(took > Duration::from_secs(5), "the pull took only {took:?}");
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let status = images::list(&mut client).await.unwrap();
    assert_eq!(status.len(), 1);
    assert!(
        status[0]
            .repo_digests
            .iter()
            .any(|d| d.ends_with(&registry.manifest_digest)),
        "{status:?}"
    );
    // Progress of the layer, in bytes, logged while it downloaded.
    let log = daemon.stderr_text();
    let progress: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pull progress") && l.contains(&registry.layer_digest))
        .collect();
    assert!(!progress.is_empty(), "no progress lines in:\n{log}");
    assert!(
        progress
            .iter()
            .any(|l| l.contains("received=") && l.contains("size=")),
        "{progress:?}"
    );
}

/// `criusctl pull --progress`: while a slow pull runs, ImageStatus's
/// verbose info says how many bytes of each blob arrived, and criusctl
/// prints them as they grow; when the pull is done the progress is gone.
#[tokio::test(flavor = "multi_thread")]
async fn criusctl_pull_shows_the_progress_of_each_blob_while_the_pull_runs() {
    if !require_root() {
        return;
    }
    let registry = FakeRegistry::start(
        "progress",
        LayerMode::Trickle {
            pieces: 5,
            gap: Duration::from_millis(600),
        },
    )
    .await;
    let daemon = Daemon::builder()
        .registries_yaml(&insecure_registry_yaml(&registry.addr()))
        .start()
        .await
        .expect("daemon starts");
    let image = format!("{}/progress:1", registry.addr());
    let out =
        tokio::process::Command::new(crius_tests::daemon::crius_bin().with_file_name("criusctl"))
            .arg("-s")
            .arg(daemon.socket())
            .args(["pull", "--progress", &image])
            .output()
            .await
            .expect("criusctl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sha256:"));
    let short = &registry.layer_digest["sha256:".len()..][..12];
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(short)).collect();
    // The layer seen part-way (more than once, growing) before the end.
    assert!(lines.len() >= 2, "progress lines of {short}:\n{stderr}");
    assert!(
        lines.iter().any(|l| l.contains("  [") && l.contains(" / ")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("pulled {image}")), "{stderr}");
    let status = daemon
        .image()
        .image_status(crius_proto::cri::ImageStatusRequest {
            image: Some(crius_proto::cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.image.is_some());
    assert!(
        !status.info.contains_key("pullProgress"),
        "{:?}",
        status.info
    );
}

/// Sends SIGHUP and waits until the daemon logs `outcome` after it; returns
/// the log written since the signal.
async fn reload(daemon: &Daemon, outcome: &str) -> String {
    let from = daemon.stderr_text().len();
    let pid = Pid::from_raw(i32::try_from(daemon.pid().expect("daemon runs")).unwrap());
    kill(pid, Signal::SIGHUP).expect("SIGHUP sent");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = daemon.stderr_text();
        let new = log.get(from..).unwrap_or_default();
        if new.contains(outcome) {
            return new.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {outcome:?} within 10 s of SIGHUP; log since:\n{new}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The daemon is alive and answers on its socket.
async fn assert_serving(daemon: &Daemon) {
    let mut runtime = daemon.runtime();
    runtime
        .version(crius_proto::cri::VersionRequest::default())
        .await
        .expect("the daemon still answers Version");
}

/// `registries:` sending `mirrored.invalid` (a name that never resolves)
/// to the fake registry at `mirror` as its only mirror.
fn mirror_yaml(mirror: &str) -> String {
    format!(
        "registries:\n  - prefix: mirrored.invalid\n    blocked: true\n    mirrors:\n      - location: \"{mirror}\"\n        insecure: true\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_new_mirror_to_the_next_pull() {
    if !require_root() {
        return;
    }
    let registry = FakeRegistry::start("fake", LayerMode::Whole).await;
    let daemon = Daemon::builder().start().await.expect("daemon starts");
    let mut client = daemon.image();
    let image = "mirrored.invalid/fake:1";
    let err = images::pull(&mut client, image)
        .await
        .expect_err("no registry serves mirrored.invalid yet");
    assert_ne!(err.code(), Code::Ok);
    assert!(registry.requests().is_empty(), "{:?}", registry.requests());

    let mut config = std::fs::read_to_string(daemon.config_path()).unwrap();
    config.push_str(&mirror_yaml(&registry.addr()));
    std::fs::write(daemon.config_path(), config).unwrap();
    let log = reload(&daemon, "configuration reloaded").await;
    assert!(log.contains("registries"), "{log}");

    let image_ref = images::pull(&mut client, image)
        .await
        .expect("the pull goes through the mirror the reload added");
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /v2/fake/manifests/1")),
        "{:?}",
        registry.requests()
    );
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_config_keeps_serving_with_the_old_one() {
    if !require_root() {
        return;
    }
    let registry = FakeRegistry::start("fake", LayerMode::Whole).await;
    let daemon = Daemon::builder()
        .registries_yaml(&mirror_yaml(&registry.addr()))
        .start()
        .await
        .expect("daemon starts");
    let mut client = daemon.image();
    let image = "mirrored.invalid/fake:1";
    images::pull(&mut client, image)
        .await
        .expect("pull through the configured mirror");
    images::remove(&mut client, image).await.expect("remove");

    // The new file points the mirror at a dead port and has a typo: if any
    // of it were applied, the next pull would fail.
    let good = std::fs::read_to_string(daemon.config_path()).unwrap();
    let broken =
        good.replace(&registry.addr(), "127.0.0.1:1") + "imgae:\n  max_concurrent_downloads: 2\n";
    std::fs::write(daemon.config_path(), broken).unwrap();
    let log = reload(&daemon, "configuration reload failed").await;
    assert!(log.contains("imgae"), "the error names the bad key: {log}");
    assert!(
        log.contains("still running with the previous configuration"),
        "{log}"
    );

    assert_serving(&daemon).await;
    let before = registry.requests().len();
    images::pull(&mut client, image)
        .await
        .expect("the old mirror is still used");
    assert!(registry.requests().len() > before);

    // A fixed file reloads fine afterwards.
    std::fs::write(daemon.config_path(), &good).unwrap();
    reload(&daemon, "configuration reloaded: nothing changed").await;
    assert_serving(&daemon).await;
}

const RUNC: &str = "/usr/sbin/runc";
const CRUN: &str = "/usr/bin/crun";

/// One `oci` entry of a handler table, with `extra` lines (indented 4).
fn oci_entry(name: &str, runtime_path: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    kind: oci\n    runtime_path: {runtime_path}\n    monitor_path: {CONMON}\n{extra}"
    )
}

/// The runc + crun table the handler reload tests start with; `runc_extra`
/// goes into runc's entry.
fn runc_crun_table(runc_extra: &str) -> String {
    format!(
        "default_runtime_handler: runc\nruntime_handlers:\n{}{}",
        oci_entry("runc", RUNC, runc_extra),
        oci_entry("crun", CRUN, "")
    )
}

/// A pod environment (registry, CNI network, daemon) with `handlers` as
/// its table; `None` when skipped.
async fn handler_env(handlers: &str) -> Option<PodEnv> {
    PodEnv::start(
        "runc",
        PodEnvOptions {
            handlers_yaml: handlers,
            tools: &[RUNC, CRUN],
            ..PodEnvOptions::default()
        },
    )
    .await
}

/// Replaces `from` (which must occur) with `to` in the daemon's config file.
fn edit_config(daemon: &Daemon, from: &str, to: &str) {
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    assert!(
        config.contains(from),
        "{from:?} not in the config:\n{config}"
    );
    std::fs::write(daemon.config_path(), config.replacen(from, to, 1)).unwrap();
}

/// The handler names `Status` offers (the default also as "").
async fn offered_handlers(env: &PodEnv) -> Vec<String> {
    let status = env
        .rt()
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(
        status.runtime_handlers.iter().all(|h| h.features.is_some()),
        "{:?}",
        status.runtime_handlers
    );
    status
        .runtime_handlers
        .into_iter()
        .map(|h| h.name)
        .collect()
}

/// Verbose `Status`'s `retiredHandlers`: removed or replaced handlers that
/// still serve pods, with how many.
async fn retired_handlers(env: &PodEnv) -> serde_json::Value {
    let status = env
        .rt()
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    serde_json::from_str(&status.info["retiredHandlers"]).expect("retiredHandlers is JSON")
}

/// A container that runs until `/tmp/stop` exists, then exits 7.
const UNTIL_STOPPED: &[&str] = &[
    "sh",
    "-c",
    "while [ ! -e /tmp/stop ]; do sleep 0.2; done; exit 7",
];

/// A pod on `handler` with one running [`UNTIL_STOPPED`] container:
/// (pod id, container id).
async fn running_pod(env: &PodEnv, name: &str, handler: &str) -> (String, String) {
    let pod = env.pod_config(name);
    let pod_id = env.run_pod_on(&pod, handler).await.expect("RunPodSandbox");
    let container = env
        .create_and_start(&pod_id, &pod, env.container_config("main", UNTIL_STOPPED))
        .await;
    (pod_id, container)
}

async fn pod_status(env: &PodEnv, pod_id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
    let response = env
        .rt()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_string(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info = serde_json::from_str(&response.info["info"]).expect("verbose info is JSON");
    (response.status.expect("status"), info)
}

/// Everything the kubelet does with a running pod's container works:
/// status, ExecSync, stats, and its exit (code 7) is seen; then the
/// container and the pod are stopped and removed.
async fn assert_pod_served_to_the_end(env: &PodEnv, pod_id: &str, container: &str, handler: &str) {
    let (status, _) = pod_status(env, pod_id).await;
    assert_eq!(status.runtime_handler, handler);
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(
        env.container_status(container).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let (code, stdout, _) = env.exec_sync(container, &["echo", "still here"]).await;
    assert_eq!((code, stdout.as_str()), (0, "still here\n"));
    env.rt()
        .container_stats(cri::ContainerStatsRequest {
            container_id: container.to_string(),
        })
        .await
        .expect("ContainerStats");
    // Its exit is seen through the handler it runs on.
    let (code, _, _) = env.exec_sync(container, &["touch", "/tmp/stop"]).await;
    assert_eq!(code, 0);
    let exited = env.wait_exited(container, Duration::from_secs(20)).await;
    assert_eq!(exited.exit_code, 7);
    let mut rt = env.rt();
    rt.stop_container(cri::StopContainerRequest {
        container_id: container.to_string(),
        timeout: 5,
    })
    .await
    .expect("StopContainer");
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: container.to_string(),
    })
    .await
    .expect("RemoveContainer");
    env.stop_and_remove_pod(pod_id).await;
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(pods.iter().all(|p| p.id != pod_id), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_a_handler_that_status_offers_and_new_pods_run_on() {
    let Some(env) = handler_env(&runc_crun_table("")).await else {
        return;
    };
    assert!(!offered_handlers(&env).await.contains(&"extra".to_string()));
    edit_config(
        &env.daemon,
        "runtime_handlers:\n",
        &format!("runtime_handlers:\n{}", oci_entry("extra", CRUN, "")),
    );
    // A listener setting beside it still waits for a restart.
    let config = std::fs::read_to_string(env.daemon.config_path()).unwrap();
    std::fs::write(env.daemon.config_path(), config + "streaming:\n  port: 1\n").unwrap();
    let log = reload(&env.daemon, "take effect only after a restart").await;
    assert!(log.contains("runtime_handlers.extra (added)"), "{log}");
    assert!(log.contains("configuration reloaded;"), "{log}");
    assert!(log.contains("streaming.port"), "{log}");
    assert_serving(&env.daemon).await;

    let names = offered_handlers(&env).await;
    for name in ["", "runc", "crun", "extra"] {
        assert!(names.contains(&name.to_string()), "{name:?} in {names:?}");
    }
    let (pod_id, container) = running_pod(&env, "on-extra", "extra").await;
    // crun under the new entry: its runtime root (state_dir/extra) has it.
    assert!(
        env.daemon
            .state_dir()
            .join("extra")
            .join(&container)
            .exists(),
        "container {container} is not in extra's runtime root"
    );
    assert_pod_served_to_the_end(&env, &pod_id, &container, "extra").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_removing_a_handler_keeps_its_pods_working_and_refuses_new_pods() {
    let Some(env) = handler_env(&runc_crun_table("")).await else {
        return;
    };
    let (pod_id, container) = running_pod(&env, "on-crun", "crun").await;
    edit_config(&env.daemon, &oci_entry("crun", CRUN, ""), "");
    let log = reload(&env.daemon, "configuration reloaded;").await;
    assert!(log.contains("runtime_handlers.crun (removed)"), "{log}");
    assert!(log.contains("runtime handler removed"), "{log}");
    assert!(!log.contains("take effect only after a restart"), "{log}");

    let names = offered_handlers(&env).await;
    assert!(!names.contains(&"crun".to_string()), "{names:?}");
    assert!(names.contains(&"runc".to_string()), "{names:?}");
    assert_eq!(retired_handlers(&env).await, json!({ "crun": 1 }));
    // New pods cannot name it, as any unknown handler.
    let err = env
        .run_pod_on(&env.pod_config("new-on-crun"), "crun")
        .await
        .expect_err("crun is not in the table any more");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("unknown runtime handler"), "{err:?}");

    // The pod it had goes on being served by it, to its removal.
    assert_pod_served_to_the_end(&env, &pod_id, &container, "crun").await;
    assert!(
        !env.daemon
            .state_dir()
            .join("crun")
            .join(&container)
            .exists(),
        "crun still knows container {container}"
    );
    assert_eq!(retired_handlers(&env).await, json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_changed_handler_option_to_new_pods_only() {
    const KEY: &str = "io.crius.test/generation";
    let option =
        |generation: u32| format!("    default_annotations:\n      {KEY}: \"{generation}\"\n");
    let Some(env) = handler_env(&runc_crun_table(&option(1))).await else {
        return;
    };
    let (old_pod, old_container) = running_pod(&env, "before", "").await;
    edit_config(&env.daemon, &option(1), &option(2));
    let log = reload(&env.daemon, "configuration reloaded;").await;
    assert!(
        log.contains("runtime_handlers.runc.default_annotations"),
        "{log}"
    );
    assert!(log.contains("runtime handler changed"), "{log}");
    assert_eq!(retired_handlers(&env).await, json!({ "runc": 1 }));

    let (new_pod, new_container) = running_pod(&env, "after", "").await;
    let (_, new_info) = pod_status(&env, &new_pod).await;
    assert_eq!(new_info["handlerAnnotations"][KEY], "2", "{new_info}");
    let (_, old_info) = pod_status(&env, &old_pod).await;
    assert_eq!(old_info["handlerAnnotations"][KEY], "1", "{old_info}");

    assert_pod_served_to_the_end(&env, &old_pod, &old_container, "runc").await;
    assert_eq!(retired_handlers(&env).await, json!({}));
    assert_pod_served_to_the_end(&env, &new_pod, &new_container, "runc").await;
}

/// A second test network's bridge, deleted when dropped.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.0, "type", "bridge"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A `a.b.c` prefix beside `taken` (`a.b.x`) that no route on the host uses.
fn free_prefix(taken: &str) -> String {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let routed: Vec<String> = routes
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|dest| u32::from_str_radix(dest, 16).ok())
        .map(|dest| {
            let [a, b, c, _] = dest.to_le_bytes();
            format!("{a}.{b}.{c}")
        })
        .collect();
    let (base, last) = taken.rsplit_once('.').expect("a.b.c");
    let last: u32 = last.parse().expect("numeric prefix");
    (1..250)
        .map(|step| format!("{base}.{}", (last + step) % 250))
        .find(|p| !routed.contains(p))
        .expect("a free /24")
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_points_new_pods_at_a_changed_cni_conf_dir() {
    let Some(env) = handler_env(&runc_crun_table("")).await else {
        return;
    };
    let old_pod = env
        .run_pod(&env.pod_config("old-net"))
        .await
        .expect("RunPodSandbox");
    let (status, _) = pod_status(&env, &old_pod).await;
    let old_ip = status.network.expect("pod network").ip;
    assert!(
        old_ip.starts_with(&format!("{}.", env.subnet_prefix)),
        "{old_ip}"
    );

    let other = tempfile::Builder::new()
        .prefix("crius-cni-")
        .tempdir()
        .unwrap();
    let token = crius_tests::unique_token();
    let bridge = Bridge(format!("crq{}", &token[..8]));
    let prefix = free_prefix(&env.subnet_prefix);
    crius_tests::host::write_test_cni_config(
        other.path(),
        &format!("crius-test-{token}"),
        &bridge.0,
        &prefix,
    );
    edit_config(
        &env.daemon,
        &format!("conf_dir: \"{}\"", env.cni_dir.path().display()),
        &format!("conf_dir: \"{}\"", other.path().display()),
    );
    let log = reload(&env.daemon, "configuration reloaded;").await;
    assert!(log.contains("cni.conf_dir"), "{log}");
    assert!(!log.contains("take effect only after a restart"), "{log}");

    let new_pod = env
        .run_pod(&env.pod_config("new-net"))
        .await
        .expect("RunPodSandbox");
    let (status, _) = pod_status(&env, &new_pod).await;
    let new_ip = status.network.expect("pod network").ip;
    assert!(
        new_ip.starts_with(&format!("{prefix}.")),
        "{new_ip} not in {prefix}.0/24"
    );
    // The old pod keeps its address and is torn down with its own network.
    let (status, _) = pod_status(&env, &old_pod).await;
    assert_eq!(status.network.expect("pod network").ip, old_ip);
    env.stop_and_remove_pod(&old_pod).await;
    env.stop_and_remove_pod(&new_pod).await;
    for (dir, ip) in [(env.cni_dir.path(), &old_ip), (other.path(), &new_ip)] {
        // host-local keeps one file per leased address, named by it.
        let leases = files_below(&dir.join("ipam"));
        assert!(
            leases
                .iter()
                .all(|f| f.file_name().is_none_or(|n| n != ip.as_str())),
            "{ip}'s lease is still held: {leases:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_an_invalid_handler_table_keeps_the_old_one() {
    let Some(env) = handler_env(&runc_crun_table("")).await else {
        return;
    };
    // A new handler, and a default that names no handler: none of it applies.
    edit_config(
        &env.daemon,
        "runtime_handlers:\n",
        &format!("runtime_handlers:\n{}", oci_entry("extra", CRUN, "")),
    );
    edit_config(
        &env.daemon,
        "default_runtime_handler: runc",
        "default_runtime_handler: gvisor",
    );
    let log = reload(&env.daemon, "configuration reload failed").await;
    assert!(
        log.contains("gvisor"),
        "the error names the bad value: {log}"
    );
    assert!(
        log.contains("still running with the previous configuration"),
        "{log}"
    );
    let names = offered_handlers(&env).await;
    assert!(!names.contains(&"extra".to_string()), "{names:?}");
    assert!(names.contains(&"crun".to_string()), "{names:?}");
    let err = env
        .run_pod_on(&env.pod_config("on-extra"), "extra")
        .await
        .expect_err("extra was never applied");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // The old default still serves pods.
    let (pod_id, container) = running_pod(&env, "on-default", "").await;
    assert_pod_served_to_the_end(&env, &pod_id, &container, "runc").await;
}

/// Runs `crius --config <config> <args>`; returns (success, stdout, stderr).
fn crius_cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(crius_tests::daemon::crius_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("crius runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn crius_config_prints_defaults_file_and_drop_ins_as_yaml_that_loads_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crius.yaml");
    std::fs::write(
        &config,
        "log_level: warn\nimage:\n  max_concurrent_downloads: 5\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("crius.yaml.d")).unwrap();
    std::fs::write(
        dir.path().join("crius.yaml.d/10-pulls.yaml"),
        "image:\n  pull_progress_timeout_seconds: 7\n",
    )
    .unwrap();
    let (ok, yaml, err) = crius_cli(&config, &["config"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = yaml.lines().collect();
    for expected in [
        // The file.
        "log_level: warn",
        "  max_concurrent_downloads: 5",
        // The drop-in, merged into the same table.
        "  pull_progress_timeout_seconds: 7",
        // Defaults no file sets.
        "  default_registry: docker.io",
        "  max_sessions: 64",
        "default_runtime_handler: runc",
        "  runc:",
    ] {
        assert!(lines.contains(&expected), "no {expected:?} in:\n{yaml}");
    }
    // The output is itself a complete config: loading it gives the same.
    let printed = dir.path().join("printed.yaml");
    std::fs::write(&printed, &yaml).unwrap();
    let (ok, again, err) = crius_cli(&printed, &["config"]);
    assert!(ok, "{err}");
    assert_eq!(again, yaml);

    // A bad file: non-zero, the file and line named, nothing on stdout.
    std::fs::write(&config, "log_level: warn\nimgae: {}\n").unwrap();
    let (ok, out, err) = crius_cli(&config, &["config"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("crius.yaml:2"), "{err}");
}

/// A config whose handlers, pause binary and CNI network are the given ones.
fn host_config(
    dir: &std::path::Path,
    runtime: &str,
    conmon: &str,
    cni_dir: &std::path::Path,
) -> std::path::PathBuf {
    let config = dir.join("crius.yaml");
    std::fs::write(
        &config,
        format!(
            "default_runtime_handler: runc\nruntime_handlers:\n  runc:\n    kind: oci\n    runtime_path: {runtime}\n    monitor_path: {conmon}\n\
             pause:\n  catatonit_path: /usr/bin/catatonit\ncni:\n  conf_dir: \"{}\"\n  bin_dirs: [/usr/lib/cni]\n",
            cni_dir.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn crius_check_passes_on_a_good_host_and_lists_every_problem_otherwise() {
    if !crius_tests::require_tools(&[
        "/usr/sbin/runc",
        "/usr/bin/conmon",
        "/usr/bin/catatonit",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/portmap",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net.d");
    std::fs::create_dir(&net).unwrap();
    std::fs::copy(
        crius_tests::workspace_root().join("configs/cni/10-crius-bridge.conflist"),
        net.join("10-crius-bridge.conflist"),
    )
    .unwrap();
    let good = host_config(dir.path(), "/usr/sbin/runc", "/usr/bin/conmon", &net);
    let (ok, out, err) = crius_cli(&good, &["check"]);
    assert!(ok, "{out}{err}");
    for expected in [
        "ok      handler runc: runtime /usr/sbin/runc",
        "ok      handler runc: monitor /usr/bin/conmon",
        "ok      pause: catatonit /usr/bin/catatonit",
        "ok      cni: plugin host-local at /usr/lib/cni/host-local",
        "configuration and host: OK",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    assert!(out.contains("ok      cgroups: cgroup v"), "{out}");

    // Missing runtime and monitor, a CNI config that does not parse.
    let bad_net = dir.path().join("bad.d");
    std::fs::create_dir(&bad_net).unwrap();
    std::fs::write(bad_net.join("10-broken.conflist"), "{\"cniVersion\": ").unwrap();
    let bad = host_config(
        dir.path(),
        "/nonexistent/runc",
        "/nonexistent/conmon",
        &bad_net,
    );
    let (ok, out, err) = crius_cli(&bad, &["check"]);
    assert!(!ok, "{out}");
    assert!(err.contains("3 problem(s)"), "{err}");
    for expected in [
        "handler runc: runtime /nonexistent/runc",
        "handler runc: monitor /nonexistent/conmon",
        "10-broken.conflist",
    ] {
        assert!(err.contains(expected), "no {expected:?} in:\n{err}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("PROBLEM") && l.contains(expected)),
            "{out}"
        );
    }

    // An invalid configuration is a problem too.
    std::fs::write(&bad, "runtime_handlers: 3\n").unwrap();
    let (ok, _, err) = crius_cli(&bad, &["check"]);
    assert!(!ok);
    assert!(err.contains("invalid configuration"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_new_log_level_unless_the_command_line_set_one() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::builder()
        .log_level_from_config()
        .extra_yaml("log_level: warn\n")
        .start()
        .await
        .expect("daemon starts");
    let quiet = daemon.stderr_text();
    assert!(
        !quiet.contains(" INFO "),
        "info lines at log_level warn:\n{quiet}"
    );
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    std::fs::write(
        daemon.config_path(),
        config.replace("log_level: warn", "log_level: info"),
    )
    .unwrap();
    // Logged at info, so it only shows once the new level is in force.
    let log = reload(
        &daemon,
        "configuration reloaded; new pods, containers, pulls and streaming sessions use it",
    )
    .await;
    assert!(log.contains("log_level"), "{log}");
    // And it stays in force: an info line of an ordinary call.
    let mut client = daemon.image();
    let from = daemon.stderr_text().len();
    let _ = images::pull(&mut client, "127.0.0.1:1/none:1").await;
    let after = daemon.stderr_text();
    assert!(after[from..].contains(" INFO "), "{}", &after[from..]);

    // With --log-level, the file's log_level is reported and not applied.
    let pinned = Daemon::builder()
        .log_level("warn")
        .start()
        .await
        .expect("daemon starts");
    let config = std::fs::read_to_string(pinned.config_path()).unwrap();
    std::fs::write(pinned.config_path(), config + "log_level: debug\n").unwrap();
    let log = reload(&pinned, "but --log-level warn overrides it").await;
    assert!(!log.contains("DEBUG") && !log.contains(" INFO "), "{log}");
}

/// A registry answering with a Docker schema 1 manifest: the pull is refused
/// with FailedPrecondition naming the deprecated format (not a parse error),
/// and nothing of the image is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema1_manifest_is_refused_naming_the_deprecation() {
    if !require_root() {
        return;
    }
    let registry = FakeRegistry::start_schema1("old").await;
    let daemon = Daemon::builder()
        .registries_yaml(&insecure_registry_yaml(&registry.addr()))
        .start()
        .await
        .expect("daemon starts");
    let mut client = daemon.image();
    let err = images::pull(&mut client, &format!("{}/old:1", registry.addr()))
        .await
        .expect_err("schema 1 is refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("schema 1") && err.message().contains("deprecated"),
        "{err:?}"
    );
    assert!(images::list(&mut client).await.unwrap().is_empty());
    let layers = daemon.root().join("layers");
    assert!(files_below(&layers).is_empty(), "no layer kept");
}

/// `image.max_concurrent_pulls: 1`: a second pull (another image, another
/// registry) waits for the slot the first holds, says so in the log, and
/// runs once the first ends (here: aborted by the stall timeout).
#[tokio::test(flavor = "multi_thread")]
async fn pulls_beyond_max_concurrent_pulls_wait_for_a_slot() {
    if !require_root() {
        return;
    }
    let stalled = FakeRegistry::start("stall", LayerMode::Stall).await;
    let good = FakeRegistry::start("good", LayerMode::Whole).await;
    let daemon = Daemon::builder()
        .registries_yaml(&format!(
            "registries:\n  - prefix: \"{}\"\n    insecure: true\n  - prefix: \"{}\"\n    insecure: true\n",
            stalled.addr(),
            good.addr()
        ))
        .extra_yaml("image:\n  pull_progress_timeout_seconds: 2\n  max_concurrent_pulls: 1\n")
        .start()
        .await
        .expect("daemon starts");
    let started = Instant::now();
    let mut first_client = daemon.image();
    let first_ref = format!("{}/stall:1", stalled.addr());
    let first = tokio::spawn(async move {
        let result = images::pull(&mut first_client, &first_ref).await;
        (result, Instant::now())
    });
    // The first pull holds the slot once its layer download stalls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.stderr_text().contains("downloading blob") {
        assert!(Instant::now() < deadline, "{}", daemon.stderr_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = daemon.image();
    let second = images::pull(&mut client, &format!("{}/good:1", good.addr()))
        .await
        .expect("the second pull runs once the slot is free");
    let second_done = Instant::now();
    let (first_result, first_done) = first.await.unwrap();
    let err = first_result.expect_err("the stalled pull is aborted");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(second.starts_with("sha256:"), "{second}");
    assert!(
        first_done <= second_done,
        "the second pull ended {:?} before the first gave its slot back",
        first_done - second_done
    );
    assert!(
        second_done - started >= Duration::from_secs(2),
        "the second pull did not wait for the slot"
    );
    let log = daemon.stderr_text();
    assert!(
        log.contains("waiting for a pull slot (image.max_concurrent_pulls)"),
        "{log}"
    );
}
