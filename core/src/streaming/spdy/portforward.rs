//! Port-forward over SPDY (`portforward.k8s.io`). Each forwarded connection is a pair of streams
//! the client opens, `streamtype: error` and `streamtype: data`, with the
//! same `port` and `requestID` headers.

use std::collections::HashMap;
use std::time::Instant;

use hyper::Request;
use hyper::body::Incoming;
use tokio::task::JoinSet;

use super::Served;
use super::conn::IncomingStream;
use crate::streaming::StreamBackend;
use crate::streaming::session::{ForwardEnd, STREAM_CREATION_TIMEOUT, Session, forward_connection};

/// The SPDY port-forward subprotocol.
pub(crate) const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// Stream pairs waiting for their other half, at most.
const MAX_PENDING_PAIRS: usize = 128;

#[derive(Default)]
struct Pair {
    error: Option<IncomingStream>,
    data: Option<IncomingStream>,
    since: Option<Instant>,
}

/// The pairing key of a stream: its `requestID`, or for old clients that
/// send none, derived from the stream id (error and data streams are
/// opened one after the other: ids n and n+2).
fn request_id(stream: &IncomingStream, kind: &str) -> String {
    match stream.header("requestid") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => match kind {
            "data" => stream.id.saturating_sub(2).to_string(),
            _ => stream.id.to_string(),
        },
    }
}

pub(crate) async fn session(
    session: Session,
    pod_id: String,
    ports: Vec<u16>,
    req: Request<Incoming>,
) {
    let Some(mut served) = Served::start(&session, req).await else {
        return;
    };
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut sweep = tokio::time::interval(STREAM_CREATION_TIMEOUT / 2);
    loop {
        let stream = tokio::select! {
            stream = served.conn.incoming.recv() => stream,
            _ = sweep.tick() => {
                // Halves whose partner never came are dropped.
                let now = Instant::now();
                let stale: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.since.is_some_and(|t| now - t > STREAM_CREATION_TIMEOUT))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in stale {
                    if let Some(pair) = pending.remove(&id) {
                        for s in [pair.error, pair.data].into_iter().flatten() {
                            s.writer.reset().await;
                        }
                    }
                }
                continue;
            }
            _ = served.gone.cancelled() => None,
        };
        let Some(stream) = stream else { break };
        let kind = match stream.header("streamtype") {
            Some("error") => "error",
            Some("data") => "data",
            other => {
                tracing::debug!(stream_type = ?other, "unexpected port-forward stream");
                stream.writer.reset().await;
                continue;
            }
        };
        let id = request_id(&stream, kind);
        if !pending.contains_key(&id) && pending.len() >= MAX_PENDING_PAIRS {
            stream.writer.reset().await;
            continue;
        }
        let pair = pending.entry(id.clone()).or_default();
        pair.since.get_or_insert_with(Instant::now);
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if let Some(old) = slot.replace(stream) {
            old.writer.reset().await;
        }
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pending.remove(&id)
            else {
                continue;
            };
            let backend = session.inner.backend.clone();
            forwards.spawn(forward(backend, pod_id.clone(), ports.clone(), error, data));
        }
    }
    forwards.abort_all();
    while forwards.join_next().await.is_some() {}
    served.close().await;
}

/// One forwarded connection.
async fn forward(
    backend: std::sync::Arc<dyn StreamBackend>,
    pod_id: String,
    allowed: Vec<u16>,
    error: IncomingStream,
    data: IncomingStream,
) {
    let port = match data.header("port").map(str::parse::<u16>) {
        Some(Ok(port)) if port > 0 => port,
        other => {
            let message = format!(
                "invalid port header {:?}: must be 1-65535",
                other.map(|_| data.header("port").unwrap_or(""))
            );
            let _ = error.writer.send(message.into()).await;
            let _ = error.writer.finish().await;
            data.writer.reset().await;
            return;
        }
    };
    if !allowed.is_empty() && !allowed.contains(&port) {
        let message = format!("port {port} is not among the ports of this port-forward request");
        let _ = error.writer.send(message.into()).await;
        let _ = error.writer.finish().await;
        data.writer.reset().await;
        return;
    }
    let conn = match backend.port_forward(&pod_id, port).await {
        Ok(conn) => conn,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod {pod_id}: {e}");
            let _ = error.writer.send(message.into()).await;
            let _ = error.writer.finish().await;
            let _ = data.writer.finish().await;
            return;
        }
    };
    let IncomingStream { data, writer, .. } = data;
    let to_client = |chunk| {
        let writer = &writer;
        async move { writer.send(chunk).await.is_ok() }
    };
    forward_connection(conn, data, to_client, ForwardEnd::BothSides).await;
    let _ = writer.finish().await;
    let _ = error.writer.finish().await;
}
