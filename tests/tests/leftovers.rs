//! `crius check --leftovers [--repair]`: a pod whose records were lost
//! while the daemon was down leaves processes, runtime state, mounts, a
//! netns pin, a cgroup, an IPAM lease and its directory; the audit names
//! each one and the repair removes them all.
//!
//! Its own test binary: pod cgroups (`/crius/pod-<id>`) are host-wide, so
//! no other daemon's pods may run while this one repairs.

use std::path::Path;

use crius_tests::host::{mounts_containing, processes_matching};
use crius_tests::pods::{PodEnv, PodEnvOptions};

/// The tests of this binary one at a time: a repair removes host-wide
/// things (pod cgroups) that no record of *its* daemon names.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `crius --config <config> check --leftovers <extra>`; returns
/// (success, stdout, stderr).
fn check_leftovers(config: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(crius_tests::daemon::crius_bin())
        .arg("--config")
        .arg(config)
        .args(["check", "--leftovers"])
        .args(extra)
        .output()
        .expect("crius runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pod cgroups of other daemons' pods (an earlier suite's leak) are
/// host-wide; everything else the audit reports is this daemon's.
fn ours(line: &str, pod: &str, daemon_dir: &Path) -> bool {
    line.contains(pod) || line.contains(&daemon_dir.display().to_string())
}

fn cgroup_dirs_of(pod: &str) -> Vec<String> {
    let mut found = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = hierarchy.path().join("crius").join(format!("pod-{pod}"));
        if dir.exists() {
            found.push(dir.display().to_string());
        }
    }
    let unified = Path::new("/sys/fs/cgroup/crius").join(format!("pod-{pod}"));
    if unified.exists() {
        found.push(unified.display().to_string());
    }
    found
}

fn leases_of(dir: &Path, pod: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(pod)) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn leftovers_of_a_pod_whose_records_were_lost_are_listed_and_repaired() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut env) = PodEnv::start("runc", PodEnvOptions::default()).await else {
        return;
    };
    let config = env.daemon.config_path().to_path_buf();
    let daemon_dir = env.daemon.dir().to_path_buf();

    let pod_config = env.pod_config("lost");
    let pod = env.run_pod(&pod_config).await.expect("RunPodSandbox");
    let ctr = env
        .create_and_start(
            &pod,
            &pod_config,
            env.container_config("app", &["sleep", "600"]),
        )
        .await;

    // A pod with its records: nothing of it is a leftover.
    let (_, out, _) = check_leftovers(&config, &[]);
    let mine: Vec<&str> = out.lines().filter(|l| ours(l, &pod, &daemon_dir)).collect();
    assert!(
        mine.is_empty(),
        "a recorded pod reported as left over:\n{out}"
    );

    // Content of the image store no record references.
    let blob = env.daemon.root().join("blobs/sha256").join("ab".repeat(32));
    std::fs::write(&blob, b"stray").unwrap();

    // A repair is refused while the daemon answers: it could take a pod
    // being created.
    let (ok, out, err) = check_leftovers(&config, &["--repair"]);
    assert!(!ok, "{out}");
    assert!(err.contains("stop it before --repair"), "{err}");
    assert!(
        out.contains(&format!("leftover blob: {}", blob.display())),
        "{out}"
    );
    assert!(blob.exists(), "a refused repair removed something");

    // The daemon dies, and the pod's records are lost with it.
    env.daemon.kill9();
    let pods_dir = env.daemon.pods_dir();
    let pod_dir = pods_dir.join(&pod);
    std::fs::remove_file(pod_dir.join("pod.json")).unwrap();
    std::fs::remove_file(pod_dir.join("containers").join(format!("{ctr}.json"))).unwrap();
    let netns_pin = env.daemon.state_dir().join("netns").join(&pod);
    assert!(netns_pin.exists());
    assert!(
        !leases_of(env.cni_dir.path(), &pod).is_empty(),
        "no lease to lose"
    );
    assert!(!cgroup_dirs_of(&pod).is_empty(), "no pod cgroup to lose");
    let runtime_root = env.daemon.state_dir().join("runc");
    for id in [&pod, &ctr] {
        assert!(
            runtime_root.join(id).exists(),
            "no runtime state of {id} to lose"
        );
    }

    let (ok, out, err) = check_leftovers(&config, &[]);
    assert!(!ok, "{out}");
    assert!(err.contains("--repair"), "{err}");
    let no_record = format!("pod {pod} has no record");
    for expected in [
        format!("conmon: {no_record}"),
        format!("leftover runtime state: {pod} "),
        format!("leftover runtime state: {ctr} "),
        format!("leftover mount: {}", pod_dir.join("shm").display()),
        format!(
            "leftover mount: {}",
            pod_dir.join("containers").join(&ctr).display()
        ),
        format!("leftover netns pin: {} ({no_record})", netns_pin.display()),
        format!("leftover cgroup: /crius/pod-{pod} ({no_record})"),
        format!("is leased to pod {pod}, which has no record"),
        format!(
            "leftover directory: {} (pod directory without a pod record)",
            pod_dir.display()
        ),
        format!("leftover blob: {}", blob.display()),
    ] {
        assert!(out.contains(&expected), "no {expected:?} in:\n{out}");
    }

    let (ok, out, err) = check_leftovers(&config, &["--repair"]);
    // Whatever is left must be someone else's (see `ours`).
    if !ok {
        let remaining: Vec<&str> = err
            .lines()
            .skip_while(|l| !l.contains("remain"))
            .skip(1)
            .filter(|l| ours(l, &pod, &daemon_dir))
            .collect();
        assert!(remaining.is_empty(), "left after --repair:\n{out}\n{err}");
    }
    assert!(
        out.contains(&format!("removed netns pin: {}", netns_pin.display())),
        "{out}"
    );

    // Gone from the host, each one.
    assert!(!pod_dir.exists(), "{} still there", pod_dir.display());
    assert!(!netns_pin.exists(), "{} still there", netns_pin.display());
    assert!(!blob.exists(), "{} still there", blob.display());
    assert_eq!(mounts_containing(&pod), Vec::<String>::new());
    assert_eq!(processes_matching(&[&pod]), Vec::<String>::new());
    assert_eq!(cgroup_dirs_of(&pod), Vec::<String>::new());
    assert_eq!(leases_of(env.cni_dir.path(), &pod), Vec::<String>::new());
    for id in [&pod, &ctr] {
        assert!(
            !runtime_root.join(id).exists(),
            "runtime state of {id} left"
        );
    }
    let (_, out, _) = check_leftovers(&config, &[]);
    let mine: Vec<&str> = out.lines().filter(|l| ours(l, &pod, &daemon_dir)).collect();
    assert!(mine.is_empty(), "after the repair:\n{out}");
}

/// The same for a pod in a user namespace: its namespace pin and its
/// user-namespace directory (with the rootfs and shm mounts in it) are
/// named and removed too.
#[tokio::test]
async fn leftovers_of_a_lost_user_namespace_pod_are_listed_and_repaired() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut env) = PodEnv::start("runc", PodEnvOptions::default()).await else {
        return;
    };
    let config = env.daemon.config_path().to_path_buf();
    let daemon_dir = env.daemon.dir().to_path_buf();
    let pod_config =
        crius_tests::cri::configs::in_pod_userns(env.pod_config("lost-userns"), 65536 * 11);
    let pod = env.run_pod(&pod_config).await.expect("RunPodSandbox");
    let ctr = env
        .create_and_start(
            &pod,
            &pod_config,
            env.container_config("app", &["sleep", "600"]),
        )
        .await;

    env.daemon.kill9();
    let pod_dir = env.daemon.pods_dir().join(&pod);
    std::fs::remove_file(pod_dir.join("pod.json")).unwrap();
    std::fs::remove_file(pod_dir.join("containers").join(format!("{ctr}.json"))).unwrap();
    let userns_pin = env.daemon.state_dir().join("userns").join(&pod);
    let userns_dir = env.daemon.state_dir().join("userns-pods").join(&pod);
    assert!(userns_pin.exists() && userns_dir.exists());

    let (ok, out, _) = check_leftovers(&config, &[]);
    assert!(!ok, "{out}");
    let no_record = format!("pod {pod} has no record");
    for expected in [
        format!("leftover netns pin: {} ({no_record})", userns_pin.display()),
        format!(
            "leftover mount: {}",
            userns_dir.join(&ctr).join("rootfs").display()
        ),
        format!("leftover directory: {} ({no_record})", userns_dir.display()),
    ] {
        assert!(out.contains(&expected), "no {expected:?} in:\n{out}");
    }

    let (ok, out, err) = check_leftovers(&config, &["--repair"]);
    if !ok {
        let remaining: Vec<&str> = err
            .lines()
            .skip_while(|l| !l.contains("remain"))
            .skip(1)
            .filter(|l| ours(l, &pod, &daemon_dir))
            .collect();
        assert!(remaining.is_empty(), "left after --repair:\n{out}\n{err}");
    }
    assert!(!userns_pin.exists(), "{} still there", userns_pin.display());
    assert!(!userns_dir.exists(), "{} still there", userns_dir.display());
    assert!(!pod_dir.exists(), "{} still there", pod_dir.display());
    assert_eq!(mounts_containing(&pod), Vec::<String>::new());
    assert_eq!(processes_matching(&[&pod]), Vec::<String>::new());
}
