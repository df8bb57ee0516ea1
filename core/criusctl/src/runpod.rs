//! `criusctl run` and the bench: a pod with one container, from flags
//! rather than config files.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crius_proto::cri;

use crate::{Clients, RunArgs, image_spec};

/// The config of a `run`/`bench` container: `cmd` in `image`, logging to
/// `<name>/0.log` in the pod's log directory.
pub fn container_config(name: &str, image: &str, cmd: &[String]) -> cri::ContainerConfig {
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

pub async fn ensure_image(c: &mut Clients, image: &str) -> Result<()> {
    if image_status(c, image).await?.is_none() {
        pull_image(c, image).await?;
    }
    Ok(())
}

/// The image `image` names, if the endpoint has it.
pub async fn image_status(c: &mut Clients, image: &str) -> Result<Option<cri::Image>> {
    Ok(c.image
        .image_status(cri::ImageStatusRequest {
            image: image_spec(image),
            verbose: false,
        })
        .await
        .context("ImageStatus")?
        .into_inner()
        .image)
}

pub async fn pull_image(c: &mut Clients, image: &str) -> Result<()> {
    c.image
        .pull_image(cri::PullImageRequest {
            image: image_spec(image),
            ..Default::default()
        })
        .await
        .with_context(|| format!("pulling {image}"))?;
    Ok(())
}

pub fn pod_config(args: &RunArgs, index: usize) -> cri::PodSandboxConfig {
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
pub async fn run_pod(c: &mut Clients, args: &RunArgs, index: usize) -> Result<(String, String)> {
    ensure_image(c, &args.image).await?;
    let started = start_pod(c, args, pod_config(args, index)).await?;
    Ok((started.pod, started.container))
}

/// A pod started with its container, and how long each RPC took.
pub struct StartedPod {
    pub pod: String,
    pub container: String,
    /// RunPodSandbox, CreateContainer, StartContainer.
    pub rpc_times: [Duration; 3],
}

/// RunPodSandbox with `config`, then CreateContainer and StartContainer of
/// `args`'s container; a pod whose container fails is removed again.
pub async fn start_pod(
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

pub async fn remove_pod(c: &mut Clients, pod: &str) -> Result<()> {
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
