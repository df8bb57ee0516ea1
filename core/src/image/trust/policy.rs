//! containers-policy.json(5): which requirements an image must meet, by
//! transport and scope. Only the `docker` transport applies to a CRI pull.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TrustError;
use crate::image::ImageName;

/// A parsed and checked policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub path: PathBuf,
    default: Vec<Requirement>,
    /// The `docker` transport's scopes (`""` is the transport default).
    docker: BTreeMap<String, Vec<Requirement>>,
}

/// One requirement of a scope; an image must meet all of a scope's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Requirement {
    // Empty struct variants, so that unknown fields are refused for
    // these too.
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything {},
    #[serde(rename = "reject")]
    Reject {},
    /// GPG "simple signing" signatures.
    #[serde(rename = "signedBy", rename_all = "camelCase")]
    SignedBy {
        key_type: String,
        key_path: Option<PathBuf>,
        key_paths: Option<Vec<PathBuf>>,
        key_data: Option<String>,
        signed_identity: Option<SignedIdentity>,
    },
    /// Cosign-style signatures verified with a public key.
    #[serde(rename = "sigstoreSigned", rename_all = "camelCase")]
    SigstoreSigned {
        key_path: Option<PathBuf>,
        key_paths: Option<Vec<PathBuf>>,
        key_data: Option<String>,
        key_datas: Option<Vec<String>>,
        /// Keyless (Fulcio), PKI and Rekor checks: refused when set.
        fulcio: Option<serde_json::Value>,
        rekor_public_key_path: Option<PathBuf>,
        rekor_public_key_data: Option<String>,
        pki: Option<serde_json::Value>,
        signed_identity: Option<SignedIdentity>,
    },
}

/// Where a requirement's public keys are: exactly one of these is set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeySource {
    pub key_path: Option<PathBuf>,
    pub key_paths: Option<Vec<PathBuf>>,
    /// Base64 of the key file's contents.
    pub key_data: Option<String>,
    pub key_datas: Option<Vec<String>>,
}

/// Which image identities a signature may claim for the pulled name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum SignedIdentity {
    #[serde(rename = "matchExact")]
    MatchExact,
    #[serde(rename = "matchRepoDigestOrExact")]
    MatchRepoDigestOrExact,
    #[serde(rename = "matchRepository")]
    MatchRepository,
    #[serde(rename = "exactReference", rename_all = "camelCase")]
    ExactReference { docker_reference: String },
    #[serde(rename = "exactRepository", rename_all = "camelCase")]
    ExactRepository { docker_repository: String },
    #[serde(rename = "remapIdentity", rename_all = "camelCase")]
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Vec<Requirement>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

impl KeySource {
    /// The key files' contents, in order. Paths must be absolute.
    pub fn load(&self) -> Result<Vec<Vec<u8>>, String> {
        use base64::Engine as _;
        let set = [
            self.key_path.is_some(),
            self.key_paths.is_some(),
            self.key_data.is_some(),
            self.key_datas.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            return Err(
                "exactly one of keyPath, keyPaths, keyData, keyDatas must be set".to_string(),
            );
        }
        let read = |path: &PathBuf| {
            if !path.is_absolute() {
                return Err(format!("key path {} is not absolute", path.display()));
            }
            std::fs::read(path).map_err(|e| format!("reading key {}: {e}", path.display()))
        };
        let decode = |data: &String| {
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("keyData is not base64: {e}"))
        };
        let keys = if let Some(path) = &self.key_path {
            vec![read(path)?]
        } else if let Some(paths) = &self.key_paths {
            paths.iter().map(read).collect::<Result<_, _>>()?
        } else if let Some(data) = &self.key_data {
            vec![decode(data)?]
        } else {
            let datas = self.key_datas.as_deref().unwrap_or_default();
            datas.iter().map(decode).collect::<Result<_, _>>()?
        };
        if keys.is_empty() {
            return Err("the key list is empty".to_string());
        }
        Ok(keys)
    }

    /// What names the keys in messages.
    pub fn describe(&self) -> String {
        if let Some(path) = &self.key_path {
            path.display().to_string()
        } else if let Some(paths) = &self.key_paths {
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            "inline keyData".to_string()
        }
    }
}

impl Requirement {
    /// Where a signature requirement's keys are (`None` for the others).
    pub fn keys(&self) -> Option<KeySource> {
        match self {
            Requirement::SignedBy {
                key_path,
                key_paths,
                key_data,
                ..
            } => Some(KeySource {
                key_path: key_path.clone(),
                key_paths: key_paths.clone(),
                key_data: key_data.clone(),
                key_datas: None,
            }),
            Requirement::SigstoreSigned {
                key_path,
                key_paths,
                key_data,
                key_datas,
                ..
            } => Some(KeySource {
                key_path: key_path.clone(),
                key_paths: key_paths.clone(),
                key_data: key_data.clone(),
                key_datas: key_datas.clone(),
            }),
            _ => None,
        }
    }

    /// The identity rule of a signature requirement (default
    /// matchRepoDigestOrExact, as containers-policy.json(5) says).
    pub fn signed_identity(&self) -> SignedIdentity {
        match self {
            Requirement::SignedBy {
                signed_identity, ..
            }
            | Requirement::SigstoreSigned {
                signed_identity, ..
            } => signed_identity
                .clone()
                .unwrap_or(SignedIdentity::MatchRepoDigestOrExact),
            _ => SignedIdentity::MatchRepoDigestOrExact,
        }
    }

    /// The name policy.json gives it (for messages).
    pub fn kind(&self) -> &'static str {
        match self {
            Requirement::InsecureAcceptAnything {} => "insecureAcceptAnything",
            Requirement::Reject {} => "reject",
            Requirement::SignedBy { .. } => "signedBy",
            Requirement::SigstoreSigned { .. } => "sigstoreSigned",
        }
    }

    /// What containers/image would accept but crius cannot check, refused
    /// when the policy is read rather than silently ignored.
    fn check(&self) -> Result<(), String> {
        match self {
            Requirement::SignedBy { key_type, .. } if key_type != "GPGKeys" => Err(format!(
                "signedBy keyType {key_type:?} is not supported (only GPGKeys)"
            )),
            Requirement::SigstoreSigned {
                fulcio,
                rekor_public_key_path,
                rekor_public_key_data,
                pki,
                ..
            } => {
                if fulcio.is_some() || pki.is_some() {
                    return Err(
                        "sigstoreSigned: keyless (fulcio) and pki verification are not \
                                supported; use keyPath/keyData"
                            .to_string(),
                    );
                }
                if rekor_public_key_path.is_some() || rekor_public_key_data.is_some() {
                    return Err(
                        "sigstoreSigned: Rekor transparency-log checks are not supported"
                            .to_string(),
                    );
                }
                if self.keys() == Some(KeySource::default()) {
                    return Err("sigstoreSigned needs keyPath, keyPaths or keyData".to_string());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Policy {
    /// Reads and checks a policy file (blocking).
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let invalid = |reason: String| TrustError::InvalidPolicy {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
        let file: PolicyFile = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        let mut lists = vec![("default".to_string(), &file.default)];
        let docker = file.transports.get("docker").cloned().unwrap_or_default();
        lists.extend(
            docker
                .iter()
                .map(|(scope, l)| (format!("docker scope {scope:?}"), l)),
        );
        for (what, list) in lists {
            if list.is_empty() {
                return Err(invalid(format!("{what}: an empty requirement list")));
            }
            for requirement in list {
                requirement
                    .check()
                    .map_err(|reason| invalid(format!("{what}: {reason}")))?;
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            default: file.default,
            docker,
        })
    }

    /// A policy accepting everything (no policy file configured or found).
    pub fn accept_anything() -> Self {
        Self {
            path: PathBuf::new(),
            default: vec![Requirement::InsecureAcceptAnything {}],
            docker: BTreeMap::new(),
        }
    }

    /// The requirements for `name` and the scope they came from: the most
    /// specific docker scope that matches (reference, repository, each
    /// enclosing namespace, the registry, `*.`-wildcard domains, the
    /// transport default `""`), else the policy's default.
    pub fn requirements_for(&self, name: &ImageName) -> (&str, &[Requirement]) {
        for scope in scopes_of(name) {
            if let Some((key, list)) = self.docker.get_key_value(scope.as_str()) {
                return (key.as_str(), list.as_slice());
            }
        }
        ("default", self.default.as_slice())
    }
}

/// `name` itself, its repository and each enclosing namespace up to the
/// registry host, most specific first: the scopes policy.json and
/// registries.d share.
pub(super) fn path_scopes(name: &ImageName) -> Vec<String> {
    let repository = name.repository();
    let mut scopes = vec![name.to_string(), repository.clone()];
    let mut namespace = repository.as_str();
    while let Some(slash) = namespace.rfind('/') {
        namespace = &namespace[..slash];
        scopes.push(namespace.to_string());
    }
    scopes
}

/// The docker-transport scopes naming `name`, most specific first.
fn scopes_of(name: &ImageName) -> Vec<String> {
    let mut scopes = path_scopes(name);
    // `*.example.com` matches `registry.example.com` and deeper hosts.
    let host = name.domain.split(':').next().unwrap_or_default();
    let mut rest = host;
    while let Some(dot) = rest.find('.') {
        rest = &rest[dot + 1..];
        if !rest.is_empty() {
            scopes.push(format!("*.{rest}"));
        }
    }
    scopes.push(String::new());
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<Policy, TrustError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        std::fs::write(&path, json).unwrap();
        Policy::load(&path)
    }

    fn name(s: &str) -> ImageName {
        ImageName::parse(s, "docker.io").unwrap()
    }

    #[test]
    fn the_most_specific_scope_wins_then_the_transport_default_then_the_default() {
        let p = policy(
            r#"{"default":[{"type":"reject"}],
                "transports":{"docker":{
                  "":[{"type":"insecureAcceptAnything"}],
                  "registry.example.com":[{"type":"reject"}],
                  "registry.example.com/team":[{"type":"insecureAcceptAnything"}],
                  "registry.example.com/team/app:1":[{"type":"reject"}],
                  "*.example.org":[{"type":"reject"}]
                },
                "oci":{"":[{"type":"reject"}]}}}"#,
        )
        .unwrap();
        let scope = |s: &str| p.requirements_for(&name(s)).0.to_string();
        assert_eq!(
            scope("registry.example.com/team/app:1"),
            "registry.example.com/team/app:1"
        );
        assert_eq!(
            scope("registry.example.com/team/app:2"),
            "registry.example.com/team"
        );
        assert_eq!(
            scope("registry.example.com/other/app:1"),
            "registry.example.com"
        );
        assert_eq!(scope("a.b.example.org:5000/x:1"), "*.example.org");
        assert_eq!(scope("quay.io/x:1"), "");
        let no_docker = policy(r#"{"default":[{"type":"reject"}]}"#).unwrap();
        assert_eq!(no_docker.requirements_for(&name("busybox")).0, "default");
    }

    #[test]
    fn requirements_parse_with_their_keys_and_identities() {
        let p = policy(
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k.gpg",
                 "signedIdentity":{"type":"remapIdentity","prefix":"a.io","signedPrefix":"b.io"}}],
                "transports":{"docker":{"x.io":[{"type":"sigstoreSigned","keyData":"AAAA",
                 "signedIdentity":{"type":"matchRepository"}}]}}}"#,
        )
        .unwrap();
        let (_, list) = p.requirements_for(&name("busybox"));
        assert_eq!(list[0].kind(), "signedBy");
        assert_eq!(
            list[0].keys().unwrap().key_path.as_deref(),
            Some(Path::new("/k.gpg"))
        );
        assert_eq!(
            list[0].signed_identity(),
            SignedIdentity::RemapIdentity {
                prefix: "a.io".into(),
                signed_prefix: "b.io".into()
            }
        );
        let (_, list) = p.requirements_for(&name("x.io/y:1"));
        assert_eq!(list[0].keys().unwrap().key_data.as_deref(), Some("AAAA"));
        assert_eq!(list[0].signed_identity(), SignedIdentity::MatchRepository);
    }

    #[test]
    fn what_cannot_be_checked_is_refused_when_read() {
        for (json, needle) in [
            (r#"{"default":[]}"#, "empty requirement list"),
            (
                r#"{"default":[{"type":"signedBy","keyType":"X509Certificates","keyPath":"/k"}]}"#,
                "X509Certificates",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","fulcio":{}}]}"#,
                "keyless",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"/k","rekorPublicKeyPath":"/r"}]}"#,
                "Rekor",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned"}]}"#,
                "needs keyPath",
            ),
            (r#"{"default":[{"type":"acceptIfSunny"}]}"#, "acceptIfSunny"),
            (r#"{"default":[{"type":"reject","extra":1}]}"#, "extra"),
            ("not json", "expected"),
        ] {
            let err = policy(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn keys_come_from_exactly_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, b"key bytes").unwrap();
        let from_path = KeySource {
            key_path: Some(key.clone()),
            ..Default::default()
        };
        assert_eq!(from_path.load().unwrap(), vec![b"key bytes".to_vec()]);
        let inline = KeySource {
            key_data: Some("a2V5".into()),
            ..Default::default()
        };
        assert_eq!(inline.load().unwrap(), vec![b"key".to_vec()]);
        let both = KeySource {
            key_path: Some(key),
            key_data: Some("a2V5".into()),
            ..Default::default()
        };
        assert!(both.load().unwrap_err().contains("exactly one"));
        let relative = KeySource {
            key_path: Some("k".into()),
            ..Default::default()
        };
        assert!(relative.load().unwrap_err().contains("not absolute"));
    }
}
