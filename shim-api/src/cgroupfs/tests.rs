use super::*;
use crius_testkit::require_root;

fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{:x}{nanos:x}", std::process::id())
}

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:32 / /mnt/other\\040mem rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
42 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

#[test]
fn parses_hybrid_mountinfo() {
    let l = CgroupLayout::from_mountinfo(HYBRID).unwrap();
    assert_eq!(l.mode(), CgroupMode::V1);
    let got: Vec<(String, Vec<String>, bool)> = l
        .hierarchies()
        .iter()
        .map(|h| {
            (
                h.mount.display().to_string(),
                h.controllers.clone(),
                h.cgroup2,
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            ("/sys/fs/cgroup/cpu".into(), s(&["cpu"]), false),
            ("/sys/fs/cgroup/cpuset".into(), s(&["cpuset"]), false),
            ("/sys/fs/cgroup/memory".into(), s(&["memory"]), false),
            ("/sys/fs/cgroup/systemd".into(), s(&["name=systemd"]), false),
            (
                "/sys/fs/cgroup/net_cls,net_prio".into(),
                s(&["net_cls", "net_prio"]),
                false
            ),
            ("/sys/fs/cgroup/unified".into(), vec![], true),
        ]
    );
}

#[test]
fn parses_v2_and_rejects_none() {
    let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
    let l = CgroupLayout::from_mountinfo(v2).unwrap();
    assert_eq!(l.mode(), CgroupMode::V2);
    assert_eq!(l.hierarchies().len(), 1);
    assert!(matches!(
        CgroupLayout::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
        Err(CgroupError::NotMounted)
    ));
    assert_eq!(
        crate::mountinfo::unescape("/a\\040b"),
        PathBuf::from("/a b")
    );
}

#[test]
fn path_validation() {
    assert_eq!(
        validate_path("/kubepods/besteffort/pod1/").unwrap(),
        "/kubepods/besteffort/pod1"
    );
    for bad in [
        "",
        "/",
        "//",
        "kubepods",
        "/a//b",
        "/a/../b",
        "/a/./b",
        "/..",
        "kubepods-besteffort.slice",
        "/a\0b",
    ] {
        assert!(
            matches!(validate_path(bad), Err(CgroupError::InvalidPath { .. })),
            "{bad:?} accepted"
        );
    }
    assert_eq!(pod_cgroup_path("", "abc").unwrap(), "/crius/pod-abc");
    assert_eq!(
        pod_cgroup_path("/kubepods/pod1", "abc").unwrap(),
        "/kubepods/pod1"
    );
    assert!(pod_cgroup_path("", "../x").is_err());
    // Creating with a bad path touches nothing.
    let tmp = tempfile::tempdir().unwrap();
    let l = CgroupLayout::v2_at(tmp.path());
    assert!(PodCgroup::create(&l, "/a/../../escape").is_err());
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn weight_conversion() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(0), 1);
}

/// v2 logic against a fake tree of plain files (the host here is v1).
#[test]
fn v2_enables_controllers_and_writes_limits_on_fake_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let put = |p: &Path, f: &str, v: &str| fs::write(p.join(f), v).unwrap();
    put(root, "cgroup.controllers", "cpuset cpu io memory pids misc");
    put(root, "cgroup.subtree_control", "cpu");
    // The kernel would populate new directories; pre-create them as it would.
    let a = root.join("kubepods");
    let pod = a.join("pod1");
    fs::create_dir_all(&pod).unwrap();
    put(&a, "cgroup.controllers", "cpu memory pids");
    put(&a, "cgroup.subtree_control", "");
    put(&pod, "cgroup.controllers", "cpu memory pids");
    for f in ["cpu.weight", "cpu.max", "memory.max", "pids.max"] {
        put(&pod, f, "");
    }
    put(&pod, "cpu.max", "max 100000");

    let l = CgroupLayout::v2_at(root);
    let cg = PodCgroup::create(&l, "/kubepods/pod1").unwrap();
    assert_eq!(
        fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
        "+cpuset +io +memory +pids"
    );
    assert_eq!(
        fs::read_to_string(a.join("cgroup.subtree_control")).unwrap(),
        "+cpu +memory +pids"
    );

    cg.set_resources(&Resources {
        cpu_shares: Some(1024),
        cpu_quota: Some(50_000),
        memory_limit: Some(64 << 20),
        pids_limit: Some(0),
        ..Default::default()
    })
    .unwrap();
    let rd = |f: &str| fs::read_to_string(pod.join(f)).unwrap();
    assert_eq!(rd("cpu.weight"), "39");
    assert_eq!(rd("cpu.max"), "50000 100000");
    assert_eq!(rd("memory.max"), (64u64 << 20).to_string());
    assert_eq!(rd("pids.max"), "max");
    // cpuset is not offered to this cgroup: a clear error, no stray file.
    let err = cg
        .set_resources(&Resources {
            cpuset_cpus: Some("0".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, CgroupError::MissingController { ref controller, .. } if controller == "cpuset")
    );
    assert!(!pod.join("cpuset.cpus").exists());
}

fn hierarchy_dirs_named(name: &str) -> Vec<PathBuf> {
    CgroupLayout::detect()
        .unwrap()
        .hierarchies()
        .iter()
        .map(|h| h.mount.join(name))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn real_create_set_remove() {
    if !require_root() {
        return;
    }
    let layout = CgroupLayout::detect().unwrap();
    let top = format!("crius-test-{}", random_suffix());
    let path = format!("/{top}/pod-a");
    let cg = PodCgroup::create(&layout, &path).unwrap();
    for d in cg.dirs() {
        assert!(d.is_dir(), "{} missing", d.display());
    }
    assert!(cg.exists_anywhere());
    // Idempotent create.
    PodCgroup::create(&layout, &path).unwrap();

    let r = Resources {
        cpu_shares: Some(512),
        cpu_period: Some(100_000),
        cpu_quota: Some(50_000),
        cpuset_cpus: Some("0".into()),
        memory_limit: Some(64 << 20),
        pids_limit: Some(100),
        ..Default::default()
    };
    cg.set_resources(&r).unwrap();
    let rd = |c: &str, f: &str| {
        let h = layout.hierarchies().iter().find(|h| h.has(c)).unwrap();
        fs::read_to_string(cg.dir_in(h).join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    match layout.mode() {
        CgroupMode::V1 => {
            assert_eq!(rd("cpu", "cpu.shares"), "512");
            assert_eq!(rd("cpu", "cpu.cfs_quota_us"), "50000");
            assert_eq!(
                rd("memory", "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
            assert_eq!(rd("pids", "pids.max"), "100");
            assert_eq!(rd("cpuset", "cpuset.cpus"), "0");
            // The intermediate level inherited the parent's cpuset.
            let h = layout
                .hierarchies()
                .iter()
                .find(|h| h.has("cpuset"))
                .unwrap();
            let mid = fs::read_to_string(h.mount.join(&top).join("cpuset.mems")).unwrap();
            assert_eq!(
                mid.trim(),
                fs::read_to_string(h.mount.join("cpuset.mems"))
                    .unwrap()
                    .trim()
            );
        }
        CgroupMode::V2 => {
            let d = &cg.dirs()[0];
            assert_eq!(
                fs::read_to_string(d.join("memory.max")).unwrap().trim(),
                (64u64 << 20).to_string()
            );
        }
    }

    // A leftover child cgroup (a container's) goes too, deepest first.
    for d in cg.dirs() {
        fs::create_dir(d.join("ctr-1")).unwrap();
    }
    cg.remove().unwrap();
    assert!(!cg.exists_anywhere());
    cg.remove().unwrap();

    PodCgroup::open(&layout, &format!("/{top}"))
        .unwrap()
        .remove()
        .unwrap();
    assert!(
        hierarchy_dirs_named(&top).is_empty(),
        "left behind: {:?}",
        hierarchy_dirs_named(&top)
    );
}

#[test]
fn real_remove_of_busy_cgroup_fails_and_kills_nothing() {
    if !require_root() {
        return;
    }
    let layout = CgroupLayout::detect().unwrap();
    let path = format!("/crius-test-{}", random_suffix());
    let cg = PodCgroup::create(&layout, &path).unwrap();
    let Some(pids) = layout
        .hierarchies()
        .iter()
        .find(|h| h.has("pids") || (h.cgroup2 && layout.mode() == CgroupMode::V2))
    else {
        cg.remove().unwrap();
        crius_testkit::skip("no pids hierarchy");
        return;
    };
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let procs = cg.dir_in(pids).join("cgroup.procs");
    fs::write(&procs, child.id().to_string()).unwrap();
    let err = cg.remove().unwrap_err();
    assert!(matches!(err, CgroupError::Busy { .. }), "{err}");
    assert!(child.try_wait().unwrap().is_none(), "remove must not kill");
    // Move it back out, then removal succeeds everywhere.
    let back = pids.mount.join("cgroup.procs");
    fs::write(back, child.id().to_string()).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    cg.remove().unwrap();
    assert!(!cg.exists_anywhere());
}

/// A v1 layout whose hierarchies are directories under `root`, as
/// mountinfo would list them (`cpu,cpuacct` co-mounted, as on most hosts).
fn fake_v1(root: &Path) -> CgroupLayout {
    let r = root.display();
    CgroupLayout::from_mountinfo(&format!(
        "\
33 30 0:29 / {r}/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / {r}/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:31 / {r}/pids rw,relatime - cgroup cgroup rw,pids
36 30 0:32 / {r}/unified rw,relatime - cgroup2 cgroup2 rw
"
    ))
    .unwrap()
}

#[test]
fn v1_stats_and_oom_kills_from_fixture_files() {
    let tmp = tempfile::tempdir().unwrap();
    let l = fake_v1(tmp.path());
    assert_eq!(l.mode(), CgroupMode::V1);
    let mem = tmp.path().join("memory/kube/c1");
    let cpu = tmp.path().join("cpu,cpuacct/kube/c1");
    let pids = tmp.path().join("pids/kube/c1");
    for d in [&mem, &cpu, &pids] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(mem.join("memory.usage_in_bytes"), "1000\n").unwrap();
    // Per-cgroup keys must not be taken for the hierarchical ones.
    fs::write(
        mem.join("memory.stat"),
        "cache 5\nrss 1\ninactive_file 2\ntotal_inactive_file 300\ntotal_rss 600\n",
    )
    .unwrap();
    fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    fs::write(cpu.join("cpuacct.usage"), "123456\n").unwrap();
    fs::write(pids.join("pids.current"), "7\n").unwrap();

    let cg = PodCgroup::open(&l, "/kube/c1").unwrap();
    assert_eq!(
        cg.stats(),
        Some(CgroupStats {
            cpu_usage_ns: 123456,
            memory_usage_bytes: 1000,
            memory_working_set_bytes: 700,
            memory_rss_bytes: 600,
        })
    );
    assert_eq!(cg.oom_kill_count(), 2);
    assert_eq!(cg.pids_current(), Some(7));

    let missing = PodCgroup::open(&l, "/kube/missing").unwrap();
    assert_eq!(missing.stats(), None);
    assert_eq!(missing.oom_kill_count(), 0);
    assert_eq!(missing.pids_current(), None);

    // No cpuacct hierarchy and no pids files: the memory figures still come.
    fs::remove_file(cpu.join("cpuacct.usage")).unwrap();
    fs::remove_file(mem.join("memory.oom_control")).unwrap();
    let s = cg.stats().unwrap();
    assert_eq!((s.cpu_usage_ns, s.memory_usage_bytes), (0, 1000));
    assert_eq!(cg.oom_kill_count(), 0);
}

#[test]
fn v2_stats_and_oom_kills_from_fixture_files() {
    let tmp = tempfile::tempdir().unwrap();
    let l = CgroupLayout::v2_at(tmp.path());
    let d = tmp.path().join("kube/c1");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("memory.current"), "5000\n").unwrap();
    fs::write(
        d.join("memory.stat"),
        "anon 1200\nfile 3000\nactive_file 1000\ninactive_file 2000\n",
    )
    .unwrap();
    fs::write(
        d.join("cpu.stat"),
        "usage_usec 42\nuser_usec 40\nsystem_usec 2\n",
    )
    .unwrap();
    fs::write(
        d.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    )
    .unwrap();
    fs::write(d.join("pids.current"), "3\n").unwrap();

    let cg = PodCgroup::open(&l, "/kube/c1").unwrap();
    assert_eq!(
        cg.stats(),
        Some(CgroupStats {
            cpu_usage_ns: 42_000,
            memory_usage_bytes: 5000,
            memory_working_set_bytes: 3000,
            memory_rss_bytes: 1200,
        })
    );
    assert_eq!(cg.oom_kill_count(), 1);
    assert_eq!(cg.pids_current(), Some(3));

    let missing = PodCgroup::open(&l, "/kube/gone").unwrap();
    assert_eq!(missing.stats(), None);
    assert_eq!(missing.oom_kill_count(), 0);
}

/// v1 limit files on the fixture tree (the kernel's files exist in every
/// cgroup; pre-create them, since writes never create files).
#[test]
fn v1_limits_on_fixture_files() {
    let tmp = tempfile::tempdir().unwrap();
    let l = fake_v1(tmp.path());
    let cpu = tmp.path().join("cpu,cpuacct/pod");
    let mem = tmp.path().join("memory/pod");
    for (d, files) in [
        (
            &cpu,
            &["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"][..],
        ),
        (&mem, &["memory.limit_in_bytes"][..]),
    ] {
        fs::create_dir_all(d).unwrap();
        for f in files {
            fs::write(d.join(f), "").unwrap();
        }
    }
    let cg = PodCgroup::open(&l, "/pod").unwrap();
    cg.set_resources(&Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        ..Default::default()
    })
    .unwrap();
    let rd = |p: PathBuf| fs::read_to_string(p).unwrap();
    assert_eq!(rd(cpu.join("cpu.shares")), "512");
    assert_eq!(rd(cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(rd(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(
        rd(mem.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    cg.set_resources(&Resources {
        cpu_quota: Some(-1),
        memory_limit: Some(-1),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(rd(cpu.join("cpu.cfs_quota_us")), "-1");
    assert_eq!(rd(mem.join("memory.limit_in_bytes")), "-1");
    // A missing cgroup fails and leaves no stray file behind.
    let missing = PodCgroup::open(&l, "/missing").unwrap();
    let err = missing
        .set_resources(&Resources {
            memory_limit: Some(1 << 20),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, CgroupError::Write { ref source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(!tmp.path().join("memory/missing").exists());
}
