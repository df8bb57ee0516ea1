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
        blocked: true,
        ..RegistryConfig::new("docker.io")
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

#[tokio::test]
async fn a_pulls_progress_stays_while_another_pull_of_the_name_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let m = ImageManager::open(&config(tmp.path())).await.unwrap();
    let shared = lock(&m.progress)
        .entry("r/app:1".into())
        .or_default()
        .clone();
    let entry = |key: &str| records::InflightEntry {
        manager: &m,
        key: key.into(),
        progress_key: "r/app:1".into(),
        progress: shared.clone(),
    };
    let (first, second) = (entry("r/app:1 policy-a"), entry("r/app:1 policy-b"));
    shared.update("sha256:blob", 5, 10);
    drop(first);
    assert_eq!(
        m.progress_of("r/app:1").map(|p| p.snapshot().len()),
        Some(1),
        "the second pull still runs and shows its progress"
    );
    // The pulls hold the only references once the test lets go of its own.
    drop(shared);
    drop(second);
    assert!(
        m.progress_of("r/app:1").is_none(),
        "gone with the last pull"
    );
}
