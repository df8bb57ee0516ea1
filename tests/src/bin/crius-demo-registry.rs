//! Serves a local `docker-registry` with the busybox test images for the demo
//! and the benchmark: prints the registry address (and writes it to the file
//! given as the first argument), then serves until SIGTERM/SIGINT. With
//! `CRIUS_BENCH_PULL_MIB=N` it also serves the bench's pull image: N MiB of
//! generated files in 5 gzip layers, as `benchpull:latest` and
//! `library/benchpull:latest` (the paths crius's and containerd's docker.io
//! mirror lookups use).

use anyhow::{Context, Result};
use crius_tests::image::{
    Compression, ImageConfig, Layer, LayerBuilder, ManifestFormat, push_busybox, push_image,
};
use crius_tests::registry::Registry;

const PULL_LAYERS: usize = 5;
const FILE_MIB: usize = 4;

/// `mib` MiB of files in [`PULL_LAYERS`] layers. The bytes are a
/// deterministic pseudo-random stream over 16 symbols, so gzip halves them
/// as it would a typical binary, and no two files are alike.
fn pull_layers(mib: usize) -> Result<Vec<Layer>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let files = mib.div_ceil(FILE_MIB).max(PULL_LAYERS);
    let mut layers = Vec::new();
    for l in 0..PULL_LAYERS {
        let mut layer = LayerBuilder::new();
        layer.dir(&format!("data{l}"), 0o755)?;
        for f in (l..files).step_by(PULL_LAYERS) {
            let mut contents = vec![0u8; FILE_MIB << 20];
            for chunk in contents.chunks_mut(16) {
                let r = next();
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = b"0123456789abcdef"[((r >> (i * 4)) & 0xf) as usize];
                }
            }
            layer.file(&format!("data{l}/file{f}"), &contents, 0o644)?;
        }
        layers.push(Layer::new(layer.finish()?, Compression::Gzip));
    }
    Ok(layers)
}

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
    if let Some(mib) = std::env::var("CRIUS_BENCH_PULL_MIB")
        .ok()
        .filter(|v| !v.is_empty())
    {
        let mib: usize = mib.parse().context("CRIUS_BENCH_PULL_MIB: not a number")?;
        let layers = pull_layers(mib)?;
        let config = ImageConfig {
            cmd: vec!["true".into()],
            ..Default::default()
        };
        for name in ["benchpull", "library/benchpull"] {
            push_image(
                &registry,
                name,
                "latest",
                layers.clone(),
                &config,
                ManifestFormat::Docker,
            )
            .await
            .with_context(|| format!("pushing {name}:latest"))?;
        }
    }
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
