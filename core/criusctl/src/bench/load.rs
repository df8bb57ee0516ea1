//! The bench's loaded phases: bursts of pods started at once on one
//! endpoint, and cold pulls of one image, interleaved across endpoints.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crius_proto::cri;
use futures::future::join_all;

use crate::runpod::{self, pod_config};
use crate::{Clients, RunArgs, image_spec};

/// `pods` pods started at the same time on one endpoint.
#[derive(Debug, Default)]
pub(crate) struct Burst {
    pub pods: usize,
    /// From the first RunPodSandbox until the last StartContainer returned.
    pub all_started: Duration,
    /// Each pod's RunPodSandbox + CreateContainer + StartContainer.
    pub pod_start: Vec<Duration>,
    /// Stopping and removing them all, at the same time too.
    pub all_removed: Duration,
}

/// Starts `pods` pods of `run` at once, then removes them all at once. Every
/// pod that started is removed before an error is returned.
pub(crate) async fn burst(clients: &Clients, run: &RunArgs, pods: usize) -> Result<Burst> {
    let mut run = run.clone();
    run.name = format!("{}-x{pods}", run.name);
    let began = Instant::now();
    let starts = (1..=pods).map(|i| {
        let mut c = clients.clone();
        let run = &run;
        async move {
            let config = pod_config(run, i);
            tokio::fs::create_dir_all(&config.log_directory)
                .await
                .with_context(|| format!("creating {}", config.log_directory))?;
            let began = Instant::now();
            let started = runpod::start_pod(&mut c, run, config).await?;
            Ok::<_, anyhow::Error>((started.pod, began.elapsed()))
        }
    });
    let results = join_all(starts).await;
    let all_started = began.elapsed();
    let mut started = Vec::new();
    let mut pod_start = Vec::new();
    let mut failure = None;
    for r in results {
        match r {
            Ok((pod, took)) => {
                started.push(pod);
                pod_start.push(took);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let began = Instant::now();
    let removals = started.iter().map(|pod| {
        let mut c = clients.clone();
        async move { runpod::remove_pod(&mut c, pod).await }
    });
    for r in join_all(removals).await {
        if let Err(e) = r {
            failure.get_or_insert(e);
        }
    }
    let all_removed = began.elapsed();
    if let Some(e) = failure {
        return Err(e.context(format!("{pods} pods at once")));
    }
    Ok(Burst {
        pods,
        all_started,
        pod_start,
        all_removed,
    })
}

/// Cold pulls of one image on one endpoint.
#[derive(Debug, Default)]
pub(crate) struct Pulls {
    pub times: Vec<Duration>,
    /// The image's size as the endpoint reports it (ImageStatus `size`).
    pub size_bytes: u64,
}

/// Removes `image` (when present) and pulls it again, timing the pull.
pub(crate) async fn cold_pull(c: &mut Clients, image: &str, pulls: &mut Pulls) -> Result<()> {
    if let Some(present) = runpod::image_status(c, image).await? {
        c.image
            .remove_image(cri::RemoveImageRequest {
                image: image_spec(&present.id),
            })
            .await
            .context("RemoveImage")?;
    }
    let began = Instant::now();
    runpod::pull_image(c, image).await?;
    pulls.times.push(began.elapsed());
    pulls.size_bytes = runpod::image_status(c, image)
        .await?
        .map(|i| i.size)
        .unwrap_or(0);
    Ok(())
}
