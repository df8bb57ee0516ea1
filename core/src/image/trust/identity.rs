//! Whether the identity a signature claims (`docker-reference`) is one the
//! policy accepts for the pulled name (`signedIdentity`).

use super::policy::SignedIdentity;
use crate::image::ImageName;

/// A docker reference as signatures carry it: a fully expanded repository
/// and at most one of tag and digest (none is allowed: cosign signs the
/// repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerReference {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl DockerReference {
    /// Parses and expands a reference (`busybox` → `docker.io/library/busybox`).
    pub fn parse(input: &str) -> Result<Self, String> {
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[last_slash..].find(':') {
            Some(colon) => (
                &rest[..last_slash + colon],
                Some(rest[last_slash + colon + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if tag.is_some() && digest.is_some() {
            return Err(format!("{input:?} has both a tag and a digest"));
        }
        // ImageName does the expansion; the tag it adds is not ours.
        let expanded = ImageName::parse(repository, "docker.io")
            .map_err(|e| e.to_string())?
            .repository();
        Ok(Self {
            repository: expanded,
            tag,
            digest,
        })
    }

    fn of(name: &ImageName) -> Self {
        Self {
            repository: name.repository(),
            tag: name.tag.clone(),
            digest: name.digest.clone(),
        }
    }

    fn to_text(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.repository),
            (None, Some(d)) => format!("{}@{d}", self.repository),
            (None, None) => self.repository.clone(),
        }
    }
}

/// `rule` applied to the pulled `image` and the signature's `signed` claim.
pub fn matches(rule: &SignedIdentity, image: &ImageName, signed: &DockerReference) -> bool {
    let image = DockerReference::of(image);
    match rule {
        SignedIdentity::MatchExact => exact(&image, signed),
        SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(&image, signed),
        SignedIdentity::MatchRepository => image.repository == signed.repository,
        SignedIdentity::ExactReference { docker_reference } => {
            DockerReference::parse(docker_reference).is_ok_and(|want| {
                (want.tag.is_some() || want.digest.is_some()) && exact(&want, signed)
            })
        }
        SignedIdentity::ExactRepository { docker_repository } => {
            DockerReference::parse(docker_repository)
                .is_ok_and(|want| want.repository == signed.repository)
        }
        SignedIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        } => {
            let text = image.to_text();
            let remapped = match remap(&text, prefix, signed_prefix) {
                Some(t) => match DockerReference::parse(&t) {
                    Ok(r) => r,
                    Err(_) => return false,
                },
                None => image,
            };
            repo_digest_or_exact(&remapped, signed)
        }
    }
}

/// Same repository and the same tag, or the same digest.
fn exact(image: &DockerReference, signed: &DockerReference) -> bool {
    image.repository == signed.repository
        && match (&image.tag, &image.digest) {
            (Some(tag), _) => signed.tag.as_ref() == Some(tag),
            (None, Some(digest)) => signed.digest.as_ref() == Some(digest),
            (None, None) => false,
        }
}

/// A digest-pinned pull needs only the repository (the manifest digest
/// is checked anyway); a tagged pull needs the exact reference.
fn repo_digest_or_exact(image: &DockerReference, signed: &DockerReference) -> bool {
    if image.tag.is_none() && image.digest.is_some() {
        image.repository == signed.repository
    } else {
        exact(image, signed)
    }
}

/// `text` with `prefix` replaced by `signed_prefix`, when `prefix` is the
/// whole text or ends at a path, tag or digest boundary.
fn remap(text: &str, prefix: &str, signed_prefix: &str) -> Option<String> {
    let rest = text.strip_prefix(prefix)?;
    let at_boundary = rest.is_empty() || prefix.ends_with('/') || rest.starts_with(['/', ':', '@']);
    at_boundary.then(|| format!("{signed_prefix}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ImageName {
        ImageName::parse(s, "docker.io").unwrap()
    }

    fn signed(s: &str) -> DockerReference {
        DockerReference::parse(s).unwrap()
    }

    #[test]
    fn references_expand_like_image_names_and_keep_what_they_carry() {
        assert_eq!(
            signed("busybox"),
            DockerReference {
                repository: "docker.io/library/busybox".into(),
                tag: None,
                digest: None
            }
        );
        assert_eq!(signed("127.0.0.1:5000/a/b:1").tag.as_deref(), Some("1"));
        assert_eq!(
            signed("127.0.0.1:5000/a/b").repository,
            "127.0.0.1:5000/a/b"
        );
        assert!(DockerReference::parse("a:1@sha256:00").is_err());
    }

    #[test]
    fn each_rule_accepts_what_the_man_page_says() {
        use SignedIdentity::*;
        let digest = format!("sha256:{}", "a".repeat(64));
        let tagged = name("example.com/ns/app:1");
        let pinned = name(&format!("example.com/ns/app@{digest}"));
        let cases: &[(SignedIdentity, &ImageName, &str, bool)] = &[
            (MatchExact, &tagged, "example.com/ns/app:1", true),
            (MatchExact, &tagged, "example.com/ns/app:2", false),
            (MatchExact, &tagged, "example.com/ns/app", false),
            (
                MatchRepoDigestOrExact,
                &tagged,
                "example.com/ns/app:1",
                true,
            ),
            (MatchRepoDigestOrExact, &tagged, "example.com/ns/app", false),
            (
                MatchRepoDigestOrExact,
                &pinned,
                "example.com/ns/app:7",
                true,
            ),
            (
                MatchRepoDigestOrExact,
                &pinned,
                "example.com/ns/other:7",
                false,
            ),
            (MatchRepository, &tagged, "example.com/ns/app", true),
            (MatchRepository, &tagged, "example.com/ns/app:9", true),
            (MatchRepository, &tagged, "example.com/ns/other", false),
            (
                ExactReference {
                    docker_reference: "other.io/x:3".into(),
                },
                &tagged,
                "other.io/x:3",
                true,
            ),
            (
                ExactReference {
                    docker_reference: "other.io/x:3".into(),
                },
                &tagged,
                "example.com/ns/app:1",
                false,
            ),
            (
                ExactRepository {
                    docker_repository: "other.io/x".into(),
                },
                &tagged,
                "other.io/x:anything",
                true,
            ),
            (
                RemapIdentity {
                    prefix: "example.com/ns".into(),
                    signed_prefix: "upstream.io/team".into(),
                },
                &tagged,
                "upstream.io/team/app:1",
                true,
            ),
            (
                RemapIdentity {
                    prefix: "example.com/n".into(),
                    signed_prefix: "upstream.io/team".into(),
                },
                &tagged,
                "upstream.io/teams/app:1",
                false,
            ),
        ];
        for (rule, image, claim, want) in cases {
            assert_eq!(
                matches(rule, image, &signed(claim)),
                *want,
                "{rule:?} {image} {claim}"
            );
        }
    }
}
