//! The fixtures themselves: the registry serves exactly what the image
//! builder pushed, and corruption / malicious layers look as intended.
//! These need no daemon.

use std::io::Read;

use crius_tests::image::{self, Compression, ManifestFormat};
use crius_tests::registry::{REGISTRY_BIN, Registry, corrupt_blob};
use crius_tests::require_tools;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn registry_serves_standard_images() {
    if !require_tools(&[REGISTRY_BIN, image::BUSYBOX_STATIC]) {
        return;
    }
    let registry = Registry::start().await.expect("registry starts");
    let images = image::push_standard_images(&registry)
        .await
        .expect("push standard images");

    // busybox:1 and :latest are one Docker schema 2 manifest.
    for tag in ["1", "latest"] {
        let (bytes, content_type) = image::fetch_manifest(&registry, "busybox", tag)
            .await
            .unwrap();
        assert_eq!(content_type, image::DOCKER_MANIFEST);
        assert_eq!(image::sha256_digest(&bytes), images.busybox.manifest_digest);
    }
    let manifest: Value = serde_json::from_slice(&images.busybox.manifest).unwrap();
    assert_eq!(manifest["config"]["digest"], images.busybox.config_digest);
    assert_eq!(manifest["layers"][0]["mediaType"], image::DOCKER_LAYER_GZIP);

    // Config and layer blobs come back intact; the layer unpacks to a busybox rootfs.
    let config = image::fetch_blob(&registry, "busybox", &images.busybox.config_digest)
        .await
        .unwrap();
    assert_eq!(image::sha256_digest(&config), images.busybox.config_digest);
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], images.busybox.diff_ids[0]);
    assert_eq!(config["architecture"], "amd64");
    let blob = image::fetch_blob(&registry, "busybox", &images.busybox.layer_digests[0])
        .await
        .unwrap();
    assert_eq!(image::sha256_digest(&blob), images.busybox.layer_digests[0]);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(image::sha256_digest(&tar), images.busybox.diff_ids[0]);
    let names = entry_names(&tar);
    for expected in ["bin/busybox", "bin/sh", "etc/passwd", "etc/group", "tmp/"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let mut archive = tar::Archive::new(&tar[..]);
    let tmp = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some("tmp/"))
        .unwrap();
    assert_eq!(tmp.header().mode().unwrap() & 0o7777, 0o1777);

    // The index lists the arm64 decoy first, then amd64.
    let (bytes, content_type) = image::fetch_manifest(&registry, "indexed", "1")
        .await
        .unwrap();
    assert_eq!(content_type, image::OCI_INDEX);
    assert_eq!(image::sha256_digest(&bytes), images.indexed.digest);
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "arm64");
    assert_eq!(index["manifests"][1]["platform"]["architecture"], "amd64");
    assert_eq!(
        index["manifests"][1]["digest"],
        images.indexed.amd64.manifest_digest
    );
    assert_ne!(
        images.indexed.amd64.config_digest,
        images.indexed.arm64.config_digest
    );
    let (child, content_type) =
        image::fetch_manifest(&registry, "indexed", &images.indexed.amd64.manifest_digest)
            .await
            .unwrap();
    assert_eq!(content_type, image::OCI_MANIFEST);
    assert_eq!(child, images.indexed.amd64.manifest);

    let (bytes, content_type) = image::fetch_manifest(&registry, "indexed", "docker")
        .await
        .unwrap();
    assert_eq!(content_type, image::DOCKER_MANIFEST_LIST);
    let list: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(list["manifests"][1]["mediaType"], image::DOCKER_MANIFEST);
    assert_eq!(
        list["manifests"][1]["digest"],
        images.docker_list.amd64.manifest_digest
    );

    // zstd layers decode to the same rootfs as busybox's gzip layer.
    let blob = image::fetch_blob(&registry, "zstd", &images.zstd.layer_digests[0])
        .await
        .unwrap();
    let tar = zstd::decode_all(&blob[..]).unwrap();
    assert_eq!(image::sha256_digest(&tar), images.busybox.diff_ids[0]);

    // The whiteout layer carries the OCI markers; the data layer is uncompressed.
    let manifest: Value = serde_json::from_slice(&images.multilayer.manifest).unwrap();
    assert_eq!(manifest["layers"][1]["mediaType"], image::OCI_LAYER);
    assert_eq!(
        images.multilayer.diff_ids[1],
        images.multilayer.layer_digests[1]
    );
    let blob = image::fetch_blob(&registry, "multilayer", &images.multilayer.layer_digests[2])
        .await
        .unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob[..])
        .read_to_end(&mut tar)
        .unwrap();
    let names = entry_names(&tar);
    assert!(names.contains(&"data/.wh.a".to_string()), "{names:?}");
    assert!(names.contains(&"old/.wh..wh..opq".to_string()), "{names:?}");
    assert!(names.contains(&"old/new".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_blob_changes_served_bytes_not_length() {
    if !require_tools(&[REGISTRY_BIN, image::BUSYBOX_STATIC]) {
        return;
    }
    let registry = Registry::start().await.unwrap();
    let pushed = image::push_busybox(
        &registry,
        "corrupt",
        "1",
        ManifestFormat::Oci,
        Compression::Gzip,
    )
    .await
    .unwrap();
    let digest = &pushed.layer_digests[0];
    let before = image::fetch_blob(&registry, "corrupt", digest)
        .await
        .unwrap();
    corrupt_blob(&registry, digest).unwrap();
    let after = image::fetch_blob(&registry, "corrupt", digest)
        .await
        .unwrap();
    assert_eq!(before.len(), after.len());
    assert_ne!(
        image::sha256_digest(&after),
        *digest,
        "registry must now serve bad bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn escape_layers_have_the_malicious_entries() {
    if !require_tools(&[REGISTRY_BIN]) {
        return;
    }
    let registry = Registry::start().await.unwrap();
    let dotdot = image::push_dotdot_escape_image(&registry, "evil", "dotdot")
        .await
        .unwrap();
    let blob = image::fetch_blob(&registry, "evil", &dotdot.image.layer_digests[0])
        .await
        .unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob[..])
        .read_to_end(&mut tar)
        .unwrap();
    let raw = raw_entry_names(&tar);
    assert!(
        raw.iter()
            .any(|n| n.starts_with("../") && n.ends_with(&format!("tmp/{}", dotdot.marker))),
        "{raw:?}"
    );

    let symlink = image::push_symlink_escape_image(&registry, "evil", "symlink")
        .await
        .unwrap();
    let blob = image::fetch_blob(&registry, "evil", &symlink.image.layer_digests[0])
        .await
        .unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&blob[..])
        .read_to_end(&mut tar)
        .unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let entries: Vec<_> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.link_name().unwrap().map(|l| l.display().to_string()),
            )
        })
        .collect();
    assert_eq!(entries[0], ("evil".to_string(), Some("/".to_string())));
    assert_eq!(entries[1].0, format!("evil/tmp/{}", symlink.marker));
    assert!(!dotdot.escape_path.exists() && !symlink.escape_path.exists());
}

fn entry_names(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

/// Header names as bytes on disk (the tar crate's `path()` would sanitize nothing,
/// but read the raw field to be sure what an extractor sees).
fn raw_entry_names(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}
