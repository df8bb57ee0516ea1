//! What a pod means to its containers, checked with the same assertions on
//! every built-in handler — runc, crun and kata (where the pod is a VM):
//! a PID namespace per container unless the pod shares one, the pod's
//! namespaced sysctls, a privileged container that builds a bridge,
//! mount propagation between containers, read-only volumes that leave
//! nothing busy, and StopContainer that returns as soon as the container
//! is gone and kills it at the deadline.
//!
//! kata needs `scripts/setup --with-kata`; `CRIUS_TEST_KATA_SHARED_FS`
//! picks its shared filesystem (scripts/test runs the kata cases with 9p
//! and with virtio-fs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_tests::host::{mounts_containing, processes_matching, wait_for_log};
use crius_tests::pods::{PodEnv, PodEnvOptions};

/// Busybox applets beyond the standard image's.
const APPLETS: &[&str] = &["ip", "tr"];

/// Every process's command line, one per line, as a container sees them.
const LIST_PROCESSES: &str = "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' <\"$f\"; echo; done";

async fn setup(handler: &'static str) -> Option<PodEnv> {
    PodEnv::start(
        handler,
        PodEnvOptions {
            applets: APPLETS,
            ..PodEnvOptions::default()
        },
    )
    .await
}

async fn processes_seen_by(env: &PodEnv, container: &str) -> String {
    let (code, out, err) = env
        .exec_sync(container, &["sh", "-c", LIST_PROCESSES])
        .await;
    assert_eq!(code, 0, "{err}");
    out
}

/// `/proc/1/cmdline` of a container, NULs as spaces.
async fn pid1_seen_by(env: &PodEnv, container: &str) -> String {
    let (_, out, _) = env.exec_sync(container, &["cat", "/proc/1/cmdline"]).await;
    out.replace('\0', " ")
}

/// A container in PID namespace mode `pid` (kubelet sets POD for the
/// containers of a pod with `shareProcessNamespace`).
fn container(
    env: &PodEnv,
    name: &str,
    command: &[&str],
    pid: cri::NamespaceMode,
) -> cri::ContainerConfig {
    let mut config = env.container_config(name, command);
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
        .pid = pid as i32;
    config
}

fn privileged(mut config: cri::ContainerConfig) -> cri::ContainerConfig {
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    config
}

/// Nothing of any pod left on the host: no pod directory, netns pin or
/// mount below the daemon's state, no conmon, VM shim, QEMU or VM helper.
fn assert_nothing_left(env: &PodEnv, context: &str) {
    let pods_dir = env.daemon.pods_dir();
    let left = crius_tests::dir_entries(&pods_dir);
    assert!(left.is_empty(), "{context}: pod dirs left: {left:?}");
    let netns = crius_tests::dir_entries(&env.daemon.state_dir().join("netns"));
    assert!(netns.is_empty(), "{context}: netns pins left: {netns:?}");
    let mounts = mounts_containing(&pods_dir.display().to_string());
    assert!(mounts.is_empty(), "{context}: mounts left: {mounts:?}");
    let state = env.daemon.dir().display().to_string();
    for needle in [
        "conmon",
        "crius-kata-shim",
        "qemu-system",
        "vhost-device-vsock",
        "virtiofsd",
    ] {
        let procs = processes_matching(&[needle, &state]);
        assert!(
            procs.is_empty(),
            "{context}: {needle} processes left: {procs:?}"
        );
    }
}

/// PID mode CONTAINER: each container is alone in its PID namespace (PID 1
/// is its own command). The pod's IPC and network sysctls are set for its
/// containers, and a privileged container can create a bridge.
async fn containers_have_their_own_pid_namespace_and_the_pods_sysctls(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut pod = env.pod_config("podsem");
    pod.linux.as_mut().unwrap().sysctls = [
        ("kernel.shm_rmid_forced", "1"),
        ("net.ipv4.ip_unprivileged_port_start", "0"),
        ("fs.mqueue.msg_max", "20"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let config = |name: &str, command: &[&str]| {
        container(&env, name, command, cri::NamespaceMode::Container)
    };
    let a = env
        .create_and_start(&pod_id, &pod, config("a", &["sleep", "1001"]))
        .await;
    let b = env
        .create_and_start(&pod_id, &pod, config("b", &["sleep", "1002"]))
        .await;

    let seen = processes_seen_by(&env, &b).await;
    assert!(seen.contains("sleep 1002"), "{seen}");
    for other in ["sleep 1001", "catatonit", "pause", "crius-kata-agent"] {
        assert!(
            !seen.contains(other),
            "{handler}: container b sees only its own processes, not {other:?}: {seen}"
        );
    }
    assert_eq!(
        pid1_seen_by(&env, &a).await,
        "sleep 1001 ",
        "{handler}: PID 1 of container a is its own command"
    );

    let (code, out, err) = env
        .exec_sync(
            &a,
            &[
                "cat",
                "/proc/sys/kernel/shm_rmid_forced",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start",
                "/proc/sys/fs/mqueue/msg_max",
            ],
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "1\n0\n20\n"), "{handler}: {err}");

    let netadmin = env
        .create_and_start(
            &pod_id,
            &pod,
            privileged(config("netadmin", &["sleep", "1003"])),
        )
        .await;
    let (code, _, err) = env
        .exec_sync(
            &netadmin,
            &[
                "sh",
                "-c",
                "ip link add crius-br0 type bridge && test -d /sys/class/net/crius-br0/bridge",
            ],
        )
        .await;
    assert_eq!(
        code, 0,
        "{handler}: ip link add type bridge in a privileged container: {err}"
    );

    env.stop_and_remove_pod(&pod_id).await;
    assert_nothing_left(&env, "after the pod-semantics pod");
}

/// PID mode POD: every container sees the others' processes under the
/// pod's init (catatonit on runc/crun, the agent's pause in a VM), and
/// stopping one container leaves the rest and the namespace alone.
async fn a_shared_pid_namespace_shows_every_container_under_the_pods_init(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut pod = env.pod_config("sharedpid");
    pod.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .pid = cri::NamespaceMode::Pod as i32;
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let shared =
        |name: &str, command: &[&str]| container(&env, name, command, cri::NamespaceMode::Pod);
    let a = env
        .create_and_start(&pod_id, &pod, shared("a", &["sleep", "1011"]))
        .await;
    let b = env
        .create_and_start(&pod_id, &pod, shared("b", &["sleep", "1012"]))
        .await;

    let seen = processes_seen_by(&env, &b).await;
    assert!(
        seen.contains("sleep 1011") && seen.contains("sleep 1012"),
        "{handler}: container b sees container a's process too: {seen}"
    );
    assert!(
        !seen.contains("crius-kata-agent"),
        "{handler}: but not the VM's own processes: {seen}"
    );
    let pid1 = pid1_seen_by(&env, &a).await;
    assert!(
        matches!(pid1.as_str(), "/catatonit -P " | "pause "),
        "{handler}: PID 1 of the shared namespace is the pod's init, not a container: {pid1:?}"
    );

    env.rt()
        .stop_container(cri::StopContainerRequest {
            container_id: a.clone(),
            timeout: 2,
        })
        .await
        .expect("StopContainer");
    let seen = processes_seen_by(&env, &b).await;
    assert!(
        !seen.contains("sleep 1011") && seen.contains("sleep 1012"),
        "{handler}: {seen}"
    );
    assert_eq!(pid1_seen_by(&env, &b).await, pid1);

    env.stop_and_remove_pod(&pod_id).await;
    assert_nothing_left(&env, "after the shared-PID pod");
}

/// A host directory bind-mounted onto itself with shared propagation (what
/// a Bidirectional volume needs on the host); unmounted on drop.
struct SharedHostDir(PathBuf);

impl SharedHostDir {
    fn new(path: &Path) -> Self {
        for args in [
            vec!["--bind", path.to_str().unwrap(), path.to_str().unwrap()],
            vec!["--make-shared", path.to_str().unwrap()],
        ] {
            let status = std::process::Command::new("mount")
                .args(&args)
                .status()
                .expect("mount");
            assert!(status.success(), "mount {args:?}");
        }
        SharedHostDir(path.to_path_buf())
    }
}

impl Drop for SharedHostDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn volume(host: &Path, at: &str, propagation: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: at.to_string(),
        host_path: host.display().to_string(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

/// A mount one container makes in a Bidirectional volume reaches another
/// container with the same volume; a read-only volume is read-only and
/// leaves its host source unmounted and removable once the pod is gone.
async fn bidirectional_volumes_propagate_and_read_only_volumes_leave_nothing_busy(
    handler: &'static str,
) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let shared_mount = SharedHostDir::new(shared.path());
    let ro_source = tempfile::tempdir().unwrap();
    std::fs::write(ro_source.path().join("data"), "read-only data\n").unwrap();

    let pod = env.pod_config("propagation");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let with_mounts = |name: &str, cmd: &[&str], mounts: Vec<cri::Mount>| {
        let mut c = privileged(env.container_config(name, cmd));
        c.mounts = mounts;
        c
    };
    let bidirectional = cri::MountPropagation::PropagationBidirectional;
    let a = env
        .create_and_start(
            &pod_id,
            &pod,
            with_mounts(
                "a",
                &["sleep", "1021"],
                vec![volume(shared.path(), "/vol", bidirectional)],
            ),
        )
        .await;
    let mut ro = volume(
        ro_source.path(),
        "/ro",
        cri::MountPropagation::PropagationPrivate,
    );
    ro.readonly = true;
    let b = env
        .create_and_start(
            &pod_id,
            &pod,
            with_mounts(
                "b",
                &["sleep", "1022"],
                vec![volume(shared.path(), "/vol", bidirectional), ro],
            ),
        )
        .await;

    let (code, _, err) = env
        .exec_sync(
            &a,
            &[
                "sh",
                "-c",
                "mkdir -p /vol/sub && mount -t tmpfs tmpfs /vol/sub && echo from-a >/vol/sub/f",
            ],
        )
        .await;
    assert_eq!(code, 0, "{handler}: mount in container a: {err}");
    let (code, out, err) = env.exec_sync(&b, &["cat", "/vol/sub/f"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "from-a\n"),
        "{handler}: container a's mount reached container b: {err}"
    );

    let (_, out, _) = env.exec_sync(&b, &["cat", "/ro/data"]).await;
    assert_eq!(out, "read-only data\n");
    let (code, _, _) = env.exec_sync(&b, &["touch", "/ro/new"]).await;
    assert_ne!(code, 0, "{handler}: the read-only volume is read-only");

    env.stop_and_remove_pod(&pod_id).await;
    assert_nothing_left(&env, "after the propagation pod");
    // The tmpfs container a made may have propagated to the host (that is
    // what Bidirectional means); it goes with the shared bind.
    let _ = nix::mount::umount2(&shared.path().join("sub"), nix::mount::MntFlags::MNT_DETACH);
    drop(shared_mount);
    let ro_path = ro_source.path().display().to_string();
    let busy = mounts_containing(&ro_path);
    assert!(
        busy.is_empty(),
        "{handler}: nothing mounts the read-only source any more: {busy:?}"
    );
    ro_source
        .close()
        .expect("the read-only source is not busy after the pod is gone");
}

/// StopContainer returns as soon as a container that handles SIGTERM has
/// exited, well inside a long grace period, and kills one that ignores it
/// at the deadline (exit 137); stopping an exited container is immediate.
async fn stop_returns_when_the_container_exits_and_kills_at_the_deadline(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("stopping");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let polite = env
        .create_and_start(
            &pod_id,
            &pod,
            env.container_config(
                "polite",
                &[
                    "sh",
                    "-c",
                    "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.2; done",
                ],
            ),
        )
        .await;
    let stubborn = env
        .create_and_start(
            &pod_id,
            &pod,
            env.container_config(
                "stubborn",
                &[
                    "sh",
                    "-c",
                    "trap '' TERM; echo ready; while true; do sleep 0.2; done",
                ],
            ),
        )
        .await;
    let logs = Path::new(&pod.log_directory);
    for name in ["polite", "stubborn"] {
        wait_for_log(
            &logs.join(name).join("0.log"),
            "ready",
            Duration::from_secs(20),
        )
        .await;
    }

    let stop = |id: &str, timeout: i64| {
        let mut rt = env.rt();
        let id = id.to_string();
        async move {
            let started = Instant::now();
            rt.stop_container(cri::StopContainerRequest {
                container_id: id,
                timeout,
            })
            .await
            .expect("StopContainer");
            started.elapsed()
        }
    };
    let took = stop(&polite, 60).await;
    assert!(
        took < Duration::from_secs(2),
        "{handler}: StopContainer(60 s) of a container that exits on SIGTERM took {took:?}"
    );
    let status = env.container_status(&polite).await;
    assert_eq!(
        (status.state, status.exit_code),
        (cri::ContainerState::ContainerExited as i32, 0),
        "{handler}: {status:?}"
    );
    let took = stop(&polite, 60).await;
    assert!(
        took < Duration::from_secs(1),
        "{handler}: stopping an exited container took {took:?}"
    );

    let took = stop(&stubborn, 2).await;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{handler}: StopContainer(2 s) of a container ignoring SIGTERM took {took:?}"
    );
    let status = env.wait_exited(&stubborn, Duration::from_secs(5)).await;
    assert_eq!(status.exit_code, 137, "{handler}: killed: {status:?}");

    let started = Instant::now();
    env.stop_and_remove_pod(&pod_id).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "{handler}: StopPodSandbox + RemovePodSandbox took {took:?}"
    );
    assert_nothing_left(&env, "after the stopping pod");
}

macro_rules! per_handler {
    ($($handler:ident),* $(,)?) => {
        $(
            mod $handler {
                #[tokio::test(flavor = "multi_thread")]
                async fn containers_have_their_own_pid_namespace_and_the_pods_sysctls() {
                    super::containers_have_their_own_pid_namespace_and_the_pods_sysctls(
                        stringify!($handler),
                    )
                    .await
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn a_shared_pid_namespace_shows_every_container_under_the_pods_init() {
                    super::a_shared_pid_namespace_shows_every_container_under_the_pods_init(
                        stringify!($handler),
                    )
                    .await
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn bidirectional_volumes_propagate_and_read_only_volumes_leave_nothing_busy() {
                    super::bidirectional_volumes_propagate_and_read_only_volumes_leave_nothing_busy(
                        stringify!($handler),
                    )
                    .await
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn stop_returns_when_the_container_exits_and_kills_at_the_deadline() {
                    super::stop_returns_when_the_container_exits_and_kills_at_the_deadline(
                        stringify!($handler),
                    )
                    .await
                }
            }
        )*
    };
}

per_handler!(runc, crun, kata);
