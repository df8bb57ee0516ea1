//! The image manager: pulls images into the store, keeps their records, and
//! answers lookups, listings, removals and usage questions.
//!
//! Concurrency model:
//! - pulls of the same normalized name share one background task (callers
//!   that give up do not cancel it, so nothing is left half-done);
//! - blobs and layers are fetched/unpacked under a per-digest lock, so images
//!   sharing a layer unpack it once;
//! - content a pull is about to use is "pinned", and removal only deletes
//!   unpinned content that no remaining record references; deletion first
//!   renames into `tmp/`, so a reader sees a layer either whole or absent;
//! - record writes and removals are serialized by one async lock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use tracing::{debug, info, warn};

use super::error::{ImageError, IoContext};
use super::layer::{Compression, LayerError, UnpackOptions, unpack_layer};
use super::limits::{Exceeded, PullLimits};
use super::record::{
    ContainerDefaults, ImageConfig, ImageRecord, LayerRecord, Lookup, find_with_lookup, user_of,
};
use super::reference::ImageName;
use super::registry::{
    Credentials, ManifestDoc, RawManifest, Remote, endpoints_for, parse_manifest, select_platform,
};
use super::settings::PullSettings;
use super::store::{
    Expected, StoreLayout, TempPath, Watch, digest_hex, remove_path_sync, store_blob_bytes,
    store_blob_stream_watched, write_file_synced,
};
use super::trust::Decision;
use crate::config::Config;

/// Tells the image manager which containers use an image, so removal can be
/// refused while any does (as CRI-O refuses).
pub trait ImageUsage: Send + Sync {
    /// Ids of the containers created from `image_id` (`sha256:...`).
    fn users_of(&self, image_id: &str) -> Vec<String>;
}

/// Space used by the image store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The store root (`config.root`).
    pub mountpoint: PathBuf,
    /// Bytes allocated to files under the root (hard links counted once).
    pub used_bytes: u64,
    /// Inodes under the root.
    pub inodes_used: u64,
}

type PullFuture = Shared<BoxFuture<'static, Result<ImageRecord, ImageError>>>;

/// The image store and puller. Construct with [`ImageManager::open`].
pub struct ImageManager {
    layout: StoreLayout,
    /// The configuration pulls run with; replaced on reload
    /// ([`ImageManager::reconfigure`]), read once at the start of a pull.
    settings: RwLock<Arc<PullSettings>>,
    /// Records by image id.
    records: RwLock<BTreeMap<String, ImageRecord>>,
    /// In-flight pulls by normalized name.
    inflight: Mutex<HashMap<String, PullFuture>>,
    /// Per-key (`blob:<digest>`, `layer:<diff_id>`) async locks.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Content in use by running pulls (`blob:<digest>`, `layer:<diff_id>`).
    pins: Mutex<HashMap<String, usize>>,
    /// Serializes record writes and removals.
    commit: tokio::sync::Mutex<()>,
    usage: RwLock<Option<Arc<dyn ImageUsage>>>,
    me: Weak<ImageManager>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections cannot leave
    // the maps inconsistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl ImageManager {
    /// Opens (creating if needed) the store under `config.root`: loads the
    /// image records and clears leftovers of interrupted pulls from `tmp/`.
    pub async fn open(config: &Config) -> Result<Arc<ImageManager>, ImageError> {
        let layout = StoreLayout::new(&config.root);
        // Root-only at every level: layers keep their setuid binaries and
        // device nodes, so no other user may even reach them. Tightens dirs
        // an older version created 0755.
        let dirs = layout.private_dirs();
        tokio::task::spawn_blocking(move || {
            dirs.iter().try_for_each(|dir| {
                crate::perms::ensure_private_dir(dir).ctx(|| format!("creating {}", dir.display()))
            })
        })
        .await
        .map_err(|e| ImageError::Internal(format!("creating the store dirs: {e}")))??;
        let tmp = layout.tmp.clone();
        tokio::task::spawn_blocking(move || clear_dir(&tmp))
            .await
            .map_err(|e| ImageError::Internal(format!("clearing tmp: {e}")))??;
        let records = load_records(&layout).await?;
        info!(root = %layout.root.display(), images = records.len(), "image store opened");
        Ok(Arc::new_cyclic(|me| ImageManager {
            layout,
            settings: RwLock::new(Arc::new(PullSettings::from_config(config))),
            records: RwLock::new(records),
            inflight: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            pins: Mutex::new(HashMap::new()),
            commit: tokio::sync::Mutex::new(()),
            usage: RwLock::new(None),
            me: me.clone(),
        }))
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    /// Installs the container-usage hook consulted by [`ImageManager::remove`].
    pub fn set_usage(&self, usage: Arc<dyn ImageUsage>) {
        *write(&self.usage) = Some(usage);
    }

    /// Applies a reloaded configuration's `image.*` and `registries` to the
    /// pulls that start from now on (running pulls finish with the settings
    /// they started with). Returns whether anything changed.
    pub fn reconfigure(&self, config: &Config) -> bool {
        let new = PullSettings::from_config(config);
        let mut settings = write(&self.settings);
        if **settings == new {
            return false;
        }
        *settings = Arc::new(new);
        true
    }

    fn settings(&self) -> Arc<PullSettings> {
        read(&self.settings).clone()
    }

    /// Normalizes an image name: a short name through registries.conf's
    /// aliases, else with the first search registry (or the default).
    pub fn normalize(&self, image: &str) -> Result<ImageName, ImageError> {
        let candidates = self.settings().candidates(image);
        let (name, registry) = &candidates[0];
        ImageName::parse(name, registry)
    }

    /// Pulls `image` (always asking the registry what the tag points at now;
    /// blobs and layers already stored are reused) if the signature policy
    /// for a pull in `namespace` accepts it. Concurrent pulls of the same
    /// normalized name under the same policy share one download.
    pub async fn pull(
        &self,
        image: &str,
        auth: Option<Credentials>,
        namespace: Option<&str>,
    ) -> Result<ImageRecord, ImageError> {
        let settings = self.settings();
        let candidates = settings.candidates(image);
        let mut last_err = None;
        // A short name is tried in each search registry in turn (as
        // CRI-O does), the first that has it wins.
        for (name, registry) in &candidates {
            let name = ImageName::parse(name, registry)?;
            let result = match self.decide(&settings, &name, namespace).await {
                Ok(decision) => self.pull_name(name.clone(), auth.clone(), decision).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(record) => return Ok(record),
                Err(err) if candidates.len() > 1 => {
                    debug!(image = %name, error = %err, "not pulled from this search registry");
                    last_err = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| ImageError::Internal("no name to pull".into())))
    }

    /// The signature policy's requirements for `name`; a `reject` is
    /// refused here, before the registry is asked anything.
    async fn decide(
        &self,
        settings: &PullSettings,
        name: &ImageName,
        namespace: Option<&str>,
    ) -> Result<Arc<Decision>, ImageError> {
        let (trust, for_name, ns) = (
            settings.trust.clone(),
            name.clone(),
            namespace.map(str::to_string),
        );
        let decision = tokio::task::spawn_blocking(move || trust.decide(&for_name, ns.as_deref()))
            .await
            .map_err(|e| ImageError::Internal(format!("reading the signature policy: {e}")))??;
        if decision.rejects() {
            return Err(ImageError::Rejected {
                image: name.to_string(),
                source_of: decision.source(),
                requirement: "reject",
                reason: "the policy rejects this image".to_string(),
            });
        }
        Ok(Arc::new(decision))
    }

    async fn pull_name(
        &self,
        name: ImageName,
        auth: Option<Credentials>,
        decision: Arc<Decision>,
    ) -> Result<ImageRecord, ImageError> {
        // Pulls under different policies (per-namespace) do not share.
        let key = format!("{name} {}", decision.policy.display());
        let shared = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(existing) => {
                    debug!(image = %key, "joining in-flight pull");
                    existing.clone()
                }
                None => {
                    let me = self
                        .me
                        .upgrade()
                        .ok_or_else(|| ImageError::Internal("image manager is gone".into()))?;
                    let task_key = key.clone();
                    // A task of its own so that a caller giving up (the gRPC
                    // request is cancelled) does not abort a pull midway.
                    let handle = tokio::spawn(async move {
                        // Forgets the in-flight entry even if the pull panics,
                        // so later pulls start afresh.
                        let _done = InflightEntry {
                            manager: &me,
                            key: task_key,
                        };
                        me.pull_uncached(&name, auth.as_ref(), &decision).await
                    });
                    let fut: PullFuture = async move {
                        handle.await.unwrap_or_else(|e| {
                            Err(ImageError::Internal(format!("pull task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, fut.clone());
                    fut
                }
            }
        };
        shared.await
    }

    /// The image `image_ref` names: id, unique id prefix, `name:tag` or
    /// `name@digest` (names normalized).
    pub fn resolve(&self, image_ref: &str) -> Result<ImageRecord, ImageError> {
        let records = read(&self.records);
        find_candidate(records.values(), image_ref, &self.settings()).map(|(r, _)| r.clone())
    }

    /// Whether `image.pinned_images` pins the image (by one of its tags).
    pub fn is_pinned(&self, record: &ImageRecord) -> bool {
        let settings = self.settings();
        record.repo_tags.iter().any(|tag| {
            settings
                .pinned_images
                .iter()
                .any(|pattern| super::settings::pin_matches(pattern, tag))
        })
    }

    /// [`ImageManager::resolve`], with "no such image" (and unusable
    /// references) as `None`.
    pub fn status(&self, image_ref: &str) -> Option<ImageRecord> {
        self.resolve(image_ref).ok()
    }

    /// All images, or those `filter` names (CRI `ImageFilter.image.image`;
    /// empty means no filter). An unknown or invalid filter matches nothing.
    pub fn list(&self, filter: Option<&str>) -> Vec<ImageRecord> {
        match filter.filter(|f| !f.is_empty()) {
            None => read(&self.records).values().cloned().collect(),
            Some(f) => self.resolve(f).map(|r| vec![r]).unwrap_or_default(),
        }
    }

    /// Unpacked layer directories of an image, top layer first (the order of
    /// overlayfs `lowerdir`).
    pub fn layer_dirs(&self, image_id: &str) -> Result<Vec<PathBuf>, ImageError> {
        let record = self.resolve(image_id)?;
        record
            .layers
            .iter()
            .rev()
            .map(|l| self.layout.layer_path(&l.diff_id))
            .collect()
    }

    /// What containers of an image run by default: entrypoint, cmd, env,
    /// working dir, user, labels, stop signal, volumes.
    pub fn container_defaults(&self, image_id: &str) -> Result<ContainerDefaults, ImageError> {
        Ok(self.resolve(image_id)?.config.config)
    }

    /// The image's full config blob as JSON (for verbose status), if stored.
    pub async fn config_json(&self, record: &ImageRecord) -> Option<serde_json::Value> {
        let path = self.layout.blob_path(&record.id).ok()?;
        let data = tokio::fs::read(path).await.ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Removes an image. Removing by one of several tags only untags;
    /// otherwise the record goes and layers and blobs no other image uses
    /// are deleted. Refused with [`ImageError::InUse`] while containers use
    /// the image. Unknown images give [`ImageError::NotFound`].
    pub async fn remove(&self, image_ref: &str) -> Result<(), ImageError> {
        let _commit = self.commit.lock().await;
        let settings = self.settings();
        let (record, lookup) = {
            let records = read(&self.records);
            let (r, l) = find_candidate(records.values(), image_ref, &settings)?;
            (r.clone(), l)
        };
        if self.is_pinned(&record) {
            return Err(ImageError::Pinned {
                image: image_ref.to_string(),
            });
        }
        if let Lookup::Tag(tag) = &lookup
            && record.repo_tags.len() > 1
        {
            let mut untagged = record.clone();
            untagged.repo_tags.retain(|t| t != tag);
            self.write_record(&untagged).await?;
            write(&self.records).insert(untagged.id.clone(), untagged);
            info!(image = %record.id, tag = %tag, "untagged image");
            return Ok(());
        }
        let usage = read(&self.usage).clone();
        if let Some(usage) = usage {
            let users = usage.users_of(&record.id);
            if !users.is_empty() {
                return Err(ImageError::InUse {
                    image: record.id.clone(),
                    containers: users,
                });
            }
        }
        let record_path = self.layout.record_path(&record.id)?;
        match tokio::fs::remove_file(&record_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ImageError::io(
                    format!("removing {}", record_path.display()),
                    e,
                ));
            }
        }
        write(&self.records).remove(&record.id);
        info!(image = %record.id, tags = ?record.repo_tags, "removed image");
        self.collect_garbage(&record).await;
        Ok(())
    }

    /// Bytes and inodes used under the store root.
    pub async fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let root = self.layout.root.clone();
        let (used_bytes, inodes_used) = tokio::task::spawn_blocking(move || disk_usage(&root))
            .await
            .map_err(|e| ImageError::Internal(format!("measuring disk usage: {e}")))??;
        Ok(FsUsage {
            mountpoint: self.layout.root.clone(),
            used_bytes,
            inodes_used,
        })
    }

    // ----- pulling -----

    /// Tries each endpoint in order; the error of the last one is reported,
    /// naming every endpoint tried.
    async fn pull_uncached(
        &self,
        name: &ImageName,
        credentials: Option<&Credentials>,
        decision: &Decision,
    ) -> Result<ImageRecord, ImageError> {
        let settings = self.settings();
        let endpoints = endpoints_for(name, &settings.registries)?;
        let mut tried = Vec::new();
        let mut last = None;
        for endpoint in &endpoints {
            tried.push(endpoint.to_string());
            // Credentials from the kubelet are for the image's registry; a
            // mirror (another host) must not receive them.
            let remote = Remote::new(
                endpoint,
                credentials,
                !endpoint.mirror,
                settings.max_concurrent_downloads,
                settings.pull_progress_timeout,
            );
            let result = match remote {
                Ok(remote) => self.pull_from(name, &remote, &settings, decision).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(record) => return Ok(record),
                Err(e) => {
                    warn!(image = %name, endpoint = %endpoint, error = %e, "pull attempt failed");
                    last = Some(e);
                }
            }
        }
        let source =
            last.unwrap_or_else(|| ImageError::Internal("no endpoint to pull from".into()));
        Err(ImageError::PullFailed {
            image: name.to_string(),
            tried,
            source: Box::new(source),
        })
    }

    async fn pull_from(
        &self,
        name: &ImageName,
        remote: &Remote,
        settings: &PullSettings,
        decision: &Decision,
    ) -> Result<ImageRecord, ImageError> {
        let image = name.to_string();
        info!(image = %image, endpoint = %remote.endpoint(), "pulling image");
        let top = remote
            .manifest(name.tag.as_deref(), name.digest.as_deref())
            .await?;
        // Signatures sign what the name resolves to (the index, for a
        // multi-platform image); checked before any blob is fetched.
        if !decision.accepts_anything() {
            super::verify::verify_signatures(name, remote, &top.digest, decision).await?;
        }
        let (manifest_raw, index_raw, manifest) = match parse_manifest(&image, &top.bytes)? {
            ManifestDoc::Image(m) => (top, None, m),
            ManifestDoc::Index(index) => {
                let digest = select_platform(&image, &index)?;
                debug!(image = %image, digest = %digest, "selected linux/amd64 manifest");
                let raw = remote.manifest(None, Some(&digest)).await?;
                match parse_manifest(&image, &raw.bytes)? {
                    ManifestDoc::Image(m) => (raw, Some(top), m),
                    ManifestDoc::Index(_) => {
                        return Err(ImageError::UnsupportedManifest {
                            reference: image,
                            reason: format!("index entry {digest} is another index"),
                        });
                    }
                }
            }
        };
        let mut touched = Touched::default();
        let result = self
            .store_image(
                name,
                (remote, settings),
                manifest_raw,
                index_raw,
                &manifest,
                &mut touched,
            )
            .await;
        if result.is_err() {
            // A failed pull leaves nothing behind: content it stored that no
            // image references (and no other pull is using) goes again.
            let _commit = self.commit.lock().await;
            self.collect_unreferenced(&image, touched.layers, touched.blobs)
                .await;
        }
        result
    }

    async fn store_image(
        &self,
        name: &ImageName,
        (remote, settings): (&Remote, &PullSettings),
        manifest_raw: RawManifest,
        index_raw: Option<RawManifest>,
        manifest: &OciImageManifest,
        touched: &mut Touched,
    ) -> Result<ImageRecord, ImageError> {
        let image = name.to_string();
        let config_digest = manifest.config.digest.clone();
        digest_hex(&config_digest)?;
        touched.blobs.push(manifest_raw.digest.clone());
        touched.blobs.push(config_digest.clone());
        touched
            .blobs
            .extend(index_raw.iter().map(|i| i.digest.clone()));
        touched
            .blobs
            .extend(manifest.layers.iter().map(|l| l.digest.clone()));
        let _blob_pins = self.pin(touched.blobs.iter().map(|b| format!("blob:{b}")).collect());

        store_blob_bytes(&self.layout, &manifest_raw.digest, &manifest_raw.bytes).await?;
        if let Some(index) = &index_raw {
            store_blob_bytes(&self.layout, &index.digest, &index.bytes).await?;
        }

        let config_path = self.ensure_blob(&image, remote, &manifest.config).await?;
        let config_bytes = tokio::fs::read(&config_path)
            .await
            .ctx(|| format!("reading {}", config_path.display()))?;
        let config = ImageConfig::parse(&config_digest, &config_bytes)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::InvalidConfig {
                digest: config_digest,
                reason: format!(
                    "{} diff_ids for {} layers in the manifest",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
            digest_hex(&desc.digest)?;
            digest_hex(diff_id).map_err(|_| ImageError::InvalidConfig {
                digest: config_digest.clone(),
                reason: format!("diff_id {diff_id:?} is not a sha256 digest"),
            })?;
            // Reject unknown layer formats before downloading anything.
            Compression::from_media_type(&desc.media_type).map_err(|e| ImageError::Layer {
                digest: desc.digest.clone(),
                source: Arc::new(e),
            })?;
            layers.push(LayerRecord {
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
                size: descriptor_size(desc)?,
                diff_id: diff_id.clone(),
            });
        }
        // Too large by the manifest: refused before any layer is downloaded.
        let limits = PullLimits::new(settings.max_layer_size, settings.max_image_size);
        limits.check_manifest(&image, &layers)?;
        touched.layers.extend(diff_ids.iter().cloned());
        let _layer_pins = self.pin(diff_ids.iter().map(|d| format!("layer:{d}")).collect());

        let (uid, username) = user_of(&config.config.user);
        let options = UnpackOptions {
            // Device nodes only for images that run as root anyway; whiteouts
            // are not device nodes for this purpose.
            allow_device_nodes: uid == Some(0)
                || (uid.is_none() && matches!(username.as_str(), "" | "root")),
            preserve_ownership: rustix::process::geteuid().is_root(),
        };

        // Unpack layers concurrently. After the first failure, layers not
        // yet started are skipped, but running ones are awaited so that no
        // unpack is still writing under tmp/ when the pull reports failure.
        let failed = AtomicBool::new(false);
        // Futures built up front (they do nothing until polled): a closure
        // over borrowed stream items would not be provably `Send` for all
        // lifetimes inside the spawned pull task.
        let tasks: Vec<_> = manifest
            .layers
            .iter()
            .zip(&layers)
            .map(|(desc, layer)| {
                let (failed, image, options, limits) = (&failed, &image, &options, &limits);
                async move {
                    if failed.load(Ordering::SeqCst) {
                        return None;
                    }
                    let result = self
                        .ensure_layer(image, remote, desc, layer, options, limits)
                        .await;
                    if result.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    Some(result)
                }
            })
            .collect();
        let results: Vec<Option<Result<(), ImageError>>> = futures::stream::iter(tasks)
            .buffered(settings.max_concurrent_downloads)
            .collect()
            .await;
        for result in results.into_iter().flatten() {
            result?;
        }

        // Both the index digest (what the name resolved to) and the platform
        // manifest's digest name this image, as CRI-O reports them.
        let mut repo_digests = Vec::new();
        if let Some(index) = &index_raw {
            repo_digests.push(name.repo_digest(&index.digest));
        }
        repo_digests.push(name.repo_digest(&manifest_raw.digest));
        let record = ImageRecord {
            id: config_digest.clone(),
            repo_tags: name.repo_tag().into_iter().collect(),
            repo_digests,
            size: layers.iter().map(|l| l.size).sum(),
            uid,
            username,
            pinned: false,
            manifest_digest: manifest_raw.digest.clone(),
            index_digest: index_raw.as_ref().map(|i| i.digest.clone()),
            manifests: std::iter::once(manifest_raw.digest.clone())
                .chain(index_raw.as_ref().map(|i| i.digest.clone()))
                .collect(),
            layers,
            config,
            pulled_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        };
        let record = self.commit_record(record).await?;
        info!(image = %image, id = %record.id, digest = %record.manifest_digest, "pulled image");
        Ok(record)
    }

    /// Makes sure a blob is in the store, downloading and verifying it if not.
    async fn ensure_blob(
        &self,
        image: &str,
        remote: &Remote,
        desc: &OciDescriptor,
    ) -> Result<PathBuf, ImageError> {
        let path = self.layout.blob_path(&desc.digest)?;
        let size = descriptor_size(desc)?;
        let _guard = self.lock_key(format!("blob:{}", desc.digest)).await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            debug!(image, digest = %desc.digest, "blob already stored");
            return Ok(path);
        }
        debug!(image, digest = %desc.digest, size, "downloading blob");
        let stream = remote.blob(desc).await?;
        let watch = Watch {
            image,
            endpoint: remote.endpoint().to_string(),
            stall: remote.stall(),
        };
        let path = store_blob_stream_watched(
            &self.layout,
            Expected {
                digest: &desc.digest,
                size,
            },
            stream,
            &watch,
        )
        .await?;
        debug!(image, digest = %desc.digest, "blob stored");
        Ok(path)
    }

    /// Makes sure a layer is unpacked in the store.
    async fn ensure_layer(
        &self,
        image: &str,
        remote: &Remote,
        desc: &OciDescriptor,
        layer: &LayerRecord,
        options: &UnpackOptions,
        limits: &PullLimits,
    ) -> Result<(), ImageError> {
        let layer_path = self.layout.layer_path(&layer.diff_id)?;
        let _guard = self.lock_key(format!("layer:{}", layer.diff_id)).await;
        if tokio::fs::try_exists(&layer_path).await.unwrap_or(false) {
            debug!(image, digest = %layer.digest, diff_id = %layer.diff_id, "layer already unpacked");
            return Ok(());
        }
        let blob_path = self.ensure_blob(image, remote, desc).await?;
        let compression =
            Compression::from_media_type(&layer.media_type).map_err(|e| ImageError::Layer {
                digest: layer.digest.clone(),
                source: Arc::new(e),
            })?;
        let temp = self.layout.temp_path("layer");
        let layer = layer.clone();
        let options = UnpackOptions {
            allow_device_nodes: options.allow_device_nodes,
            preserve_ownership: options.preserve_ownership,
        };
        debug!(image, digest = %layer.digest, diff_id = %layer.diff_id, "unpacking layer");
        // The blocking task owns the temporary directory, so it is cleaned
        // up by whoever finishes last, even if this future is dropped.
        let (limits, image) = (limits.clone(), image.to_string());
        tokio::task::spawn_blocking(move || {
            unpack_into_store(
                &blob_path,
                compression,
                temp,
                &layer_path,
                &layer,
                &options,
                (&limits, &image),
            )
        })
        .await
        .map_err(|e| ImageError::Internal(format!("layer unpack task failed: {e}")))?
    }

    /// Writes a freshly pulled record, merging it with an existing record of
    /// the same image and moving its tags away from any other image.
    async fn commit_record(&self, mut record: ImageRecord) -> Result<ImageRecord, ImageError> {
        let _commit = self.commit.lock().await;
        let (existing, losing_tags) = {
            let records = read(&self.records);
            let existing = records.get(&record.id).cloned();
            let losing: Vec<ImageRecord> = records
                .values()
                .filter(|r| r.id != record.id)
                .filter(|r| r.repo_tags.iter().any(|t| record.repo_tags.contains(t)))
                .map(|r| {
                    let mut r = r.clone();
                    r.repo_tags.retain(|t| !record.repo_tags.contains(t));
                    r
                })
                .collect();
            (existing, losing)
        };
        if let Some(old) = existing {
            let mut tags = old.repo_tags.clone();
            tags.extend(
                record
                    .repo_tags
                    .iter()
                    .filter(|t| !old.repo_tags.contains(t))
                    .cloned(),
            );
            let mut digests = old.repo_digests.clone();
            digests.extend(
                record
                    .repo_digests
                    .iter()
                    .filter(|d| !old.repo_digests.contains(d))
                    .cloned(),
            );
            let mut manifests = old.manifests.clone();
            manifests.extend(
                record
                    .manifests
                    .iter()
                    .filter(|d| !old.manifests.contains(d))
                    .cloned(),
            );
            record.repo_tags = tags;
            record.repo_digests = digests;
            record.manifests = manifests;
            record.pinned = old.pinned;
        }
        for other in &losing_tags {
            self.write_record(other).await?;
        }
        self.write_record(&record).await?;
        let mut records = write(&self.records);
        for other in losing_tags {
            records.insert(other.id.clone(), other);
        }
        records.insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Atomically replaces `images/<hex>.json`.
    async fn write_record(&self, record: &ImageRecord) -> Result<(), ImageError> {
        let path = self.layout.record_path(&record.id)?;
        let data = serde_json::to_vec_pretty(record).map_err(|e| ImageError::Corrupt {
            context: format!("serializing record of {}", record.id),
            message: e.to_string(),
        })?;
        let temp = TempPath::new(self.layout.temp_path("record"));
        write_file_synced(temp.path(), &data).await?;
        tokio::fs::rename(temp.path(), &path)
            .await
            .ctx(|| format!("writing {}", path.display()))?;
        temp.keep();
        // Make the rename itself durable.
        if let Ok(dir) = tokio::fs::File::open(&self.layout.images).await {
            let _ = dir.sync_all().await;
        }
        Ok(())
    }

    // ----- removal -----

    /// Deletes the layers and blobs of `removed` that no remaining record
    /// references and no running pull has pinned.
    async fn collect_garbage(&self, removed: &ImageRecord) {
        let layers = removed.layers.iter().map(|l| l.diff_id.clone()).collect();
        self.collect_unreferenced(&removed.id, layers, record_blobs(removed))
            .await;
    }

    /// Deletes those of `layers` (diff_ids) and `blobs` (digests) that no
    /// record references and no running pull has pinned. Callers hold the
    /// commit lock, so the records cannot change meanwhile.
    async fn collect_unreferenced(&self, image: &str, layers: Vec<String>, blobs: Vec<String>) {
        let (used_layers, used_blobs) = {
            let records = read(&self.records);
            let mut layers = HashSet::new();
            let mut blobs = HashSet::new();
            for r in records.values() {
                layers.extend(r.layers.iter().map(|l| l.diff_id.clone()));
                blobs.extend(record_blobs(r));
            }
            (layers, blobs)
        };
        let mut doomed: Vec<PathBuf> = Vec::new();
        {
            let pins = lock(&self.pins);
            let candidates = layers
                .into_iter()
                .filter(|l| !used_layers.contains(l))
                .map(|l| (format!("layer:{l}"), self.layout.layer_path(&l)))
                .chain(
                    blobs
                        .into_iter()
                        .filter(|b| !used_blobs.contains(b))
                        .map(|b| (format!("blob:{b}"), self.layout.blob_path(&b))),
                )
                .collect::<BTreeMap<_, _>>();
            for (key, path) in candidates {
                let Ok(path) = path else { continue };
                if pins.contains_key(&key) {
                    debug!(content = %key, "kept: in use by a running pull");
                    continue;
                }
                // Renamed while the pins lock is held: a pull either pinned
                // it before (and we skip it) or will find it absent.
                let trash = self.layout.temp_path("gc");
                match std::fs::rename(&path, &trash) {
                    Ok(()) => doomed.push(trash),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => warn!(path = %path.display(), error = %e, "cannot remove content"),
                }
            }
        }
        let count = doomed.len();
        let result = tokio::task::spawn_blocking(move || {
            for path in doomed {
                remove_path_sync(&path);
            }
        })
        .await;
        if let Err(e) = result {
            warn!(error = %e, "garbage collection task failed");
        }
        debug!(image, removed = count, "garbage collected image content");
    }

    // ----- locks and pins -----

    async fn lock_key(&self, key: String) -> KeyGuard<'_> {
        let mutex = lock(&self.locks).entry(key.clone()).or_default().clone();
        let guard = mutex.clone().lock_owned().await;
        KeyGuard {
            manager: self,
            key,
            mutex,
            guard: Some(guard),
        }
    }

    fn pin(&self, keys: Vec<String>) -> PinGuard<'_> {
        let keys: BTreeSet<String> = keys.into_iter().collect();
        let mut pins = lock(&self.pins);
        for key in &keys {
            *pins.entry(key.clone()).or_default() += 1;
        }
        PinGuard {
            manager: self,
            keys,
        }
    }
}

/// Removes a pull's in-flight entry when the pull task ends.
struct InflightEntry<'a> {
    manager: &'a ImageManager,
    key: String,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        lock(&self.manager.inflight).remove(&self.key);
    }
}

/// Holds a per-key lock; forgets the key's mutex when nobody else wants it.
struct KeyGuard<'a> {
    manager: &'a ImageManager,
    key: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = lock(&self.manager.locks);
        // One reference in the map, one here: no one else holds or waits.
        if Arc::strong_count(&self.mutex) == 2 {
            locks.remove(&self.key);
        }
    }
}

/// Keeps content pinned for the duration of a pull.
struct PinGuard<'a> {
    manager: &'a ImageManager,
    keys: BTreeSet<String>,
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        let mut pins = lock(&self.manager.pins);
        for key in &self.keys {
            if let Some(n) = pins.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(key);
                }
            }
        }
    }
}

/// Content a pull attempt stored or meant to store.
#[derive(Debug, Default)]
struct Touched {
    layers: Vec<String>,
    blobs: Vec<String>,
}

/// Blobs a record references: manifest, index, config and layer blobs.
fn record_blobs(r: &ImageRecord) -> Vec<String> {
    let mut out = vec![r.manifest_digest.clone(), r.id.clone()];
    out.extend(r.index_digest.clone());
    out.extend(r.manifests.iter().cloned());
    out.extend(r.layers.iter().map(|l| l.digest.clone()));
    out.sort();
    out.dedup();
    out
}

fn descriptor_size(desc: &OciDescriptor) -> Result<u64, ImageError> {
    u64::try_from(desc.size).map_err(|_| ImageError::UnsupportedManifest {
        reference: desc.digest.clone(),
        reason: format!("negative size {}", desc.size),
    })
}

/// Unpacks a stored layer blob into `tmp/`, checks its diff_id, and renames
/// it into `layers/sha256/<hex>`. The temporary directory is removed on any
/// failure.
fn unpack_into_store(
    blob_path: &Path,
    compression: Compression,
    temp: PathBuf,
    layer_path: &Path,
    layer: &LayerRecord,
    options: &UnpackOptions,
    (limits, image): (&PullLimits, &str),
) -> Result<(), ImageError> {
    let temp = TempPath::new(temp);
    std::fs::create_dir(temp.path()).ctx(|| format!("creating {}", temp.path().display()))?;
    let file = std::fs::File::open(blob_path).ctx(|| format!("opening {}", blob_path.display()))?;
    let reader = std::io::BufReader::with_capacity(256 * 1024, file);
    // Decompressed here so the unpacked bytes are counted against the limits.
    let exceeded = Arc::new(Exceeded::default());
    let reader = limits
        .decompressed(reader, compression, exceeded.clone())
        .map_err(|e| ImageError::Layer {
            digest: layer.digest.clone(),
            source: Arc::new(LayerError::Archive {
                context: "starting the decompressor".into(),
                source: e,
            }),
        })?;
    let unpacked = unpack_layer(reader, Compression::None, temp.path(), options).map_err(|e| {
        limits
            .error(layer, image, &exceeded)
            .unwrap_or_else(|| ImageError::Layer {
                digest: layer.digest.clone(),
                source: Arc::new(e),
            })
    })?;
    if unpacked.diff_id != layer.diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest: layer.digest.clone(),
            expected: layer.diff_id.clone(),
            actual: unpacked.diff_id,
        });
    }
    std::fs::rename(temp.path(), layer_path)
        .ctx(|| format!("moving layer into {}", layer_path.display()))?;
    temp.keep();
    Ok(())
}

/// Loads every `images/*.json`; unreadable records are skipped with a warning
/// (one bad file must not take the whole daemon down).
async fn load_records(layout: &StoreLayout) -> Result<BTreeMap<String, ImageRecord>, ImageError> {
    let mut out = BTreeMap::new();
    let mut dir = tokio::fs::read_dir(&layout.images)
        .await
        .ctx(|| format!("reading {}", layout.images.display()))?;
    while let Some(entry) = dir
        .next_entry()
        .await
        .ctx(|| format!("reading {}", layout.images.display()))?
    {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let data = match tokio::fs::read(&path).await {
            Ok(data) => data,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read image record; skipped");
                continue;
            }
        };
        let record: ImageRecord = match serde_json::from_slice(&data) {
            Ok(record) => record,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "invalid image record; skipped");
                continue;
            }
        };
        let expected = layout.record_path(&record.id).ok();
        if expected.as_deref() != Some(path.as_path()) {
            warn!(path = %path.display(), id = %record.id, "image record under the wrong name; skipped");
            continue;
        }
        let missing: Vec<&str> = record
            .layers
            .iter()
            .filter(|l| {
                layout
                    .layer_path(&l.diff_id)
                    .map(|p| !p.is_dir())
                    .unwrap_or(true)
            })
            .map(|l| l.diff_id.as_str())
            .collect();
        if !missing.is_empty() {
            warn!(image = %record.id, missing = ?missing, "image record has missing layers; skipped");
            continue;
        }
        out.insert(record.id.clone(), record);
    }
    Ok(out)
}

/// Removes everything inside `dir`.
fn clear_dir(dir: &Path) -> Result<(), ImageError> {
    for entry in std::fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
        let entry = entry.ctx(|| format!("reading {}", dir.display()))?;
        remove_path_sync(&entry.path());
    }
    Ok(())
}

/// Allocated bytes and inode count of a tree, without following symlinks
/// and counting hard-linked files once. Entries vanishing during the walk
/// (concurrent removal) are ignored.
fn disk_usage(root: &Path) -> Result<(u64, u64), ImageError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path != root => continue,
            Err(e) => return Err(ImageError::io(format!("stat {}", path.display()), e)),
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        bytes += meta.blocks() * 512;
        inodes += 1;
        if meta.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(format!("reading {}", path.display()), e)),
            }
        }
    }
    Ok((bytes, inodes))
}

impl std::fmt::Debug for ImageManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageManager")
            .field("root", &self.layout.root)
            .field("images", &read(&self.records).len())
            .finish_non_exhaustive()
    }
}

/// The record `image_ref` names, trying what a short name stands for in
/// order (aliases, search registries; see [`PullSettings::candidates`]).
fn find_candidate<'a>(
    records: impl IntoIterator<Item = &'a ImageRecord> + Clone,
    image_ref: &str,
    settings: &PullSettings,
) -> Result<(&'a ImageRecord, Lookup), ImageError> {
    for (name, registry) in settings.candidates(image_ref) {
        match find_with_lookup(records.clone(), &name, &registry) {
            Err(ImageError::NotFound(_)) => continue,
            other => return other,
        }
    }
    Err(ImageError::NotFound(image_ref.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryConfig;

    fn config(root: &Path) -> Config {
        Config {
            root: root.to_path_buf(),
            ..Config::default()
        }
    }

    fn layer(diff: char, blob: char) -> LayerRecord {
        LayerRecord {
            digest: format!("sha256:{}", blob.to_string().repeat(64)),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 10,
            diff_id: format!("sha256:{}", diff.to_string().repeat(64)),
        }
    }

    fn record(id: char, tags: &[&str], layers: Vec<LayerRecord>) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{}", id.to_string().repeat(64)),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: Vec::new(),
            size: 0,
            uid: None,
            username: String::new(),
            pinned: false,
            manifest_digest: format!("sha256:{}", "e".repeat(64)),
            index_digest: None,
            manifests: Vec::new(),
            layers,
            config: ImageConfig::default(),
            pulled_at: String::new(),
        }
    }

    /// Creates the on-disk content a record references.
    fn materialize(m: &ImageManager, r: &ImageRecord) {
        for l in &r.layers {
            let p = m.layout.layer_path(&l.diff_id).unwrap();
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("file"), b"x").unwrap();
            std::fs::write(m.layout.blob_path(&l.digest).unwrap(), b"blob").unwrap();
        }
        std::fs::write(m.layout.blob_path(&r.id).unwrap(), b"{}").unwrap();
        std::fs::write(m.layout.blob_path(&r.manifest_digest).unwrap(), b"{}").unwrap();
    }

    struct Users(Vec<String>);
    impl ImageUsage for Users {
        fn users_of(&self, _image_id: &str) -> Vec<String> {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_tmp_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let m = ImageManager::open(&config(dir.path())).await.unwrap();
        let r = record(
            'a',
            &["docker.io/library/busybox:latest"],
            vec![layer('1', '2')],
        );
        materialize(&m, &r);
        m.commit_record(r.clone()).await.unwrap();
        std::fs::create_dir(m.layout.tmp.join("leftover")).unwrap();
        drop(m);

        let m = ImageManager::open(&config(dir.path())).await.unwrap();
        assert_eq!(m.status("busybox").unwrap(), r);
        assert_eq!(std::fs::read_dir(&m.layout.tmp).unwrap().count(), 0);
        assert_eq!(
            m.layer_dirs(&r.id).unwrap(),
            vec![m.layout.layers.join("1".repeat(64))]
        );
    }

    #[tokio::test]
    async fn tags_move_to_the_newest_image_and_merge_on_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let m = ImageManager::open(&config(dir.path())).await.unwrap();
        let old = record('a', &["docker.io/library/busybox:latest"], vec![]);
        let new = record('b', &["docker.io/library/busybox:latest"], vec![]);
        m.commit_record(old.clone()).await.unwrap();
        m.commit_record(new.clone()).await.unwrap();
        assert_eq!(m.status("busybox").unwrap().id, new.id);
        assert!(m.status(&old.id).unwrap().repo_tags.is_empty());
        let again = record('b', &["docker.io/library/busybox:1"], vec![]);
        let merged = m.commit_record(again).await.unwrap();
        assert_eq!(
            merged.repo_tags,
            vec![
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:1"
            ]
        );
        assert_eq!(m.list(None).len(), 2);
        assert_eq!(m.list(Some("busybox:1")).len(), 1);
        assert_eq!(m.list(Some("nope")).len(), 0);
        assert_eq!(m.list(Some("")).len(), 2);
    }

    #[tokio::test]
    async fn remove_deletes_only_unshared_content_and_respects_usage() {
        let dir = tempfile::tempdir().unwrap();
        let m = ImageManager::open(&config(dir.path())).await.unwrap();
        let a = record(
            'a',
            &["docker.io/library/a:latest"],
            vec![layer('1', '2'), layer('3', '4')],
        );
        let mut b = record('b', &["docker.io/library/b:latest"], vec![layer('1', '2')]);
        b.manifest_digest = format!("sha256:{}", "f".repeat(64));
        for r in [&a, &b] {
            materialize(&m, r);
            m.commit_record(r.clone()).await.unwrap();
        }

        m.set_usage(Arc::new(Users(vec!["c1".into()])));
        let err = m.remove("a").await.unwrap_err();
        assert!(matches!(err, ImageError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains("c1"));
        m.set_usage(Arc::new(Users(Vec::new())));

        m.remove("a").await.unwrap();
        assert!(m.status("a").is_none());
        assert!(!m.layout.record_path(&a.id).unwrap().exists());
        // Shared layer kept, private layer and blobs gone.
        assert!(
            m.layout
                .layer_path(&layer('1', '2').diff_id)
                .unwrap()
                .exists()
        );
        assert!(
            !m.layout
                .layer_path(&layer('3', '4').diff_id)
                .unwrap()
                .exists()
        );
        assert!(
            !m.layout
                .blob_path(&layer('3', '4').digest)
                .unwrap()
                .exists()
        );
        assert!(
            m.layout
                .blob_path(&layer('1', '2').digest)
                .unwrap()
                .exists()
        );
        assert!(!m.layout.blob_path(&a.id).unwrap().exists());
        assert!(!m.layout.blob_path(&a.manifest_digest).unwrap().exists());
        assert_eq!(std::fs::read_dir(&m.layout.tmp).unwrap().count(), 0);
        assert!(matches!(m.remove("a").await, Err(ImageError::NotFound(_))));
    }

    #[tokio::test]
    async fn pinned_content_survives_removal() {
        let dir = tempfile::tempdir().unwrap();
        let m = ImageManager::open(&config(dir.path())).await.unwrap();
        let a = record('a', &["docker.io/library/a:latest"], vec![layer('1', '2')]);
        materialize(&m, &a);
        m.commit_record(a.clone()).await.unwrap();
        let pin = m.pin(vec![format!("layer:{}", a.layers[0].diff_id)]);
        m.remove(&a.id).await.unwrap();
        assert!(m.layout.layer_path(&a.layers[0].diff_id).unwrap().exists());
        drop(pin);
        assert!(lock(&m.pins).is_empty());
    }

    #[tokio::test]
    async fn removing_one_of_several_tags_untags() {
        let dir = tempfile::tempdir().unwrap();
        let m = ImageManager::open(&config(dir.path())).await.unwrap();
        let a = record(
            'a',
            &["docker.io/library/a:1", "docker.io/library/a:2"],
            vec![],
        );
        m.commit_record(a.clone()).await.unwrap();
        m.remove("a:1").await.unwrap();
        assert_eq!(
            m.status(&a.id).unwrap().repo_tags,
            vec!["docker.io/library/a:2"]
        );
        m.remove("a:2").await.unwrap();
        assert!(m.status(&a.id).is_none());
    }

    #[tokio::test]
    async fn blocked_registry_without_mirrors_fails_before_any_network() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.registries.push(RegistryConfig {
            prefix: "docker.io".into(),
            location: None,
            insecure: false,
            mirrors: Vec::new(),
            blocked: true,
            mirror_by_digest_only: false,
        });
        let m = ImageManager::open(&c).await.unwrap();
        let err = m.pull("busybox", None, None).await.unwrap_err();
        assert!(matches!(err, ImageError::Blocked { .. }), "{err:?}");
        let err = m.pull("UPPER", None, None).await.unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidReference { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn fs_usage_counts_files() {
        let dir = tempfile::tempdir().unwrap();
        let m = ImageManager::open(&config(dir.path())).await.unwrap();
        let before = m.fs_usage().await.unwrap();
        std::fs::write(m.layout.blobs.join("x"), vec![1u8; 64 * 1024]).unwrap();
        let after = m.fs_usage().await.unwrap();
        assert_eq!(after.inodes_used, before.inodes_used + 1);
        assert!(after.used_bytes >= before.used_bytes + 64 * 1024);
        assert_eq!(after.mountpoint, dir.path());
    }
}
