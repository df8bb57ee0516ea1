//! Interactive processes and port-forward of `OciHandler` through the
//! `RuntimeHandler` trait, with real runc and crun under conmon. The test
//! plays the core: it listens on the stdio sockets and names them in the
//! requests.
//!
//! Covered: exec with and without a terminal (echo, stdin to `cat`, stderr,
//! exit codes 0/3/5, a missing binary = 127), `stty size` before and after
//! ResizePty, KillProcess of an exec (no process left in /proc), Wait on
//! execs and on the main process, attach to a container running `cat`
//! (stdin echoed on stdout; `stdin_once` closes its stdin when the session
//! ends), and port-forward to busybox `httpd` inside the pod's network
//! namespace.
//!
//! Needs root, conmon, catatonit, busybox-static, `ip` and the runtime;
//! skips with a printed reason otherwise (a failure under CI=true).

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    BUSYBOX, CATATONIT, CONMON, create_request, cref, missing_prerequisite, pod_spec, save_bundle,
    skipped, sref,
};
use crius_handler_runc::{OciHandler, runc_config};
use crius_shim_api::types::{
    AttachRequest, Bundle, ExecRequest, KillProcessRequest, PortForwardRequest, ProcessRef,
    ResizePtyRequest, RunSandboxRequest, Stdio,
};
use crius_shim_api::{ErrorKind, RuntimeHandler};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const IP: &str = "/usr/sbin/ip";

fn skip_reason(runtime: &str) -> Option<String> {
    let reason = missing_prerequisite(&[CONMON, BUSYBOX, CATATONIT, IP, runtime]);
    if let Some(r) = &reason
        && std::env::var("CI").as_deref() == Ok("true")
    {
        panic!("under CI every tool must be present: {r}");
    }
    reason
}

struct Fixture {
    base: tempfile::TempDir,
    tag: String,
    netns: String,
    cgroup_parent: String,
    handler: OciHandler,
}

impl Fixture {
    async fn new(runtime: &str, tag: &str) -> Fixture {
        let base = tempfile::Builder::new()
            .prefix("crius-i-")
            .tempdir()
            .unwrap();
        let handler =
            OciHandler::new(runc_config(tag, runtime, base.path().join("root"), CONMON)).await;
        handler.check_ready().await.unwrap();
        let netns = format!("crius-it-{}-{tag}", std::process::id());
        let fx = Fixture {
            tag: tag.to_string(),
            cgroup_parent: format!("crius-itest-{}-{tag}", std::process::id()),
            netns: netns.clone(),
            handler,
            base,
        };
        // Made after the fixture, so its Drop removes the netns on failure.
        // A veth pair gives SandboxStats interfaces to report (loopback is
        // left out).
        for args in [
            vec!["netns", "add", &netns],
            vec!["-n", &netns, "link", "set", "lo", "up"],
            vec![
                "-n", &netns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
            ],
        ] {
            let ok = std::process::Command::new(IP)
                .args(&args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args:?}");
        }
        fx
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.path().join(rel)
    }

    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    fn bundle(&self, id: &str, args: &[&str], infra_pid: Option<u32>, tty: bool) -> Bundle {
        let dir = self.path(&format!("bundles/{id}"));
        let applets = ["sh", "echo", "sleep", "cat", "stty", "httpd", "true"];
        let cgroups_path = format!("/{}/{id}", self.cgroup_parent);
        let netns = self.netns_path();
        let mut spec = pod_spec(&dir, &cgroups_path, args, infra_pid, Some(&netns), &applets);
        spec["process"]["terminal"] = json!(tty);
        if infra_pid.is_some() {
            let www = dir.join("rootfs/www");
            std::fs::create_dir_all(&www).unwrap();
            std::fs::write(www.join("index.html"), "hello-pf\n").unwrap();
        }
        save_bundle(&dir, &spec)
    }

    async fn run_sandbox(&self, id: &str) -> u32 {
        let bundle = self.bundle(&format!("{id}-infra"), &["/catatonit", "-P"], None, false);
        self.handler
            .run_sandbox(RunSandboxRequest {
                sandbox_id: id.to_string(),
                state_dir: self.path(&format!("state/{id}")).display().to_string(),
                cgroup_parent: format!("/{}", self.cgroup_parent),
                netns_path: self.netns_path(),
                infra: Some(bundle),
                ..Default::default()
            })
            .await
            .unwrap()
            .infra_pid
    }

    async fn run(&self, pod: &str, id: &str, infra: u32, args: &[&str], stdin: bool) {
        let bundle = self.bundle(id, args, Some(infra), false);
        let mut req = create_request(pod, id, bundle, &self.path(&format!("logs/{id}.log")));
        if let Some(config) = req.config.as_mut() {
            config.stdin = stdin;
            config.stdin_once = stdin;
        }
        self.handler.create_container(req).await.unwrap();
        self.handler.start_container(cref(pod, id)).await.unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::process::Command::new(IP)
            .args(["netns", "del", &self.netns])
            .status();
        for mount in [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let _ = std::fs::remove_dir(Path::new(mount).join(&self.cgroup_parent));
        }
    }
}

/// The core's side of one session: listeners in a private dir.
struct Sockets {
    dir: tempfile::TempDir,
    listeners: Vec<(String, UnixListener)>,
}

impl Sockets {
    fn new() -> Sockets {
        Sockets {
            dir: tempfile::Builder::new()
                .prefix("cio-")
                .tempdir_in("/tmp")
                .unwrap(),
            listeners: Vec::new(),
        }
    }
    fn listen(&mut self, name: &str) -> String {
        let path = self.dir.path().join(name);
        let l = UnixListener::bind(&path).unwrap();
        self.listeners.push((name.to_string(), l));
        path.display().to_string()
    }
    async fn accept(&mut self, name: &str) -> UnixStream {
        let i = self.listeners.iter().position(|(n, _)| n == name).unwrap();
        let (_, l) = self.listeners.remove(i);
        tokio::time::timeout(Duration::from_secs(5), l.accept())
            .await
            .expect("handler connected before answering")
            .unwrap()
            .0
    }
}

struct Session {
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
    pid: u32,
}

#[allow(clippy::too_many_arguments)]
async fn exec(
    h: &OciHandler,
    pod: &str,
    ctr: &str,
    exec_id: &str,
    cmd: &[&str],
    stdin: bool,
    tty: bool,
    size: (u32, u32),
) -> Session {
    let mut s = Sockets::new();
    let stdio = Stdio {
        stdin: if stdin { s.listen("i") } else { String::new() },
        stdout: s.listen("o"),
        stderr: if tty { String::new() } else { s.listen("e") },
        terminal: tty,
    };
    let resp = h
        .exec(ExecRequest {
            sandbox_id: pod.into(),
            container_id: ctr.into(),
            exec_id: exec_id.into(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
            stdio: Some(stdio),
            width: size.0,
            height: size.1,
        })
        .await
        .unwrap();
    Session {
        stdin: if stdin {
            Some(s.accept("i").await)
        } else {
            None
        },
        stdout: Some(s.accept("o").await),
        stderr: if tty { None } else { Some(s.accept("e").await) },
        pid: resp.pid,
    }
}

async fn read_all(s: &mut Option<UnixStream>) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        s.as_mut().unwrap().read_to_end(&mut out),
    )
    .await
    .expect("output ends")
    .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `needle` shows up; returns everything read.
async fn read_until(s: &mut UnixStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!("{needle:?} never came: {:?}", String::from_utf8_lossy(&out))
            })
            .unwrap();
        assert!(
            n > 0,
            "EOF before {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn wait(h: &OciHandler, pod: &str, ctr: &str, exec_id: &str) -> i32 {
    tokio::time::timeout(
        Duration::from_secs(20),
        h.wait(ProcessRef {
            sandbox_id: pod.into(),
            container_id: ctr.into(),
            exec_id: exec_id.into(),
        }),
    )
    .await
    .expect("wait answers")
    .unwrap()
    .exit_code
}

async fn scenario(runtime: &'static str, tag: &str) {
    if skipped(skip_reason(runtime), tag) {
        return;
    }
    let fx = Fixture::new(runtime, tag).await;
    let h = &fx.handler;
    let pod = format!("ipod-{tag}");
    let infra = fx.run_sandbox(&pod).await;
    fx.run(
        &pod,
        "web",
        infra,
        &["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
        false,
    )
    .await;
    fx.run(&pod, "echo", infra, &["/bin/cat"], true).await;

    // --- sandbox stats -------------------------------------------------
    let stats = h.sandbox_stats(sref(&pod)).await.unwrap();
    let memory = stats.memory.unwrap().usage_bytes.unwrap().value;
    assert!(memory > 0, "pod memory usage {memory}");
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    // catatonit, httpd, cat.
    let procs = stats.process.map(|p| p.process_count.unwrap().value);
    assert!(procs.is_none_or(|n| n >= 3), "process count {procs:?}");
    let net = stats.network.unwrap();
    let names: Vec<_> = net.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["eth0", "peer0"]);
    assert_eq!(net.default_interface.unwrap().name, "eth0");

    // --- exec without a terminal -------------------------------------
    let started = Instant::now();
    let mut s = exec(
        h,
        &pod,
        "web",
        "e1",
        &["echo", "hello"],
        false,
        false,
        (0, 0),
    )
    .await;
    let out = read_all(&mut s.stdout).await;
    eprintln!(
        "{tag}: exec echo: first output after {:?}",
        started.elapsed()
    );
    assert_eq!(out, "hello\n");
    assert_eq!(read_all(&mut s.stderr).await, "");
    assert_eq!(wait(h, &pod, "web", "e1").await, 0);
    // Wait freed the exec.
    let gone = h
        .wait(ProcessRef {
            sandbox_id: pod.clone(),
            container_id: "web".into(),
            exec_id: "e1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.kind, ErrorKind::NotFound);

    let mut s = exec(
        h,
        &pod,
        "web",
        "e2",
        &["sh", "-c", "echo oops >&2; exit 3"],
        false,
        false,
        (0, 0),
    )
    .await;
    assert_eq!(read_all(&mut s.stderr).await, "oops\n");
    assert_eq!(read_all(&mut s.stdout).await, "");
    assert_eq!(wait(h, &pod, "web", "e2").await, 3);

    let mut s = exec(h, &pod, "web", "e3", &["cat"], true, false, (0, 0)).await;
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(read_all(&mut s.stdout).await, "ping\n");
    assert_eq!(wait(h, &pod, "web", "e3").await, 0);

    let mut s = exec(
        h,
        &pod,
        "web",
        "e4",
        &["/no/such/binary"],
        false,
        false,
        (0, 0),
    )
    .await;
    let _ = read_all(&mut s.stdout).await;
    let err = read_all(&mut s.stderr).await;
    assert_eq!(wait(h, &pod, "web", "e4").await, 127, "stderr: {err}");

    // --- exec with a terminal ------------------------------------------
    let mut s = exec(h, &pod, "web", "t1", &["sh"], true, true, (80, 24)).await;
    let mut out = s.stdout.take().unwrap();
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"stty size\n").await.unwrap();
    read_until(&mut out, "24 80").await;
    h.resize_pty(ResizePtyRequest {
        sandbox_id: pod.clone(),
        container_id: "web".into(),
        exec_id: "t1".into(),
        width: 100,
        height: 30,
    })
    .await
    .unwrap();
    // The runtime applies the size on SIGWINCH, asynchronously.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stdin.write_all(b"stty size\n").await.unwrap();
    read_until(&mut out, "30 100").await;
    stdin.write_all(b"exit 5\n").await.unwrap();
    assert_eq!(wait(h, &pod, "web", "t1").await, 5);

    // --- kill of an exec -------------------------------------------------
    let s = exec(
        h,
        &pod,
        "web",
        "k1",
        &["sleep", "1000"],
        false,
        false,
        (0, 0),
    )
    .await;
    assert!(s.pid > 0);
    assert!(Path::new(&format!("/proc/{}", s.pid)).exists());
    h.kill_process(KillProcessRequest {
        sandbox_id: pod.clone(),
        container_id: "web".into(),
        exec_id: "k1".into(),
        signal: 9,
    })
    .await
    .unwrap();
    assert_eq!(wait(h, &pod, "web", "k1").await, 137);
    let proc_dir = format!("/proc/{}", s.pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&proc_dir).exists() {
        assert!(Instant::now() < deadline, "{proc_dir} still exists");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);

    // --- port-forward ------------------------------------------------------
    let bad = h
        .port_forward(PortForwardRequest {
            sandbox_id: pod.clone(),
            port: 70000,
            socket: "/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.kind, ErrorKind::InvalidArgument);
    let mut sockets = Sockets::new();
    let path = sockets.listen("p");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // httpd may still be starting.
        match h
            .port_forward(PortForwardRequest {
                sandbox_id: pod.clone(),
                port: 8080,
                socket: path.clone(),
            })
            .await
        {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "port-forward: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut conn = sockets.accept("p").await;
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    conn.shutdown().await.unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(
        resp.starts_with("HTTP/1.") && resp.contains("hello-pf"),
        "{resp}"
    );
    // Nothing listens on the host's port 8080 side of this: the pod's
    // loopback was reached.

    // --- attach ------------------------------------------------------------
    let mut sockets = Sockets::new();
    let stdio = Stdio {
        stdin: sockets.listen("i"),
        stdout: sockets.listen("o"),
        stderr: sockets.listen("e"),
        terminal: false,
    };
    let refused = h
        .attach(AttachRequest {
            sandbox_id: pod.clone(),
            container_id: "web".into(),
            stdio: Some(stdio.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::FailedPrecondition, "{refused}");
    h.attach(AttachRequest {
        sandbox_id: pod.clone(),
        container_id: "echo".into(),
        stdio: Some(stdio),
    })
    .await
    .unwrap();
    let mut stdin = sockets.accept("i").await;
    let mut out = sockets.accept("o").await;
    let _err = sockets.accept("e").await;
    stdin.write_all(b"attach-ping\n").await.unwrap();
    read_until(&mut out, "attach-ping\n").await;
    // stdin_once: the end of the client's stdin closes the container's.
    stdin.shutdown().await.unwrap();
    assert_eq!(wait(h, &pod, "echo", "").await, 0);

    // --- main process: kill and wait ---------------------------------------
    let kill_web = || {
        h.kill_process(KillProcessRequest {
            sandbox_id: pod.clone(),
            container_id: "web".into(),
            exec_id: String::new(),
            signal: 9,
        })
    };
    kill_web().await.unwrap();
    assert_eq!(wait(h, &pod, "web", "").await, 137);
    // An exited process is not an error.
    kill_web().await.unwrap();

    h.stop_sandbox(sref(&pod)).await.unwrap();
    h.remove_sandbox(sref(&pod)).await.unwrap();
    eprintln!("{}: interactive scenario passed", fx.tag);
}

runtime_tests! {
    scenario: runc_interactive("runc"), crun_interactive("crun");
}
