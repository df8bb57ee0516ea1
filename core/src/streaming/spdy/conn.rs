//! A SPDY/3.1 server connection: reads frames, answers pings, replies to
//! the streams the client opens and hands them to the protocol handler;
//! writes data with per-stream and session flow control.
//!
//! Flow control: the receive side sends WINDOW_UPDATE frames (per stream
//! and for the session) as data is consumed. On the send side the windows
//! are tracked, but only enforced once the peer has shown that it does flow
//! control (it sent a WINDOW_UPDATE or an initial window size): the SPDY
//! library client-go and the kubelet use (spdystream) never sends window
//! updates, and blocking on its window would stall every session after
//! 64 KiB of output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::frame::{self, Frame, HeaderDecoder, HeaderEncoder, Headers};
use crate::streaming::session::{Activity, drain_connection};

/// Data frames written at once (client-go reads in 32 KiB pieces too).
const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Frames buffered per received stream before the reader waits.
const STREAM_BUFFER: usize = 64;

/// A stream the client opened.
#[derive(Debug)]
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    /// The client's data; ends when the client half-closes (FIN) or
    /// resets the stream, or the connection ends.
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

impl IncomingStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        frame::header(&self.headers, name)
    }
}

struct StreamState {
    send_window: i64,
    recv_unacked: i64,
    data_tx: Option<mpsc::Sender<Bytes>>,
    reset: bool,
    local_closed: bool,
}

struct State {
    peer_flow_control: bool,
    initial_send_window: i64,
    session_send_window: i64,
    session_recv_unacked: i64,
    streams: HashMap<u32, StreamState>,
    last_stream_id: u32,
}

struct Shared {
    state: Mutex<State>,
    windows: Notify,
    frames: mpsc::Sender<Frame>,
    closed: CancellationToken,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes to one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamWriter({})", self.id)
    }
}

/// The stream can no longer be written: reset by the peer, closed, or the
/// connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("SPDY stream {0} is closed")]
pub struct StreamClosed(u32);

impl StreamWriter {
    /// Sends `data`, in window-sized pieces when the peer does flow control.
    pub async fn send(&self, mut data: Bytes) -> Result<(), StreamClosed> {
        while !data.is_empty() {
            let chunk = loop {
                let notified = self.shared.windows.notified();
                {
                    let mut state = self.shared.lock();
                    let enforce = state.peer_flow_control;
                    let session_window = state.session_send_window;
                    let stream = state
                        .streams
                        .get_mut(&self.id)
                        .filter(|s| !s.reset && !s.local_closed)
                        .ok_or(StreamClosed(self.id))?;
                    let mut allowed = data.len().min(MAX_DATA_CHUNK);
                    if enforce {
                        let window = stream.send_window.min(session_window).max(0) as usize;
                        allowed = allowed.min(window);
                    }
                    if allowed > 0 {
                        stream.send_window -= allowed as i64;
                        state.session_send_window -= allowed as i64;
                        break data.split_to(allowed);
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = self.shared.closed.cancelled() => return Err(StreamClosed(self.id)),
                }
            };
            self.frame(Frame::Data {
                stream_id: self.id,
                fin: false,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes our side of the stream (an empty DATA frame with FIN).
    pub async fn finish(&self) -> Result<(), StreamClosed> {
        {
            let mut state = self.shared.lock();
            let stream = state
                .streams
                .get_mut(&self.id)
                .filter(|s| !s.reset && !s.local_closed)
                .ok_or(StreamClosed(self.id))?;
            stream.local_closed = true;
        }
        self.frame(Frame::Data {
            stream_id: self.id,
            fin: true,
            data: Bytes::new(),
        })
        .await
    }

    /// Resets the stream (RST_STREAM CANCEL) unless it is already gone.
    pub async fn reset(&self) {
        let live = {
            let mut state = self.shared.lock();
            match state.streams.get_mut(&self.id) {
                Some(s) if !s.reset => {
                    s.reset = true;
                    s.data_tx = None;
                    true
                }
                _ => false,
            }
        };
        if live {
            let _ = self
                .frame(Frame::RstStream {
                    stream_id: self.id,
                    status: frame::RST_CANCEL,
                })
                .await;
        }
    }

    async fn frame(&self, frame: Frame) -> Result<(), StreamClosed> {
        self.shared
            .frames
            .send(frame)
            .await
            .map_err(|_| StreamClosed(self.id))
    }
}

/// A running connection.
pub struct Connection {
    shared: Arc<Shared>,
    /// Streams opened by the client, in order.
    pub incoming: mpsc::Receiver<IncomingStream>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spdy::Connection")
    }
}

impl Connection {
    /// Starts serving `io` (the upgraded HTTP connection).
    pub(crate) fn serve<IO>(io: IO, activity: Activity) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (frames_tx, frames_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                peer_flow_control: false,
                initial_send_window: frame::INITIAL_WINDOW,
                session_send_window: frame::INITIAL_WINDOW,
                session_recv_unacked: 0,
                streams: HashMap::new(),
                last_stream_id: 0,
            }),
            windows: Notify::new(),
            frames: frames_tx,
            closed: CancellationToken::new(),
        });
        let writer = tokio::spawn(write_loop(
            write_half,
            frames_rx,
            shared.closed.clone(),
            activity.clone(),
        ));
        let reader = tokio::spawn(read_loop(read_half, shared.clone(), incoming_tx, activity));
        Self {
            shared,
            incoming,
            writer,
            reader,
        }
    }

    /// Cancelled when the client's side of the connection ends.
    pub fn closed(&self) -> CancellationToken {
        self.shared.closed.clone()
    }

    /// Says goodbye (GOAWAY), lets the writer flush everything queued and
    /// waits briefly for the client to close its side.
    pub async fn shutdown(self) {
        let last = self.shared.lock().last_stream_id;
        let _ = self
            .shared
            .frames
            .send(Frame::GoAway {
                last_good_stream_id: last,
                status: frame::GOAWAY_OK,
            })
            .await;
        let Connection {
            shared,
            incoming,
            writer,
            reader,
        } = self;
        drop(incoming);
        // The writer ends once every sender is gone: ours here, the stream
        // writers' when their handlers finished.
        drop(shared);
        drain_connection(writer, reader).await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut frames: mpsc::Receiver<Frame>,
    closed: CancellationToken,
    activity: Activity,
) {
    let mut encoder = HeaderEncoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = frames.recv().await {
        frame::encode(&first, &mut encoder, &mut buf);
        // Batch whatever else is queued into one write.
        while buf.len() < 256 * 1024 {
            match frames.try_recv() {
                Ok(next) => frame::encode(&next, &mut encoder, &mut buf),
                Err(_) => break,
            }
        }
        if io.write_all(&buf).await.is_err() || io.flush().await.is_err() {
            closed.cancel();
            return;
        }
        activity.touch();
        buf.clear();
    }
    let _ = io.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut io: R,
    shared: Arc<Shared>,
    incoming: mpsc::Sender<IncomingStream>,
    activity: Activity,
) {
    let mut decoder = HeaderDecoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let result: Result<(), String> = async {
        loop {
            let len = loop {
                match frame::frame_len(&buf) {
                    Ok(Some(len)) if buf.len() >= len => break len,
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
                buf.reserve(16 * 1024);
                let n = io.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                activity.touch();
            };
            let raw = buf.split_to(len);
            let decoded = frame::decode(&raw, &mut decoder).map_err(|e| e.to_string())?;
            if !handle_frame(decoded, &shared, &incoming).await? {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!("SPDY connection ends: {e}");
        let last = shared.lock().last_stream_id;
        let _ = shared.frames.try_send(Frame::GoAway {
            last_good_stream_id: last,
            status: frame::GOAWAY_PROTOCOL_ERROR,
        });
    }
    // The client is gone (or broke the protocol): end every stream.
    {
        let mut state = shared.lock();
        for stream in state.streams.values_mut() {
            stream.data_tx = None;
        }
    }
    shared.closed.cancel();
}

async fn handle_frame(
    decoded: Frame,
    shared: &Arc<Shared>,
    incoming: &mpsc::Sender<IncomingStream>,
) -> Result<bool, String> {
    match decoded {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let fresh = {
                let mut state = shared.lock();
                let ok = stream_id % 2 == 1
                    && stream_id > state.last_stream_id
                    && !state.streams.contains_key(&stream_id);
                if ok {
                    state.last_stream_id = stream_id;
                }
                ok
            };
            if !fresh {
                let _ = shared
                    .frames
                    .send(Frame::RstStream {
                        stream_id,
                        status: frame::RST_PROTOCOL_ERROR,
                    })
                    .await;
                return Ok(true);
            }
            let (data_tx, data_rx) = mpsc::channel(STREAM_BUFFER);
            let remote_done = flags & (frame::FLAG_FIN | frame::FLAG_UNIDIRECTIONAL) != 0;
            {
                let mut state = shared.lock();
                let window = state.initial_send_window;
                state.streams.insert(
                    stream_id,
                    StreamState {
                        send_window: window,
                        recv_unacked: 0,
                        data_tx: (!remote_done).then_some(data_tx),
                        reset: false,
                        local_closed: false,
                    },
                );
            }
            // The reply goes out before any data the handler writes.
            let _ = shared
                .frames
                .send(Frame::SynReply {
                    stream_id,
                    fin: false,
                    headers: Vec::new(),
                })
                .await;
            let stream = IncomingStream {
                id: stream_id,
                headers,
                data: data_rx,
                writer: StreamWriter {
                    id: stream_id,
                    shared: shared.clone(),
                },
            };
            if incoming.send(stream).await.is_err() {
                // Nobody takes new streams any more.
                let _ = shared
                    .frames
                    .send(Frame::RstStream {
                        stream_id,
                        status: frame::RST_REFUSED_STREAM,
                    })
                    .await;
            }
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            let len = data.len() as i64;
            let (tx, updates) = {
                let mut state = shared.lock();
                state.session_recv_unacked += len;
                let mut updates = Vec::new();
                if state.session_recv_unacked >= frame::INITIAL_WINDOW / 2 {
                    updates.push((0, state.session_recv_unacked));
                    state.session_recv_unacked = 0;
                }
                let tx = match state.streams.get_mut(&stream_id) {
                    Some(stream) => {
                        stream.recv_unacked += len;
                        if stream.recv_unacked >= frame::INITIAL_WINDOW / 2 && !fin {
                            updates.push((stream_id, stream.recv_unacked));
                            stream.recv_unacked = 0;
                        }
                        let tx = stream.data_tx.clone();
                        if fin {
                            stream.data_tx = None;
                        }
                        tx
                    }
                    None => None,
                };
                (tx, updates)
            };
            if let Some(tx) = tx
                && !data.is_empty()
            {
                // Waits while the consumer is behind: TCP backpressure.
                let _ = tx.send(data).await;
            }
            for (id, delta) in updates {
                let _ = shared
                    .frames
                    .send(Frame::WindowUpdate {
                        stream_id: id,
                        delta: delta as u32,
                    })
                    .await;
            }
        }
        Frame::RstStream { stream_id, .. } => {
            let mut state = shared.lock();
            if let Some(stream) = state.streams.get_mut(&stream_id) {
                stream.reset = true;
                stream.data_tx = None;
            }
            drop(state);
            shared.windows.notify_waiters();
        }
        Frame::Settings { entries } => {
            let mut state = shared.lock();
            for (_, id, value) in entries {
                if id == frame::SETTINGS_INITIAL_WINDOW_SIZE {
                    let value = i64::from(value);
                    let delta = value - state.initial_send_window;
                    state.initial_send_window = value;
                    state.peer_flow_control = true;
                    for stream in state.streams.values_mut() {
                        stream.send_window += delta;
                    }
                }
            }
            drop(state);
            shared.windows.notify_waiters();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut state = shared.lock();
            state.peer_flow_control = true;
            if stream_id == 0 {
                state.session_send_window += i64::from(delta);
            } else if let Some(stream) = state.streams.get_mut(&stream_id) {
                stream.send_window += i64::from(delta);
            }
            drop(state);
            shared.windows.notify_waiters();
        }
        Frame::Ping { id } => {
            // Only pings the client started (odd ids) are answered; ours
            // would be even and we send none.
            if id % 2 == 1 {
                let _ = shared.frames.send(Frame::Ping { id }).await;
            }
        }
        // The client is done: it opens no more streams and closes soon.
        Frame::GoAway { .. } => return Ok(false),
        Frame::Headers { stream_id, fin, .. } => {
            if fin {
                let mut state = shared.lock();
                if let Some(stream) = state.streams.get_mut(&stream_id) {
                    stream.data_tx = None;
                }
            }
        }
        Frame::SynReply { .. } | Frame::Unknown { .. } => {}
    }
    Ok(true)
}
