//! Pulling: endpoints in order, the manifest, the trust decision, then
//! each blob and layer into the store under its per-digest lock.

use super::*;

impl ImageManager {
    // ----- pulling -----

    /// Tries each endpoint in order; the error of the last one is reported,
    /// naming every endpoint tried.
    pub(super) async fn pull_uncached(
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

    pub(super) async fn pull_from(
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
            crate::image::verify::verify_signatures(name, remote, &top.digest, decision).await?;
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

    pub(super) async fn store_image(
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
            preserve_ownership: nix::unistd::geteuid().is_root(),
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
    pub(super) async fn ensure_blob(
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
            progress: self.progress_of(image),
        };
        if let Some(progress) = &watch.progress {
            progress.update(&desc.digest, 0, size);
        }
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
    pub(super) async fn ensure_layer(
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
}

pub(super) fn descriptor_size(desc: &OciDescriptor) -> Result<u64, ImageError> {
    u64::try_from(desc.size).map_err(|_| ImageError::UnsupportedManifest {
        reference: desc.digest.clone(),
        reason: format!("negative size {}", desc.size),
    })
}

/// Unpacks a stored layer blob into `tmp/`, checks its diff_id, and renames
/// it into `layers/sha256/<hex>`. The temporary directory is removed on any
/// failure.
pub(super) fn unpack_into_store(
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
