//! `criusctl`: a small CRI client for crius (and any CRI runtime) over its
//! unix socket. It covers what an operator needs to try a node by hand and
//! what the demo and the benchmark need: images, pods, containers, logs,
//! interactive `exec`, `attach` and `port-forward` through the runtime's
//! streaming URLs (module `stream`, WebSocket), and `bench` (pod start
//! latency per handler).

mod bench;
mod portforward;
mod stream;
mod term;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use crius_proto::cri;
use crius_proto::cri::image_service_client::ImageServiceClient;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
#[command(name = "criusctl", about = "CRI client for crius", version)]
struct Cli {
    /// The runtime's CRI socket.
    #[arg(
        long,
        short = 's',
        default_value = "/run/crius/crius.sock",
        global = true
    )]
    socket: PathBuf,
    /// PEM CA bundle to verify an `https://` streaming server with
    /// (default: the system bundle).
    #[arg(long, global = true)]
    streaming_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runtime name and versions.
    Version,
    /// Runtime conditions and handlers (with verbose info).
    Status,
    /// Pull an image.
    Pull { image: String },
    /// List images.
    Images,
    /// Show one image (verbose).
    Inspecti { image: String },
    /// Remove an image.
    Rmi { image: String },
    /// Image filesystem usage.
    Imagefsinfo,
    /// Run a pod with one container and start it; prints the pod and container ids.
    Run(RunArgs),
    /// List pods.
    Pods,
    /// List containers (all states).
    Ps,
    /// Show a pod (verbose).
    Inspectp { pod: String },
    /// Show a container (verbose).
    Inspect { container: String },
    /// Print a container's log (the CRI log file, without the CRI prefixes).
    Logs { container: String },
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
    /// Stop a container.
    Stop {
        container: String,
        #[arg(long, default_value_t = 10)]
        timeout: i64,
    },
    /// Stop and remove a pod with all its containers.
    Rmp { pod: String },
    /// Measure RunPodSandbox + CreateContainer + StartContainer over N pods.
    Bench(bench::BenchArgs),
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

struct Clients {
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

async fn connect(socket: &Path) -> Result<Clients> {
    let path = socket.to_path_buf();
    // tonic needs a URI; every connection goes to the socket.
    let channel = Endpoint::try_from("http://crius.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
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

/// The config of a `run`/`bench` container: `cmd` in `image`, logging to
/// `<name>/0.log` in the pod's log directory.
fn container_config(name: &str, image: &str, cmd: &[String]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: image_spec(image),
        command: cmd.to_vec(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
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
    if let Command::Bench(args) = &cli.command {
        // The bench connects to its own endpoints (default: the socket).
        return bench::bench(cli.socket.clone(), args).await;
    }
    let mut c = connect(&cli.socket).await?;
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
        Command::Pull { image } => {
            let r = c
                .image
                .pull_image(cri::PullImageRequest {
                    image: image_spec(&image),
                    ..Default::default()
                })
                .await?;
            println!("{}", r.into_inner().image_ref);
        }
        Command::Images => {
            let r = c
                .image
                .list_images(cri::ListImagesRequest::default())
                .await?
                .into_inner();
            for img in r.images {
                println!("{}\t{}\t{}", &img.id, img.repo_tags.join(","), img.size);
            }
        }
        Command::Inspecti { image } => {
            let r = c
                .image
                .image_status(cri::ImageStatusRequest {
                    image: image_spec(&image),
                    verbose: true,
                })
                .await?
                .into_inner();
            match r.image {
                Some(img) => println!("{img:#?}"),
                None => bail!("image {image} not found"),
            }
            print_info(&r.info);
        }
        Command::Rmi { image } => {
            c.image
                .remove_image(cri::RemoveImageRequest {
                    image: image_spec(&image),
                })
                .await?;
        }
        Command::Imagefsinfo => {
            let r = c
                .image
                .image_fs_info(cri::ImageFsInfoRequest::default())
                .await?
                .into_inner();
            println!("{r:#?}");
        }
        Command::Run(args) => {
            let (pod, ctr) = run_pod(&mut c, &args, 0).await?;
            println!("pod {pod}\ncontainer {ctr}");
        }
        Command::Pods => {
            let r = c
                .runtime
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?
                .into_inner();
            for p in r.items {
                let m = p.metadata.unwrap_or_default();
                println!(
                    "{}\t{}/{}\t{:?}\t{}",
                    p.id,
                    m.namespace,
                    m.name,
                    cri::PodSandboxState::try_from(p.state).unwrap_or_default(),
                    p.runtime_handler
                );
            }
        }
        Command::Ps => {
            let r = c
                .runtime
                .list_containers(cri::ListContainersRequest::default())
                .await?
                .into_inner();
            for ctr in r.containers {
                let m = ctr.metadata.unwrap_or_default();
                println!(
                    "{}\t{}\t{:?}\tpod {}",
                    ctr.id,
                    m.name,
                    cri::ContainerState::try_from(ctr.state).unwrap_or_default(),
                    ctr.pod_sandbox_id
                );
            }
        }
        Command::Inspectp { pod } => {
            let r = c
                .runtime
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod,
                    verbose: true,
                })
                .await?
                .into_inner();
            println!("{:#?}", r.status);
            print_info(&r.info);
        }
        Command::Inspect { container } => {
            let r = c
                .runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: container,
                    verbose: true,
                })
                .await?
                .into_inner();
            println!("{:#?}", r.status);
            print_info(&r.info);
        }
        Command::Logs { container } => {
            let r = c
                .runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: container,
                    verbose: false,
                })
                .await?
                .into_inner();
            let path = r.status.map(|s| s.log_path).unwrap_or_default();
            let text = tokio::fs::read_to_string(&path)
                .await
                .with_context(|| format!("reading log file {path}"))?;
            print!("{}", strip_cri_log(&text));
        }
        Command::Exec(args) if args.sync => {
            let r = c
                .runtime
                .exec_sync(cri::ExecSyncRequest {
                    container_id: args.container,
                    cmd: args.cmd,
                    timeout: args.timeout,
                })
                .await?
                .into_inner();
            use std::io::Write;
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            std::process::exit(r.exit_code);
        }
        Command::Exec(args) => {
            let url = c
                .runtime
                .exec(cri::ExecRequest {
                    container_id: args.container,
                    cmd: args.cmd,
                    tty: args.tty,
                    stdin: args.stdin,
                    stdout: true,
                    stderr: !args.tty,
                })
                .await?
                .into_inner()
                .url;
            let start = Instant::now();
            let ws = stream::connect(&url, "v5.channel.k8s.io", &options).await?;
            let code = stream::remote_command(
                ws,
                stream::Session {
                    stdin: args.stdin,
                    tty: args.tty,
                    latency_from: args.latency.then_some(start),
                },
            )
            .await?;
            std::process::exit(code);
        }
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
        Command::Stop { container, timeout } => {
            c.runtime
                .stop_container(cri::StopContainerRequest {
                    container_id: container,
                    timeout,
                })
                .await?;
        }
        Command::Rmp { pod } => remove_pod(&mut c, &pod).await?,
        Command::Bench(_) => unreachable!("handled before connecting"),
    }
    Ok(())
}

/// The CRI log format is `<time> <stream> <P|F> <text>`: keep the text, join
/// partial lines.
fn strip_cri_log(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_time, _stream, tag, msg) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next().unwrap_or(""),
        );
        out.push_str(msg);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

async fn ensure_image(c: &mut Clients, image: &str) -> Result<()> {
    let present = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: image_spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image
        .is_some();
    if !present {
        c.image
            .pull_image(cri::PullImageRequest {
                image: image_spec(image),
                ..Default::default()
            })
            .await
            .with_context(|| format!("pulling {image}"))?;
    }
    Ok(())
}

fn pod_config(args: &RunArgs, index: usize) -> cri::PodSandboxConfig {
    let uid = format!("{:016x}", rand_u64());
    let name = if index == 0 {
        args.name.clone()
    } else {
        format!("{}-{index}", args.name)
    };
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: args.namespace.clone(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: args
            .log_root
            .join(format!("{}_{}_{uid}", args.namespace, name))
            .display()
            .to_string(),
        // No cgroup_parent: unlike a kubelet, criusctl owns no cgroup tree, so
        // the daemon's default (`/crius/pod-<id>`) is used and removed with the pod.
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn rand_u64() -> u64 {
    // Unique enough for names: time + pid; no extra dependency.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    nanos ^ ((std::process::id() as u64) << 32)
}

/// Runs a pod with one container; returns (pod id, container id).
async fn run_pod(c: &mut Clients, args: &RunArgs, index: usize) -> Result<(String, String)> {
    ensure_image(c, &args.image).await?;
    let started = start_pod(c, args, pod_config(args, index)).await?;
    Ok((started.pod, started.container))
}

/// A pod started with its container, and how long each RPC took.
struct StartedPod {
    pod: String,
    container: String,
    /// RunPodSandbox, CreateContainer, StartContainer.
    rpc_times: [Duration; 3],
}

/// RunPodSandbox with `config`, then CreateContainer and StartContainer of
/// `args`'s container; a pod whose container fails is removed again.
async fn start_pod(
    c: &mut Clients,
    args: &RunArgs,
    config: cri::PodSandboxConfig,
) -> Result<StartedPod> {
    let began = Instant::now();
    let pod = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: args.handler.clone(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let ran = Instant::now();
    let ctr_config = container_config(&args.name, &args.image, &args.cmd);
    let created = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ctr_config),
            sandbox_config: Some(config),
        })
        .await;
    let created_at = Instant::now();
    let container = match created {
        Ok(r) => r.into_inner().container_id,
        Err(e) => {
            let _ = remove_pod(c, &pod).await;
            return Err(e).context("CreateContainer");
        }
    };
    if let Err(e) = c
        .runtime
        .start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
    {
        let _ = remove_pod(c, &pod).await;
        return Err(e).context("StartContainer");
    }
    let rpc_times = [ran - began, created_at - ran, created_at.elapsed()];
    Ok(StartedPod {
        pod,
        container,
        rpc_times,
    })
}

async fn remove_pod(c: &mut Clients, pod: &str) -> Result<()> {
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .context("StopPodSandbox")?;
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .context("RemovePodSandbox")?;
    Ok(())
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
    fn cri_log_lines_are_stripped_and_partials_joined() {
        let text = "2026-01-01T00:00:00.000000000Z stdout P hel\n2026-01-01T00:00:00.1Z stdout F lo world\n2026-01-01T00:00:00.2Z stderr F oops\n";
        assert_eq!(strip_cri_log(text), "hello world\noops\n");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&v, 95.0), Duration::from_millis(19));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
