//! `criusctl`: a small CRI client for crius (and any CRI runtime) over its
//! unix socket. It covers what an operator needs to try a node by hand and
//! what the demo and the benchmark need: images, pods, containers, logs,
//! interactive `exec`, `attach` and `port-forward` through the runtime's
//! streaming URLs (module `stream`, WebSocket), and `bench` (pod start
//! latency per handler).

mod bench;
mod configfile;
mod listing;
mod logs;
mod output;
mod portforward;
mod runpod;
mod stats;
mod stream;
mod term;
mod verbs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use crius_proto::cri;
use crius_proto::cri::image_service_client::ImageServiceClient;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use listing::ListArgs;
use output::Format;
use runpod::{ensure_image, remove_pod, run_pod};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
#[command(name = "criusctl", about = "CRI client for crius", version)]
struct Cli {
    /// The runtime's CRI socket (a path or `unix://` URL).
    #[arg(
        long,
        short = 's',
        alias = "runtime-endpoint",
        default_value = "/run/crius/crius.sock",
        global = true
    )]
    socket: PathBuf,
    /// PEM CA bundle to verify an `https://` streaming server with
    /// (default: the system bundle).
    #[arg(long, global = true)]
    streaming_ca: Option<PathBuf>,
    /// Deadline of each CRI call and of connecting, in seconds (0: none);
    /// `events` and `logs -f` run until interrupted regardless. Give it
    /// before the verb, as with crictl.
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runtime name and versions.
    Version,
    /// Runtime conditions and handlers (with verbose info).
    Status,
    /// The runtime's status and verbose info as one document (crictl info).
    Info {
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: Format,
    },
    /// Pull an image; shows each blob's download on a terminal (or with
    /// --progress), read from the runtime's ImageStatus while the pull runs.
    Pull {
        /// Show progress even when stderr is not a terminal (a line per change).
        #[arg(long)]
        progress: bool,
        image: String,
    },
    /// List images, optionally those whose tags contain REPOSITORY.
    Images {
        #[command(flatten)]
        list: ListArgs,
        repository: Option<String>,
    },
    /// Show images (status and verbose info).
    Inspecti {
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: Format,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images.
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Image filesystem usage.
    Imagefsinfo {
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: Format,
    },
    /// Run a pod with one container and start it; prints the pod and container ids.
    Run(RunArgs),
    /// Run a pod from a crictl pod config file (JSON or YAML); prints its id.
    Runp {
        /// Runtime handler (RuntimeClass handler); empty = the default.
        #[arg(short = 'r', long, default_value = "")]
        runtime: String,
        pod_config: PathBuf,
    },
    /// Create a container in POD from crictl container and pod config files;
    /// prints its id.
    Create {
        /// Pull the container's image first when it is missing.
        #[arg(long)]
        with_pull: bool,
        pod: String,
        container_config: PathBuf,
        pod_config: PathBuf,
    },
    /// Start created containers.
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List pods, newest first.
    Pods {
        #[command(flatten)]
        list: ListArgs,
        /// Only pods in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only pods in this state: ready or notready.
        #[arg(long)]
        state: Option<String>,
    },
    /// List containers, newest first (running ones unless -a).
    Ps {
        #[command(flatten)]
        list: ListArgs,
        /// All states, not just running.
        #[arg(short = 'a', long)]
        all: bool,
        /// Only containers of this pod.
        #[arg(short = 'p', long)]
        pod: Option<String>,
        /// Only containers in this state: created, running, exited, unknown.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show pods (status and verbose info).
    Inspectp {
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: Format,
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Show containers (status and verbose info).
    Inspect {
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: Format,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Print a container's log (the CRI log file, without the CRI prefixes).
    Logs {
        /// Keep printing what the container writes, until it stops.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Only lines since an RFC 3339 time or a duration ago (`5m`, `1h30m`).
        #[arg(long, value_parser = logs::parse_since)]
        since: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Prefix each line with the time it was written.
        #[arg(short = 't', long)]
        timestamps: bool,
        container: String,
    },
    /// Container resource usage: CPU, memory, writable layer, swap.
    Stats {
        /// All containers, not just running ones.
        #[arg(short = 'a', long)]
        all: bool,
        /// Only containers of this pod.
        #[arg(short = 'p', long)]
        pod: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        #[arg(long)]
        no_trunc: bool,
        /// Only this container.
        container: Option<String>,
    },
    /// Pod resource usage: CPU and memory.
    Statsp {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        #[arg(long)]
        no_trunc: bool,
        /// Only this pod.
        pod: Option<String>,
    },
    /// Update containers' CPU and memory resources.
    Update(verbs::UpdateArgs),
    /// Print container events (GetContainerEvents) until interrupted.
    Events {
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: Format,
    },
    /// Run a command in a container through the streaming server (CRI
    /// Exec); exits with the command's exit code.
    Exec(ExecArgs),
    /// Attach to a container's main process (CRI Attach).
    Attach {
        /// Send our stdin (the container needs `stdin: true`).
        #[arg(short = 'i', long)]
        stdin: bool,
        /// The container has a terminal: raw mode here, resizes sent.
        #[arg(short = 't', long)]
        tty: bool,
        container: String,
    },
    /// Forward local TCP ports to ports in a pod (CRI PortForward), until
    /// interrupted.
    PortForward {
        pod: String,
        /// `LOCAL:REMOTE` or `PORT` (both the same); LOCAL 0 picks a free port.
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Stop containers.
    Stop {
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(short = 't', long, default_value_t = 10)]
        timeout: i64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop pods (their containers are stopped; the pods stay listed).
    Stopp {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Stop a running container first.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop and remove pods with all their containers.
    Rmp {
        /// Accepted for crictl's sake: pods are always stopped first.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Measure RunPodSandbox + CreateContainer + StartContainer over N pods.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Runtime handler (RuntimeClass handler); empty = the default.
    #[arg(long, default_value = "")]
    handler: String,
    /// Pod name (also the container name).
    #[arg(long, default_value = "demo")]
    name: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Image, pulled first if missing.
    #[arg(long)]
    image: String,
    /// Directory for the pod's container logs (the kubelet's pod log dir).
    #[arg(long, default_value = "/var/log/crius/pods")]
    log_root: PathBuf,
    /// Command of the container; the image's when empty.
    #[arg(trailing_var_arg = true)]
    cmd: Vec<String>,
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Send our stdin to the command (EOF closes its stdin).
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Give the command a terminal: raw mode here, resizes sent on SIGWINCH.
    #[arg(short = 't', long)]
    tty: bool,
    /// Use ExecSync instead (output collected, then printed).
    #[arg(long, conflicts_with_all = ["stdin", "tty"])]
    sync: bool,
    /// ExecSync timeout in seconds (with --sync).
    #[arg(long, default_value_t = 10, requires = "sync")]
    timeout: i64,
    /// Print `url-to-first-byte-ms: N` on stderr: from the URL's arrival to
    /// the first byte of output.
    #[arg(long)]
    latency: bool,
    container: String,
    #[arg(trailing_var_arg = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Clone)]
struct Clients {
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

async fn connect(socket: &Path) -> Result<Clients> {
    connect_with(socket, None).await
}

/// Connects to the CRI socket (a path, or a `unix://` URL as crictl takes);
/// with `timeout`, connecting and every call have that deadline.
async fn connect_with(socket: &Path, timeout: Option<Duration>) -> Result<Clients> {
    let text = socket.to_string_lossy();
    let path = PathBuf::from(text.strip_prefix("unix://").unwrap_or(&text));
    let shown = path.display().to_string();
    // tonic needs a URI; every connection goes to the socket.
    let mut endpoint = Endpoint::try_from("http://crius.invalid")?;
    if let Some(timeout) = timeout {
        endpoint = endpoint.connect_timeout(timeout).timeout(timeout);
    }
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("cannot connect to {shown}"))?;
    Ok(Clients {
        runtime: RuntimeServiceClient::new(channel.clone()),
        image: ImageServiceClient::new(channel),
    })
}

fn image_spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

fn print_info(info: &HashMap<String, String>) {
    let mut keys: Vec<_> = info.keys().collect();
    keys.sort();
    for key in keys {
        println!("{key}: {}", info[key]);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        // The bench connects to its own endpoints (default: the socket).
        Command::Bench(args) => return bench::bench(cli.socket.clone(), args).await,
        Command::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "criusctl",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        _ => {}
    }
    // Streams that last until interrupted get no deadline.
    let unbounded = matches!(
        cli.command,
        Command::Events { .. } | Command::Logs { follow: true, .. }
    );
    let timeout = (cli.timeout > 0 && !unbounded).then(|| Duration::from_secs(cli.timeout));
    let mut c = connect_with(&cli.socket, timeout).await?;
    let options = stream::Options {
        ca: cli.streaming_ca.clone(),
    };
    match cli.command {
        Command::Version => {
            let v = c
                .runtime
                .version(cri::VersionRequest::default())
                .await?
                .into_inner();
            println!(
                "RuntimeName: {}\nRuntimeVersion: {}\nRuntimeApiVersion: {}",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            );
        }
        Command::Status => {
            let s = c
                .runtime
                .status(cri::StatusRequest { verbose: true })
                .await?
                .into_inner();
            for cond in s.status.map(|s| s.conditions).unwrap_or_default() {
                println!(
                    "{}: {} {} {}",
                    cond.r#type, cond.status, cond.reason, cond.message
                );
            }
            for h in s.runtime_handlers {
                let f = h.features.unwrap_or_default();
                println!(
                    "handler {:?}: recursive_read_only_mounts={} user_namespaces={}",
                    h.name, f.recursive_read_only_mounts, f.user_namespaces
                );
            }
            print_info(&s.info);
        }
        Command::Info { output } => verbs::info(&mut c, output).await?,
        Command::Pull { progress, image } => verbs::pull(&mut c, &image, progress).await?,
        Command::Images {
            mut list,
            repository,
        } => {
            list.name = list.name.or(repository);
            let r = c
                .image
                .list_images(cri::ListImagesRequest::default())
                .await?
                .into_inner();
            listing::print_images(&list, r)?;
        }
        Command::Inspecti { output, images } => verbs::inspecti(&mut c, &images, output).await?,
        Command::Rmi { images } => {
            for image in images {
                c.image
                    .remove_image(cri::RemoveImageRequest {
                        image: image_spec(&image),
                    })
                    .await
                    .with_context(|| format!("removing {image}"))?;
                println!("Deleted: {image}");
            }
        }
        Command::Imagefsinfo { output } => {
            let r = c
                .image
                .image_fs_info(cri::ImageFsInfoRequest::default())
                .await?
                .into_inner();
            output::print(output, &r, || println!("{r:#?}"))?;
        }
        Command::Run(args) => {
            let (pod, ctr) = run_pod(&mut c, &args, 0).await?;
            println!("pod {pod}\ncontainer {ctr}");
        }
        Command::Runp {
            runtime,
            pod_config,
        } => verbs::runp(&mut c, &runtime, &pod_config).await?,
        Command::Create {
            with_pull,
            pod,
            container_config,
            pod_config,
        } => verbs::create(&mut c, &pod, &container_config, &pod_config, with_pull).await?,
        Command::Start { containers } => verbs::start(&mut c, &containers).await?,
        Command::Pods {
            list,
            namespace,
            state,
        } => {
            let request = listing::pods_request(&list, state.as_deref())?;
            let r = c.runtime.list_pod_sandbox(request).await?.into_inner();
            let r = listing::pods(&list, namespace.as_deref(), r);
            listing::print_pods(&list, &r)?;
        }
        Command::Ps {
            list,
            all,
            pod,
            state,
        } => {
            let request =
                listing::containers_request(&list, all, state.as_deref(), pod.as_deref())?;
            let r = c.runtime.list_containers(request).await?.into_inner();
            let r = listing::containers(&list, r);
            let pods = c
                .runtime
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?
                .into_inner();
            let pod_names = pods
                .items
                .into_iter()
                .map(|p| (p.id, p.metadata.unwrap_or_default().name))
                .collect();
            listing::print_containers(&list, &r, &pod_names)?;
        }
        Command::Inspectp { output, pods } => verbs::inspectp(&mut c, &pods, output).await?,
        Command::Inspect { output, containers } => {
            verbs::inspect(&mut c, &containers, output).await?
        }
        Command::Logs {
            follow,
            tail,
            since,
            timestamps,
            container,
        } => {
            let path = verbs::container_status(&mut c.runtime, &container)
                .await?
                .log_path;
            let selection = logs::Selection {
                tail,
                since,
                timestamps,
            };
            let runtime = c.runtime.clone();
            logs::print(&path, &selection, follow, || {
                let mut runtime = runtime.clone();
                let container = container.clone();
                async move {
                    // A container that is gone is not running.
                    verbs::container_status(&mut runtime, &container)
                        .await
                        .is_ok_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
                }
            })
            .await?;
        }
        Command::Stats {
            all,
            pod,
            output,
            no_trunc,
            container,
        } => {
            let mut r = c
                .runtime
                .list_container_stats(cri::ListContainerStatsRequest {
                    filter: Some(cri::ContainerStatsFilter {
                        id: container.clone().unwrap_or_default(),
                        pod_sandbox_id: pod.unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            if !all && container.is_none() {
                let running = running_containers(&mut c).await?;
                r.stats.retain(|s| {
                    s.attributes
                        .as_ref()
                        .is_some_and(|a| running.contains(&a.id))
                });
            }
            output::print(output, &r, || {
                stats::containers_table(&r.stats, no_trunc).print()
            })?;
        }
        Command::Statsp {
            output,
            no_trunc,
            pod,
        } => {
            let r = c
                .runtime
                .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
                    filter: Some(cri::PodSandboxStatsFilter {
                        id: pod.unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            output::print(output, &r, || stats::pods_table(&r.stats, no_trunc).print())?;
        }
        Command::Update(args) => verbs::update(&mut c, &args).await?,
        Command::Events { output } => verbs::events(&mut c, output).await?,
        Command::Exec(args) => std::process::exit(exec(&mut c, args, &options).await?),
        Command::Attach {
            stdin,
            tty,
            container,
        } => {
            let url = c
                .runtime
                .attach(cri::AttachRequest {
                    container_id: container,
                    stdin,
                    tty,
                    stdout: true,
                    stderr: !tty,
                })
                .await?
                .into_inner()
                .url;
            let ws = stream::connect(&url, "v5.channel.k8s.io", &options).await?;
            let code = stream::remote_command(
                ws,
                stream::Session {
                    stdin,
                    tty,
                    latency_from: None,
                },
            )
            .await?;
            std::process::exit(code);
        }
        Command::PortForward { pod, ports } => {
            portforward::run(c.runtime.clone(), &pod, &ports, &options).await?
        }
        Command::Stop {
            timeout,
            containers,
        } => verbs::stop(&mut c, &containers, timeout).await?,
        Command::Stopp { pods } => verbs::stopp(&mut c, &pods).await?,
        Command::Rm { force, containers } => verbs::rm(&mut c, &containers, force).await?,
        Command::Rmp { force: _, pods } => {
            for pod in pods {
                remove_pod(&mut c, &pod).await?;
                println!("Removed sandbox {pod}");
            }
        }
        Command::Bench(_) | Command::Completion { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}

/// `criusctl exec`: the command's exit code. ExecSync and Exec take the
/// same container and command; with `--sync` the output is printed once
/// the command is done, else it is streamed over the URL Exec returns.
async fn exec(c: &mut Clients, args: ExecArgs, options: &stream::Options) -> Result<i32> {
    let request = cri::ExecRequest {
        container_id: args.container,
        cmd: args.cmd,
        tty: args.tty,
        stdin: args.stdin,
        stdout: true,
        stderr: !args.tty,
    };
    if args.sync {
        let sync = cri::ExecSyncRequest {
            container_id: request.container_id,
            cmd: request.cmd,
            timeout: args.timeout,
        };
        let r = c.runtime.exec_sync(sync).await?.into_inner();
        use std::io::Write;
        std::io::stdout().write_all(&r.stdout)?;
        std::io::stderr().write_all(&r.stderr)?;
        return Ok(r.exit_code);
    }
    let url = c.runtime.exec(request).await?.into_inner().url;
    let start = Instant::now();
    let ws = stream::connect(&url, "v5.channel.k8s.io", options).await?;
    let session = stream::Session {
        stdin: args.stdin,
        tty: args.tty,
        latency_from: args.latency.then_some(start),
    };
    stream::remote_command(ws, session).await
}

async fn running_containers(c: &mut Clients) -> Result<std::collections::HashSet<String>> {
    let r = c
        .runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    Ok(r.containers.into_iter().map(|c| c.id).collect())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&v, 95.0), Duration::from_millis(19));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
