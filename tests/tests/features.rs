//! Pod features the kubelet hands to the runtime, through the CRI socket,
//! for the runc and the crun handler.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crius_proto::cri;
use crius_proto::cri::security_profile::ProfileType;
use crius_tests::pods::{PodEnv, PodEnvOptions};

const GCC: &str = "/usr/bin/gcc";

/// Builds `tests/probes/<name>.c` as a static binary into a fresh directory
/// (mounted read-only into containers at `/probe`).
fn build_probe(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("crius-probe-")
        .tempdir()
        .unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/probes/{name}.c"));
    let out = dir.path().join(name);
    let status = std::process::Command::new(GCC)
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc {} failed", source.display());
    (dir, out)
}

fn probe_mount(dir: &Path) -> cri::Mount {
    cri::Mount {
        container_path: "/probe".into(),
        host_path: dir.display().to_string(),
        readonly: true,
        ..Default::default()
    }
}

/// `name=result` lines of a probe's output.
fn results(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            // CRI log lines: "<time> stdout F name=result".
            let field = line.rsplit(' ').next()?;
            let (name, result) = field.split_once('=')?;
            Some((name.to_string(), result.to_string()))
        })
        .collect()
}

fn seccomp(profile: ProfileType) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: profile as i32,
        localhost_ref: String::new(),
    })
}

/// The syscalls' results in a container with `profile`, from the
/// container's own process (its log) and from an ExecSync in it.
async fn probe_with(
    env: &PodEnv,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    probe_dir: &Path,
    name: &str,
    profile: ProfileType,
) -> (HashMap<String, String>, HashMap<String, String>, String) {
    let mut config = env.container_config(name, &["sh", "-c", "/probe/syscalls; exec sleep 1000"]);
    config.mounts.push(probe_mount(probe_dir));
    config
        .linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default()
        .seccomp = seccomp(profile);
    let id = env.create_and_start(pod_id, pod, config).await;
    let log = env.log_with(pod, name, "socket_inet=").await;
    let (code, exec_out, stderr) = env.exec_sync(&id, &["/probe/syscalls"]).await;
    assert_eq!(code, 0, "probe exec: {exec_out} {stderr}");
    (results(&log), results(&exec_out), id)
}

async fn runtime_default_seccomp_is_default_deny(handler: &'static str) {
    let Some(env) = PodEnv::start(
        handler,
        PodEnvOptions {
            tools: &[GCC],
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let (probe_dir, _) = build_probe("syscalls");
    let pod = env.pod_config("seccomp");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");

    let (unconfined, _, _) = probe_with(
        &env,
        &pod_id,
        &pod,
        probe_dir.path(),
        "unconfined",
        ProfileType::Unconfined,
    )
    .await;
    // The probe means something: unconfined, the kernel allows these.
    assert_eq!(unconfined["kcmp"], "ok", "{unconfined:?}");
    assert_eq!(unconfined["personality"], "ok", "{unconfined:?}");
    assert_eq!(unconfined["sys999"], "errno:38", "ENOSYS: {unconfined:?}");

    let (main, exec, id) = probe_with(
        &env,
        &pod_id,
        &pod,
        probe_dir.path(),
        "confined",
        ProfileType::RuntimeDefault,
    )
    .await;
    for (what, got) in [("main process", &main), ("exec", &exec)] {
        // Outside the allow-list: EPERM.
        for call in ["kcmp", "personality", "unshare", "keyctl"] {
            assert_eq!(got[call], "errno:1", "{what}: {call} is denied: {got:?}");
        }
        // A syscall no list knows: EPERM from the profile's default, or
        // ENOSYS where the runtime answers numbers beyond every syscall it
        // knows that way (runc does, so that libc falls back).
        assert!(
            ["errno:1", "errno:38"].contains(&got["sys999"].as_str()),
            "{what}: {got:?}"
        );
        for call in ["getpid", "socket_inet"] {
            assert_eq!(got[call], "ok", "{what}: {call} is allowed: {got:?}");
        }
    }
    // Ordinary programs run.
    let (code, out, err) = env
        .exec_sync(
            &id,
            &[
                "sh",
                "-c",
                "ls / >/dev/null && cat /etc/hostname && echo fine",
            ],
        )
        .await;
    assert_eq!(
        (code, out.trim().lines().last()),
        (0, Some("fine")),
        "{err}"
    );

    env.stop_and_remove_pod(&pod_id).await;
}

/// A CDI device from a test spec appears in the container (a node backed by
/// the host's /dev/null, usable through the device cgroup, and an env var);
/// an unknown device fails CreateContainer with InvalidArgument and leaves
/// no container behind.
async fn cdi_devices_are_applied_and_unknown_ones_refused(handler: &'static str) {
    let cdi_dir = tempfile::Builder::new()
        .prefix("crius-cdi-")
        .tempdir()
        .unwrap();
    std::fs::write(
        cdi_dir.path().join("test.yaml"),
        "cdiVersion: 0.6.0\nkind: crius.test/null\ndevices:\n  - name: one\n    containerEdits:\n      \
         env: [CDI_TEST=from-cdi]\n      deviceNodes:\n        - path: /dev/crius-null\n          \
         hostPath: /dev/null\n",
    )
    .unwrap();
    let extra = format!("cdi_spec_dirs: [\"{}\"]\n", cdi_dir.path().display());
    let Some(env) = PodEnv::start(
        handler,
        PodEnvOptions {
            extra_yaml: &extra,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let pod = env.pod_config("cdi");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");

    let script = "test -c /dev/crius-null && echo node-ok; echo x > /dev/crius-null && echo \
                  write-ok; echo env=$CDI_TEST; exec sleep 1000";
    let mut config = env.container_config("with-device", &["sh", "-c", script]);
    config.cdi_devices = vec![cri::CdiDevice {
        name: "crius.test/null=one".into(),
    }];
    env.create_and_start(&pod_id, &pod, config).await;
    let log = env.log_with(&pod, "with-device", "env=").await;
    for needle in ["node-ok", "write-ok", "env=from-cdi"] {
        assert!(log.contains(needle), "{needle} in {log:?}");
    }

    let mut config = env.container_config("unknown", &["sleep", "1000"]);
    config.cdi_devices = vec![cri::CdiDevice {
        name: "crius.test/null=two".into(),
    }];
    let err = env
        .create(&pod_id, &pod, config)
        .await
        .expect_err("an unknown CDI device is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("unknown CDI device \"crius.test/null=two\""),
        "{err:?}"
    );
    let containers = env
        .rt()
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(
        containers.len(),
        1,
        "nothing left of the refused one: {containers:?}"
    );
    env.stop_and_remove_pod(&pod_id).await;
}

/// A hook from a test hooks dir (oci-hooks(5) format) runs at
/// `createRuntime` and `poststop` for a container whose annotation matches,
/// and not for one whose annotation does not.
async fn hooks_from_the_hooks_dir_run_when_they_match(handler: &'static str) {
    let hooks_dir = tempfile::Builder::new()
        .prefix("crius-hooks-")
        .tempdir()
        .unwrap();
    let out = hooks_dir.path().join("states");
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat >> {}; echo >> {}", out.display(), out.display())]
        },
        "when": {"annotations": {"^crius\\.test/hook$": "^yes$"}},
        "stages": ["createRuntime", "poststop"]
    });
    std::fs::write(hooks_dir.path().join("50-test.json"), hook.to_string()).unwrap();
    let extra = format!("hooks_dirs: [\"{}\"]\n", hooks_dir.path().display());
    let Some(env) = PodEnv::start(
        handler,
        PodEnvOptions {
            extra_yaml: &extra,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let pod = env.pod_config("hooks");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let mut config = env.container_config("hooked", &["sleep", "1000"]);
    config
        .annotations
        .insert("crius.test/hook".into(), "yes".into());
    let hooked = env.create_and_start(&pod_id, &pod, config).await;
    let mut config = env.container_config("plain", &["sleep", "1000"]);
    config
        .annotations
        .insert("crius.test/hook".into(), "no".into());
    let plain = env.create_and_start(&pod_id, &pod, config).await;

    let states = || std::fs::read_to_string(&out).unwrap_or_default();
    let lines = states();
    assert!(
        // runc reports `creating` there, crun already `created`.
        lines
            .lines()
            .any(|l| l.contains(&hooked)
                && (l.contains("\"creating\"") || l.contains("\"created\""))),
        "createRuntime ran with the container's state: {lines:?}"
    );
    assert!(
        !lines.contains(&plain),
        "not for the other container: {lines:?}"
    );

    let mut rt = env.rt();
    for id in [&hooked, &plain] {
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .expect("RemoveContainer");
    }
    let lines = states();
    assert!(
        lines
            .lines()
            .any(|l| l.contains(&hooked) && l.contains("stopped")),
        "poststop ran: {lines:?}"
    );
    assert!(
        !lines.contains(&plain),
        "not for the other container: {lines:?}"
    );
    env.stop_and_remove_pod(&pod_id).await;
}

/// `Status` advertises SupplementalGroupsPolicy (Strict is implemented) and
/// `ContainerStatus.user` reports the identity the container runs with:
/// with `Strict`, only the groups the pod names, none from the image.
async fn container_user_is_reported_and_strict_groups_are_advertised(handler: &'static str) {
    let Some(env) = PodEnv::start(handler, PodEnvOptions::default()).await else {
        return;
    };
    let status = env
        .rt()
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let features = status.features.expect("runtime features");
    assert!(features.supplemental_groups_policy, "{features:?}");
    assert!(!features.user_namespaces_host_network, "{features:?}");

    let pod = env.pod_config("user");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let mut config = env.container_config("ids", &["sh", "-c", "id; exec sleep 1000"]);
    let sc = config
        .linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default();
    sc.run_as_user = Some(cri::Int64Value { value: 1234 });
    sc.run_as_group = Some(cri::Int64Value { value: 2345 });
    sc.supplemental_groups = vec![3456];
    sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    let id = env.create_and_start(&pod_id, &pod, config).await;
    let log = env.log_with(&pod, "ids", "uid=").await;
    let status = env.container_status(&id).await;
    let user = status
        .user
        .and_then(|u| u.linux)
        .expect("ContainerStatus.user.linux");
    assert_eq!((user.uid, user.gid), (1234, 2345), "{user:?}");
    assert!(user.supplemental_groups.contains(&3456), "{user:?}");
    // What `id` printed inside agrees.
    assert!(
        log.contains("uid=1234") && log.contains("gid=2345"),
        "{log}"
    );
    assert!(log.contains("3456"), "{log}");
    env.stop_and_remove_pod(&pod_id).await;
}

/// Image volumes (KEP-4639): an image the kubelet pulled is mounted
/// read-only into the container (a sub-path of it here), counts as in use
/// while the container exists, and leaves no mount behind.
async fn image_volumes_mount_read_only_and_keep_their_image_in_use(handler: &'static str) {
    use crius_tests::image::{self, Compression, Layer, LayerBuilder, ManifestFormat};
    let Some(env) = PodEnv::start(handler, PodEnvOptions::default()).await else {
        return;
    };
    let mut layer = LayerBuilder::new();
    layer
        .dir("models", 0o755)
        .unwrap()
        .file("models/weights.txt", b"the model\n", 0o644)
        .unwrap();
    let data = image::push_image(
        &env.registry,
        "models",
        "1",
        vec![Layer::new(layer.finish().unwrap(), Compression::Gzip)],
        &image::ImageConfig::default(),
        ManifestFormat::Oci,
    )
    .await
    .expect("push the data image");
    let data_ref = data.reference(&env.registry);
    let mut images = env.daemon.image();
    crius_tests::cri::images::pull(&mut images, &data_ref)
        .await
        .expect("pull the data image");

    let pod = env.pod_config("imagevol");
    let pod_id = env.run_pod(&pod).await.expect("RunPodSandbox");
    let mut config = env.container_config("reader", &["sleep", "1000"]);
    config.mounts.push(cri::Mount {
        container_path: "/models".into(),
        image: Some(cri::ImageSpec {
            image: data_ref.clone(),
            ..Default::default()
        }),
        image_sub_path: "models".into(),
        ..Default::default()
    });
    let id = env.create_and_start(&pod_id, &pod, config).await;
    let (code, out, err) = env.exec_sync(&id, &["cat", "/models/weights.txt"]).await;
    assert_eq!((code, out.as_str()), (0, "the model\n"), "{err}");
    let (code, _, _) = env.exec_sync(&id, &["touch", "/models/new"]).await;
    assert_ne!(code, 0, "the image volume is read-only");

    let err = crius_tests::cri::images::remove(&mut images, &data_ref)
        .await
        .expect_err("an image mounted as a volume is in use");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // A sub-path that climbs out is refused before anything is created.
    let mut bad = env.container_config("climber", &["true"]);
    bad.mounts.push(cri::Mount {
        container_path: "/x".into(),
        image: Some(cri::ImageSpec {
            image: data_ref.clone(),
            ..Default::default()
        }),
        image_sub_path: "../..".into(),
        ..Default::default()
    });
    let err = env
        .rt()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(bad),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect_err("image_sub_path with ..");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    env.stop_and_remove_pod(&pod_id).await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = env.daemon.dir().display().to_string();
    let left: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(&ours) && l.contains("image-volumes"))
        .collect();
    assert!(left.is_empty(), "no image volume stays mounted: {left:?}");
    crius_tests::cri::images::remove(&mut images, &data_ref)
        .await
        .expect("the image is free once the container is gone");
}

macro_rules! per_handler {
    ($($handler:ident),*) => {$(
        mod $handler {
            #[tokio::test]
            async fn runtime_default_seccomp_is_default_deny() {
                super::runtime_default_seccomp_is_default_deny(stringify!($handler)).await;
            }

            #[tokio::test]
            async fn container_user_is_reported_and_strict_groups_are_advertised() {
                super::container_user_is_reported_and_strict_groups_are_advertised(
                    stringify!($handler),
                )
                .await;
            }

            #[tokio::test]
            async fn hooks_from_the_hooks_dir_run_when_they_match() {
                super::hooks_from_the_hooks_dir_run_when_they_match(stringify!($handler)).await;
            }

            #[tokio::test]
            async fn image_volumes_mount_read_only_and_keep_their_image_in_use() {
                super::image_volumes_mount_read_only_and_keep_their_image_in_use(
                    stringify!($handler),
                )
                .await;
            }

            #[tokio::test]
            async fn cdi_devices_are_applied_and_unknown_ones_refused() {
                super::cdi_devices_are_applied_and_unknown_ones_refused(stringify!($handler))
                    .await;
            }
        }
    )*};
}

per_handler!(runc, crun);
