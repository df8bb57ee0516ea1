//! The client side of the streaming URLs for `exec`, `attach` and
//! `port-forward`: WebSocket with the Kubernetes channel protocols
//! (`v5.channel.k8s.io` for remote commands, `v4.channel.k8s.io` framing
//! for port-forward), over TLS for `https://` URLs.
//!
//! Remote commands: every message is one channel byte and data; 0 stdin,
//! 1 stdout, 2 stderr, 3 the exit status (a `metav1.Status` JSON), 4
//! resize (`{"Width":..,"Height":..}`), 255 "close channel <byte>" (our
//! stdin's EOF). Port-forward: channel 0 data, 1 errors, each opened by
//! the server with the port as 2 bytes little-endian.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::term;

use crius_proto::remotecommand::{CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT};

/// The CA bundle used for `https://` URLs without `--streaming-ca`.
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A byte stream to the streaming server, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// How to reach the streaming server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// PEM CA bundle for `https://` URLs.
    pub ca: Option<PathBuf>,
}

fn tls_connector(ca: &Path) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading CA bundle {}", ca.display()))?
    {
        let cert = cert.with_context(|| format!("parsing CA bundle {}", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate of {}", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("no CA certificate in {}", ca.display());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Opens a WebSocket to `url` offering `protocol`, and checks the server
/// chose it.
pub async fn connect(url: &str, protocol: &str, options: &Options) -> Result<Ws> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("unexpected streaming URL {url:?}");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    };
    let port = if authority.contains(':') {
        ""
    } else if tls {
        ":443"
    } else {
        ":80"
    };
    let tcp = TcpStream::connect(format!("{authority}{port}"))
        .await
        .with_context(|| format!("connecting to the streaming server {authority}"))?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = if tls {
        let ca = options
            .ca
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA));
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| anyhow!("server name {host:?}: {e}"))?;
        let stream = tls_connector(&ca)
            .context("TLS setup")?
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {authority} (CA {})", ca.display()))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let ws_url = if tls {
        format!("wss://{rest}")
    } else {
        format!("ws://{rest}")
    };
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse()?);
    let (ws, response) = tokio_tungstenite::client_async(request, io)
        .await
        .with_context(|| format!("WebSocket upgrade of {url}"))?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if chosen != protocol {
        bail!("the server chose subprotocol {chosen:?}, not {protocol:?}");
    }
    Ok(ws)
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(1 + data.len());
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::binary(bytes)
}

fn resize_message(width: u16, height: u16) -> Message {
    let json = serde_json::json!({"Width": width, "Height": height}).to_string();
    frame(RESIZE, json.as_bytes())
}

/// The exit code a `metav1.Status` reports; `Err` for a failure that is
/// not the command's exit.
fn exit_code(status: &[u8]) -> Result<i32> {
    let status: serde_json::Value =
        serde_json::from_slice(status).context("the exit status is not JSON")?;
    if status["status"] == "Success" {
        return Ok(0);
    }
    if status["reason"] == "NonZeroExitCode"
        && let Some(causes) = status["details"]["causes"].as_array()
        && let Some(code) = causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
    {
        return Ok(code);
    }
    bail!(
        "{}",
        status["message"]
            .as_str()
            .unwrap_or("the remote command failed")
    )
}

/// What a remote-command session does locally.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// Send our stdin (EOF is sent as a close of the stdin channel).
    pub stdin: bool,
    /// The remote side has a terminal: raw mode here, resizes sent.
    pub tty: bool,
    /// Print the time from `Some(start)` to the first output byte.
    pub latency_from: Option<Instant>,
}

/// Runs an exec or attach session on `ws` until the server closes it;
/// returns the remote command's exit code.
pub async fn remote_command(ws: Ws, session: Session) -> Result<i32> {
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    // The writer keeps the connection open until we are done reading: a
    // close from us would end the session on the server.
    let done = tokio_util::sync::CancellationToken::new();
    let writer = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = rx.recv() => match message {
                        Some(message) => {
                            if sink.send(message).await.is_err() {
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = done.cancelled() => break,
                }
            }
            done.cancelled().await;
            let _ = sink.close().await;
        })
    };

    // Raw mode only when our keystrokes go to the remote terminal (as
    // kubectl: without -i, ^C stays ours).
    let raw = if session.tty && session.stdin {
        term::RawMode::enter(std::io::stdin().as_raw_fd()).context("raw terminal mode")?
    } else {
        None
    };
    if session.tty {
        let fd = std::io::stdout().as_raw_fd();
        if let Some((w, h)) = term::size(fd).or_else(|| term::size(std::io::stdin().as_raw_fd())) {
            let _ = tx.send(resize_message(w, h)).await;
        }
        let tx = tx.clone();
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                let size = term::size(std::io::stdout().as_raw_fd())
                    .or_else(|| term::size(std::io::stdin().as_raw_fd()));
                if let Some((w, h)) = size
                    && tx.send(resize_message(w, h)).await.is_err()
                {
                    return;
                }
            }
        });
    }
    if session.stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(frame(STDIN, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(frame(CLOSE, &[STDIN])).await;
        });
    }
    drop(tx);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut status = Vec::new();
    let mut first = session.latency_from;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    // In raw mode a newline does not return the carriage.
    let eol = if raw.is_some() { "\r\n" } else { "\n" };
    loop {
        let message = tokio::select! {
            message = source.next() => message,
            _ = terminate.recv() => {
                drop(raw);
                bail!("terminated");
            }
        };
        let data = match message {
            None => break,
            Some(Err(e)) => {
                drop(raw);
                return Err(anyhow!("streaming connection: {e}"));
            }
            Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Text(text))) => text.as_bytes().to_vec().into(),
            Some(Ok(_)) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        if payload.is_empty() {
            continue;
        }
        match channel {
            STDOUT => {
                if let Some(start) = first.take() {
                    eprint!(
                        "url-to-first-byte-ms: {:.3}{eol}",
                        start.elapsed().as_secs_f64() * 1000.0
                    );
                }
                stdout.write_all(payload).await?;
                stdout.flush().await?;
            }
            STDERR => {
                stderr.write_all(payload).await?;
                stderr.flush().await?;
            }
            ERROR => status.extend_from_slice(payload),
            _ => {}
        }
    }
    drop(raw);
    // Answer the server's close (or send ours), briefly.
    done.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    if status.is_empty() {
        bail!("the stream ended without an exit status");
    }
    exit_code(&status)
}

/// One forwarded connection: `tcp` to `port` over the WebSocket `ws`.
pub async fn forward_connection(ws: Ws, mut tcp: TcpStream, port: u16) -> Result<()> {
    let (mut sink, mut source) = ws.split();
    let (mut tcp_read, mut tcp_write) = tcp.split();
    let mut seen = [false; 2];
    let mut errors = Vec::new();
    let upstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match tcp_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(frame(0, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        // A WebSocket channel cannot be half-closed: the connection ends
        // when the pod's side does.
        std::future::pending::<()>().await;
    };
    let downstream = async {
        while let Some(message) = source.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let index = usize::from(channel);
            if index > 1 {
                continue;
            }
            if !seen[index] {
                // The channel's opening message: the port.
                seen[index] = true;
                if payload.len() >= 2 && u16::from_le_bytes([payload[0], payload[1]]) != port {
                    errors.extend_from_slice(b"the server opened another port");
                    break;
                }
                continue;
            }
            if channel == 0 {
                if tcp_write.write_all(payload).await.is_err() {
                    break;
                }
            } else {
                errors.extend_from_slice(payload);
            }
        }
        let _ = tcp_write.shutdown().await;
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
    if !errors.is_empty() {
        bail!("{}", String::from_utf8_lossy(&errors));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_statuses() {
        assert_eq!(
            exit_code(br#"{"metadata":{},"status":"Success"}"#).unwrap(),
            0
        );
        let failure = br#"{"status":"Failure","reason":"NonZeroExitCode","message":"x",
            "details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#;
        assert_eq!(exit_code(failure).unwrap(), 42);
        let err = exit_code(br#"{"status":"Failure","message":"no such container"}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "no such container");
        assert!(exit_code(b"not json").is_err());
    }
}
