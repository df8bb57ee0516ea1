//! `crius`: the CRI daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use crius_core::config::{self, Config};
use crius_core::handlers::{HandlerRegistry, HandlerTable};
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

/// Largest response the CRI socket sends: an ExecSync with the OCI
/// handler's full output cap, plus room for the rest of the message.
const MAX_RESPONSE_BYTES: usize =
    crius_handler_runc::execsync::EXEC_SYNC_OUTPUT_MAX_BYTES as usize + (1 << 20);

/// crius: a Kubernetes container runtime with pluggable runtime handlers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file; drop-ins are read from `<config>.d/*.yaml`.
    #[arg(long, global = true, default_value = "/etc/crius/crius.yaml")]
    config: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); overrides the config.
    #[arg(long)]
    log_level: Option<String>,
    /// Without a command: run the daemon.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the effective configuration (defaults + file + drop-ins) as YAML.
    Config,
    /// Validate the configuration and the host (handler binaries, cgroups,
    /// CNI config and plugins); exits non-zero listing the problems.
    Check {
        /// Instead: list what belongs to crius but no pod, container or
        /// image record accounts for (processes, runtime state, mounts,
        /// netns pins, cgroups, IPAM leases, directories, layers, blobs);
        /// exits non-zero when there is any.
        #[arg(long)]
        leftovers: bool,
        /// With --leftovers: remove them (refused while the daemon runs).
        #[arg(long, requires = "leftovers")]
        repair: bool,
    },
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
    match args.command {
        Some(Command::Config) => return print_config(&config),
        Some(Command::Check {
            leftovers: true,
            repair,
        }) => return check_leftovers(&config, repair),
        Some(Command::Check { .. }) => return check(&config),
        None => {}
    }
    let filter = args
        .log_level
        .clone()
        .unwrap_or_else(|| config.log_level.clone());
    // The filter sits behind a reload handle: SIGHUP may change it.
    let (filter, log_filter) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(filter));
    let otlp = match config.otlp_endpoint.as_deref().map(otlp_tracer).transpose() {
        Ok(otlp) => otlp,
        Err(err) => {
            eprintln!("crius: cannot export spans: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let exported = otlp
            .as_ref()
            .map(|(_, tracer)| tracing_opentelemetry::layer().with_tracer(tracer.clone()));
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(exported)
            .init();
    }
    let reloader = Reloader {
        path: args.config.clone(),
        log_level_override: args.log_level.clone(),
        log_filter,
    };

    let Some(runtime) = start_runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let code = match runtime.block_on(serve(config, reloader)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("crius: {err:#}");
            ExitCode::FAILURE
        }
    };
    // The batch of spans not sent yet goes out before the daemon exits.
    if let Some((provider, _)) = otlp
        && let Err(err) = provider.shutdown()
    {
        eprintln!("crius: flushing exported spans: {err}");
    }
    code
}

/// The span exporter of `otlp_endpoint` (OTLP/HTTP, protobuf): spans go
/// out in batches from a thread of the exporter's own.
fn otlp_tracer(
    endpoint: &str,
) -> anyhow::Result<(
    opentelemetry_sdk::trace::SdkTracerProvider,
    opentelemetry_sdk::trace::Tracer,
)> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("OTLP endpoint {endpoint}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("crius")
                .build(),
        )
        .build();
    let tracer = provider.tracer("crius");
    Ok((provider, tracer))
}

/// The async runtime `builder` makes with all drivers on; `None` after
/// saying why it could not start.
fn start_runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            eprintln!("crius: cannot start the async runtime: {err}");
            None
        }
    }
}

/// `crius config`.
fn print_config(config: &Config) -> ExitCode {
    match serde_saphyr::to_string(config) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("crius: cannot print the configuration: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `crius check`: one line per check, the problems again at the end.
fn check(config: &Config) -> ExitCode {
    let findings = config::check::check_host(config);
    for finding in &findings {
        println!("{finding}");
    }
    let problems = config::check::problems(&findings);
    if problems.is_empty() {
        println!("configuration and host: OK");
        return ExitCode::SUCCESS;
    }
    eprintln!("crius check: {} problem(s):", problems.len());
    for problem in problems {
        eprintln!("  {}: {}", problem.subject, problem.message);
    }
    ExitCode::FAILURE
}

/// `crius check --leftovers [--repair]`.
fn check_leftovers(config: &Config, repair: bool) -> ExitCode {
    let Some(runtime) = start_runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        use crius_core::leftovers;
        let found = match leftovers::audit(config).await {
            Ok(found) => found,
            Err(err) => {
                eprintln!("crius check: {err}");
                return ExitCode::FAILURE;
            }
        };
        for item in &found {
            println!("leftover {item}");
        }
        if found.is_empty() {
            println!("no leftovers: everything of crius's on this host has a record");
            return ExitCode::SUCCESS;
        }
        if !repair {
            eprintln!(
                "crius check: {} leftover(s); `crius check --leftovers --repair` removes them",
                found.len()
            );
            return ExitCode::FAILURE;
        }
        // A running daemon writes a record just before making what it
        // records: a repair now could take a pod being created.
        if tokio::net::UnixStream::connect(&config.listen).await.is_ok() {
            eprintln!(
                "crius check: the daemon answers on {}; stop it before --repair (it cleans up its own pods at start)",
                config.listen.display()
            );
            return ExitCode::FAILURE;
        }
        for (item, outcome) in leftovers::repair(&found).await {
            match outcome {
                Ok(()) => println!("removed {item}"),
                Err(err) => eprintln!("cannot remove {item}: {err}"),
            }
        }
        match leftovers::audit(config).await {
            Ok(left) if left.is_empty() => {
                println!("no leftovers remain");
                ExitCode::SUCCESS
            }
            Ok(left) => {
                eprintln!("crius check: {} leftover(s) remain:", left.len());
                for item in left {
                    eprintln!("  {item}");
                }
                ExitCode::FAILURE
            }
            Err(err) => {
                eprintln!("crius check: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn serve(config: Config, reloader: Reloader) -> Result<()> {
    let started = std::time::Instant::now();
    // Installed first: until then SIGHUP's default action would kill us.
    let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
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
    secure_runtime_roots(&config);

    let handlers = Arc::new(HandlerRegistry::from_config(config.clone()).await);
    let table = handlers.table();
    for (name, handler) in table.iter() {
        log_readiness(name, handler.as_ref()).await;
    }
    let images = crius_core::image::ImageManager::open(&config)
        .await
        .context("opening the image store")?;

    let cgroups =
        crius_core::sandbox::CgroupLayout::detect().context("detecting the cgroup layout")?;
    info!(mode = ?cgroups.mode(), "cgroup layout detected");
    if config.cgroup_driver == crius_core::config::CgroupDriver::Systemd {
        // Every pod needs systemd: refuse to serve rather than fail each one.
        let systemd = crius_core::sandbox::systemd::Systemd::connect()
            .await
            .context("cgroup_driver: systemd")?;
        let version = systemd.version().await.context("cgroup_driver: systemd")?;
        info!(%version, root = %crius_shim_api::cgroupfs::systemd::manager_root(), "systemd cgroup driver");
    }
    let pods =
        crius_core::pod::PodManager::new(config.clone(), handlers.clone(), images.clone(), cgroups);
    // The records are read before the socket is bound (so every pod is
    // listed from the first answer); restoring them through the handlers
    // runs after, in parallel, while the restore gate holds the calls that
    // touch pods (see crius_core::restore_gate).
    let loaded = pods.load().context("loading pod records")?;
    info!(
        pods = loaded.pods,
        containers = loaded.containers,
        after_reboot = loaded.after_reboot,
        "pod records loaded"
    );
    let (gate, opener) = crius_core::restore_gate::RestoreGate::closed();

    let listener = bind_socket(&config.listen)?;
    info!(
        socket = %config.listen.display(),
        since_start_ms = started.elapsed().as_millis() as u64,
        "serving CRI runtime.v1"
    );
    {
        let pods = pods.clone();
        tokio::spawn(async move {
            let restore_started = std::time::Instant::now();
            pods.restore_loaded(loaded).await;
            crius_core::metrics::global().restore_took(restore_started.elapsed());
            opener.open();
            info!(
                since_start_ms = started.elapsed().as_millis() as u64,
                "restore done; all CRI calls are served"
            );
        });
    }

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
    // SIGHUPs that came before are delivered now: `hangup` queued them.
    tokio::spawn(reloader.run(
        hangup,
        Live {
            handlers: handlers.clone(),
            images: images.clone(),
            streaming: streaming.clone(),
        },
    ));
    let runtime_service = gate.guard(
        RuntimeServiceServer::new(
            RuntimeServer::new(handlers, pods.clone()).with_streaming(streaming),
        )
        .max_decoding_message_size(16 * 1024 * 1024)
        // An ExecSync response carries up to the handler's output cap.
        .max_encoding_message_size(MAX_RESPONSE_BYTES),
    );
    let image_service = crius_proto::cri::image_service_server::ImageServiceServer::new(
        crius_core::server::image::ImageServer::new(images).with_pods(pods.clone()),
    );
    if let Some(address) = config.metrics_address {
        let bound = crius_core::metrics::serve(address, pods.clone())
            .await
            .with_context(|| format!("starting the metrics endpoint on {address}"))?;
        info!(address = %bound, "serving Prometheus metrics on /metrics");
    }
    let result = tonic::transport::Server::builder()
        .trace_fn(|req| crius_core::server::spans::request_span(req.uri().path()))
        .layer(crius_core::metrics::RpcMetricsLayer)
        .add_service(runtime_service)
        .add_service(image_service)
        .serve_with_incoming_shutdown(incoming(listener), shutdown_signal())
        .await
        .context("serving the CRI");
    if let Err(err) = tokio::fs::remove_file(&config.listen).await {
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

/// The OCI runtimes' state roots name every container and hold the
/// runtime's copy of their config: root only, also when an older version
/// (or the runtime under another umask) left them wider.
fn secure_runtime_roots(config: &Config) {
    for (name, handler) in &config.runtime_handlers {
        if handler.kind == config::HandlerKind::Oci
            && let Some(root) = &handler.runtime_root
            && let Err(err) = perms::ensure_private_dir(root)
        {
            tracing::warn!(handler = name, root = %root.display(), "cannot make the runtime root private: {err}");
        }
    }
}

async fn log_readiness(name: &str, handler: &dyn crius_shim_api::RuntimeHandler) {
    match handler.check_ready().await {
        Ok(()) => info!(handler = name, features = ?handler.features(), "runtime handler ready"),
        Err(err) => tracing::warn!(handler = name, "runtime handler not ready: {err}"),
    }
}

/// What a reload changes in the running daemon.
struct Live {
    /// The handler table and running configuration.
    handlers: Arc<HandlerRegistry>,
    images: Arc<crius_core::image::ImageManager>,
    streaming: Option<Arc<crius_core::streaming::StreamingServer>>,
}

/// Reloads the configuration on SIGHUP (see `crius_core::config::ReloadPlan`
/// for what applies live). Reloads run one at a time, in this task.
struct Reloader {
    path: PathBuf,
    /// `--log-level`, which wins over the file's `log_level`.
    log_level_override: Option<String>,
    log_filter: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
}

impl Reloader {
    async fn run(self, mut hangup: tokio::signal::unix::Signal, live: Live) {
        while hangup.recv().await.is_some() {
            info!(config = %self.path.display(), "SIGHUP received, reloading the configuration");
            let path = self.path.clone();
            let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
            let new = match loaded {
                Ok(Ok(new)) => new,
                Ok(Err(err)) => {
                    error!(
                        config = %self.path.display(),
                        "configuration reload failed, still running with the previous configuration: {err}"
                    );
                    continue;
                }
                Err(err) => {
                    error!("configuration reload task failed: {err}");
                    continue;
                }
            };
            self.apply(new, &live).await;
        }
    }

    async fn apply(&self, new: Config, live: &Live) {
        let running = live.handlers.config();
        let plan = config::ReloadPlan::new(&running, &new);
        if plan.is_empty() {
            info!("configuration reloaded: nothing changed");
            return;
        }
        // What will run: the new file's live keys, the rest as started. The
        // new file is valid; checked again as mixed with the old values.
        let applied = config::apply_live(&running, &new);
        if let Err(err) = applied.validate() {
            error!(
                config = %self.path.display(),
                "configuration reload failed, still running with the previous configuration: {err}"
            );
            return;
        }
        if applied.log_level != running.log_level {
            match &self.log_level_override {
                Some(cli) => tracing::warn!(
                    log_level = %applied.log_level,
                    "log_level changed in the configuration, but --log-level {cli} overrides it"
                ),
                None => {
                    let filter = tracing_subscriber::EnvFilter::new(&applied.log_level);
                    if let Err(err) = self.log_filter.reload(filter) {
                        error!("cannot change the log filter: {err}");
                    }
                }
            }
        }
        live.images.reconfigure(&applied);
        if let Some(streaming) = &live.streaming
            && applied.streaming != running.streaming
        {
            streaming.reconfigure(&applied.streaming);
        }
        let applied = Arc::new(applied);
        if applied.runtime_handlers != running.runtime_handlers {
            let roots = applied.clone();
            if let Err(err) =
                tokio::task::spawn_blocking(move || secure_runtime_roots(&roots)).await
            {
                error!("checking the runtime roots failed: {err}");
            }
        }
        // Unchanged handlers are taken over; new and changed ones built
        // (outside any lock) before the table is swapped in one step.
        let previous = live.handlers.table();
        let (table, changes) = HandlerTable::build(applied, Some(&previous)).await;
        for name in &changes.built {
            if let Ok(slot) = table.resolve(name) {
                log_readiness(name, slot.handler().as_ref()).await;
            }
        }
        drop(previous);
        drop(live.handlers.install(table));
        let retired = live.handlers.retired();
        for name in &changes.removed {
            let pods = retired.get(name).copied().unwrap_or(0);
            info!(
                handler = %name,
                pods,
                "runtime handler removed; new pods cannot use it, its pods keep it until they are removed"
            );
        }
        for name in changes.built.iter().filter(|n| retired.contains_key(*n)) {
            info!(
                handler = %name,
                pods = retired[name],
                "runtime handler changed; new pods get the new one, existing pods keep the previous one until they are removed"
            );
        }
        if !plan.live.is_empty() {
            info!(
                changed = ?plan.live,
                "configuration reloaded; new pods, containers, pulls and streaming sessions use it"
            );
        }
        if !plan.restart.is_empty() {
            tracing::warn!(
                changed = ?plan.restart,
                "these configuration changes take effect only after a restart; \
                 the daemon keeps running with the previous values (pods keep working)"
            );
        }
    }
}
