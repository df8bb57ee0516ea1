//! Boots the real guest image under QEMU (TCG) with vhost-device-vsock and a
//! 9p share, and drives the guest agent over hybrid vsock with the host's
//! agent client: health, guest details, a busybox container printing the
//! guest kernel release, exec with stdout/stderr/stdin/exit code, OOM kill,
//! stats, removal, and teardown without leftovers.
//!
//! Needs root, qemu-system-x86_64, vhost-device-vsock (scripts/setup
//! --with-kata), busybox-static, runc, the Debian kernel. The guest image is
//! built from the agent binary of this very build (stripped) into a cache
//! directory; the build script skips work when its inputs are unchanged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius_agent_proto::agent::{CreateContainerRequest, CreateSandboxRequest};
use crius_agent_proto::oci_spec::runtime::{LinuxResources, Process, Spec};
use crius_agent_proto::{oci_json, types};
use crius_handler_kata::agent_client::{self, AgentAddr, AgentClient};
use serde_json::json;

fn which(tool: &str) -> Option<PathBuf> {
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home_bin)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Returns the missing prerequisite, if any.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in [
        "qemu-system-x86_64",
        "vhost-device-vsock",
        "cpio",
        "gzip",
        "xz",
    ] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} not found (scripts/setup --with-kata installs it)"
            ));
        }
    }
    for file in ["/bin/busybox", "/usr/sbin/runc"] {
        if !Path::new(file).exists() {
            return Some(format!("{file} missing"));
        }
    }
    None
}

/// Kills and reaps a child on drop, so a failing test leaves nothing behind.
struct Guard {
    name: &'static str,
    child: Option<Child>,
}

impl Guard {
    fn spawn(name: &'static str, cmd: &mut Command) -> Guard {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Guard {
            name,
            child: Some(child),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills, reaps and returns whether the process is gone.
    fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = c.kill();
        let _ = c.wait();
        !Path::new(&format!("/proc/{}", c.id())).exists()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.stop() {
            eprintln!("{} still present after kill", self.name);
        }
    }
}

fn build_guest(out: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/build-guest.sh");
    let agent = env!("CARGO_BIN_EXE_crius-kata-agent");
    let status = Command::new("bash")
        .arg(&script)
        .arg(out)
        .args(["--agent", agent])
        .status()
        .expect("run build-guest.sh");
    assert!(status.success(), "build-guest.sh failed: {status}");
    std::fs::read_to_string(out.join("kernel-release"))
        .expect("kernel-release")
        .trim()
        .to_string()
}

/// A busybox-static rootfs for container `cid` under the pod share.
fn make_rootfs(shared: &Path, cid: &str) {
    let root = shared.join(cid).join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "uname", "cat", "echo", "dd", "sleep", "head", "ip", "tty", "stty",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .expect("symlink applet");
    }
}

fn spec(args: &[&str], memory_limit: Option<i64>) -> serde_json::Value {
    let mut s = json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN"],
                "effective": ["CAP_KILL", "CAP_CHOWN"],
                "permitted": ["CAP_KILL", "CAP_CHOWN"]
            },
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        // Reaches the guest's runc, which sets it in the pod's (the VM's)
        // UTS namespace; a startContainer hook runs in the container.
        "hostname": "kata-pod-spec",
        "hooks": {"startContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo hooked > /tmp/hook-ran"]}
        ]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "network", "path": "/var/run/netns/host-only"}
            ],
            "cgroupsPath": "kubepods.slice:crio:host-path",
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    if let Some(limit) = memory_limit {
        s["linux"]["resources"] = json!({"memory": {"limit": limit, "swap": limit}});
    }
    s
}

async fn read_all(agent: &AgentClient, cid: &str, exec: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let chunk = if stderr {
            agent.read_stderr(cid, exec, 4096).await
        } else {
            agent.read_stdout(cid, exec, 4096).await
        }
        .expect("read stream");
        match chunk {
            Some(data) => out.extend(data),
            None => return String::from_utf8_lossy(&out).into_owned(),
        }
    }
}

async fn create_and_start(agent: &AgentClient, cid: &str, spec_json: serde_json::Value) {
    let spec: Spec = serde_json::from_value(spec_json).expect("an OCI spec");
    let req = oci_json::create_container_request(cid, &spec).expect("encode the spec");
    agent.create_container(req).await.expect("CreateContainer");
    agent.start_container(cid).await.expect("StartContainer");
}

/// An OCI process (the test's JSON plus root user when it names none).
fn process(mut v: serde_json::Value) -> Process {
    if v.get("user").is_none() {
        v["user"] = json!({"uid": 0, "gid": 0});
    }
    serde_json::from_value(v).expect("an OCI process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_agent_runs_containers_in_the_vm() {
    if let Some(why) = missing_prerequisite() {
        crius_testkit::skip(why);
        return;
    }
    let cache = std::env::var_os("CRIUS_KATA_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/crius/kata-test"));
    let guest_release = build_guest(&cache);

    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    for cid in ["c-uname", "c-oom"] {
        make_rootfs(&shared, cid);
    }
    let vhu = dir.path().join("vhu.sock");
    let vsock = dir.path().join("vsock.sock");
    let console = dir.path().join("console.log");

    let mut vdv = Guard::spawn(
        "vhost-device-vsock",
        Command::new(which("vhost-device-vsock").expect("vhost-device-vsock"))
            .args(["--guest-cid", "3"])
            .arg("--socket")
            .arg(&vhu)
            .arg("--uds-path")
            .arg(&vsock)
            .stdout(Stdio::null()),
    );
    let t0 = Instant::now();
    while !vhu.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "vhost-device-vsock did not create {}",
            vhu.display()
        );
        assert!(vdv.exited().is_none(), "vhost-device-vsock exited early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let boot = Instant::now();
    let mut qemu = Guard::spawn(
        "qemu",
        Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35",
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                "max",
                "-m",
                "512",
                "-smp",
                "1",
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args([
                "-object",
                "memory-backend-memfd,id=mem,size=512M,share=on",
                "-numa",
                "node,memdev=mem",
            ])
            .arg("-chardev")
            .arg(format!("socket,id=vhu,path={}", vhu.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=vhu"])
            .arg("-fsdev")
            .arg(format!(
                "local,id=crius,path={},security_model=none,multidevs=remap",
                shared.display()
            ))
            .args(["-device", "virtio-9p-pci,fsdev=crius,mount_tag=crius"])
            // A NIC on a hub with no other port: the guest sees a link that
            // reaches nothing.
            .args([
                "-netdev",
                "hubport,id=n0,hubid=0",
                "-device",
                "virtio-net-pci,netdev=n0,mac=52:54:00:c1:05:01",
            ])
            .arg("-kernel")
            .arg(cache.join("vmlinux"))
            .arg("-initrd")
            .arg(cache.join("initramfs.cpio.gz"))
            .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
            .stdout(Stdio::null()),
    );

    let addr = AgentAddr::Hybrid {
        uds: vsock.clone(),
        port: agent_client::AGENT_VSOCK_PORT,
    };
    let agent = match AgentClient::wait_ready(&addr, Duration::from_secs(90)).await {
        Ok(a) => a,
        Err(e) => panic!(
            "agent not ready: {e}\nqemu exited: {:?}\nconsole:\n{}",
            qemu.exited(),
            std::fs::read_to_string(&console).unwrap_or_default()
        ),
    };
    eprintln!(
        "guest agent ready {:?} after QEMU start (TCG)",
        boot.elapsed()
    );

    // Health and details.
    agent.check().await.expect("Check");
    let version = agent.version().await.expect("Version");
    assert!(
        version.agent_version.starts_with("crius-kata-agent"),
        "{version:?}"
    );
    let details = agent.guest_details().await.expect("GetGuestDetails");
    let ad = details.agent_details.as_ref().expect("agent details");
    assert!(ad.init_daemon, "agent must run as PID 1 in the guest");
    assert!(
        ad.storage_handlers.iter().any(|s| s == "9p"),
        "{:?}",
        ad.storage_handlers
    );
    assert!(details.mem_block_size_bytes > 0, "{details:?}");

    // Sandbox: mount the 9p share.
    agent
        .create_sandbox(CreateSandboxRequest {
            hostname: "kata-pod".into(),
            sandbox_id: "pod-1".into(),
            storages: vec![agent_client::shared_9p_storage()],
            ..Default::default()
        })
        .await
        .expect("CreateSandbox");

    // A container printing the kernel release: the guest's, not the host's.
    let t = Instant::now();
    create_and_start(
        &agent,
        "c-uname",
        spec(&["sh", "-c", "uname -r; uname -n; sleep 60"], None),
    )
    .await;
    eprintln!("container create+start {:?}", t.elapsed());
    let mut got = String::new();
    while got.lines().count() < 2 {
        let chunk = agent
            .read_stdout("c-uname", "", 4096)
            .await
            .expect("ReadStdout");
        got.push_str(&String::from_utf8_lossy(
            &chunk.expect("stdout ended early"),
        ));
    }
    let mut lines = got.lines();
    assert_eq!(
        lines.next(),
        Some(guest_release.as_str()),
        "container kernel must be the guest's"
    );
    assert_eq!(
        lines.next(),
        Some("kata-pod-spec"),
        "the spec's hostname reached the guest's runtime"
    );
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!(
        "guest kernel {guest_release}, host kernel {}",
        host_release.trim()
    );

    // Exec: separate stdout/stderr, exit code.
    let p = process(json!({
        "args": ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
        "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
    }));
    agent
        .exec_process("c-uname", "e1", &p)
        .await
        .expect("ExecProcess");
    assert_eq!(read_all(&agent, "c-uname", "e1", false).await, "to-out\n");
    assert_eq!(read_all(&agent, "c-uname", "e1", true).await, "to-err\n");
    assert_eq!(
        agent
            .wait_process("c-uname", "e1")
            .await
            .expect("WaitProcess e1"),
        3
    );

    // The startContainer hook ran inside the container.
    let p = process(json!({"args": ["cat", "/tmp/hook-ran"], "env": ["PATH=/bin"], "cwd": "/"}));
    agent
        .exec_process("c-uname", "e-hook", &p)
        .await
        .expect("ExecProcess cat hook file");
    assert_eq!(
        read_all(&agent, "c-uname", "e-hook", false).await,
        "hooked\n",
        "the spec's hook reached the guest's runtime"
    );
    agent
        .wait_process("c-uname", "e-hook")
        .await
        .expect("WaitProcess e-hook");

    // A hook the guest does not have is refused by name, nothing is left;
    // a Kata-style request (protobuf spec only) is refused clearly.
    make_rootfs(&shared, "c-hostbin");
    let mut host_hook = spec(&["true"], None);
    host_hook["hooks"] = json!({"prestart": [{"path": "/usr/libexec/crius-no-such-hook"}]});
    let host_hook: Spec = serde_json::from_value(host_hook).expect("spec");
    let err = agent
        .create_container(oci_json::create_container_request("c-hostbin", &host_hook).unwrap())
        .await
        .expect_err("a hook missing in the guest");
    assert_eq!(err.code(), Some(ttrpc::Code::FAILED_PRECONDITION), "{err}");
    assert!(
        err.to_string()
            .contains("prestart hook /usr/libexec/crius-no-such-hook"),
        "{err}"
    );
    let kata_style = CreateContainerRequest {
        container_id: "c-hostbin".into(),
        OCI: Some(crius_agent_proto::oci::Spec::default()).into(),
        ..Default::default()
    };
    let err = agent
        .create_container(kata_style)
        .await
        .expect_err("Kata's protobuf spec");
    assert_eq!(err.code(), Some(ttrpc::Code::INVALID_ARGUMENT), "{err}");
    assert!(err.to_string().contains("oci_spec_json"), "{err}");

    // Exec with stdin.
    let p = process(json!({"args": ["cat"], "env": ["PATH=/bin"], "cwd": "/"}));
    agent
        .exec_process("c-uname", "e2", &p)
        .await
        .expect("ExecProcess cat");
    assert_eq!(
        agent
            .write_stdin("c-uname", "e2", b"ping\n")
            .await
            .expect("WriteStdin"),
        5
    );
    agent
        .close_stdin("c-uname", "e2")
        .await
        .expect("CloseStdin");
    assert_eq!(read_all(&agent, "c-uname", "e2", false).await, "ping\n");
    assert_eq!(
        agent
            .wait_process("c-uname", "e2")
            .await
            .expect("WaitProcess e2"),
        0
    );

    // Exec with a terminal: output through the pty, window size applied.
    let p = process(json!({
        "terminal": true,
        "args": ["sh", "-c", "tty; read size; stty size"],
        "env": ["PATH=/bin"], "cwd": "/"
    }));
    agent
        .exec_process("c-uname", "e3", &p)
        .await
        .expect("ExecProcess tty");
    agent
        .tty_win_resize("c-uname", "e3", 42, 123)
        .await
        .expect("TtyWinResize");
    agent
        .write_stdin("c-uname", "e3", b"go\n")
        .await
        .expect("WriteStdin tty");
    let out = read_all(&agent, "c-uname", "e3", false).await;
    assert!(out.contains("/dev/pts/"), "tty output: {out:?}");
    assert!(out.contains("42 123"), "window size in tty output: {out:?}");
    assert_eq!(
        read_all(&agent, "c-uname", "e3", true).await,
        "",
        "a tty process has no separate stderr"
    );
    assert_eq!(
        agent
            .wait_process("c-uname", "e3")
            .await
            .expect("WaitProcess e3"),
        0
    );
    let err = agent
        .tty_win_resize("c-uname", "", 1, 1)
        .await
        .expect_err("resize without a tty");
    assert_eq!(err.code(), Some(ttrpc::Code::FAILED_PRECONDITION), "{err}");
    // A waited-for exec whose output was read is forgotten (as Kata's
    // agent does), so interactive execs leave nothing in the guest.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match agent.wait_process("c-uname", "e1").await {
            Err(err) if err.code() == Some(ttrpc::Code::NOT_FOUND) => break,
            other => assert!(
                Instant::now() < deadline,
                "exec e1 still known after its wait: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // UpdateContainer: a new memory limit shows in the stats.
    let res: LinuxResources =
        serde_json::from_value(json!({"memory": {"limit": 48 << 20}})).expect("resources");
    agent
        .update_container("c-uname", &res)
        .await
        .expect("UpdateContainer");
    let stats = agent
        .stats_container("c-uname")
        .await
        .expect("StatsContainer");
    assert_eq!(
        stats.cgroup_stats.memory_stats.usage.limit,
        48 << 20,
        "{stats:?}"
    );

    // Network: the agent configures the VM's NIC (found by MAC) and routes;
    // containers share the VM's network namespace and see them.
    let iface = agent
        .update_interface(types::Interface {
            name: "eth0".into(),
            hwAddr: "52:54:00:c1:05:01".into(),
            mtu: 1400,
            IPAddresses: vec![types::IPAddress {
                address: "10.254.3.7".into(),
                mask: "24".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("UpdateInterface");
    assert_eq!(iface.name, "eth0");
    agent
        .update_routes(vec![types::Route {
            gateway: "10.254.3.1".into(),
            device: "eth0".into(),
            ..Default::default()
        }])
        .await
        .expect("UpdateRoutes");
    let p = process(json!({
        "args": ["sh", "-c", "ip -4 addr show dev eth0; ip route"], "env": ["PATH=/bin"], "cwd": "/"
    }));
    agent
        .exec_process("c-uname", "e4", &p)
        .await
        .expect("ExecProcess ip");
    let out = read_all(&agent, "c-uname", "e4", false).await;
    assert!(
        out.contains("inet 10.254.3.7/24"),
        "address inside the container: {out}"
    );
    assert!(out.contains("mtu 1400"), "mtu: {out}");
    assert!(
        out.contains("default via 10.254.3.1 dev eth0"),
        "default route: {out}"
    );
    assert_eq!(
        agent
            .wait_process("c-uname", "e4")
            .await
            .expect("WaitProcess e4"),
        0
    );

    // Stats of the running container, then SIGKILL to every process.
    let stats = agent
        .stats_container("c-uname")
        .await
        .expect("StatsContainer");
    let mem = stats.cgroup_stats.memory_stats.usage.usage;
    assert!(mem > 0, "memory usage of a running container: {stats:?}");
    assert!(stats.cgroup_stats.pids_stats.current >= 1, "{stats:?}");
    agent
        .signal_process("c-uname", "", 9)
        .await
        .expect("SignalProcess");
    assert_eq!(
        agent
            .wait_process("c-uname", "")
            .await
            .expect("WaitProcess init"),
        137
    );

    // OOM: a 16 MiB limit and a 64 MiB allocation.
    let oom_watch = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.get_oom_event().await })
    };
    create_and_start(
        &agent,
        "c-oom",
        spec(
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            Some(16 << 20),
        ),
    )
    .await;
    let status = agent
        .wait_process("c-oom", "")
        .await
        .expect("WaitProcess oom");
    assert_eq!(status, 137, "OOM-killed process reports SIGKILL");
    let oom = tokio::time::timeout(Duration::from_secs(10), oom_watch)
        .await
        .expect("GetOOMEvent within 10s")
        .expect("join")
        .expect("GetOOMEvent");
    assert_eq!(oom, "c-oom");

    // Unknown containers are NOT_FOUND.
    let err = agent
        .start_container("nope")
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), Some(ttrpc::Code::NOT_FOUND), "{err}");

    agent
        .remove_container("c-uname", 10)
        .await
        .expect("RemoveContainer");
    assert!(
        agent.stats_container("c-uname").await.is_err(),
        "removed container is gone"
    );
    agent.destroy_sandbox().await.expect("DestroySandbox");

    // Teardown: nothing left.
    let (qemu_pid, vdv_pid) = (qemu.pid(), vdv.pid());
    assert!(qemu.stop(), "qemu {qemu_pid} still present");
    assert!(vdv.stop(), "vhost-device-vsock {vdv_pid} still present");
}
