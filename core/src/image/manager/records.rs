//! Image records on disk, their commits and removals, and the garbage
//! collection of content no record references.

use super::*;

impl ImageManager {
    /// Writes a freshly pulled record, merging it with an existing record of
    /// the same image and moving its tags away from any other image.
    pub(super) async fn commit_record(
        &self,
        mut record: ImageRecord,
    ) -> Result<ImageRecord, ImageError> {
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
            record.repo_tags = merged(&old.repo_tags, &record.repo_tags);
            record.repo_digests = merged(&old.repo_digests, &record.repo_digests);
            record.manifests = merged(&old.manifests, &record.manifests);
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
    pub(super) async fn write_record(&self, record: &ImageRecord) -> Result<(), ImageError> {
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
    pub(super) async fn collect_garbage(&self, removed: &ImageRecord) {
        let layers = removed.layers.iter().map(|l| l.diff_id.clone()).collect();
        self.collect_unreferenced(&removed.id, layers, record_blobs(removed))
            .await;
    }

    /// Deletes those of `layers` (diff_ids) and `blobs` (digests) that no
    /// record references and no running pull has pinned. Callers hold the
    /// commit lock, so the records cannot change meanwhile.
    pub(super) async fn collect_unreferenced(
        &self,
        image: &str,
        layers: Vec<String>,
        blobs: Vec<String>,
    ) {
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
                // blocking-ok: one rename inside the store, which must happen
                // under the pins lock (a sync lock, never held across an
                // await); the slow deletion runs on the blocking pool below.
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

    /// The content of the store under `config.root` that no image record
    /// references — unpacked layers (`true`) and blobs (`false`) — and the
    /// store's temporary entries (as blobs), for `crius check --leftovers`.
    /// Reads only; an absent store has none.
    pub async fn unreferenced_content(config: &Config) -> Result<Vec<(bool, PathBuf)>, ImageError> {
        let layout = StoreLayout::new(&config.root);
        if !tokio::fs::try_exists(&layout.images).await.unwrap_or(false) {
            return Ok(Vec::new());
        }
        let records = load_records(&layout).await?;
        let mut used = HashSet::new();
        for r in records.values() {
            for digest in r.layers.iter().map(|l| &l.diff_id) {
                used.extend(layout.layer_path(digest).ok());
            }
            for digest in record_blobs(r) {
                used.extend(layout.blob_path(&digest).ok());
            }
        }
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (is_layer, dir, all) in [
                (true, &layout.layers, false),
                (false, &layout.blobs, false),
                (false, &layout.tmp, true),
            ] {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if all || !used.contains(&path) {
                        out.push((is_layer, path));
                    }
                }
            }
            out.sort();
            out
        })
        .await
        .map_err(|e| ImageError::Internal(format!("listing the store: {e}")))
    }

    // ----- locks and pins -----

    pub(super) async fn lock_key(&self, key: String) -> KeyGuard<'_> {
        let mutex = lock(&self.locks).entry(key.clone()).or_default().clone();
        let guard = mutex.clone().lock_owned().await;
        KeyGuard {
            manager: self,
            key,
            mutex,
            guard: Some(guard),
        }
    }

    pub(super) fn pin(&self, keys: Vec<String>) -> PinGuard<'_> {
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
pub(super) struct InflightEntry<'a> {
    pub(super) manager: &'a ImageManager,
    pub(super) key: String,
    /// The pull's entry in `progress` (its normalized name), shared with
    /// any other pull of the name.
    pub(super) progress_key: String,
    pub(super) progress: std::sync::Arc<super::super::progress::PullProgress>,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        lock(&self.manager.inflight).remove(&self.key);
        let mut progress = lock(&self.manager.progress);
        // Only the map and this pull hold it: no other pull of the name is
        // still running, whose progress must stay visible.
        if progress
            .get(&self.progress_key)
            .is_some_and(|p| std::sync::Arc::ptr_eq(p, &self.progress))
            && std::sync::Arc::strong_count(&self.progress) <= 2
        {
            progress.remove(&self.progress_key);
        }
    }
}

/// Holds a per-key lock; forgets the key's mutex when nobody else wants it.
pub(super) struct KeyGuard<'a> {
    pub(super) manager: &'a ImageManager,
    pub(super) key: String,
    pub(super) mutex: Arc<tokio::sync::Mutex<()>>,
    pub(super) guard: Option<tokio::sync::OwnedMutexGuard<()>>,
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
pub(super) struct PinGuard<'a> {
    pub(super) manager: &'a ImageManager,
    pub(super) keys: BTreeSet<String>,
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
pub(super) struct Touched {
    pub(super) layers: Vec<String>,
    pub(super) blobs: Vec<String>,
}

/// Blobs a record references: manifest, index, config and layer blobs.
pub(super) fn record_blobs(r: &ImageRecord) -> Vec<String> {
    let mut out = vec![r.manifest_digest.clone(), r.id.clone()];
    out.extend(r.index_digest.clone());
    out.extend(r.manifests.iter().cloned());
    out.extend(r.layers.iter().map(|l| l.digest.clone()));
    out.sort();
    out.dedup();
    out
}

/// Loads every `images/*.json`; unreadable records are skipped with a warning
/// (one bad file must not take the whole daemon down).
pub(super) async fn load_records(
    layout: &StoreLayout,
) -> Result<BTreeMap<String, ImageRecord>, ImageError> {
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

/// `old` followed by what `new` adds to it: the record's earlier entries
/// keep their order.
fn merged(old: &[String], new: &[String]) -> Vec<String> {
    let mut out = old.to_vec();
    out.extend(new.iter().filter(|n| !old.contains(n)).cloned());
    out
}

/// Removes everything inside `dir`.
pub(super) fn clear_dir(dir: &Path) -> Result<(), ImageError> {
    for entry in std::fs::read_dir(dir).ctx(|| format!("reading {}", dir.display()))? {
        let entry = entry.ctx(|| format!("reading {}", dir.display()))?;
        remove_path_sync(&entry.path());
    }
    Ok(())
}

/// Allocated bytes and inode count of a tree (see
/// [`crate::fsusage::walk_usage`]), mounts below `root` included.
pub(super) fn disk_usage(root: &Path) -> Result<(u64, u64), ImageError> {
    crate::fsusage::walk_usage(root, false)
        .map_err(|e| ImageError::io(format!("{} {}", e.op, e.path.display()), e.source))
}
