//! Verifying cosign-style signatures: ECDSA P-256 over SHA-256 of the
//! payload, DER-encoded and base64'd in the signature layer's
//! `dev.cosignproject.cosign/signature` annotation, checked with a PEM
//! public key (`cosign generate-key-pair`'s `cosign.pub`).

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;

/// The tag cosign attaches an image's signatures under.
pub fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replacen(':', "-", 1))
}

/// Media type of a cosign signature layer (its blob is the payload).
pub const SIGNATURE_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// Public keys a `sigstoreSigned` requirement trusts.
#[derive(Debug)]
pub struct PublicKeys {
    keys: Vec<VerifyingKey>,
}

impl PublicKeys {
    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo) files, ECDSA P-256.
    pub fn parse(files: &[Vec<u8>]) -> Result<Self, String> {
        let keys = files
            .iter()
            .map(|pem| {
                let pem =
                    std::str::from_utf8(pem).map_err(|_| "a key is not PEM text".to_string())?;
                VerifyingKey::from_public_key_pem(pem)
                    .map_err(|e| format!("not an ECDSA P-256 public key in PEM: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// Whether one of the keys made `signature_b64` over `payload`.
    pub fn verify(&self, payload: &[u8], signature_b64: &str) -> Result<(), String> {
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|e| format!("the signature annotation is not base64: {e}"))?;
        let signature = Signature::from_der(&der)
            .map_err(|e| format!("the signature is not a DER ECDSA signature: {e}"))?;
        if self
            .keys
            .iter()
            .any(|key| key.verify(payload, &signature).is_ok())
        {
            Ok(())
        } else {
            Err("not signed by any of the policy's keys".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_live_under_the_digest_tag() {
        assert_eq!(
            signature_tag(&format!("sha256:{}", "e".repeat(64))),
            format!("sha256-{}.sig", "e".repeat(64))
        );
    }

    #[test]
    fn garbage_keys_and_signatures_are_refused_with_a_reason() {
        assert!(
            PublicKeys::parse(&[b"not pem".to_vec()])
                .unwrap_err()
                .contains("PEM")
        );
        let keys = PublicKeys { keys: Vec::new() };
        assert!(keys.verify(b"x", "!!").unwrap_err().contains("base64"));
        assert!(keys.verify(b"x", "AAAA").unwrap_err().contains("DER"));
    }
}
