//! Serves a local `docker-registry` with the busybox test images for the demo
//! and the benchmark: prints the registry address (and writes it to the file
//! given as the first argument), then serves until SIGTERM/SIGINT.

use anyhow::{Context, Result};
use crius_tests::image::{ManifestFormat, push_busybox};
use crius_tests::registry::Registry;

#[tokio::main]
async fn main() -> Result<()> {
    let registry = Registry::start()
        .await
        .context("starting docker-registry")?;
    push_busybox(
        &registry,
        "busybox",
        "latest",
        ManifestFormat::Docker,
        crius_tests::image::Compression::Gzip,
    )
    .await
    .context("pushing busybox:latest")?;
    println!("{}", registry.addr());
    if let Some(path) = std::env::args().nth(1) {
        std::fs::write(&path, registry.addr()).with_context(|| format!("writing {path}"))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(registry);
    Ok(())
}
