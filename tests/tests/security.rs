//! Host safety through the daemon's CRI socket: what other local users can
//! reach, what requests may name, which values are refused up front and how
//! errors are reported.
//!
//! The daemon's temporary directory is opened to 0755 in these tests (it is
//! 0700 as created), so that only the modes crius gives its own directories
//! stand between the layer store and an unprivileged user, as on a real host
//! where `root` is `/var/lib/crius`.

use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_tests::cri::{configs, images};
use crius_tests::host::wait_for_log;
use crius_tests::image;
use crius_tests::pods::{PodEnv, PodEnvOptions};
use crius_tests::{Daemon, require_root_and_tools, unique_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// The setuid file the test image carries.
const SUID_FILE: &str = "bin/suid-tool";
const NOBODY: u32 = 65534;

/// The shared pod environment plus what only these tests look at.
struct Env {
    env: PodEnv,
}

impl Deref for Env {
    type Target = PodEnv;
    fn deref(&self) -> &PodEnv {
        &self.env
    }
}

impl DerefMut for Env {
    fn deref_mut(&mut self) -> &mut PodEnv {
        &mut self.env
    }
}

/// A busybox image whose second layer holds a setuid-root file, a CNI
/// network of the test's own and a daemon using both, with the image pulled.
async fn setup(handler: &'static str) -> Option<Env> {
    let options = PodEnvOptions {
        files: &[(SUID_FILE, b"#!/bin/sh\nid\n", 0o4755)],
        tools: &["grep", "stat"],
        ..PodEnvOptions::default()
    };
    let env = PodEnv::start(handler, options).await?;
    // As a real host's /var/lib: others may traverse, so only the daemon's
    // own modes keep them out.
    std::fs::set_permissions(env.daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(Env { env })
}

impl Env {
    /// The pod's directory, from its verbose status.
    async fn pod_dir(&self, pod_id: &str) -> PathBuf {
        let status = self
            .rt()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.to_string(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
        PathBuf::from(info["podDir"].as_str().expect("podDir"))
    }

    async fn container_count(&self) -> usize {
        self.rt()
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .len()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Runs `program args` as uid/gid 65534 with no supplementary groups.
fn as_nobody(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap_or_else(|e| panic!("running {program} as nobody: {e}"))
}

/// `path` cannot be reached by an unprivileged user.
fn assert_unreachable_for_nobody(path: &Path) {
    let out = as_nobody("stat", &[&path.display().to_string()]);
    assert!(
        !out.status.success(),
        "nobody can stat {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Permission denied"),
        "stat {} as nobody: {stderr}",
        path.display()
    );
}

/// The layer directory of the store that holds the setuid file.
fn suid_layer(root: &Path) -> PathBuf {
    crius_tests::dir_entries(&root.join("layers/sha256"))
        .into_iter()
        .find(|d| d.join(SUID_FILE).exists())
        .expect("a layer with the setuid file")
}

// ---- 1. daemon directories ------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn layer_store_and_state_are_unreachable_for_other_users() {
    let Some(mut env) = setup("runc").await else {
        return;
    };
    let root = env.daemon.root().to_path_buf();
    let state = env.daemon.state_dir().to_path_buf();
    let layer = suid_layer(&root);
    let suid = layer.join(SUID_FILE);
    // The layer itself is faithful: the bit is kept for the container.
    assert_eq!(mode(&suid), 0o4755);

    let private = |root: &Path, state: &Path| {
        let mut dirs: Vec<PathBuf> = [
            "",
            "layers",
            "layers/sha256",
            "blobs",
            "blobs/sha256",
            "images",
            "tmp",
        ]
        .iter()
        .map(|d| root.join(d))
        .collect();
        dirs.push(state.join("runc"));
        dirs.push(state.join("crun"));
        dirs
    };
    for dir in private(&root, &state) {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    // Passable for the CRI socket's group, not listable.
    assert_eq!(mode(&state), 0o711);

    // A pod and a container: their directories are private too.
    let pod = env.pod_config("suid");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let id = env
        .create(&pod_id, &pod, env.container_config("c", &["sleep", "60"]))
        .await
        .expect("CreateContainer");
    let pod_dir = env.pod_dir(&pod_id).await;
    let bundle = pod_dir.join("containers").join(&id);
    for dir in [env.daemon.pods_dir(), pod_dir.clone(), bundle.clone()] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }

    // What an unprivileged user sees: the daemon's directory (so the
    // test itself can see a difference), and nothing below root or state.
    let out = as_nobody("stat", &[&env.daemon.dir().display().to_string()]);
    assert!(out.status.success(), "nobody cannot even see the test dir");
    for path in [
        root.join("layers"),
        layer.clone(),
        suid.clone(),
        bundle.join("upper"),
        bundle.join("config.json"),
        // state is passable (0711), so pods itself can be stat'ed, but
        // nothing in it.
        pod_dir.join("pod.json"),
    ] {
        assert_unreachable_for_nobody(&path);
    }
    let listing = as_nobody("ls", &[&state.display().to_string()]);
    assert!(!listing.status.success(), "nobody can list the state dir");
    env.stop_and_remove_pod(&pod_id).await;

    // Directories an older version left open are tightened at start.
    env.daemon.terminate();
    for dir in [
        root.clone(),
        root.join("layers"),
        root.join("layers/sha256"),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(state.join("runc"), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.daemon.restart().await.expect("daemon restarts");
    for dir in private(&root, &state) {
        assert_eq!(mode(&dir), 0o700, "after restart: {}", dir.display());
    }
    assert_eq!(mode(&state), 0o711);
    assert!(
        env.daemon.stderr_text().contains("permissions tightened"),
        "the repair is logged"
    );
    assert_unreachable_for_nobody(&suid);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_dir_owned_by_another_user_is_refused() {
    let Some(mut env) = setup("runc").await else {
        return;
    };
    env.daemon.terminate();
    let root = env.daemon.root().to_path_buf();
    std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = env
        .daemon
        .restart()
        .await
        .expect_err("the daemon must refuse a root dir of another user");
    let text = format!("{err:#}");
    assert!(
        text.contains("owned by uid 65534") && text.contains(&root.display().to_string()),
        "{text}"
    );
    std::os::unix::fs::chown(&root, Some(0), Some(0)).unwrap();
}

// ---- 2. files holding container config ----------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn container_config_and_records_are_root_only() {
    let Some(env) = setup("runc").await else {
        return;
    };
    let secret = format!("s3cret-{}", unique_token());
    let pod = env.pod_config("secrets");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let mut config = env.container_config("db", &["sleep", "60"]);
    config.envs = vec![cri::KeyValue {
        key: "DB_PASSWORD".into(),
        value: secret.clone().into_bytes(),
    }];
    let id = env
        .create(&pod_id, &pod, config)
        .await
        .expect("CreateContainer");
    env.start_container(&id).await;

    let pod_dir = env.pod_dir(&pod_id).await;
    let bundle = pod_dir.join("containers").join(&id);
    let spec = bundle.join("config.json");
    assert!(
        std::fs::read_to_string(&spec).unwrap().contains(&secret),
        "the spec carries the env"
    );
    for file in [
        spec,
        pod_dir.join("containers").join(format!("{id}.json")),
        pod_dir.join("pod.json"),
        pod_dir.join("infra/config.json"),
        pod_dir.join("cni.json"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    for dir in [
        pod_dir.clone(),
        pod_dir.join("containers"),
        bundle,
        pod_dir.join("infra"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    // The files bind-mounted into containers stay readable for them.
    assert_eq!(mode(&pod_dir.join("resolv.conf")) & 0o444, 0o444);

    // No file an unprivileged user can read holds the secret.
    let found = as_nobody(
        "grep",
        &[
            "-rl",
            &secret,
            &env.daemon.state_dir().display().to_string(),
            &env.daemon.root().display().to_string(),
        ],
    );
    assert!(
        found.stdout.is_empty(),
        "nobody can read the secret in: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    env.stop_and_remove_pod(&pod_id).await;
}

// ---- 3. log paths ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn log_paths_are_confined_to_the_log_directory() {
    let Some(env) = setup("runc").await else {
        return;
    };
    let token = unique_token();
    let pod = env.pod_config("logs");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let outside = std::env::temp_dir().join(format!("crius-escape-{token}.log"));
    let deep = format!("{}{}", "../".repeat(12), outside.display());
    for log_path in [
        deep.as_str(),
        &outside.display().to_string(),
        "c/../../escape.log",
    ] {
        let mut config = env.container_config("c", &["echo", "escaped"]);
        config.log_path = log_path.to_string();
        let err = env
            .create(&pod_id, &pod, config)
            .await
            .expect_err("a log path outside the log directory");
        assert_eq!(err.code(), Code::InvalidArgument, "{log_path}: {err:?}");
        assert!(err.message().contains("log_path"), "{}", err.message());
    }
    assert!(!outside.exists(), "{} was created", outside.display());
    assert_eq!(env.container_count().await, 0, "nothing half-created");
    // The name is free again: a valid container with it works.
    let id = env
        .create(
            &pod_id,
            &pod,
            env.container_config("c", &["echo", "inside"]),
        )
        .await
        .expect("a confined log path");
    env.start_container(&id).await;
    let log = Path::new(&pod.log_directory).join("c/0.log");
    wait_for_log(&log, "inside", Duration::from_secs(10)).await;
    env.stop_and_remove_pod(&pod_id).await;

    let mut relative = env.pod_config("rel");
    relative.log_directory = "var/log/pods/rel".into();
    let err = env.run_pod(&relative).await.expect_err("relative log dir");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("log_directory"), "{}", err.message());
}

// ---- 4. privileged containers ------------------------------------------------

/// `CapBnd` of this (root) test process: the host's bounding set.
fn host_bounding_set() -> u64 {
    cap_mask(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "CapBnd",
    )
}

fn cap_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.split_once(&format!("{field}:")).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    let hex = line.split_whitespace().next().unwrap();
    u64::from_str_radix(hex, 16).unwrap()
}

async fn privileged_containers_get_the_host_bounding_set(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut pod = env.pod_config("priv");
    if let Some(sc) = pod.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.privileged = true;
    }
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let mut config = env.container_config("p", &["grep", "^Cap", "/proc/self/status"]);
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.privileged = true;
    }
    let id = env
        .create(&pod_id, &pod, config)
        .await
        .expect("CreateContainer (privileged)");
    env.start_container(&id).await;
    env.wait_exited(&id, Duration::from_secs(20)).await;
    let log = Path::new(&pod.log_directory).join("p/0.log");
    let text = wait_for_log(&log, "CapBnd", Duration::from_secs(5)).await;
    let host = host_bounding_set();
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            cap_mask(&text, field),
            host,
            "{field} of a privileged container on {handler}: {text}"
        );
    }

    // add: [ALL] likewise, without privileged.
    let mut config = env.container_config("all", &["grep", "^Cap", "/proc/self/status"]);
    config.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        namespace_options: Some(configs::namespaces(cri::NamespaceMode::Pod)),
        ..Default::default()
    });
    let id = env
        .create(&pod_id, &pod, config)
        .await
        .expect("CreateContainer (add ALL)");
    env.start_container(&id).await;
    env.wait_exited(&id, Duration::from_secs(20)).await;
    let log = Path::new(&pod.log_directory).join("all/0.log");
    let text = wait_for_log(&log, "CapBnd", Duration::from_secs(5)).await;
    assert_eq!(
        cap_mask(&text, "CapEff"),
        host,
        "add ALL on {handler}: {text}"
    );
    env.stop_and_remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_runc() {
    privileged_containers_get_the_host_bounding_set("runc").await
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_crun() {
    privileged_containers_get_the_host_bounding_set("crun").await
}

// ---- 5. any :authority ------------------------------------------------------

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal without indexing, new name, no Huffman (RFC 7541 6.2.2);
/// every string here is shorter than 127 bytes.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// Sends `Version` over a raw HTTP/2 connection with `authority` (as
/// clients other than Go's do on unix sockets) and returns the gRPC
/// response message bytes, or why there was none.
async fn version_with_authority(socket: &Path, authority: &str) -> Result<Vec<u8>, String> {
    let mut conn = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/Version"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hpack_literal(&mut block, name, value);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(h2_frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(h2_frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // an empty VersionRequest, END_STREAM
    conn.write_all(&out).await.map_err(|e| e.to_string())?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                0x0 if stream == 1 => return Ok(payload),
                0x3 if stream == 1 => {
                    return Err(format!("stream reset, error code {:?}", &payload[..]));
                }
                0x7 => return Err(format!("GOAWAY {:?}", &payload[..])),
                0x4 if flags & 0x1 == 0 => {
                    let ack = h2_frame(0x4, 0x1, 0, &[]);
                    conn.write_all(&ack).await.map_err(|e| e.to_string())?;
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), conn.read(&mut chunk))
            .await
            .map_err(|_| "no response within 10s".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn any_authority_is_accepted_on_the_unix_socket() {
    if !require_root_and_tools(&[]) {
        return;
    }
    let daemon = Daemon::start("").await.expect("daemon starts");
    let socket = daemon.socket().display().to_string();
    let encoded = socket.replace('/', "%2F");
    for authority in [
        "localhost",
        // Python's grpcio (C-core): the percent-encoded socket path.
        encoded.as_str(),
        // grpc-java: the socket path as is.
        socket.as_str(),
        "unix:/run/crius/crius.sock",
    ] {
        let message = version_with_authority(daemon.socket(), authority)
            .await
            .unwrap_or_else(|e| panic!(":authority {authority:?} refused: {e}"));
        assert!(
            message.windows(5).any(|w| w == b"crius"),
            ":authority {authority:?}: not a VersionResponse: {message:?}"
        );
    }
}

// ---- 6. idempotency and user/group validation ------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn stop_of_an_unknown_container_succeeds_and_a_group_needs_a_user() {
    let Some(env) = setup("runc").await else {
        return;
    };
    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: "0123456789abcdef-never-created".into(),
            timeout: 0,
        })
        .await
        .expect("StopContainer of an unknown container is a no-op");

    let pod = env.pod_config("group");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let mut config = env.container_config("g", &["id"]);
    config.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
        run_as_group: Some(cri::Int64Value { value: 1234 }),
        namespace_options: Some(configs::namespaces(cri::NamespaceMode::Pod)),
        ..Default::default()
    });
    let err = env
        .create(&pod_id, &pod, config.clone())
        .await
        .expect_err("run_as_group without a user");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_as_group"), "{}", err.message());
    assert_eq!(env.container_count().await, 0);

    // With a user it is fine, and the container runs as uid:gid.
    let sc = config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.run_as_user = Some(cri::Int64Value { value: 4321 });
    let id = env
        .create(&pod_id, &pod, config)
        .await
        .expect("run_as_user + run_as_group");
    env.start_container(&id).await;
    let log = Path::new(&pod.log_directory).join("g/0.log");
    wait_for_log(&log, "uid=4321 gid=1234", Duration::from_secs(10)).await;
    // Stopping it twice, and after removal, all succeed.
    for _ in 0..2 {
        env.rt()
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .expect("StopContainer");
    }
    env.rt()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer");
    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer after RemoveContainer");
    env.stop_and_remove_pod(&pod_id).await;
}

// ---- 7. bad values and bounded errors ----------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_values_are_refused_up_front_with_bounded_messages() {
    let Some(env) = setup("runc").await else {
        return;
    };
    let pod = env.pod_config("values");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let huge = "n".repeat(1 << 20);

    let mut config = env.container_config("x", &["true"]);
    config.metadata.as_mut().unwrap().name = huge.clone();
    let err = env
        .create(&pod_id, &pod, config)
        .await
        .expect_err("a 1 MiB container name");
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "{}",
        &err.message()[..200.min(err.message().len())]
    );
    assert!(
        err.message().len() < 1024,
        "message of {} bytes",
        err.message().len()
    );

    let err = env
        .rt()
        .container_status(cri::ContainerStatusRequest {
            container_id: huge.clone(),
            verbose: false,
        })
        .await
        .expect_err("unknown 1 MiB id");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().len() < 1024,
        "message of {} bytes",
        err.message().len()
    );

    let mut huge_pod = env.pod_config("hugepod");
    huge_pod.metadata.as_mut().unwrap().name = huge.clone();
    let err = env.run_pod(&huge_pod).await.expect_err("a 1 MiB pod name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().len() < 1024,
        "message of {} bytes",
        err.message().len()
    );

    for (what, resources) in [
        (
            "oom_score_adj",
            cri::LinuxContainerResources {
                oom_score_adj: 5000,
                ..Default::default()
            },
        ),
        (
            "memory_limit_in_bytes",
            cri::LinuxContainerResources {
                memory_limit_in_bytes: 4096,
                ..Default::default()
            },
        ),
    ] {
        let mut config = env.container_config("r", &["true"]);
        config.linux.as_mut().unwrap().resources = Some(resources);
        let err = env.create(&pod_id, &pod, config).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(what), "{}", err.message());
    }
    assert_eq!(env.container_count().await, 0, "nothing half-created");
    env.stop_and_remove_pod(&pod_id).await;

    // A pull refused for what the image contains says so.
    let escape = image::push_dotdot_escape_image(&env.registry, "evil", "dotdot")
        .await
        .unwrap();
    let err = images::pull(
        &mut env.daemon.image(),
        &escape.image.reference(&env.registry),
    )
    .await
    .expect_err("a layer that climbs out");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("content was refused") && err.message().contains(&escape.marker),
        "{}",
        err.message()
    );
    assert!(!escape.escape_path.exists());
}

// ---- 16. connections that never speak HTTP/2 ---------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_are_bounded_and_time_out() {
    if !require_root_and_tools(&[]) {
        return;
    }
    // The daemon's limits (core/src/server/conn.rs).
    const MAX_CONNECTIONS: usize = 256;
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    let daemon = Daemon::start("").await.expect("daemon starts");
    // The fixture's own client holds one slot.
    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 20 {
        silent.push(
            tokio::net::UnixStream::connect(daemon.socket())
                .await
                .expect("connect"),
        );
    }
    let started = Instant::now();
    // Those beyond the limit are closed at once.
    let mut closed_at_once = 0;
    for conn in silent.iter_mut().rev().take(20) {
        if tokio::time::timeout(Duration::from_secs(2), read_to_close(conn))
            .await
            .is_ok()
        {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 20,
        "only {closed_at_once} of 20 over the limit were closed"
    );
    // The others are closed once the handshake deadline passes.
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, read_to_close(&mut silent[0])).await;
    assert!(
        first.is_ok(),
        "a silent connection is still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= HANDSHAKE_TIMEOUT / 2,
        "closed too early"
    );
    drop(silent);
    // And the socket serves real clients again.
    let mut fresh = daemon.connect().await.expect("connect after the flood");
    fresh
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .expect("Version after the flood");
}

/// Reads (the server's SETTINGS, ...) until the server closes the connection.
async fn read_to_close(conn: &mut tokio::net::UnixStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
