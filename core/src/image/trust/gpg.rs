//! Verifying GPG "simple signing" signatures: an OpenPGP signed message
//! (as `gpg --sign` writes it, usually compressed) whose literal data is
//! the signature payload. OpenPGP is done by rpgp (`pgp`), pure Rust.

use pgp::composed::{Message, PublicOrSecret, SignedPublicKey};
use pgp::types::KeyDetails as _;

/// Largest payload read out of a signature: payloads are a few hundred
/// bytes; anything near this is not one.
const MAX_PAYLOAD: u64 = 64 << 10;

/// The public keys of a keyring (one or more key files' contents, binary
/// or ASCII-armored), each checked to be bound by its own self-signatures.
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    pub fn parse(files: &[Vec<u8>]) -> Result<Self, String> {
        let mut keys = Vec::new();
        for file in files {
            let (parsed, _) = PublicOrSecret::from_reader_many(std::io::Cursor::new(file))
                .map_err(|e| format!("not an OpenPGP keyring: {e}"))?;
            for key in parsed {
                match key.map_err(|e| format!("reading a key: {e}"))? {
                    PublicOrSecret::Public(key) => {
                        key.verify_bindings().map_err(|e| {
                            format!(
                                "key {}: its self-signatures do not verify: {e}",
                                key.fingerprint()
                            )
                        })?;
                        keys.push(key);
                    }
                    PublicOrSecret::Secret(_) => {
                        return Err("the keyring holds a secret key; give public keys only".into());
                    }
                }
            }
        }
        if keys.is_empty() {
            return Err("the keyring holds no public key".to_string());
        }
        Ok(Self { keys })
    }

    /// The payload of `signature` if a key of this ring (primary or
    /// subkey) made it; else why not.
    pub fn verify(&self, signature: &[u8]) -> Result<Vec<u8>, String> {
        let message = if signature.starts_with(b"-----BEGIN") {
            Message::from_armor(std::io::Cursor::new(signature)).map(|(m, _)| m)
        } else {
            Message::from_bytes(std::io::Cursor::new(signature))
        }
        .map_err(|e| format!("not an OpenPGP message: {e}"))?;
        let mut message = message
            .decompress()
            .map_err(|e| format!("decompressing the signature: {e}"))?;
        if !message.is_signed() {
            return Err("the OpenPGP message is not signed".to_string());
        }
        let mut payload = Vec::new();
        {
            use std::io::Read as _;
            (&mut message)
                .take(MAX_PAYLOAD + 1)
                .read_to_end(&mut payload)
                .map_err(|e| format!("reading the signed payload: {e}"))?;
        }
        if payload.len() as u64 > MAX_PAYLOAD {
            return Err(format!(
                "the signed payload is larger than {MAX_PAYLOAD} bytes"
            ));
        }
        for key in &self.keys {
            if message.verify(key).is_ok() {
                return Ok(payload);
            }
            for subkey in &key.public_subkeys {
                if message.verify(subkey).is_ok() {
                    return Ok(payload);
                }
            }
        }
        let fingerprints: Vec<String> = self
            .keys
            .iter()
            .map(|k| k.fingerprint().to_string())
            .collect();
        Err(format!(
            "not signed by a key of the keyring ({})",
            fingerprints.join(", ")
        ))
    }
}
