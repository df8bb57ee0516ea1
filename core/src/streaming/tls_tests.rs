//! The streaming server over HTTPS, with a self-signed certificate made
//! here by `openssl req` and the Python `kubernetes` client verifying it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::tests::{exec, python, repo_file, server_with};
use super::*;
use crate::config::StreamingConfig;

/// A self-signed certificate for 127.0.0.1 and its key: (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=crius-streaming-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn tls_config(cert: &Path, key: &Path) -> StreamingConfig {
    StreamingConfig {
        tls_cert: Some(cert.to_path_buf()),
        tls_key: Some(key.to_path_buf()),
        ..StreamingConfig::default()
    }
}

#[tokio::test]
async fn https_urls_work_with_a_client_that_verifies_the_certificate() {
    if !crius_testkit::require_tools(&["openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path());
    let (server, _) = server_with(tls_config(&cert, &key)).await;

    let url = server
        .url(exec("echo over tls; exit 4", false, false))
        .expect("url");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = cert.display().to_string();
    let Some(result) = python(&["exec", &url, "--ca", &ca]).await else {
        return;
    };
    assert_eq!(result["stdout"], "over tls\n", "{result}");
    assert_eq!(result["returncode"], 4, "{result}");

    // Without our CA the client refuses the server (and the token is not
    // spent by a connection that never got past TLS).
    let url = server.url(exec("echo no", false, false)).expect("url");
    let refused = tokio::process::Command::new("python3")
        .arg(repo_file("tests/clients/k8s_ws_client.py"))
        .args(["exec", &url])
        .output()
        .await
        .expect("python runs");
    assert!(!refused.status.success(), "unverified certificate accepted");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let result = python(&["exec", &url, "--ca", &ca]).await.expect("python");
    assert_eq!(result["stdout"], "no\n", "{result}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /exec/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut answer),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1"),
        "plain HTTP answered on the TLS port: {answer:?}"
    );
}

#[tokio::test]
async fn bad_tls_settings_stop_the_server_from_starting() {
    if !crius_testkit::require_tools(&["openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path());
    let backend: Arc<dyn StreamBackend> = Arc::new(NoBackend);
    let start = |config: StreamingConfig| {
        let backend = backend.clone();
        async move { StreamingServer::start(&config, backend).await.unwrap_err() }
    };
    let err = start(StreamingConfig {
        tls_cert: Some(cert.clone()),
        ..StreamingConfig::default()
    })
    .await;
    assert!(err.to_string().contains("set together"), "{err}");

    let missing = dir.path().join("missing.pem");
    let err = start(tls_config(&missing, &key)).await;
    assert!(
        matches!(&err, StreamError::Config(m) if m.contains("missing.pem")),
        "{err}"
    );
    // A key file in place of the certificate, and the other way round.
    let err = start(tls_config(&key, &key)).await;
    assert!(err.to_string().contains("no certificate"), "{err}");
    let err = start(tls_config(&cert, &cert)).await;
    assert!(err.to_string().contains("tls_key"), "{err}");
    // A key that belongs to another certificate.
    let other = tempfile::tempdir().expect("tempdir");
    let (_, other_key) = self_signed(other.path());
    let err = start(tls_config(&cert, &other_key)).await;
    assert!(err.to_string().contains("does not fit"), "{err}");
}

/// A backend for servers that must not start.
struct NoBackend;

#[async_trait::async_trait]
impl StreamBackend for NoBackend {
    async fn exec(
        &self,
        _: ExecSpec,
        _: Option<TerminalSize>,
    ) -> Result<ProcessStreams, StreamError> {
        Err(StreamError::Unimplemented("exec in NoBackend".into()))
    }
    async fn attach(&self, _: AttachSpec) -> Result<ProcessStreams, StreamError> {
        Err(StreamError::Unimplemented("attach in NoBackend".into()))
    }
    async fn port_forward(&self, _: &str, _: u16) -> Result<BoxedDuplex, StreamError> {
        Err(StreamError::Unimplemented(
            "port-forward in NoBackend".into(),
        ))
    }
}
