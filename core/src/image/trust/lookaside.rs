//! containers-registries.d(5): where an image's GPG signatures are
//! published beside its registry (the "lookaside" store), and whether its
//! cosign signatures are attached in the registry.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::image::ImageName;

/// The `*.yaml` files of a registries.d directory, merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistriesD {
    default_docker: Option<Namespace>,
    docker: BTreeMap<String, Namespace>,
}

/// What one scope configures.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Namespace {
    /// Base URL of the signature store (`sigstore` is its old name).
    #[serde(alias = "sigstore")]
    pub lookaside: Option<String>,
    /// Where signing tools write; not read here.
    #[serde(alias = "sigstore-staging")]
    pub lookaside_staging: Option<String>,
    pub use_sigstore_attachments: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct File {
    default_docker: Option<Namespace>,
    #[serde(default)]
    docker: BTreeMap<String, Namespace>,
}

impl RegistriesD {
    /// Reads `dir/*.yaml` in name order (blocking); a missing directory is
    /// empty. Two files configuring one scope is an error, as in
    /// containers/image.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let mut out = Self::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(format!("reading {}: {e}", dir.display())),
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let file: File =
                serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some(default) = file.default_docker {
                if out.default_docker.is_some() {
                    return Err(format!(
                        "{}: default-docker is configured in more than one file",
                        path.display()
                    ));
                }
                out.default_docker = Some(default);
            }
            for (scope, namespace) in file.docker {
                if out.docker.contains_key(&scope) {
                    return Err(format!(
                        "{}: docker scope {scope:?} is configured in more than one file",
                        path.display()
                    ));
                }
                out.docker.insert(scope, namespace);
            }
        }
        Ok(out)
    }

    /// The configuration of the most specific scope naming `name`
    /// (reference, repository, enclosing namespaces, registry), else
    /// `default-docker`.
    pub fn for_image(&self, name: &ImageName) -> Namespace {
        super::policy::path_scopes(name)
            .iter()
            .find_map(|s| self.docker.get(s))
            .or(self.default_docker.as_ref())
            .cloned()
            .unwrap_or_default()
    }
}

/// The URL of signature `index` (from 1) of the manifest `digest` of
/// `name` under lookaside `base`: `<base>/<path>@<algo>=<hex>/signature-<n>`,
/// the path without the registry host (containers' signature-protocols).
pub fn signature_url(base: &str, name: &ImageName, digest: &str, index: usize) -> String {
    let (algo, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    format!(
        "{}/{}@{algo}={hex}/signature-{index}",
        base.trim_end_matches('/'),
        name.path
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ImageName {
        ImageName::parse(s, "docker.io").unwrap()
    }

    #[test]
    fn the_most_specific_scope_wins_and_files_may_not_overlap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "default-docker:\n  lookaside: https://sigs.example/default\n\
             docker:\n  example.com/team:\n    lookaside: https://sigs.example/team\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "docker:\n  example.com/team/app:\n    sigstore: https://old.example/app\n    \
             use-sigstore-attachments: true\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "not: [yaml").unwrap();
        let d = RegistriesD::read(dir.path()).unwrap();
        let app = d.for_image(&name("example.com/team/app:1"));
        assert_eq!(app.lookaside.as_deref(), Some("https://old.example/app"));
        assert_eq!(app.use_sigstore_attachments, Some(true));
        assert_eq!(
            d.for_image(&name("example.com/team/other:1"))
                .lookaside
                .as_deref(),
            Some("https://sigs.example/team")
        );
        assert_eq!(
            d.for_image(&name("busybox")).lookaside.as_deref(),
            Some("https://sigs.example/default")
        );
        std::fs::write(
            dir.path().join("c.yaml"),
            "docker:\n  example.com/team:\n    lookaside: https://x\n",
        )
        .unwrap();
        assert!(
            RegistriesD::read(dir.path())
                .unwrap_err()
                .contains("more than one file")
        );
        assert_eq!(
            RegistriesD::read(&dir.path().join("missing")).unwrap(),
            RegistriesD::default()
        );
    }

    #[test]
    fn signature_urls_follow_the_lookaside_layout() {
        let digest = format!("sha256:{}", "d".repeat(64));
        assert_eq!(
            signature_url("https://sigs.example/s/", &name("busybox"), &digest, 1),
            format!(
                "https://sigs.example/s/library/busybox@sha256={}/signature-1",
                "d".repeat(64)
            )
        );
        assert_eq!(
            signature_url(
                "http://127.0.0.1:9/s",
                &name("127.0.0.1:5000/a/b:1"),
                &digest,
                2
            ),
            format!(
                "http://127.0.0.1:9/s/a/b@sha256={}/signature-2",
                "d".repeat(64)
            )
        );
    }
}
