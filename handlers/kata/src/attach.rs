//! The main process's output, and `Attach` to it.
//!
//! The agent's `ReadStdout`/`ReadStderr` of a container's main process have
//! one reader: the shim's log copier ([`copy_output`]), which writes the
//! CRI log. It also publishes every chunk to an [`OutputHub`], from which
//! each attached client gets its own copy, so the log and any number of
//! attach sessions see the same output. A client that falls too far behind
//! is dropped (its socket is shut down) rather than slowing the log down.
//!
//! Attach's stdin goes to the main process with `WriteStdin`. When the
//! client's stdin ends (or the core closes the session) and the container
//! was created with `stdin_once`, the shim sends `CloseStdin`; otherwise
//! stdin stays open for the next attach.

use std::sync::{Arc, Mutex};

use crius_shim_api::types::{AttachRequest, ContainerState};
use crius_shim_api::{HandlerError, HandlerResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::agent_client::AgentClient;
use crate::container::Container;
use crate::crilog::LineSplitter;
use crate::interactive::{connect_stdio, stdin_chunk_size};
use crate::shim::PodShim;

/// Chunks queued for one attached client before it counts as gone.
const SUBSCRIBER_QUEUE: usize = 256;

/// Which output stream of the main process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    stream: Stream,
    tx: mpsc::Sender<Vec<u8>>,
}

#[derive(Debug, Default)]
struct HubState {
    next_id: u64,
    subscribers: Vec<Subscriber>,
    stdout_done: bool,
    stderr_done: bool,
}

impl HubState {
    fn done(&mut self, stream: Stream) -> &mut bool {
        match stream {
            Stream::Stdout => &mut self.stdout_done,
            Stream::Stderr => &mut self.stderr_done,
        }
    }
}

/// Fans the main process's output out to attached clients.
#[derive(Debug, Default)]
pub struct OutputHub {
    state: Mutex<HubState>,
}

impl OutputHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `chunk` to every client of `stream`; drops clients whose
    /// queue is full or who went away.
    pub fn publish(&self, stream: Stream, chunk: &[u8]) {
        self.lock()
            .subscribers
            .retain(|s| s.stream != stream || s.tx.try_send(chunk.to_vec()).is_ok());
    }

    /// The stream ended: its clients see EOF once their queue is written.
    pub fn finish(&self, stream: Stream) {
        let mut state = self.lock();
        *state.done(stream) = true;
        state.subscribers.retain(|s| s.stream != stream);
    }

    /// A new client of `stream`; `None` when the stream already ended.
    fn subscribe(&self, stream: Stream) -> Option<(u64, mpsc::Receiver<Vec<u8>>)> {
        let mut state = self.lock();
        if *state.done(stream) {
            return None;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        state.next_id += 1;
        let id = state.next_id;
        state.subscribers.push(Subscriber { id, stream, tx });
        Some((id, rx))
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().subscribers.retain(|s| s.id != id);
    }

    /// Attached clients right now (for tests and logs).
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }
}

/// Copies one stream of a container's main process into its CRI log and
/// to attached clients until EOF (or until the agent is gone).
pub async fn copy_output(agent: AgentClient, c: Arc<Container>, stream: Stream) {
    let mut splitter = LineSplitter::default();
    loop {
        let read = match stream {
            Stream::Stdout => agent.read_stdout(&c.id, "", 64 * 1024).await,
            Stream::Stderr => agent.read_stderr(&c.id, "", 64 * 1024).await,
        };
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(container_id = %c.id, stream = stream.name(), error = %err, "output copy ended");
                break;
            }
        };
        c.output.publish(stream, &chunk);
        if let Some(log) = &c.log {
            for (partial, content) in splitter.feed(&chunk) {
                if let Err(err) = log.write_record(stream.name(), partial, &content) {
                    tracing::warn!(container_id = %c.id, error = %err, "writing the CRI log failed");
                }
            }
        }
    }
    c.output.finish(stream);
    if let (Some(log), Some((partial, content))) = (&c.log, splitter.finish()) {
        let _ = log.write_record(stream.name(), partial, &content);
    }
}

/// Writes a client's queue to its socket; shuts the socket down when the
/// stream ends, stops when the client goes away.
async fn serve_output(
    c: Arc<Container>,
    id: u64,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut sock: UnixStream,
) {
    while let Some(chunk) = rx.recv().await {
        if sock.write_all(&chunk).await.is_err() {
            break;
        }
    }
    c.output.unsubscribe(id);
    let _ = sock.shutdown().await;
}

/// Copies a client's stdin to the main process until the client's EOF or
/// the process's exit; then applies `stdin_once`.
async fn serve_stdin(agent: AgentClient, c: Arc<Container>, mut sock: UnixStream) {
    let mut exited = c.exited.subscribe();
    let mut buf = vec![0u8; stdin_chunk_size()];
    loop {
        let n = tokio::select! {
            read = sock.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = exited.wait_for(|e| *e) => return,
        };
        if let Err(err) = agent.write_stdin(&c.id, "", &buf[..n]).await {
            tracing::debug!(container_id = %c.id, error = %err, "attach stdin ended");
            break;
        }
    }
    if c.stdio.stdin_once
        && let Err(err) = agent.close_stdin(&c.id, "").await
    {
        tracing::debug!(container_id = %c.id, error = %err, "closing stdin after the attach");
    }
}

impl PodShim {
    pub(crate) async fn do_attach(&self, req: AttachRequest) -> HandlerResult<()> {
        let c = self.container(&req.sandbox_id, &req.container_id)?;
        if !c.status().is(ContainerState::Running) {
            return Err(HandlerError::failed_precondition(format!(
                "cannot attach to container {}: it is not running",
                c.id
            )));
        }
        let stdio = req.stdio.unwrap_or_default();
        if !stdio.stdin.is_empty() && !c.stdio.stdin {
            return Err(HandlerError::failed_precondition(format!(
                "cannot attach to the stdin of container {}: it was not created with stdin: true",
                c.id
            )));
        }
        let agent = self.agent().await?;
        let stdin = connect_stdio("stdin", &stdio.stdin).await?;
        let stdout = connect_stdio("stdout", &stdio.stdout).await?;
        let stderr = connect_stdio("stderr", &stdio.stderr).await?;
        for (stream, sock) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
            let Some(mut sock) = sock else { continue };
            match c.output.subscribe(stream) {
                Some((id, rx)) => {
                    tokio::spawn(serve_output(c.clone(), id, rx, sock));
                }
                None => {
                    let _ = sock.shutdown().await;
                }
            }
        }
        if let Some(sock) = stdin {
            tokio::spawn(serve_stdin(agent, c.clone(), sock));
        }
        tracing::info!(container_id = %c.id, tty = c.stdio.tty, clients = c.output.subscribers(), "attached");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_client_gets_the_output_and_eof() {
        let hub = OutputHub::default();
        let (_, mut a) = hub.subscribe(Stream::Stdout).unwrap();
        let (_, mut b) = hub.subscribe(Stream::Stdout).unwrap();
        let (_, mut e) = hub.subscribe(Stream::Stderr).unwrap();
        hub.publish(Stream::Stdout, b"one");
        hub.publish(Stream::Stderr, b"err");
        hub.finish(Stream::Stdout);
        assert_eq!(a.recv().await.unwrap(), b"one");
        assert!(a.recv().await.is_none(), "EOF after finish");
        assert_eq!(b.recv().await.unwrap(), b"one");
        assert!(b.recv().await.is_none());
        assert_eq!(e.recv().await.unwrap(), b"err");
        assert!(hub.subscribe(Stream::Stdout).is_none(), "stdout ended");
        assert_eq!(hub.subscribers(), 1);
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_dropped() {
        let hub = OutputHub::default();
        let (_, mut slow) = hub.subscribe(Stream::Stdout).unwrap();
        for _ in 0..=SUBSCRIBER_QUEUE {
            hub.publish(Stream::Stdout, b"x");
        }
        assert_eq!(hub.subscribers(), 0);
        let mut got = 0;
        while slow.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, SUBSCRIBER_QUEUE);
    }
}
