//! Pods in user namespaces (`hostUsers: false`), through the CRI socket,
//! for the runc and the crun handler: what kubelet sends (the pod's
//! mappings in its namespace options and on the volumes it id-maps) and
//! what the containers see.

use std::os::unix::fs::MetadataExt;

use crius_proto::cri;
use crius_tests::pods::{PodEnv, PodEnvOptions};

/// Host ids of the pod: kubelet hands out multiples of 65536.
const HOST_BASE: u32 = 65536 * 7;
const LENGTH: u32 = 65536;

fn mapping(host_id: u32) -> Vec<cri::IdMapping> {
    vec![cri::IdMapping {
        host_id,
        container_id: 0,
        length: LENGTH,
    }]
}

fn in_userns(config: cri::PodSandboxConfig, host_id: u32) -> cri::PodSandboxConfig {
    crius_tests::cri::configs::in_pod_userns(config, host_id)
}

fn container_in_userns(mut config: cri::ContainerConfig) -> cri::ContainerConfig {
    config
        .linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default()
        .namespace_options
        .get_or_insert_default()
        .userns_options = Some(crius_tests::cri::configs::pod_userns(HOST_BASE));
    config
}

fn pins(env: &PodEnv) -> Vec<String> {
    std::fs::read_dir(env.daemon.state_dir().join("userns"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `cmd` in `id`; its stdout, once it succeeded.
async fn run_ok(env: &PodEnv, id: &str, cmd: &[&str]) -> String {
    let (code, out, err) = env.exec_sync(id, cmd).await;
    assert_eq!(code, 0, "{cmd:?}: {out} {err}");
    out
}

/// The user namespace `id`'s processes are in (`user:[inode]`).
async fn user_ns_of(env: &PodEnv, id: &str) -> String {
    run_ok(env, id, &["readlink", "/proc/self/ns/user"]).await
}

async fn pods_run_in_their_user_namespace_with_id_mapped_files(handler: &'static str) {
    let Some(env) = PodEnv::start(
        handler,
        PodEnvOptions {
            applets: &["stat", "readlink", "id", "touch", "ip"],
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    // Reported, because it works (shown below).
    let status = env
        .rt()
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let features = crius_tests::cri::handler_features(&status, handler);
    assert!(features.user_namespaces, "{status:?}");

    // A volume as kubelet makes them: owned by host root, with a file of
    // uid 1000 in it; one id-mapped mount of it and one plain.
    let volume = tempfile::tempdir().unwrap();
    let owned = volume.path().join("owned-by-1000");
    std::fs::write(&owned, b"x").unwrap();
    std::os::unix::fs::chown(&owned, Some(1000), Some(1000)).unwrap();
    let mapped_mount = cri::Mount {
        container_path: "/vol".into(),
        host_path: volume.path().display().to_string(),
        uid_mappings: mapping(HOST_BASE),
        gid_mappings: mapping(HOST_BASE),
        ..Default::default()
    };
    let plain_mount = cri::Mount {
        container_path: "/plain".into(),
        host_path: volume.path().display().to_string(),
        ..Default::default()
    };

    let pod = in_userns(env.pod_config("userns"), HOST_BASE);
    let pod_id = env
        .run_pod(&pod)
        .await
        .expect("RunPodSandbox in a user namespace");
    let mut config = container_in_userns(env.container_config("app", &["sleep", "1000"]));
    config.mounts = vec![mapped_mount, plain_mount];
    let app = env.create_and_start(&pod_id, &pod, config).await;

    // Root inside is the pod's first host id outside.
    let uid_map = run_ok(&env, &app, &["cat", "/proc/self/uid_map"]).await;
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!(
        fields,
        ["0", &HOST_BASE.to_string(), &LENGTH.to_string()],
        "{uid_map}"
    );
    assert_eq!(run_ok(&env, &app, &["id", "-u"]).await.trim(), "0");
    // The image's files keep their owner (root) and root can write them.
    assert_eq!(
        run_ok(&env, &app, &["stat", "-c", "%u:%g", "/bin/busybox"])
            .await
            .trim(),
        "0:0"
    );
    run_ok(&env, &app, &["touch", "/etc/written-by-root"]).await;
    // The id-mapped volume shows the kubelet's owners; writes land as host
    // root on disk.
    assert_eq!(
        run_ok(&env, &app, &["stat", "-c", "%u:%g", "/vol"])
            .await
            .trim(),
        "0:0"
    );
    assert_eq!(
        run_ok(&env, &app, &["stat", "-c", "%u:%g", "/vol/owned-by-1000"])
            .await
            .trim(),
        "1000:1000"
    );
    run_ok(&env, &app, &["touch", "/vol/written-in-pod"]).await;
    let written = std::fs::metadata(volume.path().join("written-in-pod")).unwrap();
    assert_eq!((written.uid(), written.gid()), (0, 0));
    // Without mappings the same files belong to nobody.
    assert_eq!(
        run_ok(&env, &app, &["stat", "-c", "%u", "/plain/owned-by-1000"])
            .await
            .trim(),
        "65534"
    );
    // The pod network works in the user namespace.
    let addrs = run_ok(&env, &app, &["ip", "-4", "addr", "show", "eth0"]).await;
    assert!(addrs.contains("inet "), "{addrs}");

    // A second container joins the same user namespace.
    let second = env
        .create_and_start(
            &pod_id,
            &pod,
            container_in_userns(env.container_config("second", &["sleep", "1000"])),
        )
        .await;
    assert_eq!(
        user_ns_of(&env, &app).await,
        user_ns_of(&env, &second).await
    );
    assert_eq!(pins(&env), vec![pod_id.clone()]);

    env.stop_and_remove_pod(&pod_id).await;
    assert!(pins(&env).is_empty(), "the user namespace pin is removed");
}

async fn user_namespaces_that_cannot_work_are_refused(handler: &'static str) {
    let Some(env) = PodEnv::start(handler, PodEnvOptions::default()).await else {
        return;
    };
    // The host's root mapped into a pod.
    let err = env
        .run_pod(&in_userns(env.pod_config("hostroot"), 0))
        .await
        .expect_err("mapping host uid 0 is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("host's id 0"), "{err:?}");
    // A user namespace with the host's network.
    let mut config = in_userns(env.pod_config("hostnet"), HOST_BASE);
    config
        .linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default()
        .namespace_options
        .get_or_insert_default()
        .network = cri::NamespaceMode::Node as i32;
    let err = env
        .run_pod(&config)
        .await
        .expect_err("a user namespace with the host network is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("network"), "{err:?}");
    // A volume with mappings in a pod without a user namespace.
    let pod = env.pod_config("plain");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let volume = tempfile::tempdir().unwrap();
    let mut container = env.container_config("mapped", &["true"]);
    container.mounts.push(cri::Mount {
        container_path: "/vol".into(),
        host_path: volume.path().display().to_string(),
        uid_mappings: mapping(HOST_BASE),
        gid_mappings: mapping(HOST_BASE),
        ..Default::default()
    });
    let err = env
        .rt()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("id mappings without a user namespace are refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    env.stop_and_remove_pod(&pod_id).await;
    assert!(pins(&env).is_empty(), "nothing pinned: {:?}", pins(&env));
}

/// A user-namespace pod survives `kill -9` of the daemon: its containers
/// keep running in the pinned namespaces, a new container joins them, and
/// removing the pod afterwards leaves no pin.
async fn user_namespace_pods_survive_a_daemon_crash(handler: &'static str) {
    let Some(mut env) = PodEnv::start(
        handler,
        PodEnvOptions {
            applets: &["readlink"],
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let pod = in_userns(env.pod_config("crash"), HOST_BASE + LENGTH);
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let first = env
        .create_and_start(
            &pod_id,
            &pod,
            env.container_config("first", &["sleep", "1000"]),
        )
        .await;
    let before = user_ns_of(&env, &first).await;

    env.daemon.kill9();
    env.daemon.restart().await.expect("the daemon restarts");

    assert_eq!(user_ns_of(&env, &first).await, before);
    let second = env
        .create_and_start(
            &pod_id,
            &pod,
            env.container_config("second", &["sleep", "1000"]),
        )
        .await;
    assert_eq!(user_ns_of(&env, &second).await, before);
    let (_, uid_map, _) = env.exec_sync(&second, &["cat", "/proc/self/uid_map"]).await;
    assert!(
        uid_map.contains(&(HOST_BASE + LENGTH).to_string()),
        "{uid_map}"
    );
    env.stop_and_remove_pod(&pod_id).await;
    assert!(pins(&env).is_empty(), "{:?}", pins(&env));
    assert!(
        !env.daemon
            .state_dir()
            .join("userns-pods")
            .join(&pod_id)
            .exists(),
        "the pod's user-namespace directory is removed"
    );
}

macro_rules! per_handler {
    ($($handler:ident),*) => {$(
        mod $handler {
            #[tokio::test]
            async fn pods_run_in_their_user_namespace_with_id_mapped_files() {
                super::pods_run_in_their_user_namespace_with_id_mapped_files(
                    stringify!($handler),
                )
                .await;
            }

            #[tokio::test]
            async fn user_namespace_pods_survive_a_daemon_crash() {
                super::user_namespace_pods_survive_a_daemon_crash(stringify!($handler)).await;
            }

            #[tokio::test]
            async fn user_namespaces_that_cannot_work_are_refused() {
                super::user_namespaces_that_cannot_work_are_refused(stringify!($handler)).await;
            }
        }
    )*};
}

per_handler!(runc, crun);
