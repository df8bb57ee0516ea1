//! Remote commands (exec and attach): the session logic shared by both
//! transports, and the SPDY transport of it.
//!
//! A transport turns its wire format into a [`ClientIo`] (the client's
//! stdin and resize events in, stdout/stderr/error out) and [`run`] connects
//! that to the backend's [`ProcessStreams`]: it pumps the streams, waits for
//! the exit, lets the output drain, and reports the exit status; if the
//! client goes away first, it calls the backend's `cancel`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::server::{
    Activity, HttpResponse, STREAM_CREATION_TIMEOUT, Session, Upgrade, negotiate_spdy,
    spdy_switching, text, upgrade_kind, upgraded,
};
use super::spdy::conn::{Connection, IncomingStream};
use super::status::{self, Outcome, StatusFormat};
use super::{ProcessStreams, StreamError, StreamRequest, TerminalSize, websocket};

/// Output still arriving after the process exited (a background child may
/// hold the pipe open) is waited for this long.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// SPDY remote-command subprotocols, in the server's order.
pub(crate) const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The streams a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Starts the backend's side of a session.
pub(crate) type Starter = Box<dyn FnOnce() -> BoxFuture<'static, StartResult> + Send>;
pub(crate) type StartResult = Result<ProcessStreams, StreamError>;

/// An output channel of a remote command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum OutChannel {
    Stdout,
    Stderr,
    Error,
}

/// What the session writes to the client.
#[derive(Debug)]
pub(crate) enum Out {
    Data(OutChannel, Bytes),
    /// No more data on this channel.
    Eof(OutChannel),
}

/// The client's side of a session, as a transport presents it.
pub(crate) struct ClientIo {
    /// Stdin data; the channel ends when the client closes stdin.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    pub out: mpsc::Sender<Out>,
    /// Cancelled when the client went away (or the session timed out).
    pub gone: CancellationToken,
}

/// Decodes the resize stream: JSON objects one after the other.
#[derive(Debug, Default)]
pub(crate) struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// Largest incomplete resize message kept.
    const MAX: usize = 4096;

    pub(crate) fn feed(&mut self, data: &[u8]) -> Vec<TerminalSize> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        {
            let mut iter =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
            loop {
                match iter.next() {
                    Some(Ok(size)) => {
                        sizes.push(size);
                        consumed = iter.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        // Not a size: drop what we have and resynchronise.
                        consumed = self.buf.len();
                        break;
                    }
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > Self::MAX {
            self.buf.clear();
        }
        sizes
    }
}

fn starter(session: &Session, request: StreamRequest) -> (Options, Starter) {
    let backend = session.inner.backend.clone();
    match request {
        StreamRequest::Exec(spec) => {
            let options = Options {
                stdin: spec.stdin,
                stdout: spec.stdout,
                // With a tty the terminal carries stderr on stdout.
                stderr: spec.stderr && !spec.tty,
                tty: spec.tty,
            };
            let mut spec = spec;
            spec.stderr = options.stderr;
            (
                options,
                Box::new(move || Box::pin(async move { backend.exec(spec).await })),
            )
        }
        StreamRequest::Attach(spec) => {
            let options = Options {
                stdin: spec.stdin,
                stdout: spec.stdout,
                stderr: spec.stderr && !spec.tty,
                tty: spec.tty,
            };
            let mut spec = spec;
            spec.stderr = options.stderr;
            (
                options,
                Box::new(move || Box::pin(async move { backend.attach(spec).await })),
            )
        }
        StreamRequest::PortForward { .. } => unreachable!("port-forward is routed elsewhere"),
    }
}

/// Answers an exec or attach URL: negotiates the protocol, upgrades, and
/// runs the session in a task of its own.
pub(crate) async fn serve(
    session: Session,
    request: StreamRequest,
    req: Request<Incoming>,
) -> HttpResponse {
    let (options, start) = starter(&session, request);
    match upgrade_kind(req.headers()) {
        Some(Upgrade::WebSocket) => {
            match websocket::negotiate(req.headers(), websocket::REMOTE_COMMAND_PROTOCOLS) {
                Ok(negotiated) => {
                    let response = websocket::switching(&negotiated);
                    tokio::spawn(websocket::remote_command(
                        session,
                        options,
                        start,
                        negotiated.protocol,
                        req,
                    ));
                    response
                }
                Err(response) => response,
            }
        }
        Some(Upgrade::Spdy) => match negotiate_spdy(req.headers(), SPDY_PROTOCOLS) {
            Ok(protocol) => {
                let response = spdy_switching(&protocol);
                tokio::spawn(spdy_session(session, options, start, protocol, req));
                response
            }
            Err(response) => response,
        },
        None => text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: this URL needs a SPDY/3.1 or WebSocket upgrade",
        ),
    }
}

/// Connects the client to the process until it exits or the client leaves.
pub(crate) async fn run(started: StartResult, client: ClientIo, format: StatusFormat) {
    let ClientIo {
        stdin,
        resize,
        out,
        gone,
    } = client;
    let process = match started {
        Ok(process) => process,
        Err(e) => {
            tracing::info!("streaming session could not start: {e}");
            send_status(&out, &Outcome::Failed(e.to_string()), format).await;
            return;
        }
    };
    let ProcessStreams {
        stdin: process_stdin,
        stdout,
        stderr,
        resize: process_resize,
        mut exit,
        cancel,
    } = process;

    let mut inputs = JoinSet::new();
    match (stdin, process_stdin) {
        (Some(mut from_client), Some(mut to_process)) => {
            inputs.spawn(async move {
                while let Some(data) = from_client.recv().await {
                    if to_process.write_all(&data).await.is_err()
                        || to_process.flush().await.is_err()
                    {
                        return;
                    }
                }
                // The client closed stdin: so does the process's.
                let _ = to_process.shutdown().await;
            });
        }
        (Some(mut from_client), None) => {
            inputs.spawn(async move { while from_client.recv().await.is_some() {} });
        }
        (None, to_process) => drop(to_process),
    }
    if let (Some(mut sizes), Some(to_process)) = (resize, process_resize) {
        inputs.spawn(async move {
            while let Some(size) = sizes.recv().await {
                if to_process.send(size).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut outputs = JoinSet::new();
    for (reader, channel) in [(stdout, OutChannel::Stdout), (stderr, OutChannel::Stderr)] {
        let Some(mut reader) = reader else { continue };
        let out = out.clone();
        outputs.spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out
                            .send(Out::Data(channel, Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = out.send(Out::Eof(channel)).await;
        });
    }

    let exited = tokio::select! {
        code = &mut exit => Some(code),
        _ = gone.cancelled() => None,
    };
    let Some(code) = exited else {
        tracing::info!("streaming client went away; cancelling the process");
        cancel();
        inputs.abort_all();
        outputs.abort_all();
        return;
    };
    tokio::select! {
        _ = async { while outputs.join_next().await.is_some() {} } => {}
        _ = tokio::time::sleep(OUTPUT_DRAIN) => {}
        _ = gone.cancelled() => {}
    }
    outputs.abort_all();
    inputs.abort_all();
    let outcome = match code {
        Ok(code) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    send_status(&out, &outcome, format).await;
}

async fn send_status(out: &mpsc::Sender<Out>, outcome: &Outcome, format: StatusFormat) {
    if let Some(bytes) = status::encode(outcome, format) {
        let _ = out
            .send(Out::Data(OutChannel::Error, Bytes::from(bytes)))
            .await;
    }
    let _ = out.send(Out::Eof(OutChannel::Error)).await;
}

fn spdy_version(protocol: &str) -> u8 {
    match protocol {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    }
}

/// A remote command over SPDY: waits for the client's streams, then runs.
async fn spdy_session(
    session: Session,
    options: Options,
    start: Starter,
    protocol: String,
    req: Request<Incoming>,
) {
    let Some(io) = upgraded(req).await else {
        return;
    };
    let activity = Activity::new();
    let mut conn = Connection::serve(io, activity.clone());
    let gone = conn.closed();
    let watchdog = activity.watch(
        session.inner.idle_timeout,
        gone.clone(),
        session.inner.shutdown.clone(),
    );
    let version = spdy_version(&protocol);
    let expected = 1
        + usize::from(options.stdin)
        + usize::from(options.stdout)
        + usize::from(options.stderr)
        + usize::from(options.tty && version >= 3);

    let mut streams: HashMap<&'static str, IncomingStream> = HashMap::new();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while streams.len() < expected {
        let stream = tokio::select! {
            stream = conn.incoming.recv() => stream,
            _ = &mut deadline => {
                tracing::info!("SPDY client did not open its streams in time");
                None
            }
            _ = gone.cancelled() => None,
        };
        let Some(stream) = stream else {
            watchdog.abort();
            conn.shutdown().await;
            return;
        };
        let kind = match stream.header("streamtype") {
            Some("error") => "error",
            Some("stdin") if options.stdin => "stdin",
            Some("stdout") if options.stdout => "stdout",
            Some("stderr") if options.stderr => "stderr",
            Some("resize") if options.tty && version >= 3 => "resize",
            other => {
                tracing::debug!(stream_type = ?other, "unexpected SPDY stream; resetting it");
                stream.writer.reset().await;
                continue;
            }
        };
        if let Some(old) = streams.insert(kind, stream) {
            old.writer.reset().await;
        }
    }
    let format = if version >= 4 {
        StatusFormat::Json
    } else {
        StatusFormat::Text
    };

    let stdin = streams.remove("stdin").map(|s| s.data);
    let resize = streams.remove("resize").map(|stream| {
        let (tx, rx) = mpsc::channel(8);
        let mut data = stream.data;
        tokio::spawn(async move {
            let mut decoder = ResizeDecoder::default();
            while let Some(chunk) = data.recv().await {
                for size in decoder.feed(&chunk) {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    });
    let writers: HashMap<OutChannel, _> = [
        (OutChannel::Stdout, streams.remove("stdout")),
        (OutChannel::Stderr, streams.remove("stderr")),
        (OutChannel::Error, streams.remove("error")),
    ]
    .into_iter()
    .filter_map(|(channel, stream)| stream.map(|s| (channel, s.writer)))
    .collect();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
    let writer_task = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let (channel, result) = match out {
                Out::Data(channel, data) => match writers.get(&channel) {
                    Some(w) => (channel, w.send(data).await),
                    None => continue,
                },
                Out::Eof(channel) => match writers.get(&channel) {
                    Some(w) => (channel, w.finish().await),
                    None => continue,
                },
            };
            if result.is_err() && channel == OutChannel::Error {
                return;
            }
        }
    });
    let client = ClientIo {
        stdin,
        resize,
        out: out_tx,
        gone: gone.clone(),
    };
    // Not raced against the client leaving: a process the backend started
    // must come back so that `run` can cancel it.
    let started = start().await;
    run(started, client, format).await;
    let _ = writer_task.await;
    watchdog.abort();
    conn.shutdown().await;
}
