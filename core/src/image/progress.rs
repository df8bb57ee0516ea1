//! What a running pull has downloaded so far, per blob: kept while the
//! pull runs and shown in ImageStatus's verbose info (`pullProgress`) for
//! the image being pulled, which is how `criusctl pull` draws its progress
//! (the CRI's PullImage is one unary call and carries none).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// One blob of a pull: bytes received of its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobProgress {
    pub digest: String,
    pub received: u64,
    pub size: u64,
}

/// The blobs of one pull, in the order of their digests.
#[derive(Debug, Default)]
pub struct PullProgress {
    blobs: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl PullProgress {
    pub fn update(&self, digest: &str, received: u64, size: u64) {
        let mut blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        match blobs.get_mut(digest) {
            Some(entry) => *entry = (received, size),
            None => {
                blobs.insert(digest.to_string(), (received, size));
            }
        }
    }

    pub fn snapshot(&self) -> Vec<BlobProgress> {
        let blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        blobs
            .iter()
            .map(|(digest, (received, size))| BlobProgress {
                digest: digest.clone(),
                received: *received,
                size: *size,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_blob_keeps_its_latest_count() {
        let p = PullProgress::default();
        p.update("sha256:b", 10, 100);
        p.update("sha256:a", 0, 5);
        p.update("sha256:b", 60, 100);
        assert_eq!(
            p.snapshot(),
            [
                BlobProgress {
                    digest: "sha256:a".into(),
                    received: 0,
                    size: 5
                },
                BlobProgress {
                    digest: "sha256:b".into(),
                    received: 60,
                    size: 100
                },
            ]
        );
    }
}
