//! Image records (the metadata kept per image under `images/<id-hex>.json`),
//! the parts of the OCI image config crius uses, and looking images up by
//! id, id prefix, repo tag or repo digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::error::ImageError;
use super::reference::{ImageName, is_lower_hex, is_sha256_digest, is_sha256_hex};

/// One pulled image. The id is the digest of its config, as in CRI-O and
/// containerd, so the same image pulled under several names is one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// `sha256:<hex>` of the image config.
    pub id: String,
    /// Fully qualified `registry/repo:tag` names pointing at this image.
    pub repo_tags: Vec<String>,
    /// Fully qualified `registry/repo@sha256:...` names of this image.
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes, as CRI-O reports it.
    pub size: u64,
    /// Numeric user from the config's `User`, when it is numeric.
    pub uid: Option<i64>,
    /// User name from the config's `User`, when it is not numeric.
    pub username: String,
    /// Pinned images are never garbage collected by the kubelet.
    pub pinned: bool,
    /// Digest of the platform-specific image manifest.
    pub manifest_digest: String,
    /// Digest of the index / manifest list the manifest was chosen from.
    #[serde(default)]
    pub index_digest: Option<String>,
    /// Every manifest and index blob stored for this image (pulls under
    /// different names or formats can bring different ones).
    #[serde(default)]
    pub manifests: Vec<String>,
    /// Layers, bottom first, as listed in the manifest.
    pub layers: Vec<LayerRecord>,
    /// The image config (what containers run with).
    pub config: ImageConfig,
    /// When the image was (last) pulled, RFC 3339.
    pub pulled_at: String,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    /// Digest of the (compressed) blob, as in the manifest.
    pub digest: String,
    pub media_type: String,
    /// Compressed size from the manifest.
    pub size: u64,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: String,
}

/// The subset of the OCI image config (and Docker's equivalent) crius keeps.
/// Field names follow the JSON of the spec, so the record shows the config
/// as users know it; unknown fields are ignored and `null` reads as empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub config: ContainerDefaults,
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
}

/// What a container of this image runs by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerDefaults {
    #[serde(rename = "User", default, deserialize_with = "null_default")]
    pub user: String,
    #[serde(rename = "Env", default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "WorkingDir", default, deserialize_with = "null_default")]
    pub working_dir: String,
    #[serde(rename = "Labels", default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "StopSignal", default, deserialize_with = "null_default")]
    pub stop_signal: String,
    #[serde(rename = "ExposedPorts", default, deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "Volumes", default, deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
}

/// The config's `rootfs`: the diff_ids of the layers, bottom first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<String>,
}

/// Docker writes `null` for empty lists and maps; treat it as empty.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn parse(digest: &str, data: &[u8]) -> Result<Self, ImageError> {
        serde_json::from_slice(data).map_err(|e| ImageError::InvalidConfig {
            digest: digest.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Splits the config's `User` (`uid`, `uid:gid`, `name`, `name:group`) the
/// way the CRI reports it: a numeric user gives a uid, a named one a
/// username, an empty one neither.
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

/// How a reference given by a client names an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `sha256:<hex>` or bare `<hex>`: a full image id.
    Id(String),
    /// A normalized `repo:tag`.
    Tag(String),
    /// A normalized `repo@sha256:...`.
    Digest(String),
    /// Lowercase hex (optionally after `sha256:`) shorter than a full id.
    Prefix(String),
}

/// The ways `reference` could name an image, in the order they are tried.
/// A short hex string such as `abc` is both a valid name and an id prefix,
/// so both are returned.
pub fn lookups(reference: &str, default_registry: &str) -> Result<Vec<Lookup>, ImageError> {
    if is_sha256_digest(reference) {
        return Ok(vec![Lookup::Id(reference.to_string())]);
    }
    if is_sha256_hex(reference) {
        return Ok(vec![Lookup::Id(format!("sha256:{reference}"))]);
    }
    let mut out = Vec::new();
    let name = ImageName::parse(reference, default_registry);
    if let Ok(name) = &name {
        match (&name.digest, name.repo_tag()) {
            (Some(digest), _) => out.push(Lookup::Digest(name.repo_digest(digest))),
            (None, Some(tag)) => out.push(Lookup::Tag(tag)),
            (None, None) => {}
        }
    }
    let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
    if is_lower_hex(prefix) && prefix.len() < 64 {
        out.push(Lookup::Prefix(prefix.to_string()));
    }
    match (out.is_empty(), name) {
        (true, Err(err)) => Err(err),
        _ => Ok(out),
    }
}

/// Finds the one record `reference` names among `records`.
#[cfg(test)]
fn find<'a>(
    records: impl IntoIterator<Item = &'a ImageRecord> + Clone,
    reference: &str,
    default_registry: &str,
) -> Result<&'a ImageRecord, ImageError> {
    find_with_lookup(records, reference, default_registry).map(|(record, _)| record)
}

/// Like [`find`], also saying which interpretation of `reference` matched.
pub fn find_with_lookup<'a>(
    records: impl IntoIterator<Item = &'a ImageRecord> + Clone,
    reference: &str,
    default_registry: &str,
) -> Result<(&'a ImageRecord, Lookup), ImageError> {
    for lookup in lookups(reference, default_registry)? {
        let mut matches = records.clone().into_iter().filter(|r| match &lookup {
            Lookup::Id(id) => &r.id == id,
            Lookup::Tag(tag) => r.repo_tags.iter().any(|t| t == tag),
            Lookup::Digest(d) => r.repo_digests.iter().any(|t| t == d),
            Lookup::Prefix(p) => {
                r.id.strip_prefix("sha256:")
                    .is_some_and(|h| h.starts_with(p.as_str()))
            }
        });
        let Some(first) = matches.next() else {
            continue;
        };
        let rest: Vec<&ImageRecord> = matches.collect();
        if rest.is_empty() {
            return Ok((first, lookup));
        }
        // Tags and digests are unique across records by construction; only
        // a short prefix can be ambiguous.
        let mut ids = vec![first.id.clone()];
        ids.extend(rest.iter().map(|r| r.id.clone()));
        return Err(ImageError::Ambiguous {
            prefix: reference.to_string(),
            matches: ids,
        });
    }
    Err(ImageError::NotFound(reference.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hex_char: char, tags: &[&str], digests: &[&str]) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{}", hex_char.to_string().repeat(64)),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            size: 0,
            uid: None,
            username: String::new(),
            pinned: false,
            manifest_digest: String::new(),
            index_digest: None,
            manifests: Vec::new(),
            layers: Vec::new(),
            config: ImageConfig::default(),
            pulled_at: String::new(),
        }
    }

    #[test]
    fn lookup_by_id_tag_digest_and_prefix() {
        let d = format!("sha256:{}", "9".repeat(64));
        let records = [
            record('a', &["docker.io/library/busybox:latest"], &[]),
            record(
                'b',
                &["127.0.0.1:5000/test/busybox:v1"],
                &[&format!("127.0.0.1:5000/test/busybox@{d}")],
            ),
        ];
        let find = |r: &str| find(records.iter(), r, "docker.io").map(|r| r.id.clone());
        let id_a = format!("sha256:{}", "a".repeat(64));
        let id_b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(find("busybox").unwrap(), id_a);
        assert_eq!(find("busybox:latest").unwrap(), id_a);
        assert_eq!(find("docker.io/library/busybox").unwrap(), id_a);
        assert_eq!(find(&id_a).unwrap(), id_a);
        assert_eq!(find(&"a".repeat(64)).unwrap(), id_a);
        assert_eq!(find("aaaa").unwrap(), id_a);
        assert_eq!(find("sha256:bbb").unwrap(), id_b);
        assert_eq!(find("127.0.0.1:5000/test/busybox:v1").unwrap(), id_b);
        assert_eq!(
            find(&format!("127.0.0.1:5000/test/busybox@{d}")).unwrap(),
            id_b
        );
        assert!(matches!(find("busybox:v1"), Err(ImageError::NotFound(_))));
        assert!(matches!(find("cccc"), Err(ImageError::NotFound(_))));
        assert!(matches!(
            find(&format!("sha256:{}", "c".repeat(64))),
            Err(ImageError::NotFound(_))
        ));
        assert!(matches!(
            find("Not A Name"),
            Err(ImageError::InvalidReference { .. })
        ));
    }

    #[test]
    fn ambiguous_prefix_is_an_error() {
        let mut a = record('a', &[], &[]);
        let mut b = record('a', &[], &[]);
        a.id = format!("sha256:ab{}", "0".repeat(62));
        b.id = format!("sha256:ab{}", "1".repeat(62));
        let records = [a, b];
        assert!(matches!(
            find(records.iter(), "ab", "docker.io"),
            Err(ImageError::Ambiguous { .. })
        ));
        assert!(find(records.iter(), "ab0", "docker.io").is_ok());
    }

    #[test]
    fn users() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("0"), (Some(0), String::new()));
        assert_eq!(user_of("1000:1000"), (Some(1000), String::new()));
        assert_eq!(user_of("nobody"), (None, "nobody".to_string()));
        assert_eq!(user_of("www-data:www-data"), (None, "www-data".to_string()));
    }

    #[test]
    fn docker_configs_with_nulls_parse() {
        let json = br#"{"architecture":"amd64","os":"linux",
            "config":{"User":"","Env":null,"Cmd":["sh"],"Entrypoint":null,"WorkingDir":"",
                      "Labels":null,"ExposedPorts":{"80/tcp":{}}},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]},
            "history":[{"created_by":"x"}]}"#;
        let c = ImageConfig::parse("sha256:x", json).unwrap();
        assert_eq!(c.config.cmd, vec!["sh"]);
        assert!(c.config.entrypoint.is_empty());
        assert!(c.config.env.is_empty());
        assert_eq!(c.rootfs.diff_ids, vec!["sha256:aa"]);
        assert!(c.config.exposed_ports.contains_key("80/tcp"));
        let minimal = ImageConfig::parse("sha256:x", br#"{"rootfs":null,"config":null}"#).unwrap();
        assert!(minimal.rootfs.diff_ids.is_empty());
        assert!(ImageConfig::parse("sha256:x", b"[1,2]").is_err());
    }
}
