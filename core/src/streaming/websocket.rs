//! The WebSocket transports: remote commands over the channel protocols
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io` and the
//! base64 variants) and port-forward (`v4.channel.k8s.io`,
//! `portforward.k8s.io`).
//!
//! Every message starts with its channel number: one byte in the binary
//! protocols, an ASCII digit followed by base64 in the base64 ones. Remote
//! commands use 0 stdin, 1 stdout, 2 stderr, 3 error (the exit status), 4
//! resize; v5 adds 255 = "close channel <next byte>" (the client closing
//! stdin). Port-forward uses channels 2n (data) and 2n+1 (error) for the
//! n-th port, each opened by the server with the port as 2 bytes
//! little-endian.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::remotecommand::{self, ClientIo, Options, OutChannel, ResizeDecoder, Starter};
use super::session::{
    Activity, ForwardEnd, HttpResponse, Session, drain_connection, forward_connection, text,
    upgraded,
};
use super::status::StatusFormat;

pub const V5_PROTOCOL: &str = "v5.channel.k8s.io";
pub const V4_PROTOCOL: &str = "v4.channel.k8s.io";
pub const V4_BASE64_PROTOCOL: &str = "v4.base64.channel.k8s.io";
pub const V1_PROTOCOL: &str = "channel.k8s.io";
pub const V1_BASE64_PROTOCOL: &str = "base64.channel.k8s.io";
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Remote-command subprotocols; `""` is a client that asked for none.
pub(crate) const REMOTE_COMMAND_PROTOCOLS: &[&str] = &[
    V5_PROTOCOL,
    V4_PROTOCOL,
    V4_BASE64_PROTOCOL,
    V1_PROTOCOL,
    V1_BASE64_PROTOCOL,
    "",
];
/// Port-forward subprotocols.
pub(crate) const PORT_FORWARD_PROTOCOLS: &[&str] =
    &[V4_PROTOCOL, V4_BASE64_PROTOCOL, PORT_FORWARD_PROTOCOL, ""];

use crius_proto::remotecommand::{CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT};

/// Largest message accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;

/// The outcome of the handshake checks.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub protocol: String,
    accept: String,
}

/// Checks a WebSocket upgrade request and picks the subprotocol: the
/// client's first offer that is supported.
// The refusal is the response itself, returned as is by the caller.
#[allow(clippy::result_large_err)]
pub(crate) fn negotiate(
    headers: &HeaderMap,
    supported: &[&str],
) -> Result<Negotiated, HttpResponse> {
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "13");
    if !version_ok {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 required",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(response);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        offered.push(String::new());
    }
    match offered.iter().find(|p| supported.contains(&p.as_str())) {
        Some(protocol) => Ok(Negotiated {
            protocol: protocol.clone(),
            accept,
        }),
        None => Err(text(
            StatusCode::BAD_REQUEST,
            format!(
                "requested protocol(s) {offered:?} are not supported; supported: {:?}",
                supported
                    .iter()
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
            ),
        )),
    }
}

/// The 101 answer.
pub(crate) fn switching(negotiated: &Negotiated) -> HttpResponse {
    let mut response = Response::new(http_body_util::Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&negotiated.accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if !negotiated.protocol.is_empty()
        && let Ok(protocol) = HeaderValue::from_str(&negotiated.protocol)
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// How channel numbers and payloads are put in messages.
#[derive(Debug, Clone, Copy)]
struct Codec {
    base64: bool,
}

impl Codec {
    fn for_protocol(protocol: &str) -> Self {
        Self {
            base64: protocol.contains("base64."),
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut frame = Vec::with_capacity(1 + data.len());
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::binary(frame)
        }
    }

    /// Clients send text or binary messages alike (the Python client sends
    /// text unless told otherwise); the protocol decides the encoding.
    fn decode(self, message: &Message) -> Option<(u8, Bytes)> {
        let raw: Bytes = match message {
            Message::Binary(data) => data.clone(),
            Message::Text(text) => Bytes::copy_from_slice(text.as_bytes()),
            _ => return None,
        };
        let (&first, rest) = raw.split_first()?;
        if self.base64 {
            let data = STANDARD.decode(rest).ok()?;
            Some((first.wrapping_sub(b'0'), Bytes::from(data)))
        } else {
            Some((first, raw.slice(1..)))
        }
    }
}

type Ws = WebSocketStream<TokioIo<Upgraded>>;

fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Sends what `outgoing` yields, then a close frame.
fn spawn_writer(
    mut sink: futures::stream::SplitSink<Ws, Message>,
    mut outgoing: mpsc::Receiver<Message>,
    activity: Activity,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
            activity.touch();
        }
        let _ = sink.send(close_message()).await;
        let _ = sink.close().await;
    })
}

/// What both WebSocket transports run a session on: the client's
/// messages, the queue the writer sends to the client, and the watchdog
/// that ends an idle session.
struct Wired {
    messages: ClientMessages,
    /// Cancelled once the client is done or the session idles out.
    gone: CancellationToken,
    watchdog: tokio::task::JoinHandle<()>,
    messages_tx: mpsc::Sender<Message>,
    writer: tokio::task::JoinHandle<()>,
}

/// Completes the WebSocket upgrade of `req` and starts the writer
/// (queueing up to `queue` messages) and the idle watchdog; `None` when
/// the upgrade failed.
async fn open(req: Request<Incoming>, session: &Session, queue: usize) -> Option<Wired> {
    let io = upgraded(req).await?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (sink, source) = ws.split();
    let activity = Activity::new();
    let gone = CancellationToken::new();
    let watchdog = session.watch_idle(&activity, gone.clone());
    let (messages_tx, messages_rx) = mpsc::channel::<Message>(queue);
    let writer = spawn_writer(sink, messages_rx, activity.clone());
    Some(Wired {
        messages: ClientMessages {
            source,
            gone: gone.clone(),
            activity,
        },
        gone,
        watchdog,
        messages_tx,
        writer,
    })
}

/// What the client sends.
struct ClientMessages {
    source: futures::stream::SplitStream<Ws>,
    gone: CancellationToken,
    activity: Activity,
}

impl ClientMessages {
    /// The client's next message; `None` once it closed or failed (which
    /// ends the session: `gone` is cancelled) or the session is gone.
    async fn next(&mut self) -> Option<Message> {
        let message = tokio::select! {
            message = self.source.next() => message,
            _ = self.gone.cancelled() => return None,
        };
        match message {
            Some(Ok(message)) if !matches!(message, Message::Close(_)) => {
                self.activity.touch();
                Some(message)
            }
            _ => {
                self.gone.cancel();
                None
            }
        }
    }
}

/// A remote command over a WebSocket.
pub(crate) async fn remote_command(
    session: Session,
    options: Options,
    start: Starter,
    protocol: String,
    req: Request<Incoming>,
) {
    let Some(wired) = open(req, &session, 16).await else {
        return;
    };
    let codec = Codec::for_protocol(&protocol);
    let v5 = protocol == V5_PROTOCOL;
    let format = if protocol.starts_with("v4.") || v5 {
        StatusFormat::Json
    } else {
        StatusFormat::Text
    };
    // An empty message on the lowest channel we write tells the client the
    // session is established.
    let first = if options.stdout {
        STDOUT
    } else if options.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = wired.messages_tx.send(codec.encode(first, &[])).await;

    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let reader = {
        let mut stdin_tx = options.stdin.then_some(stdin_tx);
        let resize_tx = options.tty.then_some(resize_tx);
        let mut messages = wired.messages;
        tokio::spawn(async move {
            let mut resize = ResizeDecoder::default();
            while let Some(message) = messages.next().await {
                match codec.decode(&message) {
                    Some((STDIN, data)) => {
                        if let Some(tx) = &stdin_tx
                            && !data.is_empty()
                        {
                            let _ = tx.send(data).await;
                        }
                    }
                    Some((RESIZE, data)) => {
                        if let Some(tx) = &resize_tx {
                            for size in resize.feed(&data) {
                                let _ = tx.send(size).await;
                            }
                        }
                    }
                    Some((CLOSE, data)) if v5 && data.first() == Some(&STDIN) => {
                        stdin_tx = None;
                    }
                    _ => {}
                }
            }
        })
    };

    let (out_tx, mut out_rx) = mpsc::channel(16);
    let forward = {
        let messages_tx = wired.messages_tx.clone();
        tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                let remotecommand::Out::Data(channel, data) = out else {
                    continue;
                };
                let number = match channel {
                    OutChannel::Stdout => STDOUT,
                    OutChannel::Stderr => STDERR,
                    OutChannel::Error => ERROR,
                };
                if messages_tx.send(codec.encode(number, &data)).await.is_err() {
                    return;
                }
            }
        })
    };
    drop(wired.messages_tx);
    let client = ClientIo {
        stdin: options.stdin.then_some(stdin_rx),
        resize: options.tty.then_some(resize_rx),
        out: out_tx,
        gone: wired.gone.clone(),
    };
    remotecommand::launch(start, client, format).await;
    let _ = forward.await;
    finish(wired.writer, reader, wired.watchdog).await;
}

/// Lets the writer send what is queued and the close frame, then gives the
/// client a moment to answer the close before the connection is dropped.
async fn finish(
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
    watchdog: tokio::task::JoinHandle<()>,
) {
    drain_connection(writer, reader).await;
    watchdog.abort();
}

/// Port-forward over a WebSocket: one connection per port of the request,
/// for the life of the WebSocket.
pub(crate) async fn port_forward(
    session: Session,
    pod_id: String,
    ports: Vec<u16>,
    protocol: String,
    req: Request<Incoming>,
) {
    let Some(wired) = open(req, &session, 32).await else {
        return;
    };
    let codec = Codec::for_protocol(&protocol);

    let mut to_pod = Vec::new();
    let mut forwards = JoinSet::new();
    for (index, port) in ports.iter().copied().enumerate() {
        let data_channel = (index * 2) as u8;
        let error_channel = data_channel + 1;
        for channel in [data_channel, error_channel] {
            let _ = wired
                .messages_tx
                .send(codec.encode(channel, &port.to_le_bytes()))
                .await;
        }
        let (tx, from_client) = mpsc::channel::<Bytes>(16);
        to_pod.push(tx);
        let backend = session.inner.backend.clone();
        let messages_tx = wired.messages_tx.clone();
        let pod_id = pod_id.clone();
        forwards.spawn(async move {
            let conn = match backend.port_forward(&pod_id, port).await {
                Ok(conn) => conn,
                Err(e) => {
                    let message = format!("error forwarding port {port} to pod {pod_id}: {e}");
                    let _ = messages_tx
                        .send(codec.encode(error_channel, message.as_bytes()))
                        .await;
                    return;
                }
            };
            let messages_tx = &messages_tx;
            let to_client = |chunk: Bytes| async move {
                messages_tx
                    .send(codec.encode(data_channel, &chunk))
                    .await
                    .is_ok()
            };
            forward_connection(conn, from_client, to_client, ForwardEnd::PodSide).await;
        });
    }
    drop(wired.messages_tx);
    let to_pod = Arc::new(to_pod);
    let reader = {
        let to_pod = to_pod.clone();
        let mut messages = wired.messages;
        tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                if let Some((channel, data)) = codec.decode(&message)
                    && channel % 2 == 0
                    && let Some(tx) = to_pod.get(usize::from(channel / 2))
                    && !data.is_empty()
                {
                    let _ = tx.send(data).await;
                }
            }
        })
    };
    drop(to_pod);
    tokio::select! {
        _ = async { while forwards.join_next().await.is_some() {} } => {}
        _ = wired.gone.cancelled() => {
            tracing::debug!(pod_id = %pod_id, "port-forward client went away");
            forwards.abort_all();
        }
    }
    finish(wired.writer, reader, wired.watchdog).await;
}
