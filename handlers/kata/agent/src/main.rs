//! crius guest agent: runs inside the kata VM (as PID 1, exec'd by the
//! initramfs `/init`) and serves the Kata-compatible agent API over ttrpc on
//! vsock port 1024. Containers run under crun (or runc, where the image
//! has no crun) inside the guest.
//!
//! # Which compatibility we keep with Kata's `grpc.AgentService`
//!
//! Names, packages and Kata's field numbers, so requests have Kata's shape
//! and Kata's tools can call what carries no OCI data. The OCI spec is the
//! exception: the agent reads it only as OCI JSON from crius's extension
//! fields (`oci_spec_json`, `process_json`, `resources_json`, numbered 100;
//! `crius_agent_proto::oci_json`) and deserialises it into `oci-spec` types.
//! A request with only Kata's protobuf form (`grpc.Spec` in `OCI`, …) is
//! refused with INVALID_ARGUMENT naming the missing field: that form is a
//! lossy translation of the spec, and we keep no second path that would
//! need a hand conversion again. Hooks and hostname of the spec reach the
//! guest's runc (see handlers/kata/README.md, "OCI spec handling").
//!
//! Usage: `crius-kata-agent [--listen ADDR] [--runtime PATH]`
//! (ADDR defaults to `vsock://-1:1024`; `unix:///path` works for debugging;
//! PATH to `/usr/bin/crun` if present, else `/usr/sbin/runc`).

mod cgroup;
mod forward;
mod hotplug;
mod mount;
mod network;
mod pidns;
mod reaper;
mod runc;
mod service;
mod spec;
mod state;
mod stdio;
mod sysctl;

use std::path::PathBuf;

use anyhow::Context;

struct Args {
    listen: String,
    runtime: PathBuf,
    log: String,
}

fn parse_args() -> anyhow::Result<Args> {
    // Kernel command line options (`crius.agent_log=debug`) apply first;
    // explicit arguments override them.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut log = "info".to_string();
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("crius.agent_log=") {
            log = v.to_string();
        }
    }
    let mut args = Args {
        listen: format!("vsock://-1:{}", crius_agent_proto::AGENT_VSOCK_PORT),
        runtime: default_runtime(),
        log,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => args.listen = it.next().context("--listen needs a value")?,
            "--runtime" => args.runtime = it.next().context("--runtime needs a value")?.into(),
            "--log" => args.log = it.next().context("--log needs a value")?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    Ok(args)
}

/// The in-guest OCI runtimes, preferred first: crun starts a container in
/// a fraction of runc's time under emulation (no Go runtime to start), and
/// images built with only runc keep working.
const RUNTIMES: [&str; 2] = ["/usr/bin/crun", "/usr/sbin/runc"];

fn default_runtime() -> PathBuf {
    RUNTIMES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(RUNTIMES[1]))
}

fn main() {
    // Re-executed as the pod's pause process (see pidns.rs).
    if std::env::args_os().next().as_deref() == Some(std::ffi::OsStr::new(pidns::HOLDER_ARG0)) {
        pidns::holder_main();
    }
    if let Err(e) = run() {
        eprintln!("crius-agent: fatal: {e:#}");
        // As PID 1, exiting panics the kernel; with `panic=-1` the VM
        // reboots and QEMU (-no-reboot) exits, which the host notices.
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "crius_kata_agent={}",
            args.log
        )))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    // Orphaned container processes must become our children so we can
    // report their exit status (automatic when we are PID 1).
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument
    // and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "PR_SET_CHILD_SUBREAPER");
    }
    for dir in ["containers", "runc", "console"] {
        std::fs::create_dir_all(std::path::Path::new(state::STATE_DIR).join(dir))?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let reaper = reaper::Reaper::default();
    tokio::spawn(reaper.clone().run());
    let runc = runc::Runc {
        bin: args.runtime.clone(),
        root: std::path::Path::new(state::STATE_DIR).join("runc"),
        reaper: reaper.clone(),
    };
    let agent = service::Agent::new(runc, reaper);
    tokio::spawn(agent.clone().watch_oom());
    // Port-forward needs vsock; on a unix-socket listen (debugging) it is
    // simply not offered.
    if args.listen.starts_with("vsock://")
        && let Err(e) = forward::serve(forward::FORWARD_VSOCK_PORT)
    {
        tracing::warn!(error = %e, "no port-forward listener");
    }

    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&args.listen)
        .with_context(|| format!("listen on {}", args.listen))?
        .register_service(service::services(agent));
    server.start().await.context("start ttrpc server")?;
    tracing::info!(listen = %args.listen, runtime = %args.runtime.display(), "agent ready");
    // The host waits for this line on the console (see README).
    eprintln!("crius-agent: listening on {}", args.listen);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        term.recv().await;
        if std::process::id() != 1 {
            tracing::info!("SIGTERM: exiting");
            return Ok(());
        }
        // PID 1 never exits on a signal: the host tears the VM down.
    }
}
