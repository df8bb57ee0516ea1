//! The per-pod VM shim: started by the kata handler in the crius daemon,
//! serves the handler contract for one pod on a unix socket, owns the VM.
//!
//! Usage: `crius-kata-shim --config <state_dir>/shim.json --socket <path>`
//!
//! It runs in its own session and keeps the VM running when the daemon
//! restarts. It exits after a `Shutdown` call (sent after RemoveSandbox or a
//! failed RunSandbox) or on SIGTERM/SIGINT, stopping the VM first.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use crius_handler_kata::shim::{PodShim, ShimConfig};
use crius_handler_kata::spawn::RealSpawner;
use crius_handler_kata::wire;
use tokio::signal::unix::{SignalKind, signal};

// Single-threaded on purpose: the VM's processes die with the thread that
// started them (PR_SET_PDEATHSIG), so that thread must be the process.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_ansi(false)
        .init();
    let mut config_path = None;
    let mut socket = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config") => config_path = args.next().map(PathBuf::from),
            Some("--socket") => socket = args.next().map(PathBuf::from),
            _ => bail!(
                "unknown argument {arg:?}; usage: crius-kata-shim --config FILE --socket PATH"
            ),
        }
    }
    let (Some(config_path), Some(socket)) = (config_path, socket) else {
        bail!("usage: crius-kata-shim --config FILE --socket PATH");
    };
    let config: ShimConfig = serde_json::from_slice(
        &std::fs::read(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let pidfile = config.state_dir.join("shim.pid");
    std::fs::write(&pidfile, std::process::id().to_string())
        .with_context(|| format!("writing {}", pidfile.display()))?;
    let sandbox = config.sandbox_id.clone();
    let listener = wire::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    tracing::info!(%sandbox, socket = %socket.display(), "VM shim serving");

    let shim = Arc::new(PodShim::new(config, Arc::new(RealSpawner)));
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = wire::serve(listener, shim.clone(), shutdown.clone()) => {}
        _ = term.recv() => tracing::info!(%sandbox, "SIGTERM"),
        _ = int.recv() => tracing::info!(%sandbox, "SIGINT"),
    }
    shim.stop_vm("the VM shim exited").await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pidfile);
    // A short socket dir (deep state dirs) holds only this pod's sockets.
    if let Some(dir) = socket.parent()
        && dir.starts_with(crius_handler_kata::vm::SHORT_SOCKET_ROOT)
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    tracing::info!(%sandbox, "VM shim exiting");
    Ok(())
}
