//! Image names as the kubelet and docker write them, normalized to their
//! fully qualified form (`busybox` → `docker.io/library/busybox:latest`).
//!
//! We parse names ourselves instead of using `oci_client::Reference` because
//! its parser always assumes `docker.io` for names without a registry host,
//! while crius lets the configuration choose the default registry.

use std::fmt;

use super::error::ImageError;

/// The registry that gets the implicit `library/` namespace for one-component
/// names, as docker does.
const DOCKER_HUB: &str = "docker.io";
/// The legacy spelling of Docker Hub, normalized to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const DEFAULT_TAG: &str = "latest";
/// Longest repository name the distribution spec allows.
const MAX_NAME_LEN: usize = 255;

/// A normalized image name: registry host, repository path and a tag or a
/// digest (a digest wins: `name:tag@digest` is pulled by digest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName {
    /// Registry host, optionally with a port (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// Repository path inside the registry (`library/busybox`).
    pub path: String,
    /// Tag, `None` when the name carries a digest.
    pub tag: Option<String>,
    /// `sha256:<hex>` digest, if the name is pinned to one.
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses and normalizes `input`; names without a registry host get
    /// `default_registry`, names without tag or digest get `latest`.
    pub fn parse(input: &str, default_registry: &str) -> Result<Self, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(invalid("empty image name"));
        }
        if input.trim() != input {
            return Err(invalid("image name contains whitespace"));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest).map_err(|reason| invalid(&reason))?;
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };

        // A ':' after the last '/' separates the tag; one before it belongs
        // to a registry port (`localhost:5000/busybox`).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => {
                let colon = last_slash + i;
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|reason| invalid(&reason))?;
        }
        if name.is_empty() {
            return Err(invalid("repository name is empty"));
        }

        let (mut domain, mut path) = match split_registry_host(name) {
            Some((first, remainder)) => (first.to_string(), remainder.to_string()),
            None => {
                let default = if default_registry.is_empty() {
                    DOCKER_HUB
                } else {
                    default_registry
                };
                (default.to_string(), name.to_string())
            }
        };
        if domain == DOCKER_HUB_LEGACY {
            domain = DOCKER_HUB.to_string();
        }
        validate_domain(&domain).map_err(|reason| invalid(&reason))?;
        if domain == DOCKER_HUB && !path.contains('/') {
            path = format!("library/{path}");
        }
        validate_path(&path).map_err(|reason| invalid(&reason))?;
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(invalid("repository name is longer than 255 characters"));
        }

        let tag = match (&digest, tag) {
            (Some(_), _) => None,
            (None, Some(tag)) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, the name the repo tags and repo digests start with.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `domain/path:tag`, if the name has a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}:{tag}", self.repository()))
    }

    /// `domain/path@digest` for `digest`.
    pub fn repo_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repository())
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")
        } else if let Some(tag) = &self.tag {
            write!(f, ":{tag}")
        } else {
            Ok(())
        }
    }
}

/// True for `sha256:` followed by 64 lowercase hex digits.
/// `(host, rest)` when `name` starts with a registry host (`example.com/…`,
/// `host:5000/…`, `localhost/…`); `None` for a short name (`busybox`,
/// `library/busybox`), which takes the default or a search registry.
pub fn split_registry_host(name: &str) -> Option<(&str, &str)> {
    name.split_once('/')
        .filter(|(first, _)| first.contains('.') || first.contains(':') || *first == "localhost")
}

pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_sha256_hex)
}

/// True for exactly 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// True for a non-empty string of lowercase hex digits.
pub fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn validate_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} has no algorithm"));
    };
    if algorithm != "sha256" {
        return Err(format!(
            "digest algorithm {algorithm:?} is not supported (only sha256)"
        ));
    }
    if !is_sha256_hex(hex) {
        return Err(format!("digest {digest:?} is not 64 lowercase hex digits"));
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if valid {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}"))
    }
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("invalid port in registry {domain:?}"));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.split('.').all(valid_label) {
        Ok(())
    } else {
        Err(format!("invalid registry host {domain:?}"))
    }
}

/// Path components are lowercase alphanumerics joined by `.`, `_`, `__` or
/// runs of `-`, as in the distribution reference grammar.
fn validate_path(path: &str) -> Result<(), String> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository name must be lowercase".to_string());
    }
    for component in path.split('/') {
        if !valid_component(component) {
            return Err(format!("invalid repository path component {component:?}"));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageName {
        ImageName::parse(s, "docker.io").unwrap()
    }

    #[test]
    fn short_names_get_docker_hub_library_and_latest() {
        let n = parse("busybox");
        assert_eq!(n.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(n.repo_tag().unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(
            parse("busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            parse("library/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parse("someone/tool:v1").to_string(),
            "docker.io/someone/tool:v1"
        );
        assert_eq!(
            parse("index.docker.io/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn hosts_with_ports_and_localhost() {
        let n = parse("127.0.0.1:5000/test/busybox:v2");
        assert_eq!(n.domain, "127.0.0.1:5000");
        assert_eq!(n.path, "test/busybox");
        assert_eq!(n.tag.as_deref(), Some("v2"));
        let n = parse("localhost:5000/busybox");
        assert_eq!(n.to_string(), "localhost:5000/busybox:latest");
        let n = parse("localhost/busybox");
        assert_eq!(n.domain, "localhost");
        // No `library/` outside Docker Hub.
        assert_eq!(parse("registry.k8s.io/pause:3.10").path, "pause");
    }

    #[test]
    fn configured_default_registry() {
        let n = ImageName::parse("busybox", "127.0.0.1:5000").unwrap();
        assert_eq!(n.to_string(), "127.0.0.1:5000/busybox:latest");
        let n = ImageName::parse("busybox", "").unwrap();
        assert_eq!(n.to_string(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn digests_win_over_tags() {
        let d = format!("sha256:{}", "a".repeat(64));
        let n = parse(&format!("busybox@{d}"));
        assert_eq!(n.tag, None);
        assert_eq!(n.digest.as_deref(), Some(d.as_str()));
        assert_eq!(n.to_string(), format!("docker.io/library/busybox@{d}"));
        let n = parse(&format!("busybox:1.0@{d}"));
        assert_eq!(n.tag, None);
        assert_eq!(n.repo_digest(&d), format!("docker.io/library/busybox@{d}"));
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-bad",
            "busybox@sha256:abc",
            "busybox@md5:0123456789abcdef0123456789abcdef",
            "a//b",
            "docker.io/-x",
            "host:port/x",
            " busybox",
            "busy..box",
        ] {
            let err = ImageName::parse(bad, "docker.io").unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "{bad:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn component_separators() {
        assert!(valid_component("a.b_c__d---e"));
        assert!(!valid_component("a___b"));
        assert!(!valid_component("a._b"));
        assert!(!valid_component("_a"));
    }
}
