//! Fetching an image's signatures and checking them against the
//! requirements of its signature policy ([`super::trust`]).

use std::time::Duration;

use oci_client::manifest::OciImageManifest;
use tracing::{debug, info};

use super::error::ImageError;
use super::reference::ImageName;
use super::registry::Remote;
use super::trust::{self, Decision, Requirement, Signatures};

/// At most this many signatures are read per image and kind.
const MAX_SIGNATURES: usize = 16;
/// Largest signature (or cosign payload) read.
const MAX_SIGNATURE_BYTES: u64 = 1 << 20;
/// A lookaside server that does not answer within this is an error.
const LOOKASIDE_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks every requirement of `decision` for `name` at `manifest_digest`;
/// the first one not met refuses the pull, naming it and why.
pub(super) async fn verify_signatures(
    name: &ImageName,
    remote: &Remote,
    manifest_digest: &str,
    decision: &Decision,
) -> Result<(), ImageError> {
    let needs = |kind: &str| decision.requirements.iter().any(|r| r.kind() == kind);
    let mut signatures = Signatures::default();
    let lookaside = decision.lookaside_for(name);
    if needs("signedBy")
        && let Some(base) = &lookaside
    {
        signatures.gpg = lookaside_signatures(base, name, manifest_digest).await?;
    }
    if needs("sigstoreSigned") {
        signatures.cosign = attached_signatures(remote, manifest_digest).await?;
    }
    debug!(
        image = %name,
        gpg = signatures.gpg.len(),
        cosign = signatures.cosign.len(),
        "signatures found"
    );
    let signatures = std::sync::Arc::new(signatures);
    for requirement in &decision.requirements {
        let (req, n, digest, sigs) = (
            requirement.clone(),
            name.clone(),
            manifest_digest.to_string(),
            signatures.clone(),
        );
        // Key files are read and signatures verified: blocking work.
        let checked =
            tokio::task::spawn_blocking(move || trust::check_requirement(&req, &n, &digest, &sigs))
                .await
                .map_err(|e| ImageError::Internal(format!("verifying signatures: {e}")))?;
        if let Err(mut reason) = checked {
            if matches!(requirement, Requirement::SignedBy { .. }) && lookaside.is_none() {
                reason.push_str(" (registries.d configures no lookaside store for this image)");
            }
            return Err(ImageError::Rejected {
                image: name.to_string(),
                source_of: decision.source(),
                requirement: requirement.kind(),
                reason,
            });
        }
    }
    info!(image = %name, digest = %manifest_digest, policy = %decision.source(), "signature policy accepts the image");
    Ok(())
}

/// `signature-1`, `signature-2`, ... from the lookaside store, up to the
/// first that does not exist.
async fn lookaside_signatures(
    base: &str,
    name: &ImageName,
    digest: &str,
) -> Result<Vec<Vec<u8>>, ImageError> {
    let failed = |message: String| ImageError::Registry {
        endpoint: base.to_string(),
        message,
    };
    let client = reqwest::Client::builder()
        .timeout(LOOKASIDE_TIMEOUT)
        .build()
        .map_err(|e| failed(format!("cannot create an HTTP client: {e}")))?;
    let mut out = Vec::new();
    for index in 1..=MAX_SIGNATURES {
        let url = trust::signature_url(base, name, digest, index);
        let found = if let Some(path) = url.strip_prefix("file://") {
            let path = std::path::PathBuf::from(path);
            tokio::task::spawn_blocking(move || trust::read_file_signature(&path))
                .await
                .map_err(|e| ImageError::Internal(format!("reading a signature: {e}")))?
                .map_err(|e| failed(format!("{url}: {e}")))?
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| failed(format!("{url}: {e}")))?;
            match response.status() {
                reqwest::StatusCode::NOT_FOUND => None,
                status if status.is_success() => {
                    if response
                        .content_length()
                        .is_some_and(|n| n > MAX_SIGNATURE_BYTES)
                    {
                        return Err(failed(format!(
                            "{url}: larger than {MAX_SIGNATURE_BYTES} bytes"
                        )));
                    }
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| failed(format!("{url}: {e}")))?;
                    if body.len() as u64 > MAX_SIGNATURE_BYTES {
                        return Err(failed(format!(
                            "{url}: larger than {MAX_SIGNATURE_BYTES} bytes"
                        )));
                    }
                    Some(body.to_vec())
                }
                status => return Err(failed(format!("{url}: HTTP {status}"))),
            }
        } else {
            return Err(failed(format!(
                "lookaside URL {base:?} is neither file://, http:// nor https://"
            )));
        };
        match found {
            Some(signature) => out.push(signature),
            None => break,
        }
    }
    Ok(out)
}

/// The cosign signatures attached under `sha256-<hex>.sig`: each signature
/// layer's payload and its signature annotation. No such tag: none.
async fn attached_signatures(
    remote: &Remote,
    digest: &str,
) -> Result<Vec<(Vec<u8>, String)>, ImageError> {
    let tag = trust::signature_tag(digest);
    let raw = match remote.manifest(Some(&tag), None).await {
        Ok(raw) => raw,
        Err(ImageError::ManifestNotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let manifest: OciImageManifest =
        serde_json::from_slice(&raw.bytes).map_err(|e| ImageError::UnsupportedManifest {
            reference: tag.clone(),
            reason: format!("the signature manifest is not an OCI image manifest: {e}"),
        })?;
    let mut out = Vec::new();
    for layer in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == trust::SIGNATURE_LAYER)
        .take(MAX_SIGNATURES)
    {
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(trust::SIGNATURE_ANNOTATION))
        else {
            continue;
        };
        let payload = remote.small_blob(layer, MAX_SIGNATURE_BYTES).await?;
        out.push((payload, signature.clone()));
    }
    Ok(out)
}
