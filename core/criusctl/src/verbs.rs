//! crictl's lifecycle and inspection verbs: `runp`/`create` from crictl
//! config files, `start`, `stopp`, `rm`, `update`, `info`, `inspect*`
//! and `events`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use crius_proto::cri;
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::output::{self, Format};
use crate::{Clients, configfile, ensure_image, listing};

/// `runp`: RunPodSandbox with a crictl pod config file; prints the pod id.
pub async fn runp(c: &mut Clients, runtime: &str, config: &Path) -> Result<()> {
    let config: cri::PodSandboxConfig = configfile::load(config).await?;
    let pod = c
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime.to_string(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    println!("{pod}");
    Ok(())
}

/// `create`: CreateContainer in `pod` from crictl container and pod config
/// files (pulling the image first with `with_pull`); prints the container id.
pub async fn create(
    c: &mut Clients,
    pod: &str,
    container_config: &Path,
    pod_config: &Path,
    with_pull: bool,
) -> Result<()> {
    let config: cri::ContainerConfig = configfile::load(container_config).await?;
    let sandbox_config: cri::PodSandboxConfig = configfile::load(pod_config).await?;
    if with_pull {
        let image = config
            .image
            .as_ref()
            .map(|i| i.image.as_str())
            .unwrap_or("");
        if image.is_empty() {
            bail!("{} names no image", container_config.display());
        }
        ensure_image(c, image).await?;
    }
    let id = c
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    println!("{id}");
    Ok(())
}

pub type Runtime = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// Runs `each` for every id with a handle on the runtime, printing the id
/// when it succeeded; every id is tried, and the first failure is returned
/// at the end (as crictl does).
async fn for_each_id<F, Fut>(c: &Clients, ids: &[String], each: F) -> Result<()>
where
    F: Fn(Runtime, String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut first_error = None;
    for id in ids {
        match each(c.runtime.clone(), id.clone()).await {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("{id}: {e:#}");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

pub async fn start(c: &mut Clients, ids: &[String]) -> Result<()> {
    for_each_id(c, ids, |mut rt, container_id| async move {
        let req = cri::StartContainerRequest { container_id };
        rt.start_container(req)
            .await
            .context("StartContainer")
            .map(drop)
    })
    .await
}

pub async fn stop(c: &mut Clients, ids: &[String], timeout: i64) -> Result<()> {
    for_each_id(c, ids, |mut rt, container_id| async move {
        let req = cri::StopContainerRequest {
            container_id,
            timeout,
        };
        rt.stop_container(req)
            .await
            .context("StopContainer")
            .map(drop)
    })
    .await
}

pub async fn stopp(c: &mut Clients, ids: &[String]) -> Result<()> {
    for_each_id(c, ids, |mut rt, pod_sandbox_id| async move {
        let req = cri::StopPodSandboxRequest { pod_sandbox_id };
        rt.stop_pod_sandbox(req)
            .await
            .context("StopPodSandbox")
            .map(drop)
    })
    .await
}

/// The container's status (not verbose).
pub async fn container_status(
    rt: &mut Runtime,
    container_id: &str,
) -> Result<cri::ContainerStatus> {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: container_id.to_string(),
        verbose: false,
    })
    .await
    .context("ContainerStatus")?
    .into_inner()
    .status
    .with_context(|| format!("container {container_id} has no status"))
}

/// `rm`: RemoveContainer; a running container is refused unless `force`,
/// which stops it first.
pub async fn rm(c: &mut Clients, ids: &[String], force: bool) -> Result<()> {
    for_each_id(c, ids, |mut rt, container_id| async move {
        let status = container_status(&mut rt, &container_id).await?;
        if status.state == cri::ContainerState::ContainerRunning as i32 {
            if !force {
                bail!("container is running: stop it first or use --force");
            }
            let req = cri::StopContainerRequest {
                container_id: container_id.clone(),
                timeout: 0,
            };
            rt.stop_container(req).await.context("StopContainer")?;
        }
        let req = cri::RemoveContainerRequest { container_id };
        rt.remove_container(req)
            .await
            .context("RemoveContainer")
            .map(drop)
    })
    .await
}

/// `update`'s resource flags, as crictl names them.
#[derive(clap::Args, Debug, Clone)]
pub struct UpdateArgs {
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<i64>,
    /// CPU CFS quota in microseconds.
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_share: Option<i64>,
    /// CPUs the container may run on (`0-3`, `0,1`).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes (`k`, `m`, `g` suffixes accepted).
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<i64>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

fn parse_bytes(s: &str) -> Result<i64, String> {
    let lower = s.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b');
    let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => trimmed.split_at(i),
        None => (trimmed, ""),
    };
    let n: i64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(format!("{s:?}: unknown unit (k, m, g)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// UpdateContainerResources with the flags given; the others keep the
/// container's current values (read from its status).
pub async fn update(c: &mut Clients, args: &UpdateArgs) -> Result<()> {
    for_each_id(c, &args.containers, |mut rt, container_id| async move {
        let current = container_status(&mut rt, &container_id)
            .await?
            .resources
            .and_then(|r| r.linux)
            .unwrap_or_default();
        let linux = cri::LinuxContainerResources {
            cpu_period: args.cpu_period.unwrap_or(current.cpu_period),
            cpu_quota: args.cpu_quota.unwrap_or(current.cpu_quota),
            cpu_shares: args.cpu_share.unwrap_or(current.cpu_shares),
            memory_limit_in_bytes: args.memory.unwrap_or(current.memory_limit_in_bytes),
            cpuset_cpus: args
                .cpuset_cpus
                .clone()
                .unwrap_or(current.cpuset_cpus.clone()),
            cpuset_mems: args
                .cpuset_mems
                .clone()
                .unwrap_or(current.cpuset_mems.clone()),
            ..current
        };
        let req = cri::UpdateContainerResourcesRequest {
            container_id,
            linux: Some(linux),
            ..Default::default()
        };
        rt.update_container_resources(req)
            .await
            .context("UpdateContainerResources")
            .map(drop)
    })
    .await
}

/// A verbose info map with each value that is JSON (most are) embedded as
/// JSON rather than as a string holding it.
fn info_json(info: &HashMap<String, String>) -> Map<String, Value> {
    let mut keys: Vec<_> = info.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v =
                serde_json::from_str(&info[k]).unwrap_or_else(|_| Value::String(info[k].clone()));
            (k.clone(), v)
        })
        .collect()
}

/// `{"status": …, "info": {…}}` as crictl's inspect verbs print it.
fn inspected<T: serde::Serialize>(status: &T, info: &HashMap<String, String>) -> Result<Value> {
    let mut doc = Map::new();
    doc.insert("status".into(), serde_json::to_value(status)?);
    doc.insert("info".into(), Value::Object(info_json(info)));
    Ok(Value::Object(doc))
}

/// Prints an inspect document; `table` gives the summary lines of `-o table`.
fn print_inspected(format: Format, doc: &Value, table: &[(&str, String)]) -> Result<()> {
    output::print(format, doc, || {
        for (key, value) in table {
            println!("{key}: {value}");
        }
    })
}

pub async fn info(c: &mut Clients, format: Format) -> Result<()> {
    let r = c
        .runtime
        .status(cri::StatusRequest { verbose: true })
        .await
        .context("Status")?
        .into_inner();
    // crictl info: the status beside the info keys, at the top level.
    let mut doc = Map::new();
    doc.insert("status".into(), serde_json::to_value(&r.status)?);
    doc.insert(
        "runtimeHandlers".into(),
        serde_json::to_value(&r.runtime_handlers)?,
    );
    doc.extend(info_json(&r.info));
    let doc = Value::Object(doc);
    let conditions: Vec<(&str, String)> = r
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .map(|c| {
            (
                c.r#type.as_str(),
                format!("{} {} {}", c.status, c.reason, c.message),
            )
        })
        .collect();
    print_inspected(format, &doc, &conditions)
}

pub async fn inspect(c: &mut Clients, ids: &[String], format: Format) -> Result<()> {
    for container_id in ids {
        let r = c
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: container_id.clone(),
                verbose: true,
            })
            .await
            .context("ContainerStatus")?
            .into_inner();
        let status = r.status.clone().unwrap_or_default();
        let table = [
            ("ID", status.id.clone()),
            ("Name", status.metadata.clone().unwrap_or_default().name),
            ("State", listing::container_state_name(status.state).into()),
            ("Created", output::ago(status.created_at)),
            ("Image", status.image.clone().unwrap_or_default().image),
            ("Exit Code", status.exit_code.to_string()),
        ];
        print_inspected(format, &inspected(&r.status, &r.info)?, &table)?;
    }
    Ok(())
}

pub async fn inspectp(c: &mut Clients, ids: &[String], format: Format) -> Result<()> {
    for pod_sandbox_id in ids {
        let r = c
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_sandbox_id.clone(),
                verbose: true,
            })
            .await
            .context("PodSandboxStatus")?
            .into_inner();
        let status = r.status.clone().unwrap_or_default();
        let meta = status.metadata.clone().unwrap_or_default();
        let ip = status.network.clone().unwrap_or_default().ip;
        let table = [
            ("ID", status.id.clone()),
            ("Name", meta.name),
            ("Namespace", meta.namespace),
            ("State", listing::pod_state_name(status.state).into()),
            ("Created", output::ago(status.created_at)),
            ("Network IP", ip),
            ("Runtime", status.runtime_handler.clone()),
        ];
        print_inspected(format, &inspected(&r.status, &r.info)?, &table)?;
    }
    Ok(())
}

pub async fn inspecti(c: &mut Clients, images: &[String], format: Format) -> Result<()> {
    for image in images {
        let r = c
            .image
            .image_status(cri::ImageStatusRequest {
                image: crate::image_spec(image),
                verbose: true,
            })
            .await
            .context("ImageStatus")?
            .into_inner();
        let Some(found) = r.image.clone() else {
            bail!("image {image} not found");
        };
        let table = [
            ("ID", found.id.clone()),
            ("Tags", found.repo_tags.join(", ")),
            ("Digests", found.repo_digests.join(", ")),
            ("Size", output::size(found.size)),
        ];
        print_inspected(format, &inspected(&r.image, &r.info)?, &table)?;
    }
    Ok(())
}

/// The blobs of a running pull as ImageStatus's verbose info has them.
#[derive(serde::Deserialize, Debug, Default)]
struct PullProgress {
    #[serde(default)]
    blobs: Vec<BlobProgress>,
}

#[derive(serde::Deserialize, Debug, Clone, PartialEq)]
struct BlobProgress {
    digest: String,
    received: u64,
    size: u64,
}

fn progress_line(blob: &BlobProgress) -> String {
    const WIDTH: u64 = 30;
    let short = blob.digest.strip_prefix("sha256:").unwrap_or(&blob.digest);
    let done = (blob.received * WIDTH)
        .checked_div(blob.size)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "{}  [{}{}] {} / {}",
        &short[..short.len().min(12)],
        "=".repeat(done as usize),
        " ".repeat((WIDTH - done) as usize),
        output::size(blob.received),
        output::size(blob.size)
    )
}

/// `pull`: PullImage, with each blob's progress on stderr while it runs
/// (redrawn in place on a terminal, a line per change otherwise).
pub async fn pull(c: &mut Clients, image: &str, progress: bool) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    let show = progress || terminal;
    let mut images = c.image.clone();
    let request = cri::PullImageRequest {
        image: crate::image_spec(image),
        ..Default::default()
    };
    let mut pulling = tokio::spawn(async move { images.pull_image(request).await });
    let mut shown: Vec<BlobProgress> = Vec::new();
    let mut drawn_lines = 0;
    let result = loop {
        tokio::select! {
            done = &mut pulling => break done,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)), if show => {
                let status = c
                    .image
                    .image_status(cri::ImageStatusRequest {
                        image: crate::image_spec(image),
                        verbose: true,
                    })
                    .await;
                let Some(text) = status.ok().and_then(|s| s.into_inner().info.remove("pullProgress")) else {
                    continue;
                };
                let now: PullProgress = serde_json::from_str(&text).unwrap_or_default();
                let mut err = std::io::stderr().lock();
                if terminal {
                    // Back to the first line drawn, then all of them again.
                    if drawn_lines > 0 {
                        let _ = write!(err, "\x1b[{drawn_lines}F");
                    }
                    for blob in &now.blobs {
                        let _ = writeln!(err, "\x1b[2K{}", progress_line(blob));
                    }
                    drawn_lines = now.blobs.len();
                } else {
                    for blob in now.blobs.iter().filter(|b| !shown.contains(b)) {
                        let _ = writeln!(err, "{}", progress_line(blob));
                    }
                }
                shown = now.blobs;
            }
        }
    };
    let reply = result
        .context("the pull task")?
        .with_context(|| format!("pulling {image}"))?;
    if show {
        eprintln!("pulled {image}");
    }
    println!("{}", reply.into_inner().image_ref);
    Ok(())
}

/// `events`: GetContainerEvents until interrupted, one document an event.
pub async fn events(c: &mut Clients, format: Format) -> Result<()> {
    let mut stream = c
        .runtime
        .get_container_events(cri::GetEventsRequest {})
        .await
        .context("GetContainerEvents")?
        .into_inner();
    while let Some(event) = stream.next().await {
        let event = event.context("event stream")?;
        output::print(format, &event, || {
            let kind = cri::ContainerEventType::try_from(event.container_event_type)
                .map(|k| k.as_str_name())
                .unwrap_or("UNKNOWN");
            println!("{} {} {kind}", event.created_at, event.container_id);
        })?;
        if format == Format::Yaml {
            println!("---");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_a_bar_and_the_byte_counts() {
        let blob = |received| BlobProgress {
            digest: "sha256:0123456789abcdef".into(),
            received,
            size: 3_000_000,
        };
        assert_eq!(
            progress_line(&blob(1_500_000)),
            format!(
                "0123456789ab  [{}{}] 1.5MB / 3MB",
                "=".repeat(15),
                " ".repeat(15)
            )
        );
        assert!(progress_line(&blob(3_000_000)).contains(&"=".repeat(30)));
        let empty = BlobProgress { size: 0, ..blob(0) };
        assert!(
            progress_line(&empty).contains(&"=".repeat(30)),
            "an empty blob is done"
        );
    }

    #[test]
    fn memory_sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("512kb"), Ok(512 << 10));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3t").is_err());
    }

    #[test]
    fn info_values_that_are_json_are_embedded() {
        let info = HashMap::from([
            ("config".to_string(), r#"{"a":1}"#.to_string()),
            ("note".to_string(), "plain".to_string()),
        ]);
        let doc = info_json(&info);
        assert_eq!(doc["config"]["a"], 1);
        assert_eq!(doc["note"], "plain");
    }
}
