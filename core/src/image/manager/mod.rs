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
use super::progress::{BlobProgress, PullProgress};
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

mod fetch;
mod records;
#[cfg(test)]
mod tests;

use records::*;

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

/// The slots of `image.max_concurrent_pulls` (`None` for 0: no limit).
fn pull_slots(limit: usize) -> (usize, Option<Arc<tokio::sync::Semaphore>>) {
    (
        limit,
        (limit > 0).then(|| Arc::new(tokio::sync::Semaphore::new(limit))),
    )
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
    /// What each running pull downloaded so far, by normalized name.
    progress: Mutex<HashMap<String, Arc<PullProgress>>>,
    /// `image.max_concurrent_pulls` and the slots it gives (`None`: no
    /// limit); replaced on reload, held by each running pull.
    pull_slots: RwLock<(usize, Option<Arc<tokio::sync::Semaphore>>)>,
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
            progress: Mutex::new(HashMap::new()),
            pull_slots: RwLock::new(pull_slots(config.image.max_concurrent_pulls)),
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
        let limit_changed = {
            let mut slots = write(&self.pull_slots);
            let changed = slots.0 != config.image.max_concurrent_pulls;
            if changed {
                *slots = pull_slots(config.image.max_concurrent_pulls);
            }
            changed
        };
        let new = PullSettings::from_config(config);
        let mut settings = write(&self.settings);
        if **settings == new {
            return limit_changed;
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

    /// A slot of `image.max_concurrent_pulls` for the pull of `name`,
    /// waited for (and said so in the log) when all are taken.
    async fn pull_slot(&self, name: &ImageName) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slots = read(&self.pull_slots).1.clone()?;
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        info!(image = %name, "waiting for a pull slot (image.max_concurrent_pulls)");
        // The semaphore is never closed.
        slots.acquire_owned().await.ok()
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
                        // Pulls of one name under two policies count into one
                        // entry (the same blobs).
                        let progress = lock(&me.progress)
                            .entry(name.to_string())
                            .or_default()
                            .clone();
                        // Forgets the in-flight entry even if the pull panics,
                        // so later pulls start afresh.
                        let _done = InflightEntry {
                            manager: &me,
                            key: task_key,
                            progress_key: name.to_string(),
                            progress,
                        };
                        let _slot = me.pull_slot(&name).await;
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

    /// The progress of the running pull of `image` (as ImageStatus names
    /// it: short names are tried in the search registries as a pull does).
    pub fn pull_progress(&self, image: &str) -> Option<Vec<BlobProgress>> {
        let settings = self.settings();
        let progress = lock(&self.progress);
        settings
            .candidates(image)
            .iter()
            .find_map(|(name, registry)| {
                let name = ImageName::parse(name, registry).ok()?;
                progress.get(&name.to_string()).map(|p| p.snapshot())
            })
    }

    /// Where the pull of `image` (a normalized name) counts its bytes.
    pub(super) fn progress_of(&self, image: &str) -> Option<Arc<PullProgress>> {
        lock(&self.progress).get(image).cloned()
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
