//! On-disk layout of the image store and the content-addressed blob store.
//!
//! Everything new is first written under `tmp/` (same filesystem as the
//! store) and renamed into place only once verified, so a crash or a failed
//! pull never leaves partial content where readers look for it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::error::{ImageError, IoContext};
use super::reference::is_sha256_digest;

/// Paths of the store under `config.root`.
#[derive(Debug, Clone)]
pub struct StoreLayout {
    pub root: PathBuf,
    pub blobs: PathBuf,
    pub layers: PathBuf,
    pub images: PathBuf,
    pub tmp: PathBuf,
}

impl StoreLayout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            blobs: root.join("blobs").join("sha256"),
            layers: root.join("layers").join("sha256"),
            images: root.join("images"),
            tmp: root.join("tmp"),
        }
    }

    /// Every directory of the store, parents first (all root-only).
    pub fn private_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for dir in [&self.blobs, &self.layers] {
            if let Some(parent) = dir.parent() {
                dirs.push(parent.to_path_buf());
            }
            dirs.push(dir.clone());
        }
        dirs.push(self.images.clone());
        dirs.push(self.tmp.clone());
        dirs
    }

    /// `blobs/sha256/<hex>` for `sha256:<hex>`.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    /// `layers/sha256/<hex>` for the diff_id `sha256:<hex>`.
    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.layers.join(digest_hex(diff_id)?))
    }

    /// `images/<hex>.json` for the image id `sha256:<hex>`.
    pub fn record_path(&self, image_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.images.join(format!("{}.json", digest_hex(image_id)?)))
    }

    /// A fresh, unused path under `tmp/` (not created).
    pub fn temp_path(&self, kind: &str) -> PathBuf {
        self.tmp.join(unique_name(kind))
    }
}

/// The hex part of a `sha256:<hex>` digest; anything else is rejected so a
/// digest from a registry can never name a path outside the store.
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    if is_sha256_digest(digest) {
        Ok(&digest["sha256:".len()..])
    } else {
        Err(ImageError::InvalidReference {
            reference: digest.to_string(),
            reason: "not a sha256 digest".to_string(),
        })
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A name unique within this store: pid, time and a process-wide counter.
pub fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{kind}-{}-{nanos:x}-{n}", std::process::id())
}

/// A file or directory under `tmp/` that is removed when dropped unless
/// [`TempPath::keep`] was called (after it has been renamed into place).
#[derive(Debug)]
pub struct TempPath {
    path: Option<PathBuf>,
}

impl TempPath {
    pub fn new(path: PathBuf) -> Self {
        Self { path: Some(path) }
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The content has been moved away; nothing to clean up.
    pub fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            remove_path_sync(&path);
        }
    }
}

/// Removes a file or directory tree, ignoring "not found"; failures are
/// logged because callers are already on an error or cleanup path.
pub fn remove_path_sync(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove temporary path");
    }
}

/// What a blob must hash to and how long it must be.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub digest: &'a str,
    pub size: u64,
}

/// Streams `stream` into `tmp/`, hashing and counting as it goes, and renames
/// it to `blobs/sha256/<hex>` only if both digest and size match `expected`.
/// On any failure the temporary file is removed and nothing is stored.
/// Stops reading as soon as the stream exceeds the expected size, so a
/// misbehaving registry cannot fill the disk.
#[cfg(test)]
pub async fn store_blob_stream<S>(
    layout: &StoreLayout,
    expected: Expected<'_>,
    stream: S,
) -> Result<PathBuf, ImageError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    store_blob_stream_watched(layout, expected, stream, &Watch::default()).await
}

/// How often a download's progress is logged.
pub const PROGRESS_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Who is downloading a blob, for progress logging and the stall timeout.
#[derive(Debug, Clone, Default)]
pub struct Watch<'a> {
    /// The image being pulled (logged with the progress).
    pub image: &'a str,
    /// Where the blob comes from (named in the stall error).
    pub endpoint: String,
    /// Abort when no bytes arrive for this long (`None`: wait forever).
    pub stall: Option<std::time::Duration>,
    /// Where the bytes received so far are counted for ImageStatus.
    pub progress: Option<std::sync::Arc<super::progress::PullProgress>>,
}

/// [`store_blob_stream`] that logs progress every [`PROGRESS_LOG_INTERVAL`]
/// and fails with [`ImageError::Stalled`] when `watch.stall` passes without
/// a byte.
pub async fn store_blob_stream_watched<S>(
    layout: &StoreLayout,
    expected: Expected<'_>,
    mut stream: S,
    watch: &Watch<'_>,
) -> Result<PathBuf, ImageError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    let final_path = layout.blob_path(expected.digest)?;
    let temp = TempPath::new(layout.temp_path("blob"));
    let mut file = tokio::fs::File::create(temp.path())
        .await
        .ctx(|| format!("creating {}", temp.path().display()))?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let started = tokio::time::Instant::now();
    let mut last_log = started;
    loop {
        let next = match watch.stall {
            Some(stall) => match tokio::time::timeout(stall, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(ImageError::Stalled {
                        what: format!("blob {}", expected.digest),
                        endpoint: watch.endpoint.clone(),
                        seconds: stall.as_secs(),
                        received: written,
                    });
                }
            },
            None => stream.next().await,
        };
        let Some(chunk) = next else { break };
        if !watch.image.is_empty() && last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            last_log = tokio::time::Instant::now();
            tracing::info!(
                image = watch.image,
                digest = expected.digest,
                received = written,
                size = expected.size,
                elapsed_s = started.elapsed().as_secs(),
                "pull progress"
            );
        }
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                // oci-client's own verification reports a mismatch as a stream
                // error at the end; we hashed every byte too, so report the
                // mismatch in our own words when that is what happened.
                if written == expected.size {
                    let actual = format!("sha256:{}", hex::encode(hasher.clone().finalize()));
                    if actual != expected.digest {
                        return Err(mismatch(expected.digest, actual));
                    }
                }
                return Err(ImageError::io(
                    format!("reading blob {}", expected.digest),
                    e,
                ));
            }
        };
        written += chunk.len() as u64;
        if let Some(progress) = &watch.progress {
            progress.update(expected.digest, written, expected.size);
        }
        if written > expected.size {
            return Err(ImageError::SizeMismatch {
                digest: expected.digest.to_string(),
                expected: expected.size,
                actual: written,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .ctx(|| format!("writing {}", temp.path().display()))?;
    }
    if written != expected.size {
        return Err(ImageError::SizeMismatch {
            digest: expected.digest.to_string(),
            expected: expected.size,
            actual: written,
        });
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != expected.digest {
        return Err(mismatch(expected.digest, actual));
    }
    file.sync_all()
        .await
        .ctx(|| format!("syncing {}", temp.path().display()))?;
    drop(file);
    tokio::fs::rename(temp.path(), &final_path)
        .await
        .ctx(|| format!("moving blob into {}", final_path.display()))?;
    temp.keep();
    Ok(final_path)
}

/// Stores bytes already in memory (manifests fetched whole) after checking
/// they hash to `digest`.
pub async fn store_blob_bytes(
    layout: &StoreLayout,
    digest: &str,
    data: &[u8],
) -> Result<PathBuf, ImageError> {
    let actual = sha256_digest(data);
    if actual != digest {
        return Err(mismatch(digest, actual));
    }
    let final_path = layout.blob_path(digest)?;
    if tokio::fs::try_exists(&final_path).await.unwrap_or(false) {
        return Ok(final_path);
    }
    let temp = TempPath::new(layout.temp_path("blob"));
    write_file_synced(temp.path(), data).await?;
    tokio::fs::rename(temp.path(), &final_path)
        .await
        .ctx(|| format!("moving blob into {}", final_path.display()))?;
    temp.keep();
    Ok(final_path)
}

/// Writes `data` to `path` and fsyncs it.
pub async fn write_file_synced(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .ctx(|| format!("creating {}", path.display()))?;
    file.write_all(data)
        .await
        .ctx(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .await
        .ctx(|| format!("syncing {}", path.display()))?;
    Ok(())
}

fn mismatch(expected: &str, actual: String) -> ImageError {
    ImageError::DigestMismatch {
        what: format!("blob {expected}"),
        expected: expected.to_string(),
        actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, StoreLayout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(dir.path());
        for d in [&layout.blobs, &layout.layers, &layout.images, &layout.tmp] {
            std::fs::create_dir_all(d).unwrap();
        }
        (dir, layout)
    }

    fn chunks(data: &'static [u8]) -> impl Stream<Item = io::Result<Bytes>> + Unpin {
        futures::stream::iter(data.chunks(3).map(|c| Ok(Bytes::from_static(c))))
    }

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test]
    async fn good_blob_is_stored_under_its_digest() {
        let (_dir, layout) = layout();
        let data: &'static [u8] = b"hello blob store";
        let digest = sha256_digest(data);
        let path = store_blob_stream(
            &layout,
            Expected {
                digest: &digest,
                size: data.len() as u64,
            },
            chunks(data),
        )
        .await
        .unwrap();
        assert_eq!(path, layout.blobs.join(&digest[7..]));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert_eq!(entries(&layout.tmp), 0);
    }

    #[tokio::test]
    async fn bad_digest_is_rejected_and_nothing_is_kept() {
        let (_dir, layout) = layout();
        let data: &'static [u8] = b"corrupted content";
        let claimed = sha256_digest(b"original content!");
        let err = store_blob_stream(
            &layout,
            Expected {
                digest: &claimed,
                size: data.len() as u64,
            },
            chunks(data),
        )
        .await
        .unwrap_err();
        match &err {
            ImageError::DigestMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &claimed);
                assert_eq!(actual, &sha256_digest(data));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains(&claimed), "{err}");
        assert_eq!(entries(&layout.tmp), 0, "temp file left behind");
        assert_eq!(entries(&layout.blobs), 0, "corrupt blob stored");
    }

    #[tokio::test]
    async fn oversized_and_short_blobs_are_rejected() {
        let (_dir, layout) = layout();
        let data: &'static [u8] = b"0123456789";
        let digest = sha256_digest(data);
        let err = store_blob_stream(
            &layout,
            Expected {
                digest: &digest,
                size: 4,
            },
            chunks(data),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ImageError::SizeMismatch { expected: 4, .. }),
            "{err:?}"
        );
        let err = store_blob_stream(
            &layout,
            Expected {
                digest: &digest,
                size: 20,
            },
            chunks(data),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ImageError::SizeMismatch { actual: 10, .. }),
            "{err:?}"
        );
        assert_eq!(entries(&layout.tmp), 0);
        assert_eq!(entries(&layout.blobs), 0);
    }

    #[tokio::test]
    async fn stream_errors_leave_nothing() {
        let (_dir, layout) = layout();
        let digest = sha256_digest(b"abcdef");
        let stream = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("connection reset")),
        ]);
        let err = store_blob_stream(
            &layout,
            Expected {
                digest: &digest,
                size: 6,
            },
            stream,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert_eq!(entries(&layout.tmp), 0);
        assert_eq!(entries(&layout.blobs), 0);
    }

    #[tokio::test]
    async fn bytes_are_verified_too() {
        let (_dir, layout) = layout();
        let err = store_blob_bytes(&layout, &sha256_digest(b"x"), b"y")
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }));
        assert_eq!(entries(&layout.blobs), 0);
        store_blob_bytes(&layout, &sha256_digest(b"x"), b"x")
            .await
            .unwrap();
        assert_eq!(entries(&layout.blobs), 1);
    }

    #[test]
    fn digests_cannot_name_paths_outside_the_store() {
        let layout = StoreLayout::new(Path::new("/var/lib/crius"));
        assert!(layout.blob_path("sha256:../../etc/passwd").is_err());
        assert!(layout.layer_path("sha512:abcd").is_err());
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            layout.record_path(&d).unwrap(),
            Path::new("/var/lib/crius/images").join(format!("{}.json", "b".repeat(64)))
        );
    }
}
