//! HTTPS for the streaming server: the configured PEM certificate chain
//! and private key, served with rustls (TLS 1.2 and 1.3, HTTP/1.1 only:
//! the streaming protocols are HTTP/1.1 upgrades).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use super::StreamError;

/// An acceptor for `cert` (PEM chain, leaf first) and `key` (PEM PKCS#8,
/// PKCS#1 or SEC1 key). Errors name the file and are meant for the
/// operator.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StreamError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            StreamError::Config(format!(
                "streaming.tls_cert {}: cannot read a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(StreamError::Config(format!(
            "streaming.tls_cert {}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        StreamError::Config(format!(
            "streaming.tls_key {}: cannot read a PEM private key: {e}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StreamError::Config(format!("streaming TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            StreamError::Config(format!(
                "streaming.tls_cert/tls_key: the key does not fit the certificate or is unusable: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
