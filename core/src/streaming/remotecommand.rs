//! Remote commands (exec and attach): the session logic shared by both
//! transports (`spdy::remotecommand`, `websocket`).
//!
//! A transport turns its wire format into a [`ClientIo`] (the client's
//! stdin and resize events in, stdout/stderr/error out) and [`run`] connects
//! that to the backend's [`ProcessStreams`]: it pumps the streams, waits for
//! the exit, lets the output drain, and reports the exit status; if the
//! client goes away first, it calls the backend's `cancel`.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::session::Session;
use super::status::{self, Outcome, StatusFormat};
use super::{ProcessStreams, StreamError, StreamRequest, TerminalSize};

/// Output still arriving after the process exited (a background child may
/// hold the pipe open) is waited for this long.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// The streams a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    fn new(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Self {
        Self {
            stdin,
            stdout,
            // With a tty the terminal carries stderr on stdout.
            stderr: stderr && !tty,
            tty,
        }
    }
}

/// Starts the backend's side of a session.
/// Its argument is the terminal size the client sent first, if any.
pub(crate) type Starter =
    Box<dyn FnOnce(Option<TerminalSize>) -> BoxFuture<'static, StartResult> + Send>;
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

pub(crate) fn starter(session: &Session, request: StreamRequest) -> (Options, Starter) {
    let backend = session.inner.backend.clone();
    match request {
        StreamRequest::Exec(mut spec) => {
            let options = Options::new(spec.stdin, spec.stdout, spec.stderr, spec.tty);
            // The backend is asked for stderr only where the session has it.
            spec.stderr = options.stderr;
            (
                options,
                Box::new(move |size| Box::pin(async move { backend.exec(spec, size).await })),
            )
        }
        StreamRequest::Attach(mut spec) => {
            let options = Options::new(spec.stdin, spec.stdout, spec.stderr, spec.tty);
            // The backend is asked for stderr only where the session has it.
            spec.stderr = options.stderr;
            (
                options,
                Box::new(move |_| Box::pin(async move { backend.attach(spec).await })),
            )
        }
        StreamRequest::PortForward { .. } => unreachable!("port-forward is routed elsewhere"),
    }
}

/// How long a terminal session waits for the client's first resize before
/// starting the process (clients send the initial size right after
/// connecting; a process started without it sees a 0x0 terminal).
const INITIAL_SIZE_WAIT: Duration = Duration::from_millis(250);

/// Starts the backend's side, with the client's initial terminal size when
/// it sends one in time, and runs the session.
pub(crate) async fn launch(start: Starter, mut client: ClientIo, format: StatusFormat) {
    let mut initial = None;
    if let Some(sizes) = client.resize.as_mut() {
        tokio::select! {
            size = tokio::time::timeout(INITIAL_SIZE_WAIT, sizes.recv()) => {
                initial = size.ok().flatten();
            }
            _ = client.gone.cancelled() => {}
        }
    }
    // Not raced against the client leaving: a process the backend started
    // must come back so that `run` can cancel it.
    let started = start(initial).await;
    run(started, client, format, initial).await;
}

/// Connects the client to the process until it exits or the client leaves.
/// `initial` (the size the process was started with) is applied again for
/// backends that start without one (attach).
async fn run(
    started: StartResult,
    client: ClientIo,
    format: StatusFormat,
    initial: Option<TerminalSize>,
) {
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
            if let Some(size) = initial
                && to_process.send(size).await.is_err()
            {
                return;
            }
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
