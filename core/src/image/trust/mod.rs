//! Image trust: whether a pulled image meets the node's signature policy
//! (containers-policy.json(5)), with GPG simple-signing signatures from a
//! lookaside store (containers-registries.d(5)) and cosign-style
//! signatures attached in the registry.
//!
//! The policy is read on each pull (so an edit applies to the next pull):
//! `<signature_policy_dir>/<namespace>.json` for a pull that names the
//! pod's namespace when that file exists, else `signature_policy`; no
//! policy file at all accepts anything. The decision is made after the
//! manifest is fetched and before any blob is, so a refused image leaves
//! nothing in the store.

mod gpg;
mod identity;
mod lookaside;
mod payload;
mod policy;
mod sigstore;

use std::path::{Path, PathBuf};

pub use lookaside::RegistriesD;
pub use policy::{Policy, Requirement};

use crate::image::ImageName;

/// A policy or signature-store configuration that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrustError {
    #[error("signature policy {}: {reason}", path.display())]
    InvalidPolicy { path: PathBuf, reason: String },
    #[error("registries.d {}: {reason}", path.display())]
    InvalidRegistriesD { path: PathBuf, reason: String },
}

/// Where the policies and signature stores are (`image.signature_policy`,
/// `image.signature_policy_dir`, `image.registries_d`; empty = none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustSettings {
    pub policy: PathBuf,
    pub policy_dir: PathBuf,
    pub registries_d: PathBuf,
}

/// What one pull must meet.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The policy file it came from (empty: none configured or found).
    pub policy: PathBuf,
    pub scope: String,
    pub requirements: Vec<Requirement>,
    registries_d: RegistriesD,
}

impl TrustSettings {
    /// The policy for a pull in `namespace` and the requirements it sets
    /// for `name` (blocking: reads the files).
    pub fn decide(
        &self,
        name: &ImageName,
        namespace: Option<&str>,
    ) -> Result<Decision, TrustError> {
        let policy = match self.policy_file(namespace) {
            Some(path) => Policy::load(&path)?,
            None => Policy::accept_anything(),
        };
        let (scope, requirements) = policy.requirements_for(name);
        // Only GPG signatures are looked up through registries.d.
        let needs_lookaside = requirements
            .iter()
            .any(|r| matches!(r, Requirement::SignedBy { .. }));
        let registries_d = if !needs_lookaside || self.registries_d.as_os_str().is_empty() {
            RegistriesD::default()
        } else {
            RegistriesD::read(&self.registries_d).map_err(|reason| {
                TrustError::InvalidRegistriesD {
                    path: self.registries_d.clone(),
                    reason,
                }
            })?
        };
        Ok(Decision {
            policy: policy.path.clone(),
            scope: scope.to_string(),
            requirements: requirements.to_vec(),
            registries_d,
        })
    }

    /// `<dir>/<namespace>.json` if it exists (a namespace is a DNS label,
    /// so it cannot leave the directory), else the node's policy if it
    /// exists.
    fn policy_file(&self, namespace: Option<&str>) -> Option<PathBuf> {
        if let Some(ns) = namespace.filter(|ns| is_dns_label(ns))
            && !self.policy_dir.as_os_str().is_empty()
        {
            let path = self.policy_dir.join(format!("{ns}.json"));
            if path.exists() {
                return Some(path);
            }
        }
        let node = &self.policy;
        (!node.as_os_str().is_empty() && node.exists()).then(|| node.clone())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Decision {
    /// Nothing to verify: every requirement is insecureAcceptAnything.
    pub fn accepts_anything(&self) -> bool {
        self.requirements
            .iter()
            .all(|r| matches!(r, Requirement::InsecureAcceptAnything {}))
    }

    /// A `reject` requirement, refused before the registry is asked.
    pub fn rejects(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| matches!(r, Requirement::Reject {}))
    }

    /// Where GPG signatures of `name` are published, if configured.
    pub fn lookaside_for(&self, name: &ImageName) -> Option<String> {
        self.registries_d.for_image(name).lookaside
    }

    /// Where this decision came from, for messages.
    pub fn source(&self) -> String {
        let policy = if self.policy.as_os_str().is_empty() {
            "no policy file".to_string()
        } else {
            self.policy.display().to_string()
        };
        let scope = match self.scope.as_str() {
            "" => "the docker transport default".to_string(),
            "default" => "its default".to_string(),
            s => format!("scope {s:?}"),
        };
        format!("{policy}, {scope}")
    }
}

/// Signatures found for one image, by kind.
#[derive(Debug, Default)]
pub struct Signatures {
    /// GPG signatures (lookaside `signature-N` files).
    pub gpg: Vec<Vec<u8>>,
    /// Cosign signatures: (payload, base64 signature annotation).
    pub cosign: Vec<(Vec<u8>, String)>,
}

/// Checks one signature requirement against the signatures found for
/// `name` at `manifest_digest`: `Ok` when one signature verifies with the
/// requirement's keys, signs this manifest and claims an identity the
/// requirement accepts; else why not (every signature's reason).
pub fn check_requirement(
    requirement: &Requirement,
    name: &ImageName,
    manifest_digest: &str,
    signatures: &Signatures,
) -> Result<(), String> {
    let keys = match requirement.keys() {
        Some(source) => source
            .load()
            .map_err(|e| format!("its keys ({}): {e}", source.describe()))?,
        None => {
            return match requirement {
                Requirement::InsecureAcceptAnything {} => Ok(()),
                _ => Err("the policy rejects this image".to_string()),
            };
        }
    };
    let rule = requirement.signed_identity();
    let mut reasons = Vec::new();
    let accept = |payload: &[u8], kind: &str| -> Result<(), String> {
        let claim = payload::claim_for(payload, kind, manifest_digest)?;
        if identity::matches(&rule, name, &claim.identity) {
            Ok(())
        } else {
            Err(format!(
                "signed for {}, which {rule:?} does not accept for {name}",
                claim.identity.repository
                    + &claim
                        .identity
                        .tag
                        .as_ref()
                        .map(|t| format!(":{t}"))
                        .unwrap_or_default()
            ))
        }
    };
    match requirement {
        Requirement::SignedBy { .. } => {
            let keyring = gpg::Keyring::parse(&keys)?;
            if signatures.gpg.is_empty() {
                return Err("no GPG signature was found".to_string());
            }
            for (n, signature) in signatures.gpg.iter().enumerate() {
                match keyring
                    .verify(signature)
                    .and_then(|payload| accept(&payload, payload::ATOMIC_SIGNATURE))
                {
                    Ok(()) => return Ok(()),
                    Err(why) => reasons.push(format!("signature-{}: {why}", n + 1)),
                }
            }
        }
        Requirement::SigstoreSigned { .. } => {
            let public = sigstore::PublicKeys::parse(&keys)?;
            if signatures.cosign.is_empty() {
                return Err("no sigstore signature is attached".to_string());
            }
            for (n, (payload, signature)) in signatures.cosign.iter().enumerate() {
                match public
                    .verify(payload, signature)
                    .and_then(|()| accept(payload, payload::COSIGN_SIGNATURE))
                {
                    Ok(()) => return Ok(()),
                    Err(why) => reasons.push(format!("signature {}: {why}", n + 1)),
                }
            }
        }
        Requirement::InsecureAcceptAnything {} | Requirement::Reject {} => unreachable!("no keys"),
    }
    Err(reasons.join("; "))
}

pub use lookaside::signature_url;
pub use sigstore::{SIGNATURE_ANNOTATION, SIGNATURE_LAYER, signature_tag};

/// Reads a `file://` lookaside URL's path (blocking); `None` when absent.
pub fn read_file_signature(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
