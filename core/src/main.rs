//! `crius`: the CRI daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use crius_core::config::{self, Config};
use crius_core::handlers::HandlerRegistry;
use crius_core::perms;
use crius_core::server::authority::AuthorityFix;
use crius_core::server::conn::{self, Bounded, ConnectionLimit};
use crius_core::server::runtime::RuntimeServer;
use crius_proto::cri::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{error, info};

/// crius: a Kubernetes container runtime with pluggable runtime handlers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file; drop-ins are read from `<config>.d/*.yaml`.
    #[arg(long, default_value = "/etc/crius/crius.yaml")]
    config: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); overrides the config.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("crius: invalid configuration: {err}");
            return ExitCode::FAILURE;
        }
    };
    let filter = args
        .log_level
        .clone()
        .unwrap_or_else(|| config.log_level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("crius: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("crius: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<()> {
    let config = Arc::new(config);
    // root holds unpacked layers (setuid binaries, device nodes) and nothing
    // a non-root user may reach; state_dir only needs to be passable, for
    // the CRI socket's group (see perms::TRAVERSE_DIR).
    for (dir, mode) in [
        (&config.root, perms::PRIVATE_DIR),
        (&config.state_dir, perms::TRAVERSE_DIR),
    ] {
        match perms::secure_top_dir(dir, mode) {
            Ok(perms::TopDirCheck::Ok) => {}
            Ok(perms::TopDirCheck::Tightened { old_mode }) => tracing::warn!(
                dir = %dir.display(),
                old_mode = format!("{old_mode:04o}"),
                new_mode = format!("{mode:04o}"),
                "daemon directory was accessible to other users; permissions tightened"
            ),
            Err(err) => return Err(err).context("checking the daemon's directories"),
        }
    }
    // The OCI runtimes' state roots name every container and hold the
    // runtime's copy of their config: root only, also when an older version
    // (or the runtime under another umask) left them wider.
    for (name, handler) in &config.runtime_handlers {
        if handler.kind == config::HandlerKind::Oci
            && let Some(root) = &handler.runtime_root
            && let Err(err) = perms::ensure_private_dir(root)
        {
            tracing::warn!(handler = name, root = %root.display(), "cannot make the runtime root private: {err}");
        }
    }

    let handlers = Arc::new(HandlerRegistry::from_config(&config).await);
    for (name, handler) in handlers.iter() {
        match handler.check_ready().await {
            Ok(()) => {
                info!(handler = name, features = ?handler.features(), "runtime handler ready")
            }
            Err(err) => tracing::warn!(handler = name, "runtime handler not ready: {err}"),
        }
    }
    let images = crius_core::image::ImageManager::open(&config)
        .await
        .context("opening the image store")?;

    let cgroups =
        crius_core::sandbox::CgroupLayout::detect().context("detecting the cgroup layout")?;
    info!(mode = ?cgroups.mode(), "cgroup layout detected");
    let pods =
        crius_core::pod::PodManager::new(config.clone(), handlers.clone(), images.clone(), cgroups);
    // Reattach to the pods a previous run left before serving anything, so
    // the kubelet never sees them missing.
    pods.restore().await.context("restoring pods")?;
    info!(
        pods = pods.store().pods().len(),
        containers = pods.store().containers().len(),
        "pod records restored"
    );

    let listener = bind_socket(&config.listen)?;
    info!(socket = %config.listen.display(), "serving CRI runtime.v1");

    // Exec/attach/port-forward sessions run through the handler contract.
    let stream_backend: Option<Arc<dyn crius_core::streaming::StreamBackend>> = Some(Arc::new(
        crius_core::streaming::PodStreamBackend::new(pods.clone()),
    ));
    let streaming = match stream_backend {
        Some(backend) => Some(
            crius_core::streaming::StreamingServer::start(&config.streaming, backend)
                .await
                .context("starting the streaming server")?,
        ),
        None => None,
    };
    let runtime_service = RuntimeServiceServer::new(
        RuntimeServer::new(config.clone(), handlers, pods).with_streaming(streaming),
    )
    .max_decoding_message_size(16 * 1024 * 1024)
    .max_encoding_message_size(16 * 1024 * 1024);
    let image_service = crius_proto::cri::image_service_server::ImageServiceServer::new(
        crius_core::server::image::ImageServer::new(images),
    );
    let result = tonic::transport::Server::builder()
        .add_service(runtime_service)
        .add_service(image_service)
        .serve_with_incoming_shutdown(incoming(listener), shutdown_signal())
        .await
        .context("serving the CRI");
    if let Err(err) = std::fs::remove_file(&config.listen) {
        tracing::warn!(socket = %config.listen.display(), "removing socket: {err}");
    }
    info!("crius stopped");
    result
}

/// The socket's connections, each holding one of a bounded number of
/// slots and given a deadline for the HTTP/2 handshake (server::conn), and
/// read through the `:authority` fix (server::authority).
fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AuthorityFix<Bounded<tokio::net::UnixStream>>>>
{
    let limit = ConnectionLimit::new(conn::MAX_CONNECTIONS, conn::HANDSHAKE_TIMEOUT);
    let mut refused: u64 = 0;
    UnixListenerStream::new(listener).filter_map(move |conn| match conn {
        Ok(stream) => match limit.admit(stream) {
            Some(bounded) => Some(Ok(AuthorityFix::new(bounded))),
            None => {
                // Closed at once; logged sparingly, a flood must not fill the log.
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        max = conn::MAX_CONNECTIONS,
                        refused,
                        "CRI socket: connection limit reached; closing new connections"
                    );
                }
                None
            }
        },
        Err(err) => Some(Err(err)),
    })
}

/// Binds the CRI socket, replacing a stale one left by a crashed daemon, and
/// restricts it to root and the socket's group.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if path.exists() {
        // A live daemon would still answer on it; refuse to steal its socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another daemon is already serving {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop crius with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = int.recv() => info!("SIGINT received, shutting down"),
    }
}
