//! Operating the daemon: the pull stall timeout
//! (`image.pull_progress_timeout_seconds`) against a registry that stops
//! sending, progress logging of slow pulls, SIGHUP reloading the
//! configuration, and the `crius config` / `crius check` commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crius_tests::cri::images;
use crius_tests::image::{Layer, LayerBuilder, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256_digest};
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

#[tokio::test(flavor = "multi_thread")]
async fn sighup_names_the_handler_changes_that_need_a_restart() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::builder().start().await.expect("daemon starts");
    let mut config = std::fs::read_to_string(daemon.config_path()).unwrap();
    // A third handler, added under the generated table.
    config = config.replace(
        "runtime_handlers:\n",
        "runtime_handlers:\n  extra:\n    kind: oci\n    runtime_path: /usr/bin/crun\n    monitor_path: /usr/bin/conmon\n",
    );
    std::fs::write(daemon.config_path(), config).unwrap();
    let log = reload(&daemon, "take effect only after a restart").await;
    assert!(log.contains("runtime_handlers.extra (added)"), "{log}");
    assert_serving(&daemon).await;
    // The running handler table is unchanged: `extra` is not offered.
    let status = daemon
        .runtime()
        .status(crius_proto::cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let names: Vec<String> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.clone())
        .collect();
    assert!(!names.contains(&"extra".to_string()), "{names:?}");
    assert!(names.contains(&"runc".to_string()), "{names:?}");
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
    let log = reload(&daemon, "configuration reloaded; pulls from now on use it").await;
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
