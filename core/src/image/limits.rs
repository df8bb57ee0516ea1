//! Bounds on what a registry can make the store hold
//! (`image.max_layer_size`, `image.max_image_size`).
//!
//! Compressed sizes are checked against the manifest before anything is
//! downloaded (the blob download verifies the size it was told). Unpacked
//! sizes are counted on the decompressed tar stream while a layer is
//! unpacked: a few MiB of gzip can unpack to GiBs. The image total counts
//! the layers the pull unpacks itself (layers already in the store were
//! admitted by an earlier pull).

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::error::ImageError;
use super::layer::Compression;
use super::record::LayerRecord;

/// The limits of one pull.
#[derive(Debug, Clone)]
pub struct PullLimits {
    pub max_layer: u64,
    pub max_image: u64,
    /// Unpacked bytes of this pull so far, over all its layers.
    unpacked: Arc<AtomicU64>,
}

impl PullLimits {
    pub fn new(max_layer: u64, max_image: u64) -> Self {
        Self {
            max_layer,
            max_image,
            unpacked: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Refuses an image whose manifest already says it is too large.
    pub fn check_manifest(&self, image: &str, layers: &[LayerRecord]) -> Result<(), ImageError> {
        for layer in layers {
            if layer.size > self.max_layer {
                return Err(ImageError::TooLarge {
                    what: format!(
                        "layer {} of {image} ({} bytes compressed)",
                        layer.digest, layer.size
                    ),
                    limit_name: "image.max_layer_size",
                    limit: self.max_layer,
                });
            }
        }
        let total: u64 = layers.iter().map(|l| l.size).sum();
        if total > self.max_image {
            return Err(ImageError::TooLarge {
                what: format!("{image} ({total} bytes of compressed layers)"),
                limit_name: "image.max_image_size",
                limit: self.max_image,
            });
        }
        Ok(())
    }

    /// The decompressed stream of a layer blob, failing once it passes a
    /// limit; `exceeded` then names it.
    pub fn decompressed<'a, R: Read + 'a>(
        &self,
        reader: R,
        compression: Compression,
        exceeded: Arc<Exceeded>,
    ) -> std::io::Result<Box<dyn Read + 'a>> {
        let inner: Box<dyn Read + 'a> = match compression {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
        };
        Ok(Box::new(Counting {
            inner,
            layer: 0,
            limits: self.clone(),
            exceeded,
        }))
    }

    /// The error for what `exceeded` recorded, if anything.
    pub fn error(
        &self,
        layer: &LayerRecord,
        image: &str,
        exceeded: &Exceeded,
    ) -> Option<ImageError> {
        if exceeded.image.load(Ordering::SeqCst) {
            return Some(ImageError::TooLarge {
                what: format!("{image} (its layers unpack to more)"),
                limit_name: "image.max_image_size",
                limit: self.max_image,
            });
        }
        exceeded
            .layer
            .load(Ordering::SeqCst)
            .then(|| ImageError::TooLarge {
                what: format!("layer {} of {image} (it unpacks to more)", layer.digest),
                limit_name: "image.max_layer_size",
                limit: self.max_layer,
            })
    }
}

/// Which limit a layer's stream passed.
#[derive(Debug, Default)]
pub struct Exceeded {
    layer: AtomicBool,
    image: AtomicBool,
}

struct Counting<R> {
    inner: R,
    layer: u64,
    limits: PullLimits,
    exceeded: Arc<Exceeded>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.layer += n as u64;
        let total = self.limits.unpacked.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if self.layer > self.limits.max_layer {
            self.exceeded.layer.store(true, Ordering::SeqCst);
            return Err(std::io::Error::other("layer exceeds image.max_layer_size"));
        }
        if total > self.limits.max_image {
            self.exceeded.image.store(true, Ordering::SeqCst);
            return Err(std::io::Error::other("image exceeds image.max_image_size"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(size: u64) -> LayerRecord {
        LayerRecord {
            digest: format!("sha256:{size}"),
            media_type: String::new(),
            size,
            diff_id: String::new(),
        }
    }

    #[test]
    fn manifest_sizes_are_checked_per_layer_and_in_total() {
        let limits = PullLimits::new(10, 15);
        limits.check_manifest("i", &[layer(10), layer(5)]).unwrap();
        let err = limits.check_manifest("i", &[layer(11)]).unwrap_err();
        assert!(err.to_string().contains("image.max_layer_size"), "{err}");
        let err = limits
            .check_manifest("i", &[layer(10), layer(6)])
            .unwrap_err();
        assert!(err.to_string().contains("image.max_image_size"), "{err}");
    }

    #[test]
    fn unpacked_streams_are_counted() {
        let limits = PullLimits::new(100, 150);
        let exceeded = Arc::new(Exceeded::default());
        let data = [0u8; 101];
        let mut out = Vec::new();
        let err = limits
            .decompressed(&data[..], Compression::None, exceeded.clone())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(err.to_string().contains("max_layer_size"));
        assert!(limits.error(&layer(1), "i", &exceeded).is_some());

        // Two layers under the layer limit, over the image limit together.
        let limits = PullLimits::new(100, 150);
        let first = Arc::new(Exceeded::default());
        let mut r = limits
            .decompressed(&data[..80], Compression::None, first.clone())
            .unwrap();
        r.read_to_end(&mut out).unwrap();
        let second = Arc::new(Exceeded::default());
        let mut r = limits
            .decompressed(&data[..80], Compression::None, second.clone())
            .unwrap();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(limits.error(&layer(1), "i", &first).is_none());
        let err = limits.error(&layer(1), "i", &second).unwrap();
        assert!(err.to_string().contains("image.max_image_size"), "{err}");
    }
}
