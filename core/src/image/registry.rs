//! Talking to registries: which endpoints to try for a name (mirrors,
//! relocated and blocked registries, plain HTTP), credentials from the CRI
//! `AuthConfig`, and fetching manifests and blobs with `oci-client`.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageIndex, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::error::ImageError;
use super::reference::ImageName;
use crate::config::RegistryConfig;

/// Registry credentials from a CRI `AuthConfig`. Secrets never appear in
/// `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic credentials (also exchanged for a bearer token when the
    /// registry asks for one).
    Basic { username: String, password: String },
    /// A ready bearer token (`registry_token`, or `identity_token`).
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Reads a CRI `AuthConfig`: a registry token or identity token is used
    /// as a bearer token; otherwise username/password, or `auth` holding
    /// base64 `user:password`. An all-empty config means anonymous (`None`).
    pub fn from_cri(auth: &crius_proto::cri::AuthConfig) -> Result<Option<Self>, ImageError> {
        if !auth.registry_token.is_empty() {
            return Ok(Some(Self::Bearer(auth.registry_token.clone())));
        }
        if !auth.identity_token.is_empty() {
            return Ok(Some(Self::Bearer(auth.identity_token.clone())));
        }
        if !auth.username.is_empty() || !auth.password.is_empty() {
            return Ok(Some(Self::Basic {
                username: auth.username.clone(),
                password: auth.password.clone(),
            }));
        }
        if !auth.auth.is_empty() {
            let invalid = |reason: &str| ImageError::Unauthorized {
                endpoint: auth.server_address.clone(),
                message: format!("invalid auth field in AuthConfig: {reason}"),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.auth.trim())
                .map_err(|_| invalid("not base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid("not UTF-8"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| invalid("expected user:password"))?;
            return Ok(Some(Self::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        Ok(None)
    }

    fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// One place to pull an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    /// Repository path at that host.
    pub repository: String,
    /// Speak plain HTTP.
    pub insecure: bool,
    /// A mirror (rather than the registry itself, possibly relocated).
    pub mirror: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.insecure { "http" } else { "https" };
        let kind = if self.mirror { " (mirror)" } else { "" };
        write!(f, "{scheme}://{}/{}{kind}", self.host, self.repository)
    }
}

/// Whether `name` (`host/path`) falls under `prefix` (`host` or
/// `host/path`), on a path-component boundary.
fn prefix_matches(prefix: &str, name: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    name == prefix || (name.starts_with(prefix) && name[prefix.len()..].starts_with('/'))
}

/// The registry entry with the longest prefix matching `repository`.
pub fn registry_for<'a>(
    registries: &'a [RegistryConfig],
    repository: &str,
) -> Option<&'a RegistryConfig> {
    registries
        .iter()
        .filter(|r| prefix_matches(&r.prefix, repository))
        .max_by_key(|r| r.prefix.trim_end_matches('/').len())
}

/// Splits `location + remainder` into host and repository path.
fn endpoint_at(location: &str, remainder: &str, insecure: bool, mirror: bool) -> Endpoint {
    let full = format!("{}{remainder}", location.trim_end_matches('/'));
    let (host, repository) = match full.split_once('/') {
        Some((host, path)) => (host.to_string(), path.to_string()),
        None => (full, String::new()),
    };
    Endpoint {
        host,
        repository,
        insecure,
        mirror,
    }
}

/// The endpoints to try for `name`, in order: configured mirrors first, then
/// the registry itself (at its `location`, if relocated) unless it is
/// blocked. Without a matching registry entry that is just the name's host.
pub fn endpoints_for(
    name: &ImageName,
    registries: &[RegistryConfig],
) -> Result<Vec<Endpoint>, ImageError> {
    let repository = name.repository();
    let Some(reg) = registry_for(registries, &repository) else {
        return Ok(vec![Endpoint {
            host: name.domain.clone(),
            repository: name.path.clone(),
            insecure: false,
            mirror: false,
        }]);
    };
    let prefix = reg.prefix.trim_end_matches('/');
    let remainder = &repository[prefix.len()..];
    let use_mirrors = !reg.mirror_by_digest_only || name.digest.is_some();
    let mut out: Vec<Endpoint> = reg
        .mirrors
        .iter()
        .filter(|_| use_mirrors)
        .map(|m| endpoint_at(&m.location, remainder, m.insecure, true))
        .collect();
    if !reg.blocked {
        let location = reg.location.as_deref().unwrap_or(prefix);
        out.push(endpoint_at(location, remainder, reg.insecure, false));
    }
    out.retain(|e| !e.host.is_empty() && !e.repository.is_empty());
    if out.is_empty() {
        return Err(ImageError::Blocked {
            registry: reg.prefix.clone(),
        });
    }
    Ok(out)
}

/// Manifest media types we accept.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// A manifest fetched from a registry, verified against its digest.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub digest: String,
    pub bytes: bytes::Bytes,
}

/// A connection to one endpoint for one image.
pub struct Remote {
    client: Client,
    auth: RegistryAuth,
    endpoint: Endpoint,
    /// `image.pull_progress_timeout_seconds`, `None` when 0.
    stall: Option<Duration>,
}

/// How long the HTTP client itself waits for a byte beyond the stall
/// timeout: a backstop only, the stall timeout answers first with the
/// clearer error.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

impl Remote {
    /// A client for `endpoint`; `credentials` are only sent to it when
    /// `send_credentials` (the caller decides which hosts may see them).
    pub fn new(
        endpoint: &Endpoint,
        credentials: Option<&Credentials>,
        send_credentials: bool,
        max_concurrent_downloads: usize,
        stall: Option<Duration>,
    ) -> Result<Self, ImageError> {
        let protocol = if endpoint.insecure {
            ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            // We resolve indexes ourselves (see `select_platform`).
            platform_resolver: None,
            max_concurrent_download: max_concurrent_downloads.max(1),
            connect_timeout: Some(Duration::from_secs(30)),
            // Per read, not per request: a slow pull that keeps sending
            // bytes is never cut off. Stalls are caught by `stall` first.
            read_timeout: stall.map(|s| s + READ_TIMEOUT_MARGIN),
            user_agent: concat!("crius/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| ImageError::Registry {
            endpoint: endpoint.to_string(),
            message: format!("cannot create registry client: {e}"),
        })?;
        let auth = match (credentials, send_credentials) {
            (Some(c), true) => c.to_registry_auth(),
            _ => RegistryAuth::Anonymous,
        };
        Ok(Self {
            client,
            auth,
            endpoint: endpoint.clone(),
            stall,
        })
    }

    /// The stall timeout this remote aborts downloads after.
    pub fn stall(&self) -> Option<Duration> {
        self.stall
    }

    /// Runs a request that must answer (headers, or a whole small
    /// document) before the stall timeout passes.
    async fn within_stall<T>(
        &self,
        what: impl FnOnce() -> String,
        request: impl std::future::Future<Output = Result<T, ImageError>>,
    ) -> Result<T, ImageError> {
        let Some(stall) = self.stall else {
            return request.await;
        };
        match tokio::time::timeout(stall, request).await {
            Ok(result) => result,
            Err(_) => Err(ImageError::Stalled {
                what: what(),
                endpoint: self.endpoint.to_string(),
                seconds: stall.as_secs(),
                received: 0,
            }),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The reference at this endpoint for a tag or digest.
    fn reference(&self, tag: Option<&str>, digest: Option<&str>) -> Reference {
        let (host, repo) = (self.endpoint.host.clone(), self.endpoint.repository.clone());
        match (digest, tag) {
            (Some(d), _) => Reference::with_digest(host, repo, d.to_string()),
            (None, t) => Reference::with_tag(host, repo, t.unwrap_or("latest").to_string()),
        }
    }

    /// Fetches the manifest for a tag or digest without interpreting it.
    /// oci-client checks the body against the requested digest (or the
    /// registry's digest header for a tag).
    pub async fn manifest(
        &self,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<RawManifest, ImageError> {
        let reference = self.reference(tag, digest);
        let (bytes, digest) = self
            .within_stall(|| format!("manifest {reference}"), async {
                self.client
                    .pull_manifest_raw(&reference, &self.auth, MANIFEST_MEDIA_TYPES)
                    .await
                    .map_err(|e| self.error(&reference.to_string(), e))
            })
            .await?;
        Ok(RawManifest { digest, bytes })
    }

    /// Opens a blob for streaming.
    pub async fn blob(&self, descriptor: &OciDescriptor) -> Result<SizedStream, ImageError> {
        let reference = self.reference(None, Some(&descriptor.digest));
        let what = format!("blob {}", descriptor.digest);
        self.within_stall(|| what.clone(), async {
            self.client
                .pull_blob_stream(&reference, descriptor)
                .await
                .map_err(|e| self.error(&what, e))
        })
        .await
    }

    /// A small blob's bytes (a signature payload), verified against its
    /// digest; refused past `max` bytes.
    pub async fn small_blob(
        &self,
        descriptor: &OciDescriptor,
        max: u64,
    ) -> Result<Vec<u8>, ImageError> {
        use futures::StreamExt as _;
        use sha2::Digest as _;
        let what = format!("blob {}", descriptor.digest);
        let too_large = || ImageError::TooLarge {
            what: what.clone(),
            limit_name: "the signature size limit",
            limit: max,
        };
        if descriptor.size < 0 || descriptor.size as u64 > max {
            return Err(too_large());
        }
        let mut stream = self.blob(descriptor).await?.stream;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ImageError::Registry {
                endpoint: self.endpoint.to_string(),
                message: format!("{what}: {e}"),
            })?;
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        if actual != descriptor.digest {
            return Err(ImageError::DigestMismatch {
                what,
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Classifies an oci-client error for status mapping.
    fn error(&self, what: &str, e: OciDistributionError) -> ImageError {
        let endpoint = self.endpoint.to_string();
        let mut message = error_chain(&e);
        if !self.endpoint.insecure && looks_like_tls_failure(&message) {
            message.push_str(
                " (TLS to this registry failed; if it only speaks plain HTTP, \
                 mark it `insecure: true` under `registries` in the config)",
            );
        }
        match &e {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => {
                ImageError::Unauthorized { endpoint, message }
            }
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => ImageError::Unauthorized { endpoint, message },
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => ImageError::ManifestNotFound {
                reference: what.to_string(),
                endpoint,
                message,
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    ImageError::Unauthorized { endpoint, message }
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    ImageError::ManifestNotFound {
                        reference: what.to_string(),
                        endpoint,
                        message,
                    }
                } else {
                    ImageError::Registry { endpoint, message }
                }
            }
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => ImageError::DigestMismatch {
                what: format!("{what} from {endpoint}"),
                expected: expected.clone(),
                actual: actual.clone(),
            },
            _ => ImageError::Registry {
                endpoint,
                message: format!("{what}: {message}"),
            },
        }
    }
}

/// An error and its sources, `: `-separated (reqwest's own message alone
/// says little more than "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn looks_like_tls_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "tls",
        "ssl",
        "certificate",
        "handshake",
        "invalid http version",
        "corrupt message",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// A parsed manifest document.
pub enum ManifestDoc {
    Image(Box<OciImageManifest>),
    Index(OciImageIndex),
}

/// Interprets manifest bytes: an image manifest (OCI or Docker schema 2) or
/// an index / manifest list (OCI or Docker).
pub fn parse_manifest(reference: &str, bytes: &[u8]) -> Result<ManifestDoc, ImageError> {
    let unsupported = |reason: String| ImageError::UnsupportedManifest {
        reference: reference.to_string(),
        reason,
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<i64>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| unsupported(format!("manifest is not valid JSON: {e}")))?;
    if probe.schema_version == Some(1) {
        return Err(unsupported(
            "it is a Docker image manifest schema 1 (schemaVersion 1), a format deprecated \
             since Docker 1.10 and removed from Docker and containerd; crius pulls schema 2 and \
             OCI images only: push the image again with a current client"
                .to_string(),
        ));
    }
    if probe.schema_version != Some(2) {
        return Err(unsupported(format!(
            "schemaVersion {:?} (only schema 2 manifests are supported)",
            probe.schema_version
        )));
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE) => true,
        Some(OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE) => false,
        Some(other) => return Err(unsupported(format!("media type {other}"))),
        // OCI allows omitting mediaType; an index is told apart by `manifests`.
        None => probe.manifests.is_some(),
    };
    if is_index {
        let index: OciImageIndex = serde_json::from_slice(bytes)
            .map_err(|e| unsupported(format!("invalid index: {e}")))?;
        Ok(ManifestDoc::Index(index))
    } else {
        let manifest: OciImageManifest = serde_json::from_slice(bytes)
            .map_err(|e| unsupported(format!("invalid image manifest: {e}")))?;
        Ok(ManifestDoc::Image(Box::new(manifest)))
    }
}

/// Picks the linux/amd64 manifest of an index (preferring entries without a
/// variant or with `v1`), as the node can only run that platform.
pub fn select_platform(reference: &str, index: &OciImageIndex) -> Result<String, ImageError> {
    // Compared as strings: the platform enums come from oci-client's own
    // oci-spec version, not ours.
    let candidates: Vec<_> = index
        .manifests
        .iter()
        .filter(|m| {
            m.platform.as_ref().is_some_and(|p| {
                p.os.to_string() == "linux" && p.architecture.to_string() == "amd64"
            })
        })
        .collect();
    let best = candidates
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| matches!(p.variant.as_deref(), None | Some("v1")))
        })
        .or_else(|| candidates.first());
    match best {
        Some(entry) => Ok(entry.digest.clone()),
        None => {
            let platforms: Vec<String> = index
                .manifests
                .iter()
                .map(|m| {
                    m.platform.as_ref().map_or_else(
                        || "unknown".to_string(),
                        |p| match &p.variant {
                            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                            None => format!("{}/{}", p.os, p.architecture),
                        },
                    )
                })
                .collect();
            Err(ImageError::UnsupportedManifest {
                reference: reference.to_string(),
                reason: format!(
                    "no linux/amd64 image in index (has: {})",
                    platforms.join(", ")
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MirrorConfig;

    fn name(s: &str) -> ImageName {
        ImageName::parse(s, "docker.io").unwrap()
    }

    #[test]
    fn no_config_means_the_registry_itself_over_https() {
        let eps = endpoints_for(&name("busybox"), &[]).unwrap();
        assert_eq!(
            eps,
            vec![Endpoint {
                host: "docker.io".into(),
                repository: "library/busybox".into(),
                insecure: false,
                mirror: false
            }]
        );
    }

    #[test]
    fn mirrors_first_then_registry_with_insecure_flags() {
        let mut r = RegistryConfig::new("docker.io");
        r.mirrors = vec![
            MirrorConfig {
                location: "127.0.0.1:5001/hub".into(),
                insecure: true,
            },
            MirrorConfig {
                location: "mirror.example.com".into(),
                insecure: false,
            },
        ];
        let eps = endpoints_for(&name("busybox:1"), &[r]).unwrap();
        let got: Vec<(String, String, bool, bool)> = eps
            .iter()
            .map(|e| (e.host.clone(), e.repository.clone(), e.insecure, e.mirror))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "127.0.0.1:5001".into(),
                    "hub/library/busybox".into(),
                    true,
                    true
                ),
                (
                    "mirror.example.com".into(),
                    "library/busybox".into(),
                    false,
                    true
                ),
                ("docker.io".into(), "library/busybox".into(), false, false),
            ]
        );
    }

    #[test]
    fn longest_prefix_wins_on_component_boundaries() {
        let mut narrow = RegistryConfig::new("127.0.0.1:5000/test");
        narrow.insecure = true;
        narrow.location = Some("127.0.0.1:6000/moved".into());
        let wide = RegistryConfig::new("127.0.0.1:5000");
        let regs = [wide, narrow];
        let eps = endpoints_for(&name("127.0.0.1:5000/test/busybox"), &regs).unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].host, "127.0.0.1:6000");
        assert_eq!(eps[0].repository, "moved/busybox");
        assert!(eps[0].insecure);
        // `test` must not match `testing`.
        let eps = endpoints_for(&name("127.0.0.1:5000/testing/busybox"), &regs).unwrap();
        assert_eq!(eps[0].host, "127.0.0.1:5000");
        assert!(!eps[0].insecure);
        assert_eq!(registry_for(&regs, "127.0.0.10:5000/x"), None);
    }

    #[test]
    fn blocked_registry_uses_only_mirrors() {
        let mut r = RegistryConfig::new("quay.io");
        r.blocked = true;
        assert!(matches!(
            endpoints_for(&name("quay.io/a/b"), std::slice::from_ref(&r)),
            Err(ImageError::Blocked { .. })
        ));
        r.mirrors.push(MirrorConfig {
            location: "m.local".into(),
            insecure: false,
        });
        let eps = endpoints_for(&name("quay.io/a/b"), &[r]).unwrap();
        assert_eq!(eps.len(), 1);
        assert!(eps[0].mirror);
        assert_eq!(eps[0].host, "m.local");
    }

    #[test]
    fn credentials_from_auth_config() {
        use crius_proto::cri::AuthConfig;
        assert_eq!(Credentials::from_cri(&AuthConfig::default()).unwrap(), None);
        let a = AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(
            Credentials::from_cri(&a).unwrap(),
            Some(Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        let a = AuthConfig {
            auth: "dXNlcjpwYTpzcw==".into(),
            ..Default::default()
        };
        assert_eq!(
            Credentials::from_cri(&a).unwrap(),
            Some(Credentials::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        let a = AuthConfig {
            registry_token: "tok".into(),
            ..Default::default()
        };
        assert_eq!(
            Credentials::from_cri(&a).unwrap(),
            Some(Credentials::Bearer("tok".into()))
        );
        let a = AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(matches!(
            Credentials::from_cri(&a),
            Err(ImageError::Unauthorized { .. })
        ));
        let dbg = format!(
            "{:?}",
            Credentials::Basic {
                username: "u".into(),
                password: "secret".into()
            }
        );
        assert!(!dbg.contains("secret"));
    }

    #[test]
    fn manifests_and_indexes_are_told_apart() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",
             "platform":{"architecture":"arm64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222",
             "platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let ManifestDoc::Index(idx) = parse_manifest("x", index).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(
            select_platform("x", &idx).unwrap(),
            format!("sha256:{}", "2".repeat(64))
        );

        let arm_only = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
            {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1,
             "digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",
             "platform":{"architecture":"arm64","os":"linux"}}]}"#;
        let ManifestDoc::Index(idx) = parse_manifest("x", arm_only).unwrap() else {
            panic!("not an index")
        };
        let err = select_platform("x", &idx).unwrap_err();
        assert!(err.to_string().contains("linux/amd64"), "{err}");

        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,
              "digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333"},
            "layers":[]}"#;
        assert!(matches!(
            parse_manifest("x", image).unwrap(),
            ManifestDoc::Image(_)
        ));
        let v1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            parse_manifest("x", v1),
            Err(ImageError::UnsupportedManifest { .. })
        ));
    }
}
