//! `criusctl port-forward`: local listeners whose connections go through
//! PortForward URLs (one per connection: the URLs are single use).

use anyhow::{Context, Result};
use crius_proto::cri;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::stream;

/// `LOCAL:REMOTE` or `PORT`.
pub fn parse_port_pair(spec: &str) -> Result<(u16, u16)> {
    let parse = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("bad port {p:?} in {spec:?}: must be 0-65535"))
    };
    match spec.split_once(':') {
        Some((local, remote)) => Ok((parse(local)?, parse(remote)?)),
        None => {
            let port = parse(spec)?;
            Ok((port, port))
        }
    }
}

/// Listens on 127.0.0.1:LOCAL for every pair and forwards each accepted
/// connection through a PortForward URL of its own (the URLs are single
/// use), until SIGINT or SIGTERM.
pub async fn run(
    runtime: RuntimeServiceClient<Channel>,
    pod: &str,
    specs: &[String],
    options: &stream::Options,
) -> Result<()> {
    let mut listeners = Vec::new();
    for spec in specs {
        let (local, remote) = parse_port_pair(spec)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{local}"))?;
        println!("Forwarding from {} -> {remote}", listener.local_addr()?);
        listeners.push((listener, remote));
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, remote) in listeners {
        let runtime = runtime.clone();
        let pod = pod.to_string();
        let options = options.clone();
        tasks.spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let mut runtime = runtime.clone();
                let pod = pod.clone();
                let options = options.clone();
                tokio::spawn(async move {
                    let result = async {
                        let url = runtime
                            .port_forward(cri::PortForwardRequest {
                                pod_sandbox_id: pod,
                                port: vec![i32::from(remote)],
                            })
                            .await?
                            .into_inner()
                            .url;
                        let ws = stream::connect(&url, "v4.channel.k8s.io", &options).await?;
                        stream::forward_connection(ws, tcp, remote).await
                    }
                    .await;
                    if let Err(e) = result {
                        eprintln!("forwarding {peer} -> {remote}: {e:#}");
                    }
                });
            }
        });
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tasks.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs() {
        assert_eq!(parse_port_pair("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse_port_pair("0:80").unwrap(), (0, 80));
        assert_eq!(parse_port_pair("443").unwrap(), (443, 443));
        assert!(parse_port_pair("70000").is_err());
        assert!(parse_port_pair("1:x").is_err());
    }
}
