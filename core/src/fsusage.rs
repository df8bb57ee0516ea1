//! Disk usage of directory trees (container writable layers, the image
//! store) and the filesystems holding them, cheaply enough to answer every
//! stats call.
//!
//! A tree's usage is a walk (allocated blocks and inodes, hard links once,
//! one filesystem only), which costs time proportional to the number of
//! files. [`UsageCache`] keeps the last walk per tree and answers from it:
//! a value younger than the TTL is returned as is; an older one is returned
//! too while one background walk refreshes it (stale-while-revalidate, as
//! containerd's snapshot usage syncer does). Only the first call for a tree
//! waits for a walk. So a stats call never walks, and each tree is walked
//! at most once per TTL, however many callers poll it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::path_io::PathIoError;

/// How long a walk's result is served before a refresh is started.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);

/// Allocated bytes and inodes of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub bytes: u64,
    pub inodes: u64,
    /// Unix nanoseconds of the walk.
    pub timestamp: i64,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

/// Walks `root`: allocated bytes (`st_blocks`) and inode count, without
/// following symlinks, counting hard-linked files once and not descending
/// into other filesystems (mounts below `root`). Entries that vanish during
/// the walk are ignored; a missing `root` is an error.
pub fn tree_usage(root: &Path) -> io::Result<DiskUsage> {
    let (bytes, inodes) = walk_usage(root, true).map_err(|e| e.source)?;
    Ok(DiskUsage {
        bytes,
        inodes,
        timestamp: now_ns(),
    })
}

/// Allocated bytes (`st_blocks`) and inode count of the tree at `root`,
/// without following symlinks and counting hard-linked files once; with
/// `one_filesystem`, mounts below `root` are not entered. Entries that
/// vanish during the walk (concurrent removal) are ignored; a missing
/// `root` is an error.
pub fn walk_usage(root: &Path, one_filesystem: bool) -> Result<(u64, u64), PathIoError> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::symlink_metadata(root)
        .map_err(PathIoError::of::<PathIoError>("stat", root))?
        .dev();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PathIoError::of("stat", &path)(e)),
        };
        if one_filesystem && meta.dev() != dev {
            continue;
        }
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        bytes += meta.blocks() * 512;
        inodes += 1;
        if meta.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(PathIoError::of("reading", &path)(e)),
            }
        }
    }
    Ok((bytes, inodes))
}

/// The mount point, in `mountinfo` text, of the filesystem holding the
/// (absolute, canonical) `path`: the longest mount point that is a prefix.
pub fn mount_point_in(mountinfo: &str, path: &Path) -> PathBuf {
    crius_shim_api::mountinfo::parse(mountinfo)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mp| path.starts_with(mp))
        // A later mount on the same point hides an earlier one: keep the last.
        .fold(None::<PathBuf>, |best, mp| match best {
            Some(b) if b.components().count() > mp.components().count() => Some(b),
            _ => Some(mp),
        })
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The mount point of the filesystem holding `path` (its nearest existing
/// ancestor when `path` does not exist yet).
pub fn mount_point_of(path: &Path) -> PathBuf {
    let mut probe = path.to_path_buf();
    let canonical = loop {
        if let Ok(c) = probe.canonicalize() {
            break c;
        }
        if !probe.pop() {
            break PathBuf::from("/");
        }
    };
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => mount_point_in(&text, &canonical),
        Err(_) => PathBuf::from("/"),
    }
}

#[derive(Debug, Default)]
struct Entry {
    usage: Option<DiskUsage>,
    walked_at: Option<Instant>,
    refreshing: bool,
}

/// Per-tree usage with a TTL and background refresh (module docs).
#[derive(Debug)]
pub struct UsageCache {
    ttl: Duration,
    entries: Mutex<HashMap<PathBuf, Entry>>,
}

impl Default for UsageCache {
    fn default() -> Self {
        Self::new(DEFAULT_TTL)
    }
}

impl UsageCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The usage of `root`: cached, refreshed in the background when older
    /// than the TTL, walked (off the executor) only on the first call.
    pub async fn usage(self: &Arc<Self>, root: &Path) -> io::Result<DiskUsage> {
        let cached = {
            let mut entries = self.lock();
            let entry = entries.entry(root.to_path_buf()).or_default();
            match (entry.usage, entry.walked_at) {
                (Some(usage), Some(at)) => {
                    if at.elapsed() >= self.ttl && !entry.refreshing {
                        entry.refreshing = true;
                        let this = self.clone();
                        let root = root.to_path_buf();
                        tokio::task::spawn_blocking(move || this.walk(&root));
                    }
                    Some(usage)
                }
                _ => None,
            }
        };
        if let Some(usage) = cached {
            return Ok(usage);
        }
        let this = self.clone();
        let root = root.to_path_buf();
        tokio::task::spawn_blocking(move || this.walk(&root))
            .await
            .map_err(io::Error::other)?
    }

    /// Walks `root` now and records the result.
    fn walk(&self, root: &Path) -> io::Result<DiskUsage> {
        let result = tree_usage(root);
        let mut entries = self.lock();
        match &result {
            Ok(usage) => {
                let entry = entries.entry(root.to_path_buf()).or_default();
                entry.usage = Some(*usage);
                entry.walked_at = Some(Instant::now());
                entry.refreshing = false;
            }
            // Gone (container removed): forget it.
            Err(_) => {
                entries.remove(root);
            }
        }
        result
    }

    /// Drops the entries whose tree is not in `keep`.
    pub fn retain(&self, keep: &HashSet<PathBuf>) {
        self.lock().retain(|path, _| keep.contains(path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_blocks_and_inodes_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let before = tree_usage(dir.path()).unwrap();
        assert_eq!(before.inodes, 1);
        std::fs::write(dir.path().join("a"), vec![1u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let after = tree_usage(dir.path()).unwrap();
        assert_eq!(after.inodes, 3);
        assert!(after.bytes >= before.bytes + (1 << 20), "{after:?}");
        assert!(after.bytes < before.bytes + (2 << 20), "{after:?}");
        assert!(tree_usage(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn mount_point_is_the_longest_prefix() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
23 22 0:5 / /run rw - tmpfs tmpfs rw
24 23 0:6 / /run/crius\\040x rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_point_in(info, Path::new("/var/lib/crius")),
            PathBuf::from("/")
        );
        assert_eq!(
            mount_point_in(info, Path::new("/run/crius x/pods")),
            PathBuf::from("/run/crius x")
        );
        assert_eq!(
            mount_point_in(info, Path::new("/run/other")),
            PathBuf::from("/run")
        );
    }

    #[tokio::test]
    async fn cache_serves_the_last_walk_and_refreshes_after_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(UsageCache::new(Duration::from_millis(50)));
        let first = cache.usage(dir.path()).await.unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 1 << 20]).unwrap();
        // Within the TTL: the cached walk.
        assert_eq!(cache.usage(dir.path()).await.unwrap(), first);
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Stale: still the old value, and a refresh starts.
        let _ = cache.usage(dir.path()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = cache.usage(dir.path()).await.unwrap();
            if now.bytes >= first.bytes + (1 << 20) {
                break;
            }
            assert!(Instant::now() < deadline, "no refresh: {now:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
