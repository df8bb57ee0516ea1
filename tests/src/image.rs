//! Test images built in Rust from `busybox-static` and pushed to a
//! [`Registry`] over the OCI distribution HTTP API.
//!
//! Layers are built deterministically (fixed mtimes, uid/gid 0, gzip without
//! a timestamp), so the same layer always has the same digest: images that
//! share the busybox base layer really share it, as in real registries.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::registry::Registry;

/// The static busybox installed by Debian's `busybox-static`.
pub const BUSYBOX_STATIC: &str = "/bin/busybox";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest type the fixtures push, for `Accept` headers.
pub const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Fixed mtime for every tar entry (2023-11-14), so layers are reproducible.
const MTIME: u64 = 1_700_000_000;

/// Applets linked into `/bin` of the busybox rootfs.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "sleep", "uname", "id", "env", "true", "false", "test", "[",
    "mkdir", "rm", "touch", "ps", "hostname", "wc", "grep", "head", "tail", "printf", "kill",
    "date", "stat", "whoami", "cut", "mount", "df", "readlink", "pwd", "cp", "mv", "ln", "chmod",
    "seq", "yes",
];

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Which manifest (and index) schema to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// Docker image manifest v2 schema 2 (and Docker manifest lists).
    Docker,
    /// OCI image manifest (and OCI image indexes).
    Oci,
}

/// Builds one layer tarball, entry by entry.
pub struct LayerBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Self { builder }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    /// A directory (`path` without trailing slash).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.builder
            .append_data(&mut header, format!("{path}/"), std::io::empty())?;
        Ok(self)
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, contents: &[u8], mode: u32) -> Result<&mut Self> {
        let mut header = Self::header(tar::EntryType::Regular, mode, contents.len() as u64);
        self.builder.append_data(&mut header, path, contents)?;
        Ok(self)
    }

    /// A symbolic link `path -> target` (target may be absolute).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        // The link name is written verbatim: the tar crate renders "/" as "//".
        let field = &mut header.as_old_mut().linkname;
        ensure!(
            target.len() < field.len(),
            "symlink target too long: {target}"
        );
        field[..target.len()].copy_from_slice(target.as_bytes());
        self.builder
            .append_data(&mut header, path, std::io::empty())?;
        Ok(self)
    }

    /// A hard link `path` to the earlier entry `target`.
    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut header = Self::header(tar::EntryType::Link, 0o644, 0);
        self.builder.append_link(&mut header, path, target)?;
        Ok(self)
    }

    /// An OCI whiteout deleting `path` from the layers below (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> Result<&mut Self> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), b"", 0o644)
    }

    /// An OCI opaque-directory marker: `dir` hides everything below it from
    /// lower layers (`dir/.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> Result<&mut Self> {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// A regular file whose header name is written verbatim, bypassing the
    /// tar crate's refusal of `..` and absolute paths: for malicious layers.
    pub fn raw_file(&mut self, name: &str, contents: &[u8], mode: u32) -> Result<&mut Self> {
        let mut header = Self::header(tar::EntryType::Regular, mode, contents.len() as u64);
        let field = &mut header.as_old_mut().name;
        ensure!(name.len() < field.len(), "raw tar name too long: {name}");
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        self.builder.append(&header, contents)?;
        Ok(self)
    }

    /// The finished (uncompressed) tarball.
    pub fn finish(self) -> Result<Vec<u8>> {
        Ok(self.builder.into_inner()?)
    }
}

/// One layer: its uncompressed tarball and how to compress it for the registry.
#[derive(Debug, Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub compression: Compression,
}

impl Layer {
    pub fn new(tar: Vec<u8>, compression: Compression) -> Self {
        Self { tar, compression }
    }

    /// The digest of the uncompressed tarball (what the image config lists).
    pub fn diff_id(&self) -> String {
        sha256_digest(&self.tar)
    }

    /// The blob as stored in the registry.
    pub fn blob(&self) -> Result<Vec<u8>> {
        Ok(match self.compression {
            Compression::None => self.tar.clone(),
            Compression::Gzip => {
                // GzEncoder writes mtime 0 in its header: reproducible output.
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(&self.tar)?;
                enc.finish()?
            }
            Compression::Zstd => zstd::encode_all(&self.tar[..], 3)?,
        })
    }

    fn media_type(&self, format: ManifestFormat) -> &'static str {
        match (format, self.compression) {
            (ManifestFormat::Oci, Compression::None) => OCI_LAYER,
            (ManifestFormat::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            // Docker's schema has no zstd type; Docker itself uses the OCI one.
            (_, Compression::Zstd) => OCI_LAYER_ZSTD,
            (ManifestFormat::Docker, Compression::None) => DOCKER_LAYER,
            (ManifestFormat::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
        }
    }
}

/// Checks that [`BUSYBOX_STATIC`] is a statically linked ELF (no
/// `PT_INTERP` program header): a dynamic busybox would not run in a rootfs
/// without a libc.
pub fn check_busybox_static() -> Result<()> {
    let elf = std::fs::read(BUSYBOX_STATIC).with_context(|| format!("reading {BUSYBOX_STATIC}"))?;
    ensure!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2,
        "{BUSYBOX_STATIC} is not a 64-bit ELF"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let p_type =
            u32::from_le_bytes(elf.get(off..off + 4).context("truncated ELF")?.try_into()?);
        const PT_INTERP: u32 = 3;
        if p_type == PT_INTERP {
            bail!("{BUSYBOX_STATIC} is dynamically linked; install busybox-static");
        }
    }
    Ok(())
}

/// The busybox rootfs tarball: `/bin/busybox` plus applet symlinks,
/// `/etc/passwd`, `/etc/group`, a world-writable sticky `/tmp`.
pub fn busybox_rootfs_tar() -> Result<Vec<u8>> {
    check_busybox_static()?;
    let busybox = std::fs::read(BUSYBOX_STATIC)?;
    let mut layer = LayerBuilder::new();
    for dir in ["bin", "dev", "etc", "proc", "root", "sys", "var"] {
        layer.dir(dir, 0o755)?;
    }
    layer.dir("tmp", 0o1777)?;
    layer.file("bin/busybox", &busybox, 0o755)?;
    for applet in BUSYBOX_APPLETS {
        layer.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    layer.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    layer.file("etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644)?;
    layer.finish()
}

/// The image config (`application/vnd.oci.image.config.v1+json`) fields the
/// fixtures set; `rootfs.diff_ids` is filled in from the layers.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            architecture: "amd64".into(),
            os: "linux".into(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
            user: String::new(),
            working_dir: String::new(),
            labels: BTreeMap::new(),
        }
    }
}

impl ImageConfig {
    /// The config blob for an image with these `diff_ids`.
    pub fn to_json(&self, diff_ids: &[String]) -> Vec<u8> {
        let mut config = json!({ "Env": self.env, "Cmd": self.cmd });
        let obj = config.as_object_mut().expect("object literal");
        if !self.entrypoint.is_empty() {
            obj.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.user.is_empty() {
            obj.insert("User".into(), json!(self.user));
        }
        if !self.working_dir.is_empty() {
            obj.insert("WorkingDir".into(), json!(self.working_dir));
        }
        if !self.labels.is_empty() {
            obj.insert("Labels".into(), json!(self.labels));
        }
        let history: Vec<Value> = diff_ids
            .iter()
            .enumerate()
            .map(|(i, _)| json!({ "created": "2023-11-14T22:13:20Z", "created_by": format!("crius-tests layer {i}") }))
            .collect();
        serde_json::to_vec(&json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        }))
        .expect("serializing JSON values cannot fail")
    }
}

/// What [`push_image`] put into the registry.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// Repository name inside the registry (`busybox`).
    pub name: String,
    /// Tags the manifest is pushed under (empty: pushed by digest only).
    pub tags: Vec<String>,
    pub manifest_digest: String,
    pub manifest_media_type: &'static str,
    pub manifest: Vec<u8>,
    /// The image ID as CRI runtimes report it.
    pub config_digest: String,
    pub config: Vec<u8>,
    /// Compressed blob digests, in manifest order.
    pub layer_digests: Vec<String>,
    /// Uncompressed tar digests, in config order.
    pub diff_ids: Vec<String>,
}

impl PushedImage {
    /// Hex part of the config digest.
    pub fn id_hex(&self) -> &str {
        self.config_digest.trim_start_matches("sha256:")
    }

    /// `<registry>/<name>:<tag>` for the first tag.
    pub fn reference(&self, registry: &Registry) -> String {
        registry.image_ref(
            &self.name,
            self.tags.first().map(String::as_str).unwrap_or("latest"),
        )
    }

    /// `<registry>/<name>@<manifest digest>`.
    pub fn digest_reference(&self, registry: &Registry) -> String {
        format!("{}/{}@{}", registry.addr(), self.name, self.manifest_digest)
    }

    /// Hex parts of the diff IDs: the directory names under `<root>/layers/sha256/`.
    pub fn diff_id_hexes(&self) -> Vec<String> {
        self.diff_ids
            .iter()
            .map(|d| d.trim_start_matches("sha256:").to_string())
            .collect()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Uploads `bytes` as a blob of repository `name` (monolithic upload:
/// `POST .../blobs/uploads/` then `PUT <location>&digest=`). Returns its digest.
pub async fn push_blob(registry: &Registry, name: &str, bytes: &[u8]) -> Result<String> {
    let digest = sha256_digest(bytes);
    let client = http();
    let base = registry.base_url();
    let head = client
        .head(format!("{base}/v2/{name}/blobs/{digest}"))
        .send()
        .await?;
    if head.status().is_success() {
        return Ok(digest);
    }
    let resp = client
        .post(format!("{base}/v2/{name}/blobs/uploads/"))
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 202,
        "starting upload to {name}: HTTP {}",
        resp.status()
    );
    let location = resp
        .headers()
        .get("location")
        .context("upload response has no Location")?
        .to_str()?
        .to_string();
    let location = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = client
        .put(format!("{location}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await?;
    let status = resp.status();
    ensure!(
        status.as_u16() == 201,
        "uploading blob {digest} to {name}: HTTP {status}: {}",
        resp.text().await?
    );
    Ok(digest)
}

/// Puts `manifest` under `reference` (a tag or its digest). Returns its digest.
pub async fn push_manifest(
    registry: &Registry,
    name: &str,
    reference: &str,
    media_type: &str,
    manifest: &[u8],
) -> Result<String> {
    let digest = sha256_digest(manifest);
    let resp = http()
        .put(format!(
            "{}/v2/{name}/manifests/{reference}",
            registry.base_url()
        ))
        .header("content-type", media_type)
        .body(manifest.to_vec())
        .send()
        .await?;
    let status = resp.status();
    let served = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    ensure!(
        status.as_u16() == 201,
        "putting manifest {name}:{reference}: HTTP {status}: {}",
        resp.text().await?
    );
    if let Some(served) = served {
        ensure!(
            served == digest,
            "registry computed {served} for manifest {digest}"
        );
    }
    Ok(digest)
}

/// Pushes the layers, the config and a manifest for them, tagged `tag`
/// (an empty `tag` pushes the manifest by digest only, as for index children).
pub async fn push_image(
    registry: &Registry,
    name: &str,
    tag: &str,
    layers: Vec<Layer>,
    config: &ImageConfig,
    format: ManifestFormat,
) -> Result<PushedImage> {
    let mut descriptors = Vec::new();
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in &layers {
        let blob = layer.blob()?;
        let digest = push_blob(registry, name, &blob).await?;
        descriptors.push(
            json!({ "mediaType": layer.media_type(format), "digest": digest, "size": blob.len() }),
        );
        layer_digests.push(digest);
        diff_ids.push(layer.diff_id());
    }
    let config_bytes = config.to_json(&diff_ids);
    let config_digest = push_blob(registry, name, &config_bytes).await?;
    let (manifest_type, config_type) = match format {
        ManifestFormat::Oci => (OCI_MANIFEST, OCI_CONFIG),
        ManifestFormat::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": { "mediaType": config_type, "digest": config_digest, "size": config_bytes.len() },
        "layers": descriptors,
    }))?;
    let digest = sha256_digest(&manifest);
    let reference = if tag.is_empty() { digest.as_str() } else { tag };
    let manifest_digest =
        push_manifest(registry, name, reference, manifest_type, &manifest).await?;
    Ok(PushedImage {
        name: name.to_string(),
        tags: if tag.is_empty() {
            Vec::new()
        } else {
            vec![tag.to_string()]
        },
        manifest_digest,
        manifest_media_type: manifest_type,
        manifest,
        config_digest,
        config: config_bytes,
        layer_digests,
        diff_ids,
    })
}

/// Tags an already pushed image's manifest with another tag.
pub async fn add_tag(registry: &Registry, image: &mut PushedImage, tag: &str) -> Result<()> {
    push_manifest(
        registry,
        &image.name,
        tag,
        image.manifest_media_type,
        &image.manifest,
    )
    .await?;
    image.tags.push(tag.to_string());
    Ok(())
}

/// A platform entry of an index.
#[derive(Debug, Clone)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux(architecture: &str) -> Self {
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }
}

/// Pushes an index (OCI image index or Docker manifest list) listing
/// `entries` (which must already be in repository `name`). Returns its digest.
pub async fn push_index(
    registry: &Registry,
    name: &str,
    tag: &str,
    entries: &[(&PushedImage, Platform)],
    format: ManifestFormat,
) -> Result<String> {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(image, platform)| {
            let mut p = json!({ "os": platform.os, "architecture": platform.architecture });
            if let Some(variant) = &platform.variant {
                p["variant"] = json!(variant);
            }
            json!({
                "mediaType": image.manifest_media_type,
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
                "platform": p,
            })
        })
        .collect();
    let media_type = match format {
        ManifestFormat::Oci => OCI_INDEX,
        ManifestFormat::Docker => DOCKER_MANIFEST_LIST,
    };
    let index = serde_json::to_vec(
        &json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests }),
    )?;
    push_manifest(registry, name, tag, media_type, &index).await
}

/// A pushed index and the images it lists.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    pub name: String,
    pub tag: String,
    pub digest: String,
    /// The linux/amd64 image a pull on this host must pick.
    pub amd64: PushedImage,
    /// A linux/arm64 decoy listed first: different config and content.
    pub arm64: PushedImage,
}

/// The standard test images every image test can use.
#[derive(Debug, Clone)]
pub struct StandardImages {
    /// `busybox:1` and `busybox:latest` (same manifest): Docker schema 2, gzip.
    pub busybox: PushedImage,
    /// `multilayer:wh`: OCI; busybox (gzip), data (uncompressed), whiteouts (gzip).
    pub multilayer: PushedImage,
    /// `indexed:1`: OCI index with an arm64 decoy before the amd64 image.
    pub indexed: PushedIndex,
    /// `indexed:docker`: the same shape as a Docker manifest list of Docker manifests.
    pub docker_list: PushedIndex,
    /// `zstd:1`: OCI, zstd layers.
    pub zstd: PushedImage,
}

/// A busybox image `name:tag` whose second layer links `applets` (beyond
/// the standard set) to busybox, for tests whose containers need them
/// (httpd, wget, ...). Returns the image reference.
pub async fn push_busybox_with_applets(
    registry: &Registry,
    name: &str,
    tag: &str,
    applets: &[&str],
) -> Result<String> {
    let mut extra = LayerBuilder::new();
    extra.dir("bin", 0o755)?;
    for applet in applets {
        extra.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    let layers = vec![
        Layer::new(busybox_rootfs_tar()?, Compression::Gzip),
        Layer::new(extra.finish()?, Compression::Gzip),
    ];
    push_image(
        registry,
        name,
        tag,
        layers,
        &ImageConfig::default(),
        ManifestFormat::Docker,
    )
    .await?;
    Ok(registry.image_ref(name, tag))
}

/// A busybox image `name:tag` (one rootfs layer) in the given format.
pub async fn push_busybox(
    registry: &Registry,
    name: &str,
    tag: &str,
    format: ManifestFormat,
    compression: Compression,
) -> Result<PushedImage> {
    let rootfs = Layer::new(busybox_rootfs_tar()?, compression);
    push_image(
        registry,
        name,
        tag,
        vec![rootfs],
        &ImageConfig::default(),
        format,
    )
    .await
}

/// Layer 1 of `multilayer:wh`: adds `/data/a`, `/data/b`, `/old/x`.
pub fn multilayer_data_tar() -> Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    layer
        .dir("data", 0o755)?
        .file("data/a", b"a\n", 0o644)?
        .file("data/b", b"b\n", 0o644)?;
    layer.dir("old", 0o755)?.file("old/x", b"x\n", 0o644)?;
    layer.finish()
}

/// Layer 2 of `multilayer:wh`: deletes `/data/a`, makes `/old` opaque and
/// adds `/old/new`. The merged view: `/data/b`, `/old/new`, no `/data/a`, no `/old/x`.
pub fn multilayer_whiteout_tar() -> Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    layer.dir("data", 0o755)?.whiteout("data/a")?;
    layer
        .dir("old", 0o755)?
        .opaque("old")?
        .file("old/new", b"new\n", 0o644)?;
    layer.finish()
}

/// Pushes [`StandardImages`].
pub async fn push_standard_images(registry: &Registry) -> Result<StandardImages> {
    let mut busybox = push_busybox(
        registry,
        "busybox",
        "1",
        ManifestFormat::Docker,
        Compression::Gzip,
    )
    .await?;
    add_tag(registry, &mut busybox, "latest").await?;

    let rootfs = busybox_rootfs_tar()?;
    let multilayer = push_image(
        registry,
        "multilayer",
        "wh",
        vec![
            Layer::new(rootfs.clone(), Compression::Gzip),
            Layer::new(multilayer_data_tar()?, Compression::None),
            Layer::new(multilayer_whiteout_tar()?, Compression::Gzip),
        ],
        &ImageConfig::default(),
        ManifestFormat::Oci,
    )
    .await?;

    let indexed = push_multi_arch(registry, "indexed", "1", &rootfs, ManifestFormat::Oci).await?;
    let docker_list = push_multi_arch(
        registry,
        "indexed",
        "docker",
        &rootfs,
        ManifestFormat::Docker,
    )
    .await?;

    let zstd = push_image(
        registry,
        "zstd",
        "1",
        vec![
            Layer::new(rootfs, Compression::Zstd),
            Layer::new(arch_marker_tar("zstd")?, Compression::Zstd),
        ],
        &ImageConfig::default(),
        ManifestFormat::Oci,
    )
    .await?;

    Ok(StandardImages {
        busybox,
        multilayer,
        indexed,
        docker_list,
        zstd,
    })
}

/// An index (or manifest list) `name:tag` listing an arm64 decoy first and
/// the linux/amd64 image second; each has a marker layer naming its arch.
pub async fn push_multi_arch(
    registry: &Registry,
    name: &str,
    tag: &str,
    rootfs: &[u8],
    format: ManifestFormat,
) -> Result<PushedIndex> {
    let mut images = Vec::new();
    for arch in ["arm64", "amd64"] {
        let config = ImageConfig {
            architecture: arch.into(),
            ..ImageConfig::default()
        };
        let layers = vec![
            Layer::new(rootfs.to_vec(), Compression::Gzip),
            Layer::new(arch_marker_tar(arch)?, Compression::Gzip),
        ];
        images.push(push_image(registry, name, "", layers, &config, format).await?);
    }
    let amd64 = images.pop().expect("two images");
    let arm64 = images.pop().expect("two images");
    // The decoy comes first so that "take the first entry" is caught.
    let digest = push_index(
        registry,
        name,
        tag,
        &[
            (&arm64, Platform::linux("arm64")),
            (&amd64, Platform::linux("amd64")),
        ],
        format,
    )
    .await?;
    Ok(PushedIndex {
        name: name.into(),
        tag: tag.into(),
        digest,
        amd64,
        arm64,
    })
}

/// A one-file layer `/etc/crius-test-marker` containing `marker`.
pub fn arch_marker_tar(marker: &str) -> Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    layer.dir("etc", 0o755)?.file(
        "etc/crius-test-marker",
        format!("{marker}\n").as_bytes(),
        0o644,
    )?;
    layer.finish()
}

/// A malicious image and the host path its layer tries to write.
#[derive(Debug, Clone)]
pub struct EscapeImage {
    pub image: PushedImage,
    /// Must not exist after the pull.
    pub escape_path: PathBuf,
    /// A unique fragment of the offending entry's name, for error messages.
    pub marker: String,
}

/// A single-layer image whose tar entry `../../…/tmp/crius-escape-<random>`
/// climbs out of any extraction directory (deep enough for any root).
pub async fn push_dotdot_escape_image(
    registry: &Registry,
    name: &str,
    tag: &str,
) -> Result<EscapeImage> {
    let marker = format!("crius-escape-{}", crate::unique_token());
    let mut layer = LayerBuilder::new();
    layer
        .dir("etc", 0o755)?
        .file("etc/harmless", b"ok\n", 0o644)?;
    layer.raw_file(
        &format!("{}tmp/{marker}", "../".repeat(16)),
        b"escaped\n",
        0o644,
    )?;
    let image = push_image(
        registry,
        name,
        tag,
        vec![Layer::new(layer.finish()?, Compression::Gzip)],
        &ImageConfig::default(),
        ManifestFormat::Oci,
    )
    .await?;
    Ok(EscapeImage {
        image,
        escape_path: Path::new("/tmp").join(&marker),
        marker,
    })
}

/// A single-layer image with a symlink `evil -> /` followed by a file
/// `evil/tmp/crius-escape2-<random>` written through it.
pub async fn push_symlink_escape_image(
    registry: &Registry,
    name: &str,
    tag: &str,
) -> Result<EscapeImage> {
    let marker = format!("crius-escape2-{}", crate::unique_token());
    let mut layer = LayerBuilder::new();
    layer.symlink("evil", "/")?;
    layer.file(&format!("evil/tmp/{marker}"), b"escaped\n", 0o644)?;
    let image = push_image(
        registry,
        name,
        tag,
        vec![Layer::new(layer.finish()?, Compression::Gzip)],
        &ImageConfig::default(),
        ManifestFormat::Oci,
    )
    .await?;
    Ok(EscapeImage {
        image,
        escape_path: Path::new("/tmp").join(&marker),
        marker,
    })
}

/// GETs a manifest; returns its bytes and Content-Type.
pub async fn fetch_manifest(
    registry: &Registry,
    name: &str,
    reference: &str,
) -> Result<(Vec<u8>, String)> {
    let resp = http()
        .get(format!(
            "{}/v2/{name}/manifests/{reference}",
            registry.base_url()
        ))
        .header("accept", ALL_MANIFEST_TYPES)
        .send()
        .await?;
    let status = resp.status();
    ensure!(
        status.is_success(),
        "GET manifest {name}:{reference}: HTTP {status}"
    );
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((resp.bytes().await?.to_vec(), content_type))
}

/// GETs a blob's bytes (unverified: the point is to see what is served).
pub async fn fetch_blob(registry: &Registry, name: &str, digest: &str) -> Result<Vec<u8>> {
    let resp = http()
        .get(format!("{}/v2/{name}/blobs/{digest}", registry.base_url()))
        .send()
        .await?;
    let status = resp.status();
    ensure!(
        status.is_success(),
        "GET blob {name}@{digest}: HTTP {status}"
    );
    Ok(resp.bytes().await?.to_vec())
}
