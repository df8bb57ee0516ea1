//! Spec generation tests: assertions on the produced Spec, plus runc runs
//! (root only) proving the runtime accepts what we generate.

use std::fs;
use std::path::{Path, PathBuf};

use crius_proto::cri::{
    self, Capability as CriCapability, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value,
    KeyValue, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, SecurityProfile, security_profile::ProfileType,
};
use oci_spec::runtime::{Capability, LinuxNamespaceType, LinuxSeccompAction, Spec};

use super::*;
use crate::image::ContainerDefaults;

struct Fixture {
    _tmp: tempfile::TempDir,
    rootfs: PathBuf,
    config: ContainerConfig,
    pod: PodSandboxConfig,
    image: ContainerDefaults,
    namespaces: PodNamespaces,
    files: PodFiles,
    caps: crius_shim_api::types::Capabilities,
    no_host_devices: bool,
    min_oom_score_adj: Option<i32>,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\nweb:x:33:\nlog:x:4:web\n",
        )
        .unwrap();
        let files_dir = tmp.path().join("pod");
        fs::create_dir_all(files_dir.join("shm")).unwrap();
        for f in ["hostname", "resolv.conf", "hosts"] {
            fs::write(files_dir.join(f), "x\n").unwrap();
        }
        Fixture {
            rootfs,
            config: ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: "busybox:latest".into(),
                    ..Default::default()
                }),
                annotations: [("user.annotation".to_string(), "v".to_string())].into(),
                ..Default::default()
            },
            pod: PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "pod".into(),
                    uid: "uid-1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                hostname: "mypod".into(),
                ..Default::default()
            },
            image: ContainerDefaults {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["--serve".into()],
                env: vec!["PATH=/img/bin".into(), "A=image".into(), "B=image".into()],
                working_dir: "/work".into(),
                ..Default::default()
            },
            namespaces: PodNamespaces {
                netns_path: Some("/var/run/netns/pod".into()),
                infra_pid: Some(4242),
                userns: None,
            },
            files: PodFiles {
                hostname: Some(files_dir.join("hostname")),
                resolv_conf: Some(files_dir.join("resolv.conf")),
                hosts: Some(files_dir.join("hosts")),
                shm_dir: Some(files_dir.join("shm")),
            },
            caps: Default::default(),
            no_host_devices: false,
            min_oom_score_adj: None,
            _tmp: tmp,
        }
    }

    fn linux(&mut self) -> &mut LinuxContainerConfig {
        self.config.linux.get_or_insert_with(Default::default)
    }

    fn sc(&mut self) -> &mut LinuxContainerSecurityContext {
        self.linux()
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn res(&mut self) -> &mut LinuxContainerResources {
        self.linux().resources.get_or_insert_with(Default::default)
    }

    fn pod_linux(&mut self) -> &mut LinuxPodSandboxConfig {
        self.pod.linux.get_or_insert_with(Default::default)
    }

    fn spec(&self) -> Result<Spec, SpecError> {
        container_spec(&ContainerSpecInput {
            container_id: "cid",
            sandbox_id: "sid",
            config: &self.config,
            sandbox_config: &self.pod,
            image: &self.image,
            rootfs: &self.rootfs,
            namespaces: &self.namespaces,
            cgroups_path: "/kubepods/poduid-1/crius-cid",
            pod_files: &self.files,
            capabilities: &self.caps,
            privileged_without_host_devices: self.no_host_devices,
            min_oom_score_adj: self.min_oom_score_adj,
        })
    }
}

fn linux(s: &Spec) -> &oci_spec::runtime::Linux {
    s.linux().as_ref().unwrap()
}
fn process(s: &Spec) -> &oci_spec::runtime::Process {
    s.process().as_ref().unwrap()
}
/// The seccomp filter of `s`, which must have one.
fn seccomp(s: &Spec) -> &oci_spec::runtime::LinuxSeccomp {
    linux(s).seccomp().as_ref().unwrap()
}
fn syscall_names(p: &oci_spec::runtime::LinuxSeccomp) -> Vec<String> {
    p.syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .flat_map(|r| r.names().clone())
        .collect()
}
fn mount_options<'a>(s: &'a Spec, dest: &str) -> &'a Vec<String> {
    mount_at(s, dest).options().as_ref().unwrap()
}
fn args(s: &Spec) -> Vec<String> {
    process(s).args().clone().unwrap()
}
fn env(s: &Spec) -> Vec<String> {
    process(s).env().clone().unwrap()
}
fn caps(s: &Spec) -> std::collections::HashSet<Capability> {
    process(s)
        .capabilities()
        .as_ref()
        .unwrap()
        .effective()
        .clone()
        .unwrap()
}
fn namespaces(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    linux(s)
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}
fn ns_of(s: &Spec, t: LinuxNamespaceType) -> Option<Option<PathBuf>> {
    namespaces(s)
        .into_iter()
        .find(|(x, _)| *x == t)
        .map(|(_, p)| p)
}
fn mount_dests(s: &Spec) -> Vec<String> {
    s.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect()
}
fn mount_at<'a>(s: &'a Spec, dest: &str) -> &'a oci_spec::runtime::Mount {
    s.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(dest))
        .unwrap()
}
fn invalid(r: Result<Spec, SpecError>) -> String {
    match r {
        Err(SpecError::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn entrypoint_and_cmd_rules() {
    let mut f = Fixture::new();
    assert_eq!(args(&f.spec().unwrap()), vec!["/entry", "--serve"]);
    f.config.args = vec!["--debug".into()];
    assert_eq!(args(&f.spec().unwrap()), vec!["/entry", "--debug"]);
    f.config.command = vec!["/bin/sh".into(), "-c".into()];
    assert_eq!(args(&f.spec().unwrap()), vec!["/bin/sh", "-c", "--debug"]);
    f.config.args.clear();
    // command drops the image's cmd.
    assert_eq!(args(&f.spec().unwrap()), vec!["/bin/sh", "-c"]);
    f.config.command.clear();
    f.image.entrypoint.clear();
    assert_eq!(args(&f.spec().unwrap()), vec!["--serve"]);
    f.image.cmd.clear();
    assert!(invalid(f.spec()).contains("no command"));
}

#[test]
fn env_merge_and_workdir() {
    let mut f = Fixture::new();
    f.config.envs = vec![
        KeyValue {
            key: "B".into(),
            value: b"cri".to_vec(),
        },
        KeyValue {
            key: "C".into(),
            value: b"x=y".to_vec(),
        },
    ];
    let s = f.spec().unwrap();
    assert_eq!(
        env(&s),
        vec![
            "HOSTNAME=mypod",
            "PATH=/img/bin",
            "A=image",
            "B=cri",
            "C=x=y"
        ]
    );
    assert_eq!(process(&s).cwd(), Path::new("/work"));
    f.image.env.clear();
    f.image.working_dir.clear();
    let s = f.spec().unwrap();
    assert!(env(&s)[0].starts_with("PATH=/usr/local/sbin"));
    assert_eq!(process(&s).cwd(), Path::new("/"));
    f.config.working_dir = "/cri".into();
    assert_eq!(process(&f.spec().unwrap()).cwd(), Path::new("/cri"));
    f.config.working_dir = "rel".into();
    assert!(invalid(f.spec()).contains("rel"));
}

#[test]
fn user_from_image_and_cri() {
    let mut f = Fixture::new();
    f.image.user = "web".into();
    let s = f.spec().unwrap();
    let u = process(&s).user();
    assert_eq!((u.uid(), u.gid()), (33, 33));
    assert_eq!(u.additional_gids().clone().unwrap(), vec![33, 4]);
    f.sc().run_as_user = Some(Int64Value { value: 1234 });
    f.sc().supplemental_groups = vec![5000];
    let s = f.spec().unwrap();
    let u = process(&s).user();
    assert_eq!((u.uid(), u.gid()), (1234, 0));
    assert_eq!(u.additional_gids().clone().unwrap(), vec![0, 5000]);
    f.image.user = "nobody".into();
    f.sc().run_as_user = None;
    assert!(invalid(f.spec()).contains("nobody"));
}

#[test]
fn terminal_hostname_annotations_cgroups_root() {
    let mut f = Fixture::new();
    f.config.tty = true;
    f.sc().readonly_rootfs = true;
    let s = f.spec().unwrap();
    assert_eq!(process(&s).terminal(), Some(true));
    // Joined UTS namespace: the infra already set the hostname.
    assert_eq!(s.hostname(), &None);
    let a = s.annotations().as_ref().unwrap();
    assert_eq!(a[annotations::CONTAINER_TYPE], "container");
    assert_eq!(a[annotations::SANDBOX_ID], "sid");
    assert_eq!(a[annotations::CONTAINER_NAME], "app");
    assert_eq!(a[annotations::IMAGE_NAME], "busybox:latest");
    assert_eq!(a[annotations::SANDBOX_NAMESPACE], "default");
    assert_eq!(a["user.annotation"], "v");
    assert_eq!(
        linux(&s).cgroups_path().as_deref(),
        Some(Path::new("/kubepods/poduid-1/crius-cid"))
    );
    let root = s.root().as_ref().unwrap();
    assert_eq!(root.path(), &f.rootfs);
    assert_eq!(root.readonly(), Some(true));
    // Pod files are read-only with a read-only rootfs.
    assert!(mount_options(&s, "/etc/hosts").contains(&"ro".to_string()));
    // No youki defaults leak in.
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("youki"), "{json}");
    let r = process(&s).rlimits().clone().unwrap();
    assert_eq!(r.len(), 1);
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    let own = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .ok();
    let want = own
        .filter(|m| *m != RLIM_INFINITY)
        .map_or(1_048_576, |m| m.min(1_048_576));
    assert_eq!((r[0].hard(), r[0].soft()), (want, want));

    // Without an infra process the container owns its UTS namespace.
    f.namespaces.infra_pid = None;
    assert_eq!(f.spec().unwrap().hostname().as_deref(), Some("mypod"));
}

#[test]
fn standard_mounts_pod_files_and_cri_overrides() {
    let mut f = Fixture::new();
    let s = f.spec().unwrap();
    let d = mount_dests(&s);
    for want in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
        "/dev/shm",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/etc/hosts",
    ] {
        assert!(d.contains(&want.to_string()), "{want} missing in {d:?}");
    }
    assert!(mount_options(&s, "/sys").contains(&"ro".to_string()));
    let shm = mount_at(&s, "/dev/shm");
    assert_eq!(shm.source().as_ref(), f.files.shm_dir.as_ref());
    // kubelet's own /etc/hosts replaces ours.
    let host_dir = f._tmp.path().join("kubelet-hosts");
    fs::write(&host_dir, "1.2.3.4 x\n").unwrap();
    f.config.mounts = vec![cri::Mount {
        container_path: "/etc/hosts".into(),
        host_path: host_dir.to_string_lossy().into(),
        ..Default::default()
    }];
    f.files.shm_dir = None;
    let s = f.spec().unwrap();
    let hosts: Vec<_> = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.destination() == Path::new("/etc/hosts"))
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(
        hosts[0].source().as_deref(),
        Some(fs::canonicalize(&host_dir).unwrap().as_path())
    );
    assert_eq!(mount_at(&s, "/dev/shm").typ().as_deref(), Some("tmpfs"));
    // The CRI mounts come after the defaults.
    assert_eq!(mount_dests(&s).last().unwrap(), "/etc/hosts");
}

#[test]
fn bad_mounts_are_invalid_arguments() {
    let mut f = Fixture::new();
    f.config.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "/nonexistent/crius/hostpath".into(),
        ..Default::default()
    }];
    assert!(invalid(f.spec()).contains("/nonexistent/crius/hostpath"));
    f.config.mounts[0].host_path = "/tmp".into();
    f.config.mounts[0].container_path = "data".into();
    assert!(invalid(f.spec()).contains("absolute"));
    f.config.mounts[0].container_path = "/data".into();
    f.config.mounts[0].readonly = true;
    f.config.mounts[0].recursive_read_only = true;
    assert!(invalid(f.spec()).contains("recursive read-only"));
    f.caps.recursive_read_only_mounts = true;
    let s = f.spec().unwrap();
    assert!(mount_options(&s, "/data").contains(&"rro".to_string()));
}

#[test]
fn capabilities_default_add_drop_all() {
    let mut f = Fixture::new();
    let c = caps(&f.spec().unwrap());
    assert_eq!(c.len(), 9);
    assert!(c.contains(&Capability::Chown) && !c.contains(&Capability::NetRaw));
    f.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["NET_ADMIN".into()],
        drop_capabilities: vec!["ALL".into()],
        add_ambient_capabilities: vec![],
    });
    let s = f.spec().unwrap();
    assert_eq!(caps(&s), [Capability::NetAdmin].into());
    let pc = process(&s).capabilities().clone().unwrap();
    assert_eq!(
        pc.bounding().clone().unwrap(),
        [Capability::NetAdmin].into()
    );
    assert!(pc.inheritable().as_ref().unwrap().is_empty());
    f.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["ALL".into()],
        drop_capabilities: vec!["CAP_SYS_ADMIN".into()],
        add_ambient_capabilities: vec![],
    });
    let c = caps(&f.spec().unwrap());
    assert!(c.contains(&Capability::SysModule) && !c.contains(&Capability::SysAdmin));
    f.sc().capabilities.as_mut().unwrap().add_capabilities = vec!["BOGUS".into()];
    assert!(invalid(f.spec()).contains("BOGUS"));
}

#[test]
fn unprivileged_security_defaults() {
    let mut f = Fixture::new();
    f.sc().no_new_privs = true;
    let s = f.spec().unwrap();
    let l = linux(&s);
    assert!(
        l.masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string())
    );
    assert!(
        l.readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_string())
    );
    assert_eq!(process(&s).no_new_privileges(), Some(true));
    // Devices: deny all by default, no device nodes.
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(!rules[0].allow());
    assert!(l.devices().as_ref().unwrap().is_empty());
    // CRI lists win when given.
    f.sc().masked_paths = vec!["/proc/custom".into()];
    f.sc().readonly_paths = vec!["/proc/ro".into()];
    let s = f.spec().unwrap();
    let l = linux(&s);
    assert_eq!(l.masked_paths().clone().unwrap(), vec!["/proc/custom"]);
    assert_eq!(l.readonly_paths().clone().unwrap(), vec!["/proc/ro"]);
}

#[test]
fn cri_devices_in_spec() {
    let mut f = Fixture::new();
    f.config.devices = vec![cri::Device {
        container_path: "/dev/fuse0".into(),
        host_path: "/dev/zero".into(),
        permissions: "rw".into(),
    }];
    let s = f.spec().unwrap();
    let l = linux(&s);
    let d = &l.devices().as_ref().unwrap()[0];
    assert_eq!(d.path(), Path::new("/dev/fuse0"));
    assert_eq!((d.major(), d.minor()), (1, 5));
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 2);
    assert!(rules[1].allow() && rules[1].access().as_deref() == Some("rw"));
    f.config.devices[0].host_path = "/dev/crius-missing".into();
    assert!(invalid(f.spec()).contains("/dev/crius-missing"));
}

#[test]
fn privileged_container() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let s = f.spec().unwrap();
    // Every capability the host has (its bounding set), not every known one.
    assert_eq!(caps(&s).len(), caps::all().len());
    let l = linux(&s);
    assert!(l.masked_paths().as_ref().unwrap().is_empty());
    assert!(l.readonly_paths().as_ref().unwrap().is_empty());
    assert!(l.seccomp().is_none());
    assert_eq!(process(&s).apparmor_profile(), &None);
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(rules[0].allow());
    assert!(
        l.devices()
            .as_ref()
            .unwrap()
            .iter()
            .any(|d| d.path() == Path::new("/dev/null"))
    );
    assert!(!mount_options(&s, "/sys").contains(&"ro".to_string()));
    f.no_host_devices = true;
    let s = f.spec().unwrap();
    assert!(linux(&s).devices().as_ref().unwrap().is_empty());
}

#[test]
fn seccomp_modes() {
    let mut f = Fixture::new();
    assert!(linux(&f.spec().unwrap()).seccomp().is_none());
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let s = f.spec().unwrap();
    let p = linux(&s).seccomp().clone().unwrap();
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
    let names = syscall_names(&p);
    // Default-deny: ordinary calls are listed, kexec and mount are not.
    assert!(names.contains(&"read".to_string()));
    assert!(!names.contains(&"kexec_load".to_string()) && !names.contains(&"mount".to_string()));
    // A granted CAP_SYS_ADMIN allows the mount calls.
    f.sc().capabilities = Some(CriCapability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    });
    let s = f.spec().unwrap();
    let names = syscall_names(seccomp(&s));
    assert!(names.contains(&"mount".to_string()) && !names.contains(&"kexec_load".to_string()));

    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    });
    assert!(linux(&f.spec().unwrap()).seccomp().is_none());

    let prof = f._tmp.path().join("prof.json");
    fs::write(&prof, r#"{"defaultAction":"SCMP_ACT_LOG"}"#).unwrap();
    f.sc().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: prof.to_string_lossy().into(),
    });
    let s = f.spec().unwrap();
    assert_eq!(seccomp(&s).default_action(), LinuxSeccompAction::ScmpActLog);
    f.sc().seccomp.as_mut().unwrap().localhost_ref = "/nonexistent/profile.json".into();
    assert!(invalid(f.spec()).contains("/nonexistent/profile.json"));
    f.sc().seccomp.as_mut().unwrap().localhost_ref = "profile.json".into();
    assert!(invalid(f.spec()).contains("absolute"));
}

#[test]
fn resources_and_oom_score() {
    let mut f = Fixture::new();
    {
        let r = f.res();
        r.cpu_shares = 512;
        r.cpu_quota = 50_000;
        r.cpu_period = 100_000;
        r.cpuset_cpus = "0-1".into();
        r.memory_limit_in_bytes = 64 << 20;
        r.memory_swap_limit_in_bytes = 128 << 20;
        r.oom_score_adj = 500;
        r.hugepage_limits = vec![cri::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }];
        r.unified = [("memory.high".to_string(), "1000000".to_string())].into();
    }
    let s = f.spec().unwrap();
    let res = linux(&s).resources().clone().unwrap();
    let cpu = res.cpu().clone().unwrap();
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(512), Some(50_000), Some(100_000))
    );
    assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
    let mem = res.memory().unwrap();
    assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(128 << 20)));
    assert_eq!(
        res.hugepage_limits().as_ref().unwrap()[0].page_size(),
        "2MB"
    );
    assert_eq!(res.unified().as_ref().unwrap()["memory.high"], "1000000");
    assert_eq!(process(&s).oom_score_adj(), Some(500));
    f.res().oom_score_adj = -997;
    assert_eq!(process(&f.spec().unwrap()).oom_score_adj(), Some(-997));
    // Restricted: never below the floor, values above it untouched.
    f.min_oom_score_adj = Some(0);
    assert_eq!(process(&f.spec().unwrap()).oom_score_adj(), Some(0));
    f.res().oom_score_adj = 300;
    assert_eq!(process(&f.spec().unwrap()).oom_score_adj(), Some(300));
    f.min_oom_score_adj = None;
    f.config.linux = None;
    let s = f.spec().unwrap();
    assert_eq!(process(&s).oom_score_adj(), None);
    assert!(linux(&s).resources().as_ref().unwrap().memory().is_none());
}

#[test]
fn pod_namespaces_are_joined() {
    let f = Fixture::new();
    let s = f.spec().unwrap();
    assert_eq!(
        ns_of(&s, LinuxNamespaceType::Network),
        Some(Some("/var/run/netns/pod".into()))
    );
    assert_eq!(
        ns_of(&s, LinuxNamespaceType::Ipc),
        Some(Some("/proc/4242/ns/ipc".into()))
    );
    assert_eq!(
        ns_of(&s, LinuxNamespaceType::Uts),
        Some(Some("/proc/4242/ns/uts".into()))
    );
    // Pod pid mode (the proto default) joins the infra's pid namespace.
    assert_eq!(
        ns_of(&s, LinuxNamespaceType::Pid),
        Some(Some("/proc/4242/ns/pid".into()))
    );
    assert_eq!(ns_of(&s, LinuxNamespaceType::Mount), Some(None));
}

#[test]
fn host_and_container_namespace_modes() {
    let mut f = Fixture::new();
    f.sc().namespace_options = Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let s = f.spec().unwrap();
    assert_eq!(ns_of(&s, LinuxNamespaceType::Network), None);
    assert_eq!(ns_of(&s, LinuxNamespaceType::Uts), None);
    assert_eq!(ns_of(&s, LinuxNamespaceType::Ipc), None);
    assert_eq!(ns_of(&s, LinuxNamespaceType::Pid), Some(None));
    assert_eq!(s.hostname(), &None);
    f.sc().namespace_options.as_mut().unwrap().pid = NamespaceMode::Node as i32;
    assert_eq!(ns_of(&f.spec().unwrap(), LinuxNamespaceType::Pid), None);
    f.sc().namespace_options.as_mut().unwrap().pid = NamespaceMode::Target as i32;
    assert!(invalid(f.spec()).contains("TARGET"));

    // No netns path = host network even without options.
    let mut f = Fixture::new();
    f.namespaces.netns_path = None;
    f.pod.hostname.clear();
    let s = f.spec().unwrap();
    assert_eq!(ns_of(&s, LinuxNamespaceType::Network), None);
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(env(&s).contains(&format!("HOSTNAME={}", host.trim())));
}

#[test]
fn sysctls_filtered_and_placed() {
    let mut f = Fixture::new();
    f.pod_linux().sysctls = [("net.ipv4.ip_forward".to_string(), "1".to_string())].into();
    // With an infra process the sysctls are the infra's business.
    assert!(linux(&f.spec().unwrap()).sysctl().is_none());
    f.namespaces.infra_pid = None;
    let s = f.spec().unwrap();
    assert_eq!(
        linux(&s).sysctl().as_ref().unwrap()["net.ipv4.ip_forward"],
        "1"
    );
    f.namespaces.netns_path = None;
    assert!(invalid(f.spec()).contains("host network"));
    f.pod_linux().sysctls = [("vm.overcommit_memory".to_string(), "1".to_string())].into();
    assert!(invalid(f.spec()).contains("vm.overcommit_memory"));
}

fn infra_input<'a>(
    pod: &'a PodSandboxConfig,
    rootfs: &'a Path,
    netns: Option<&'a Path>,
    files: &'a PodFiles,
) -> InfraSpecInput<'a> {
    InfraSpecInput {
        sandbox_id: "sid",
        sandbox_config: pod,
        rootfs,
        netns_path: netns,
        userns: None,
        cgroups_path: "/crius-test/sid",
        pod_files: files,
    }
}

#[test]
fn infra_spec_contents() {
    let f = Fixture::new();
    let mut pod = f.pod.clone();
    pod.linux = Some(LinuxPodSandboxConfig {
        sysctls: [("kernel.shm_rmid_forced".to_string(), "1".to_string())].into(),
        ..Default::default()
    });
    let netns = PathBuf::from("/var/run/netns/pod");
    let s = infra_spec(&infra_input(&pod, &f.rootfs, Some(&netns), &f.files)).unwrap();
    assert_eq!(args(&s), vec!["/catatonit", "-P"]);
    assert_eq!(s.hostname().as_deref(), Some("mypod"));
    assert_eq!(
        ns_of(&s, LinuxNamespaceType::Network),
        Some(Some(netns.clone()))
    );
    assert_eq!(ns_of(&s, LinuxNamespaceType::Ipc), Some(None));
    assert_eq!(ns_of(&s, LinuxNamespaceType::Uts), Some(None));
    assert_eq!(ns_of(&s, LinuxNamespaceType::Pid), Some(None));
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    assert!(caps(&s).is_empty());
    assert_eq!(
        linux(&s).sysctl().as_ref().unwrap()["kernel.shm_rmid_forced"],
        "1"
    );
    assert_eq!(
        s.annotations().as_ref().unwrap()[annotations::CONTAINER_TYPE],
        "sandbox"
    );
    assert_eq!(
        linux(&s).cgroups_path().as_deref(),
        Some(Path::new("/crius-test/sid"))
    );

    // Host network, host pid, host ipc.
    pod.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                pid: NamespaceMode::Node as i32,
                ipc: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = infra_spec(&infra_input(&pod, &f.rootfs, Some(&netns), &f.files)).unwrap();
    let types: Vec<_> = namespaces(&s).into_iter().map(|(t, _)| t).collect();
    assert!(!types.contains(&LinuxNamespaceType::Network));
    assert!(!types.contains(&LinuxNamespaceType::Uts));
    assert!(!types.contains(&LinuxNamespaceType::Ipc));
    assert!(!types.contains(&LinuxNamespaceType::Pid));
    assert_eq!(s.hostname(), &None);
    // net sysctls cannot go with the host network.
    pod.linux.as_mut().unwrap().sysctls =
        [("net.core.somaxconn".to_string(), "1".to_string())].into();
    assert!(matches!(
        infra_spec(&infra_input(&pod, &f.rootfs, None, &f.files)),
        Err(SpecError::InvalidArgument(_))
    ));
}

#[test]
fn write_spec_round_trips() {
    let f = Fixture::new();
    let s = f.spec().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bytes = write_spec(dir.path(), &s).unwrap();
    assert_eq!(fs::read(dir.path().join("config.json")).unwrap(), bytes);
    let back: Spec = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, s);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["ociVersion"], OCI_VERSION);
    assert!(
        v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_CHOWN")
    );
    assert!(!dir.path().join(".config.json.tmp").exists());
}

// ---- real runtime runs (root only) ----

fn runc_ready() -> Option<&'static str> {
    let tools = ["/usr/sbin/runc", "/usr/bin/catatonit", "/usr/bin/busybox"];
    crius_testkit::require_root_and_tools(&tools).then_some("/usr/sbin/runc")
}

struct Runc {
    bin: &'static str,
    root: PathBuf,
    ids: Vec<String>,
}

impl Runc {
    fn cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(self.bin);
        c.arg("--root").arg(&self.root);
        c
    }
    fn run_detached(&mut self, id: &str, bundle: &Path) {
        self.ids.push(id.to_string());
        // `run -d` hands its stdio to the container: a pipe here would stay
        // open as long as the container runs, so stderr goes to a file.
        let err_path = bundle.join("runc.stderr");
        let err = fs::File::create(&err_path).unwrap();
        let status = self
            .cmd()
            .args(["run", "-d", "-b"])
            .arg(bundle)
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "runc run {id}: {}",
            fs::read_to_string(&err_path).unwrap_or_default()
        );
    }
    fn state(&self, id: &str) -> serde_json::Value {
        let out = self.cmd().args(["state", id]).output().unwrap();
        assert!(
            out.status.success(),
            "runc state: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        for id in self.ids.iter().rev() {
            let _ = self.cmd().args(["delete", "-f", id]).output();
        }
    }
}

fn bundle_with(dir: &Path, spec: &Spec) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    write_spec(dir, spec).unwrap();
    dir.to_path_buf()
}

// Used by synchronous tests only: no executor to block.
#[allow(clippy::disallowed_methods)]
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("timed out");
}

/// The infra spec runs under real runc, and a workload container spec
/// joining its namespaces (with the RuntimeDefault seccomp profile) runs
/// too and sees the pod's hostname, its user and its capabilities.
#[test]
fn runc_accepts_infra_and_container_specs() {
    let Some(bin) = runc_ready() else { return };
    infra_and_container_specs_run(bin, "runc");
}

#[test]
fn crun_accepts_infra_and_container_specs() {
    if runc_ready().is_none() {
        return;
    }
    if !crius_testkit::require_tools(&["/usr/bin/crun"]) {
        return;
    }
    infra_and_container_specs_run("/usr/bin/crun", "crun");
}

fn infra_and_container_specs_run(bin: &'static str, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let infra_rootfs = crate::rootfs::prepare_infra_rootfs(
        &tmp.path().join("infra-rootfs"),
        Path::new("/usr/bin/catatonit"),
    )
    .unwrap();
    let tag = format!("crius-spec-{name}-{}", std::process::id());
    let mut runc = Runc {
        bin,
        root: tmp.path().join("runc-root"),
        ids: vec![],
    };

    let mut pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "p".into(),
            uid: "u".into(),
            namespace: "n".into(),
            attempt: 0,
        }),
        hostname: "spec-test-pod".into(),
        linux: Some(LinuxPodSandboxConfig {
            sysctls: [("kernel.shm_rmid_forced".to_string(), "1".to_string())].into(),
            security_context: Some(LinuxSandboxSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    pod.annotations.insert("a".into(), "b".into());
    let files = PodFiles::default();
    let infra_cg = format!("/{tag}-infra");
    let spec = infra_spec(&InfraSpecInput {
        sandbox_id: "sid",
        sandbox_config: &pod,
        rootfs: &infra_rootfs,
        netns_path: None,
        userns: None,
        cgroups_path: &infra_cg,
        pod_files: &files,
    })
    .unwrap();
    let infra_id = format!("{tag}-infra");
    runc.run_detached(&infra_id, &bundle_with(&tmp.path().join("infra"), &spec));
    let st = runc.state(&infra_id);
    assert_eq!(st["status"], "running", "{st}");
    let pid = st["pid"].as_u64().unwrap() as u32;
    // `runc run -d` can answer while its init is still about to exec the
    // process: wait for the exec (the pid stays the same).
    let cmdline = wait_for(|| {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        cmdline.starts_with(b"/catatonit").then_some(cmdline)
    });
    assert!(
        cmdline.starts_with(b"/catatonit\0-P"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    // Host network pod: the infra keeps the host UTS, but has its own IPC and PID namespaces.
    let link = |p: u32, n: &str| fs::read_link(format!("/proc/{p}/ns/{n}")).unwrap();
    let me = std::process::id();
    assert_ne!(link(pid, "ipc"), link(me, "ipc"));
    assert_ne!(link(pid, "pid"), link(me, "pid"));
    assert_eq!(link(pid, "uts"), link(me, "uts"));
    assert_eq!(link(pid, "net"), link(me, "net"));

    // A workload container joining the infra: busybox as the only binary.
    let rootfs = tmp.path().join("ctr/rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "app:x:1000:\nextra:x:2000:app\n").unwrap();
    let out_dir = tmp.path().join("out");
    fs::create_dir_all(&out_dir).unwrap();
    // The container runs as uid 1000.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&out_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        command: vec!["/bin/busybox".into(), "sh".into(), "-c".into()],
        args: vec![concat!(
            "/bin/busybox id > /out/id; ",
            "/bin/busybox grep CapEff /proc/self/status > /out/caps; ",
            "/bin/busybox grep Seccomp: /proc/self/status > /out/seccomp; ",
            "/bin/busybox unshare -U /bin/busybox true 2> /out/unshare; echo $? >> /out/unshare; ",
            "/bin/busybox hostname > /out/hostname; echo done > /out/done; ",
            "/bin/busybox sleep 30"
        )
        .into()],
        envs: vec![KeyValue {
            key: "FOO".into(),
            value: b"bar".to_vec(),
        }],
        mounts: vec![cri::Mount {
            container_path: "/out".into(),
            host_path: out_dir.to_string_lossy().into(),
            ..Default::default()
        }],
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                run_as_username: "app".into(),
                capabilities: Some(CriCapability {
                    drop_capabilities: vec!["ALL".into()],
                    add_capabilities: vec!["NET_BIND_SERVICE".into()],
                    ..Default::default()
                }),
                seccomp: Some(SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                no_new_privs: true,
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let ctr_cg = format!("/{tag}-ctr");
    let spec = container_spec(&ContainerSpecInput {
        container_id: "cid",
        sandbox_id: "sid",
        config: &config,
        sandbox_config: &pod,
        image: &ContainerDefaults::default(),
        rootfs: &rootfs,
        namespaces: &PodNamespaces {
            netns_path: None,
            infra_pid: Some(pid),
            userns: None,
        },
        cgroups_path: &ctr_cg,
        pod_files: &files,
        capabilities: &Default::default(),
        privileged_without_host_devices: false,
        min_oom_score_adj: None,
    })
    .unwrap();
    let ctr_id = format!("{tag}-ctr");
    runc.run_detached(&ctr_id, &bundle_with(&tmp.path().join("ctr"), &spec));
    wait_for(|| out_dir.join("done").exists().then_some(()));
    let read = |f: &str| fs::read_to_string(out_dir.join(f)).unwrap();
    let id = read("id");
    assert!(
        id.contains("uid=1000(app) gid=1000(app)") && id.contains("2000(extra)"),
        "{id}"
    );
    // NET_BIND_SERVICE is bit 10; a non-root user keeps no effective caps
    // after exec (no ambient caps asked for).
    assert!(
        read("caps").contains("0000000000000000"),
        "{}",
        read("caps")
    );
    assert!(
        read("seccomp").contains('2'),
        "seccomp filter mode: {}",
        read("seccomp")
    );
    let unshare = read("unshare");
    // Outside seccomp an unprivileged `unshare -U` succeeds on this kernel;
    // the RuntimeDefault profile turns it into EPERM.
    assert!(
        unshare.contains("Operation not permitted"),
        "unshare -U must fail: {unshare}"
    );
    assert_ne!(unshare.lines().last(), Some("0"), "{unshare}");
    let st = runc.state(&ctr_id);
    let cpid = st["pid"].as_u64().unwrap() as u32;
    // Joined the infra's IPC and PID namespaces.
    assert_eq!(link(cpid, "ipc"), link(pid, "ipc"));
    assert_eq!(link(cpid, "pid"), link(pid, "pid"));
    let environ = fs::read(format!("/proc/{cpid}/environ")).unwrap();
    assert!(environ.split(|b| *b == 0).any(|e| e == b"FOO=bar"));
    drop(runc);
    // runc delete removed the cgroups it created.
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory{ctr_cg}")).exists());
}

/// With a pod network namespace, the infra holds the pod's UTS namespace
/// and hostname.
#[test]
fn runc_infra_in_pod_netns_sets_hostname() {
    let Some(bin) = runc_ready() else { return };
    if !crius_testkit::require_tools(&["/usr/sbin/ip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("crius-spec-ns-{}", std::process::id());
    let ok = std::process::Command::new("/usr/sbin/ip")
        .args(["netns", "add", &tag])
        .status()
        .unwrap();
    assert!(ok.success());
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("/usr/sbin/ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let _ns = DelNs(tag.clone());
    let netns = PathBuf::from(format!("/var/run/netns/{tag}"));
    let infra_rootfs = crate::rootfs::prepare_infra_rootfs(
        &tmp.path().join("infra-rootfs"),
        Path::new("/usr/bin/catatonit"),
    )
    .unwrap();
    let files_dir = tmp.path().join("files");
    fs::create_dir_all(&files_dir).unwrap();
    fs::write(files_dir.join("hostname"), "netns-pod\n").unwrap();
    let files = PodFiles {
        hostname: Some(files_dir.join("hostname")),
        ..Default::default()
    };
    let pod = PodSandboxConfig {
        hostname: "netns-pod".into(),
        linux: Some(LinuxPodSandboxConfig {
            sysctls: [(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "80".to_string(),
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cg = format!("/{tag}");
    let spec = infra_spec(&InfraSpecInput {
        sandbox_id: "sid",
        sandbox_config: &pod,
        rootfs: &infra_rootfs,
        netns_path: Some(&netns),
        userns: None,
        cgroups_path: &cg,
        pod_files: &files,
    })
    .unwrap();
    let mut runc = Runc {
        bin,
        root: tmp.path().join("runc-root"),
        ids: vec![],
    };
    runc.run_detached(&tag, &bundle_with(&tmp.path().join("b"), &spec));
    let pid = runc.state(&tag)["pid"].as_u64().unwrap();
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-u",
            "-n",
            "sh",
            "-c",
            "hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["netns-pod", "80"],
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let net = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let pinned = fs::metadata(&netns).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        net.to_string_lossy().contains(&pinned.ino().to_string()),
        "{net:?}"
    );
    // Nothing was written into the shared infra rootfs.
    assert_eq!(
        fs::read_to_string(infra_rootfs.join("etc/hostname")).unwrap(),
        ""
    );
}

#[test]
fn image_stop_signal_is_annotated_for_handlers() {
    let mut f = Fixture::new();
    let key = crate::spec::annotations::IMAGE_STOP_SIGNAL;
    assert!(
        !f.spec()
            .unwrap()
            .annotations()
            .as_ref()
            .unwrap()
            .contains_key(key)
    );
    f.image.stop_signal = "SIGQUIT".into();
    assert_eq!(
        f.spec().unwrap().annotations().as_ref().unwrap()[key],
        "SIGQUIT"
    );
}

#[test]
fn containers_join_the_pods_user_namespace_by_path_with_its_mappings() {
    use crate::sandbox::userns::{IdMappings, IdRange};
    let range = IdRange {
        container_id: 0,
        host_id: 65536,
        length: 65536,
    };
    let mut f = Fixture::new();
    let userns_opts = crius_proto::cri::UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![crius_proto::cri::IdMapping {
            host_id: 65536,
            container_id: 0,
            length: 65536,
        }],
        gids: vec![crius_proto::cri::IdMapping {
            host_id: 65536,
            container_id: 0,
            length: 65536,
        }],
    };
    f.sc()
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(userns_opts.clone());
    // The pod has none: refused.
    let err = f.spec().unwrap_err().to_string();
    assert!(err.contains("its pod has none"), "{err}");

    f.namespaces.userns = Some(PodUserns {
        path: "/run/crius/userns/sid".into(),
        mappings: IdMappings {
            uids: vec![range],
            gids: vec![range],
        },
    });
    let s = f.spec().unwrap();
    let linux = s.linux().as_ref().unwrap();
    let namespaces = linux.namespaces().as_ref().unwrap();
    // First, so the namespaces joined after it are reachable from it.
    assert_eq!(namespaces[0].typ(), LinuxNamespaceType::User);
    assert_eq!(
        namespaces[0].path().as_deref(),
        Some(Path::new("/run/crius/userns/sid"))
    );
    for maps in [linux.uid_mappings(), linux.gid_mappings()] {
        let maps = maps.as_ref().unwrap();
        assert_eq!(
            (maps[0].container_id(), maps[0].host_id(), maps[0].size()),
            (0, 65536, 65536)
        );
    }
    // Other mappings than the pod's: refused.
    let mut other = userns_opts;
    other.uids[0].host_id = 131072;
    f.sc()
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(other);
    let err = f.spec().unwrap_err().to_string();
    assert!(err.contains("must be the pod's"), "{err}");
}
