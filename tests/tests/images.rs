//! ImageService through the daemon's socket, against a local registry.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crius_tests::cri::images::{self, id_hex};
use crius_tests::image::{self, BUSYBOX_STATIC, Compression, ManifestFormat, StandardImages};
use crius_tests::registry::{REGISTRY_BIN, Registry, corrupt_blob};
use crius_tests::{Daemon, dir_entries, files_below, require_root_and_tools};
use tonic::Code;

struct Env {
    // Field order is drop order: the daemon stops before the registry goes away.
    daemon: Daemon,
    images: StandardImages,
    registry: Registry,
}

/// Registry with the standard images plus a daemon allowed to use it over
/// plain HTTP; `None` (test skipped) without root or the tools.
async fn setup() -> Option<Env> {
    if !require_root_and_tools(&[REGISTRY_BIN, BUSYBOX_STATIC]) {
        return None;
    }
    let registry = Registry::start().await.expect("registry starts");
    let images = image::push_standard_images(&registry)
        .await
        .expect("push standard images");
    let daemon = Daemon::with_registry(&registry)
        .await
        .expect("daemon starts");
    Some(Env {
        daemon,
        images,
        registry,
    })
}

fn layer_dir(daemon: &Daemon, diff_id: &str) -> PathBuf {
    daemon
        .root()
        .join("layers/sha256")
        .join(diff_id.trim_start_matches("sha256:"))
}

/// Nothing below `<root>/layers` and `<root>/tmp`: what a failed pull must leave.
fn assert_store_empty(daemon: &Daemon, context: &str) {
    for sub in ["layers", "tmp"] {
        let dir = daemon.root().join(sub);
        let left = files_below(&dir);
        let dirs: Vec<_> = if sub == "layers" {
            dir_entries(&dir.join("sha256"))
        } else {
            dir_entries(&dir)
        };
        assert!(
            left.is_empty() && dirs.is_empty(),
            "{context}: left behind in {}: {left:?} {dirs:?}",
            dir.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_list_inspect_remove() {
    let Some(env) = setup().await else { return };
    let (registry, busybox, daemon) = (&env.registry, &env.images.busybox, &env.daemon);
    let mut client = daemon.image();
    let tag1 = registry.image_ref("busybox", "1");
    let latest = registry.image_ref("busybox", "latest");
    let by_digest = busybox.digest_reference(registry);

    let image_ref = images::pull(&mut client, &tag1)
        .await
        .expect("pull busybox:1");
    assert_eq!(
        id_hex(&image_ref),
        busybox.id_hex(),
        "PullImage returns the image id"
    );

    // Listed with its tag, digest, id and size.
    let listed = images::list(&mut client).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let img = &listed[0];
    assert_eq!(id_hex(&img.id), busybox.id_hex());
    assert_eq!(img.repo_tags, vec![tag1.clone()]);
    assert!(
        img.repo_digests.contains(&by_digest),
        "{:?} lacks {by_digest}",
        img.repo_digests
    );
    assert!(img.size > 0);
    let id = img.id.clone();

    // The layer is unpacked under its diff id.
    let layer = layer_dir(daemon, &busybox.diff_ids[0]);
    assert!(
        layer.join("bin/busybox").is_file(),
        "{} not unpacked",
        layer.display()
    );
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::metadata(layer.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );

    // ImageStatus by tag, id and digest all find it; verbose adds info.
    for name in [tag1.as_str(), id.as_str(), by_digest.as_str()] {
        let status = images::status(&mut client, name, false).await.unwrap();
        let found = status
            .image
            .unwrap_or_else(|| panic!("ImageStatus({name}) found nothing"));
        assert_eq!(found.id, id, "ImageStatus({name})");
    }
    let verbose = images::status(&mut client, &tag1, true).await.unwrap();
    assert!(!verbose.info.is_empty(), "verbose ImageStatus has no info");
    let terse = images::status(&mut client, &tag1, false).await.unwrap();
    assert!(
        terse.info.is_empty(),
        "non-verbose ImageStatus should carry no info: {:?}",
        terse.info
    );

    // A second tag of the same manifest: same id, both tags.
    let image_ref2 = images::pull(&mut client, &latest)
        .await
        .expect("pull busybox:latest");
    assert_eq!(image_ref2, image_ref);
    let listed = images::list(&mut client).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let mut tags = listed[0].repo_tags.clone();
    tags.sort();
    assert_eq!(tags, vec![tag1.clone(), latest.clone()]);

    // Filters.
    let other = images::pull(&mut client, &registry.image_ref("zstd", "1"))
        .await
        .expect("pull zstd:1");
    assert_eq!(images::list(&mut client).await.unwrap().len(), 2);
    let filtered = images::list_filtered(&mut client, &tag1).await.unwrap();
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    assert_eq!(filtered[0].id, id);
    let filtered = images::list_filtered(&mut client, &other).await.unwrap();
    assert_eq!(filtered.len(), 1, "filter by id: {filtered:?}");
    assert_eq!(id_hex(&filtered[0].id), env.images.zstd.id_hex());

    // ImageFsInfo reports real usage.
    let fs = images::fs_info(&mut client).await.unwrap();
    let usage = fs.image_filesystems.first().expect("an image filesystem");
    assert!(usage.used_bytes.expect("used_bytes").value > 0);
    assert!(usage.inodes_used.expect("inodes_used").value > 0);
    assert!(!usage.fs_id.clone().expect("fs_id").mountpoint.is_empty());

    // Remove by id: gone from status and list, its own layers deleted, the
    // other image untouched.
    images::remove(&mut client, &id).await.expect("RemoveImage");
    for name in [tag1.as_str(), latest.as_str(), id.as_str()] {
        let status = images::status(&mut client, name, false).await.unwrap();
        assert!(
            status.image.is_none(),
            "ImageStatus({name}) after removal: {:?}",
            status.image
        );
    }
    let listed = images::list(&mut client).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(id_hex(&listed[0].id), env.images.zstd.id_hex());
    // busybox's rootfs layer is also zstd:1's first layer (same diff id), so it stays.
    assert_eq!(busybox.diff_ids[0], env.images.zstd.diff_ids[0]);
    assert!(
        layer.join("bin/busybox").is_file(),
        "shared layer removed while zstd:1 uses it"
    );
    images::remove(&mut client, &other)
        .await
        .expect("RemoveImage zstd:1");
    assert!(images::list(&mut client).await.unwrap().is_empty());
    assert!(
        !layer.exists(),
        "{} left after removing every image",
        layer.display()
    );
    assert_store_empty(daemon, "after removing every image");

    // Removing something unknown is not an error (CRI: idempotent).
    images::remove(&mut client, &tag1)
        .await
        .expect("RemoveImage of a removed image");
    images::remove(&mut client, "127.0.0.1:1/never/pulled:1")
        .await
        .expect("RemoveImage of an unknown image");
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_digest() {
    let Some(env) = setup().await else { return };
    let mut client = env.daemon.image();
    let by_digest = env.images.busybox.digest_reference(&env.registry);
    let image_ref = images::pull(&mut client, &by_digest)
        .await
        .expect("pull by digest");
    assert_eq!(id_hex(&image_ref), env.images.busybox.id_hex());
    let img = images::status(&mut client, &by_digest, false)
        .await
        .unwrap()
        .image
        .expect("listed");
    assert!(
        img.repo_digests.contains(&by_digest),
        "{:?}",
        img.repo_digests
    );
    assert!(
        img.repo_tags.is_empty(),
        "a digest pull adds no tag: {:?}",
        img.repo_tags
    );
}

async fn assert_index_pull_picks_amd64(env: &Env, indexed: &image::PushedIndex) {
    let mut client = env.daemon.image();
    let name = env.registry.image_ref(&indexed.name, &indexed.tag);
    let image_ref = images::pull(&mut client, &name).await.expect("pull index");
    assert_eq!(
        id_hex(&image_ref),
        indexed.amd64.id_hex(),
        "picked the wrong platform"
    );
    assert_ne!(id_hex(&image_ref), indexed.arm64.id_hex());
    let img = images::status(&mut client, &name, false)
        .await
        .unwrap()
        .image
        .expect("listed");
    let index_ref = format!(
        "{}/{}@{}",
        env.registry.addr(),
        indexed.name,
        indexed.digest
    );
    assert!(
        img.repo_digests.contains(&index_ref),
        "{:?} lacks the index digest {index_ref}",
        img.repo_digests
    );
    let marker = layer_dir(&env.daemon, &indexed.amd64.diff_ids[1]).join("etc/crius-test-marker");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "amd64\n");
    assert!(
        !layer_dir(&env.daemon, &indexed.arm64.diff_ids[1]).exists(),
        "arm64 layer was fetched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_index_pull_picks_linux_amd64() {
    let Some(env) = setup().await else { return };
    assert_index_pull_picks_amd64(&env, &env.images.indexed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_manifest_list_pull_picks_linux_amd64() {
    let Some(env) = setup().await else { return };
    assert_index_pull_picks_amd64(&env, &env.images.docker_list).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_layers_unpack() {
    let Some(env) = setup().await else { return };
    let zstd = &env.images.zstd;
    let mut client = env.daemon.image();
    let image_ref = images::pull(&mut client, &env.registry.image_ref("zstd", "1"))
        .await
        .expect("pull zstd:1");
    assert_eq!(id_hex(&image_ref), zstd.id_hex());
    assert!(
        layer_dir(&env.daemon, &zstd.diff_ids[0])
            .join("bin/busybox")
            .is_file()
    );
    let marker = layer_dir(&env.daemon, &zstd.diff_ids[1]).join("etc/crius-test-marker");
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "zstd\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn whiteouts_become_overlay_whiteouts() {
    let Some(env) = setup().await else { return };
    let ml = &env.images.multilayer;
    let mut client = env.daemon.image();
    let image_ref = images::pull(&mut client, &env.registry.image_ref("multilayer", "wh"))
        .await
        .expect("pull multilayer:wh");
    assert_eq!(id_hex(&image_ref), ml.id_hex());

    let data = layer_dir(&env.daemon, &ml.diff_ids[1]);
    for (file, contents) in [("data/a", "a\n"), ("data/b", "b\n"), ("old/x", "x\n")] {
        assert_eq!(
            std::fs::read_to_string(data.join(file)).unwrap(),
            contents,
            "{file}"
        );
    }

    let wh = layer_dir(&env.daemon, &ml.diff_ids[2]);
    let a = std::fs::symlink_metadata(wh.join("data/a")).expect("whiteout for data/a");
    assert!(
        a.file_type().is_char_device(),
        "data/a whiteout is not a char device: {:?}",
        a.file_type()
    );
    assert_eq!(a.rdev(), 0, "whiteout device must be 0/0");
    assert!(
        !wh.join("data/.wh.a").exists(),
        "OCI whiteout marker kept as a file"
    );
    assert!(
        !wh.join("old/.wh..wh..opq").exists(),
        "OCI opaque marker kept as a file"
    );
    let mut buf = [0u8; 16];
    let opaque = rustix::fs::getxattr(wh.join("old"), "trusted.overlay.opaque", &mut buf[..]);
    assert!(
        matches!(opaque, Ok(1)) && buf[0] == b'y',
        "old/ lacks trusted.overlay.opaque=y: {opaque:?}"
    );
    assert_eq!(
        std::fs::read_to_string(wh.join("old/new")).unwrap(),
        "new\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_tag_is_not_found() {
    let Some(env) = setup().await else { return };
    let mut client = env.daemon.image();
    let name = env.registry.image_ref("busybox", "nosuchtag");
    let err = images::pull(&mut client, &name)
        .await
        .expect_err("pull of a missing tag");
    let msg = err.message().to_lowercase();
    assert!(
        err.message().contains("nosuchtag"),
        "error does not name the image: {err:?}"
    );
    assert!(
        err.code() == Code::NotFound || msg.contains("not found") || msg.contains("unknown"),
        "{err:?}"
    );
    let err = images::pull(&mut client, &env.registry.image_ref("nosuchrepo", "1"))
        .await
        .expect_err("missing repo");
    assert!(err.message().contains("nosuchrepo"), "{err:?}");
    assert!(images::list(&mut client).await.unwrap().is_empty());
    assert_store_empty(&env.daemon, "after failed pulls");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_blob_is_rejected_and_not_kept() {
    let Some(env) = setup().await else { return };
    // The corrupt layer must be unique: the registry stores blobs once for all
    // repositories, so corrupting the busybox rootfs would break busybox:1 too.
    let mut layer = image::LayerBuilder::new();
    let unique = crius_tests::unique_token();
    layer
        .dir("etc", 0o755)
        .unwrap()
        .file(&format!("etc/corrupt-{unique}"), &[7u8; 64 * 1024], 0o644)
        .unwrap();
    let layers = vec![image::Layer::new(
        layer.finish().unwrap(),
        Compression::Gzip,
    )];
    let pushed = image::push_image(
        &env.registry,
        "corrupt",
        "1",
        layers,
        &Default::default(),
        ManifestFormat::Oci,
    )
    .await
    .unwrap();
    let bad = &pushed.layer_digests[0];
    corrupt_blob(&env.registry, bad).unwrap();
    let mut client = env.daemon.image();
    let err = images::pull(&mut client, &env.registry.image_ref("corrupt", "1"))
        .await
        .expect_err("corrupt pull");
    let msg = err.message();
    assert!(
        msg.to_lowercase().contains("digest"),
        "error does not mention a digest: {err:?}"
    );
    assert!(
        msg.contains(bad.trim_start_matches("sha256:")),
        "error does not name the blob {bad}: {err:?}"
    );
    assert!(images::list(&mut client).await.unwrap().is_empty());
    assert!(
        images::status(&mut client, &env.registry.image_ref("corrupt", "1"), false)
            .await
            .unwrap()
            .image
            .is_none()
    );
    assert_store_empty(&env.daemon, "after a corrupt pull");
    let blob = env
        .daemon
        .root()
        .join("blobs/sha256")
        .join(bad.trim_start_matches("sha256:"));
    assert!(!blob.exists(), "corrupt blob kept at {}", blob.display());

    // The daemon is still healthy: a good image pulls fine afterwards.
    images::pull(&mut client, &env.registry.image_ref("busybox", "1"))
        .await
        .expect("good pull after corrupt one");
}

async fn assert_escape_refused(env: &Env, escape: &image::EscapeImage) {
    let mut client = env.daemon.image();
    let name = escape.image.reference(&env.registry);
    let result = images::pull(&mut client, &name).await;
    let escaped = escape.escape_path.exists();
    let _ = std::fs::remove_file(&escape.escape_path);
    assert!(
        !escaped,
        "layer wrote {} outside its root",
        escape.escape_path.display()
    );
    let err = result.expect_err("a path-traversal layer must fail the pull");
    assert!(
        err.message().contains(&escape.marker),
        "error does not name the offending entry: {err:?}"
    );
    let stray: Vec<_> = files_below(env.daemon.dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&escape.marker))
        .collect();
    assert!(
        stray.is_empty(),
        "escape file landed in the test dir: {stray:?}"
    );
    assert!(images::list(&mut client).await.unwrap().is_empty());
    assert_store_empty(&env.daemon, "after a refused layer");
}

#[tokio::test(flavor = "multi_thread")]
async fn dotdot_layer_cannot_escape() {
    let Some(env) = setup().await else { return };
    let escape = image::push_dotdot_escape_image(&env.registry, "evil", "dotdot")
        .await
        .unwrap();
    assert_escape_refused(&env, &escape).await;
}

/// `evil -> /` then `evil/tmp/<marker>`: an unpacker may either refuse the
/// layer, or resolve the symlink as if the layer root were `/` (what a
/// container will see, as containerd and RESOLVE_IN_ROOT do) and write
/// `<layer>/tmp/<marker>`. Writing the host's `/tmp/<marker>` is the bug.
#[tokio::test(flavor = "multi_thread")]
async fn symlink_layer_cannot_escape() {
    let Some(env) = setup().await else { return };
    let escape = image::push_symlink_escape_image(&env.registry, "evil", "symlink")
        .await
        .unwrap();
    let mut client = env.daemon.image();
    let result = images::pull(&mut client, &escape.image.reference(&env.registry)).await;
    let escaped = escape.escape_path.exists();
    let _ = std::fs::remove_file(&escape.escape_path);
    assert!(
        !escaped,
        "layer wrote {} outside its root",
        escape.escape_path.display()
    );
    match result {
        Err(_) => assert_escape_refused(&env, &escape).await,
        Ok(image_ref) => {
            assert_eq!(id_hex(&image_ref), escape.image.id_hex());
            let layer = layer_dir(&env.daemon, &escape.image.diff_ids[0]);
            let evil = std::fs::read_link(layer.join("evil")).expect("evil symlink kept");
            assert_eq!(evil, Path::new("/"));
            let inside = layer.join("tmp").join(&escape.marker);
            assert_eq!(
                std::fs::read_to_string(&inside).ok().as_deref(),
                Some("escaped\n"),
                "{} not written inside the layer",
                inside.display()
            );
            let stray: Vec<_> = files_below(env.daemon.dir())
                .into_iter()
                .filter(|p| p.to_string_lossy().contains(&escape.marker))
                .collect();
            assert_eq!(
                stray.len(),
                1,
                "only the confined copy may exist: {stray:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_one_image_dedupe() {
    let Some(env) = setup().await else { return };
    let name = env.registry.image_ref("multilayer", "wh");
    let mut a = env.daemon.image();
    let mut b = env.daemon.connect().await.unwrap().image;
    let (ra, rb) = tokio::join!(images::pull(&mut a, &name), images::pull(&mut b, &name));
    let (ra, rb) = (ra.expect("first pull"), rb.expect("second pull"));
    assert_eq!(ra, rb);
    assert_eq!(id_hex(&ra), env.images.multilayer.id_hex());
    let listed = images::list(&mut a).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].repo_tags, vec![name]);
    assert!(
        dir_entries(&env.daemon.root().join("tmp")).is_empty(),
        "in-flight files left in tmp/"
    );
    let mut layers: Vec<String> = dir_entries(&env.daemon.root().join("layers/sha256"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    layers.sort();
    let mut expected = env.images.multilayer.diff_id_hexes();
    expected.sort();
    assert_eq!(layers, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_survive_a_daemon_crash() {
    let Some(mut env) = setup().await else { return };
    let name = env.registry.image_ref("busybox", "1");
    let image_ref = images::pull(&mut env.daemon.image(), &name)
        .await
        .expect("pull");
    env.daemon.kill9();
    env.daemon.restart().await.expect("restart after SIGKILL");
    let mut client = env.daemon.image();
    let listed = images::list(&mut client).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, image_ref);
    assert_eq!(listed[0].repo_tags, vec![name.clone()]);
    let status = images::status(&mut client, &name, false).await.unwrap();
    assert_eq!(status.image.expect("still known").id, image_ref);
    assert!(
        layer_dir(&env.daemon, &env.images.busybox.diff_ids[0])
            .join("bin/busybox")
            .is_file()
    );

    // A clean restart keeps it too, and it can still be removed.
    env.daemon.restart().await.unwrap();
    let mut client = env.daemon.image();
    images::remove(&mut client, &name).await.unwrap();
    assert!(images::list(&mut client).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_needs_insecure_config() {
    if !require_root_and_tools(&[REGISTRY_BIN, BUSYBOX_STATIC]) {
        return;
    }
    let registry = Registry::start().await.unwrap();
    image::push_busybox(
        &registry,
        "busybox",
        "1",
        ManifestFormat::Docker,
        Compression::Gzip,
    )
    .await
    .unwrap();
    let daemon = Daemon::start("").await.unwrap();
    let mut client = daemon.image();
    let err = images::pull(&mut client, &registry.image_ref("busybox", "1"))
        .await
        .expect_err("TLS to a plain-HTTP registry");
    let msg = err.message().to_lowercase();
    assert!(
        msg.contains(registry.addr()),
        "error does not name the registry: {err:?}"
    );
    assert!(
        [
            "tls",
            "https",
            "ssl",
            "certificate",
            "insecure",
            "handshake"
        ]
        .iter()
        .any(|w| msg.contains(w)),
        "error does not say TLS failed: {err:?}"
    );
    assert!(images::list(&mut client).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn blocked_registry_pulls_from_its_mirror() {
    if !require_root_and_tools(&[REGISTRY_BIN, BUSYBOX_STATIC]) {
        return;
    }
    let registry = Registry::start().await.unwrap();
    let pushed = image::push_busybox(
        &registry,
        "busybox",
        "1",
        ManifestFormat::Docker,
        Compression::Gzip,
    )
    .await
    .unwrap();
    let daemon = Daemon::builder()
        .registries_yaml(&format!(
            "registries:\n  - prefix: mirror.example.invalid\n    blocked: true\n    mirrors:\n      - location: \"{}\"\n        insecure: true\n",
            registry.addr()
        ))
        .start()
        .await
        .unwrap();
    let mut client = daemon.image();
    let name = "mirror.example.invalid/busybox:1";
    let image_ref = images::pull(&mut client, name)
        .await
        .expect("pull through the mirror");
    assert_eq!(id_hex(&image_ref), pushed.id_hex());
    let listed = images::list(&mut client).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].repo_tags,
        vec![name.to_string()],
        "listed under the name that was asked for"
    );
    let digest_ref = format!("mirror.example.invalid/busybox@{}", pushed.manifest_digest);
    assert!(
        listed[0].repo_digests.contains(&digest_ref),
        "{:?}",
        listed[0].repo_digests
    );
}

/// containers-registries.conf, as a node set up for CRI-O or podman has
/// it: a `[[registry]]` with a mirror, the search list for short names and
/// a short-name alias from a drop-in file, all honoured through the socket.
#[tokio::test(flavor = "multi_thread")]
async fn registries_conf_mirrors_search_list_and_aliases_are_honoured() {
    if !require_root_and_tools(&[REGISTRY_BIN, BUSYBOX_STATIC]) {
        return;
    }
    let registry = Registry::start().await.unwrap();
    let pushed = image::push_busybox(
        &registry,
        "busybox",
        "1",
        ManifestFormat::Docker,
        Compression::Gzip,
    )
    .await
    .unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    let main = conf_dir.path().join("registries.conf");
    let drop_ins = conf_dir.path().join("registries.conf.d");
    std::fs::create_dir(&drop_ins).unwrap();
    let addr = registry.addr();
    // The first search registry refuses connections: the pull moves on.
    std::fs::write(
        &main,
        format!(
            "unqualified-search-registries = [\"127.0.0.1:1\", \"{addr}\"]\n\n\
             [[registry]]\nprefix = \"mirror.example.invalid\"\nblocked = true\n\
             [[registry.mirror]]\nlocation = \"{addr}\"\ninsecure = true\n\n\
             [[registry]]\nlocation = \"{addr}\"\ninsecure = true\n\n\
             [[registry]]\nlocation = \"127.0.0.1:1\"\ninsecure = true\n"
        ),
    )
    .unwrap();
    std::fs::write(
        drop_ins.join("shortnames.conf"),
        "[aliases]\n\"mybox\" = \"mirror.example.invalid/busybox\"\n",
    )
    .unwrap();
    let daemon = Daemon::builder()
        .registries_conf(&main, &drop_ins)
        .start()
        .await
        .unwrap();
    let mut client = daemon.image();

    // The alias names a blocked registry whose mirror has the image.
    let image_ref = images::pull(&mut client, "mybox:1")
        .await
        .expect("pull the alias through the mirror");
    assert_eq!(id_hex(&image_ref), pushed.id_hex());
    let listed = images::list(&mut client).await.unwrap();
    assert_eq!(
        listed[0].repo_tags,
        vec!["mirror.example.invalid/busybox:1".to_string()],
        "the alias's full name"
    );
    let status = images::status(&mut client, "mybox:1", false).await.unwrap();
    assert!(status.image.is_some(), "ImageStatus resolves the alias too");

    // A short name without alias: the search list, in order.
    let image_ref = images::pull(&mut client, "busybox:1")
        .await
        .expect("pull the short name from the second search registry");
    assert_eq!(id_hex(&image_ref), pushed.id_hex());
    let status = images::status(&mut client, "busybox:1", false)
        .await
        .unwrap();
    let tags = status.image.map(|i| i.repo_tags).unwrap_or_default();
    assert!(
        tags.contains(&format!("{addr}/busybox:1")),
        "named after the registry that had it: {tags:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blocked_registry_without_mirror_is_refused() {
    if !require_root_and_tools(&[REGISTRY_BIN]) {
        return;
    }
    let registry = Registry::start().await.unwrap();
    let daemon = Daemon::builder()
        .registries_yaml(&format!(
            "registries:\n  - prefix: \"{}\"\n    insecure: true\n    blocked: true\n",
            registry.addr()
        ))
        .start()
        .await
        .unwrap();
    let err = images::pull(&mut daemon.image(), &registry.image_ref("busybox", "1"))
        .await
        .expect_err("blocked");
    assert!(err.message().to_lowercase().contains("blocked"), "{err:?}");
}

/// `image.pinned_images`: a pinned image is reported `pinned` in ListImages
/// and ImageStatus and survives RemoveImage (FailedPrecondition naming the
/// setting); an image no pattern matches is neither.
#[tokio::test(flavor = "multi_thread")]
async fn pinned_images_are_reported_and_survive_removal() {
    if !require_root_and_tools(&[REGISTRY_BIN, BUSYBOX_STATIC]) {
        return;
    }
    let registry = Registry::start().await.unwrap();
    for (name, cmd) in [("pinme", "pinned"), ("other", "free")] {
        let layers = vec![image::Layer::new(
            image::busybox_rootfs_tar().unwrap(),
            Compression::Gzip,
        )];
        let config = image::ImageConfig {
            cmd: vec![cmd.to_string()],
            ..Default::default()
        };
        image::push_image(
            &registry,
            name,
            "1",
            layers,
            &config,
            ManifestFormat::Docker,
        )
        .await
        .unwrap();
    }
    let daemon = Daemon::builder()
        .registry(&registry)
        .extra_yaml("image:\n  pinned_images: [\"*pinme*\"]\n")
        .start()
        .await
        .unwrap();
    let mut client = daemon.image();
    let pinned = registry.image_ref("pinme", "1");
    let free = registry.image_ref("other", "1");
    for name in [&pinned, &free] {
        images::pull(&mut client, name).await.expect("pull");
    }
    let listed = images::list(&mut client).await.unwrap();
    let pinned_of = |listed: &[crius_proto::cri::Image], name: &str| {
        listed
            .iter()
            .find(|i| i.repo_tags.iter().any(|t| t == name))
            .map(|i| i.pinned)
    };
    assert_eq!(pinned_of(&listed, &pinned), Some(true), "{listed:?}");
    assert_eq!(pinned_of(&listed, &free), Some(false), "{listed:?}");
    let status = images::status(&mut client, &pinned, false).await.unwrap();
    assert!(status.image.expect("status of the pinned image").pinned);

    let err = images::remove(&mut client, &pinned)
        .await
        .expect_err("a pinned image is not removed");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("image.pinned_images"), "{err:?}");
    images::remove(&mut client, &free)
        .await
        .expect("remove the other");
    let listed = images::list(&mut client).await.unwrap();
    assert_eq!(pinned_of(&listed, &pinned), Some(true), "still there");
    assert_eq!(pinned_of(&listed, &free), None, "removed");
}
