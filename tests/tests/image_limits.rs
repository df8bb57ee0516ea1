//! What a registry can make the daemon store, and how long a pull may
//! take: `image.max_layer_size` / `image.max_image_size` refuse oversized
//! layers and images (compressed or unpacked) and keep nothing of them; a
//! pull that outlives the request's deadline answers DeadlineExceeded.

use std::time::{Duration, Instant};

use crius_tests::cri::images;
use crius_tests::image::{self, Compression, ImageConfig, Layer, LayerBuilder, ManifestFormat};
use crius_tests::registry::{REGISTRY_BIN, Registry};
use crius_tests::{Daemon, require_tools};
use tonic::Code;

const MIB: usize = 1 << 20;

/// A layer holding one file of `bytes` zeros (a few KiB once gzipped).
fn zeros_layer(name: &str, bytes: usize) -> Layer {
    let mut b = LayerBuilder::new();
    b.file(name, &vec![0u8; bytes], 0o644).unwrap();
    Layer::new(b.finish().unwrap(), Compression::Gzip)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_layers_and_images_are_refused_and_nothing_is_kept() {
    if !require_tools(&[REGISTRY_BIN]) {
        return;
    }
    let registry = Registry::start().await.expect("registry starts");
    for (name, layers) in [
        ("bomb", vec![zeros_layer("zeros", 4 * MIB)]),
        (
            "wide",
            vec![zeros_layer("a", 900 * 1024), zeros_layer("b", 900 * 1024)],
        ),
        ("small", vec![zeros_layer("small", 64 * 1024)]),
    ] {
        image::push_image(
            &registry,
            name,
            "1",
            layers,
            &ImageConfig::default(),
            ManifestFormat::Oci,
        )
        .await
        .unwrap_or_else(|e| panic!("push {name}: {e:#}"));
    }
    let daemon = Daemon::builder()
        .registry(&registry)
        .extra_yaml("image:\n  max_layer_size: 1048576\n  max_image_size: 1572864\n")
        .start()
        .await
        .expect("daemon starts");
    let mut client = daemon.image();

    // 4 MiB of zeros: a few KiB of gzip, refused while unpacking.
    let err = images::pull(&mut client, &registry.image_ref("bomb", "1"))
        .await
        .expect_err("a layer unpacking past max_layer_size");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("image.max_layer_size") && err.message().contains("1048576"),
        "{err:?}"
    );
    // Two layers under the layer limit, over the image limit together.
    let err = images::pull(&mut client, &registry.image_ref("wide", "1"))
        .await
        .expect_err("layers unpacking past max_image_size together");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("image.max_image_size"), "{err:?}");
    // Nothing of them stays: no layer, no layer blob, no record, no temp.
    let layers = crius_tests::dir_entries(&daemon.root().join("layers/sha256"));
    assert!(layers.is_empty(), "layers kept: {layers:?}");
    let tmp = crius_tests::dir_entries(&daemon.root().join("tmp"));
    assert!(tmp.is_empty(), "temporary files kept: {tmp:?}");
    assert!(images::list(&mut client).await.unwrap().is_empty());

    // Under the limits a pull works.
    images::pull(&mut client, &registry.image_ref("small", "1"))
        .await
        .expect("a small image pulls");
    assert_eq!(images::list(&mut client).await.unwrap().len(), 1);

    // A limit below the compressed size refuses before downloading.
    drop(client);
    drop(daemon);
    let daemon = Daemon::builder()
        .registry(&registry)
        .extra_yaml("image:\n  max_layer_size: 100\n  max_image_size: 100\n")
        .start()
        .await
        .expect("daemon starts");
    let err = images::pull(&mut daemon.image(), &registry.image_ref("small", "1"))
        .await
        .expect_err("a blob larger than max_layer_size");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("compressed"), "{err:?}");
    let blobs = crius_tests::files_below(&daemon.root().join("blobs"));
    assert!(blobs.is_empty(), "blobs kept: {blobs:?}");
}

/// A registry that accepts connections and never answers: the pull ends at
/// the request's deadline with DeadlineExceeded (not Cancelled).
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_answers_deadline_exceeded_at_the_requests_deadline() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            conns.push(conn);
        }
    });
    let daemon = Daemon::builder()
        .registries_yaml(&format!(
            "registries:\n  - prefix: \"{addr}\"\n    insecure: true\n"
        ))
        .start()
        .await
        .expect("daemon starts");
    let mut request = tonic::Request::new(crius_proto::cri::PullImageRequest {
        image: Some(images::spec(&format!("{addr}/stuck:1"))),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let err = daemon
        .image()
        .pull_image(request)
        .await
        .expect_err("the registry never answers");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("deadline"), "{err:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
    // The daemon still answers.
    assert!(images::list(&mut daemon.image()).await.unwrap().is_empty());
    held.abort();
}
