//! Remote commands over SPDY: the client opens one stream per wanted
//! channel (`streamtype` header: error, stdin, stdout, stderr, resize),
//! then the session runs as over any transport.

use std::collections::HashMap;

use hyper::Request;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::Served;
use super::conn::IncomingStream;
use crate::streaming::remotecommand::{
    self, ClientIo, Options, Out, OutChannel, ResizeDecoder, Starter,
};
use crate::streaming::session::{STREAM_CREATION_TIMEOUT, Session};
use crate::streaming::status::StatusFormat;

/// SPDY remote-command subprotocols, in the server's order.
pub(crate) const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

fn spdy_version(protocol: &str) -> u8 {
    match protocol {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    }
}

/// A remote command over SPDY: waits for the client's streams, then runs.
pub(crate) async fn session(
    session: Session,
    options: Options,
    start: Starter,
    protocol: String,
    req: Request<Incoming>,
) {
    let Some(mut served) = Served::start(&session, req).await else {
        return;
    };
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
            stream = served.conn.incoming.recv() => stream,
            _ = &mut deadline => {
                tracing::info!("SPDY client did not open its streams in time");
                None
            }
            _ = served.gone.cancelled() => None,
        };
        let Some(stream) = stream else {
            served.close().await;
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
        gone: served.gone.clone(),
    };
    remotecommand::launch(start, client, format).await;
    let _ = writer_task.await;
    served.close().await;
}
