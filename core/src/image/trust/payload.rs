//! The signed JSON document both signature kinds carry ("simple signing":
//! containers-signature(5)): the manifest digest and the identity it is
//! signed for.

use serde::Deserialize;

use super::identity::DockerReference;

/// `critical.type` of a GPG simple-signing signature.
pub const ATOMIC_SIGNATURE: &str = "atomic container signature";
/// `critical.type` of a cosign signature payload.
pub const COSIGN_SIGNATURE: &str = "cosign container image signature";

#[derive(Deserialize)]
struct Document {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: Image,
    identity: Identity,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    manifest_digest: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

/// What a verified payload claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub manifest_digest: String,
    pub identity: DockerReference,
}

/// Parses a verified payload of type `kind` and checks it signs
/// `manifest_digest`.
pub fn claim_for(payload: &[u8], kind: &str, manifest_digest: &str) -> Result<Claim, String> {
    let doc: Document =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not a signature: {e}"))?;
    if doc.critical.kind != kind {
        return Err(format!(
            "payload type {:?}, expected {kind:?}",
            doc.critical.kind
        ));
    }
    let claimed = doc.critical.image.manifest_digest;
    if !claimed.eq_ignore_ascii_case(manifest_digest) {
        return Err(format!("signs manifest {claimed}, not {manifest_digest}"));
    }
    let identity = DockerReference::parse(&doc.critical.identity.docker_reference)
        .map_err(|e| format!("signed identity: {e}"))?;
    Ok(Claim {
        manifest_digest: claimed,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(kind: &str, digest: &str) -> Vec<u8> {
        serde_json::json!({"critical": {"type": kind, "image": {"docker-manifest-digest": digest},
            "identity": {"docker-reference": "example.com/app:1"}}, "optional": null})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_payload_must_be_of_its_kind_and_sign_the_manifest() {
        let d = format!("sha256:{}", "b".repeat(64));
        let claim = claim_for(&doc(ATOMIC_SIGNATURE, &d), ATOMIC_SIGNATURE, &d).unwrap();
        assert_eq!(claim.identity.repository, "example.com/app");
        assert!(
            claim_for(&doc(COSIGN_SIGNATURE, &d), ATOMIC_SIGNATURE, &d)
                .unwrap_err()
                .contains("payload type")
        );
        let other = format!("sha256:{}", "c".repeat(64));
        assert!(
            claim_for(&doc(ATOMIC_SIGNATURE, &other), ATOMIC_SIGNATURE, &d)
                .unwrap_err()
                .contains("signs manifest")
        );
        assert!(claim_for(b"{}", ATOMIC_SIGNATURE, &d).is_err());
    }
}
