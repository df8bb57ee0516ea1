//! Routing `/<kind>/<token>`: the session bound, the token, then the
//! protocol the client asks for (WebSocket or SPDY) and the upgrade; the
//! session itself runs in a task of the protocol module.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Request, StatusCode};

use super::session::{HttpResponse, Inner, Session, text};
use super::{StreamRequest, remotecommand, spdy, websocket};

pub(crate) async fn route(inner: Arc<Inner>, req: Request<Incoming>) -> HttpResponse {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    let path = req.uri().path().trim_start_matches('/');
    let Some((kind, token)) = path.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let kind = kind.to_string();
    let token = token.to_string();
    if !["exec", "attach", "portforward"].contains(&kind.as_str()) {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    // The bound is checked before the token is spent, so a refused client
    // can retry with the same URL.
    let Some(slot) = inner.sessions.try_admit() else {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many streaming sessions; retry later",
        );
    };
    let Some(request) = inner.tokens.take(&token).filter(|r| r.kind() == kind) else {
        return text(StatusCode::NOT_FOUND, "unknown or expired streaming URL");
    };
    let session = Session::new(inner.clone(), slot);
    match request {
        StreamRequest::Exec(_) | StreamRequest::Attach(_) => {
            serve_remote_command(session, request, req).await
        }
        StreamRequest::PortForward { pod_id, ports } => {
            serve_port_forward(session, pod_id, ports, req).await
        }
    }
}

/// Which upgrade a request asks for.
enum Upgrade {
    WebSocket,
    Spdy,
}

fn upgrade_kind(headers: &HeaderMap) -> Option<Upgrade> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has(header::CONNECTION, "upgrade") {
        return None;
    }
    if has(header::UPGRADE, "websocket") {
        Some(Upgrade::WebSocket)
    } else if has(header::UPGRADE, spdy::UPGRADE_TOKEN) {
        Some(Upgrade::Spdy)
    } else {
        None
    }
}

/// Answers an exec or attach URL: negotiates the protocol, upgrades, and
/// runs the session in a task of its own.
async fn serve_remote_command(
    session: Session,
    request: StreamRequest,
    req: Request<Incoming>,
) -> HttpResponse {
    let (options, start) = remotecommand::starter(&session, request);
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
        Some(Upgrade::Spdy) => {
            match spdy::handshake::negotiate(req.headers(), spdy::remotecommand::SPDY_PROTOCOLS) {
                Ok(protocol) => {
                    let response = spdy::handshake::switching(&protocol);
                    tokio::spawn(spdy::remotecommand::session(
                        session, options, start, protocol, req,
                    ));
                    response
                }
                Err(response) => response,
            }
        }
        None => text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: this URL needs a SPDY/3.1 or WebSocket upgrade",
        ),
    }
}

/// Answers a port-forward URL.
async fn serve_port_forward(
    session: Session,
    pod_id: String,
    ports: Vec<u16>,
    req: Request<Incoming>,
) -> HttpResponse {
    match upgrade_kind(req.headers()) {
        Some(Upgrade::WebSocket) => {
            // WebSocket clients name their ports up front: the CRI
            // request's, else the URL's `port`/`ports` query.
            let ports = if ports.is_empty() {
                match query_ports(req.uri().query().unwrap_or("")) {
                    Ok(ports) => ports,
                    Err(message) => return text(StatusCode::BAD_REQUEST, message),
                }
            } else {
                ports
            };
            if ports.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "port-forward over WebSocket needs at least one port",
                );
            }
            match websocket::negotiate(req.headers(), websocket::PORT_FORWARD_PROTOCOLS) {
                Ok(negotiated) => {
                    let response = websocket::switching(&negotiated);
                    tokio::spawn(websocket::port_forward(
                        session,
                        pod_id,
                        ports,
                        negotiated.protocol,
                        req,
                    ));
                    response
                }
                Err(response) => response,
            }
        }
        Some(Upgrade::Spdy) => {
            match spdy::handshake::negotiate(req.headers(), &[spdy::portforward::SPDY_PROTOCOL]) {
                Ok(protocol) => {
                    let response = spdy::handshake::switching(&protocol);
                    tokio::spawn(spdy::portforward::session(session, pod_id, ports, req));
                    response
                }
                Err(response) => response,
            }
        }
        None => text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: this URL needs a SPDY/3.1 or WebSocket upgrade",
        ),
    }
}

/// Ports from a query string (`port=80&port=8080`, `ports=80,8080`).
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if key != "port" && key != "ports" {
            continue;
        }
        for value in value.split(',').filter(|v| !v.is_empty()) {
            match value.parse::<u16>() {
                Ok(port) if port > 0 => {
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                _ => return Err(format!("invalid port {value:?}: must be 1-65535")),
            }
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_queries() {
        assert_eq!(query_ports("port=80&port=8080"), Ok(vec![80, 8080]));
        assert_eq!(query_ports("ports=80,8080&x=1"), Ok(vec![80, 8080]));
        assert!(query_ports("port=0").is_err());
        assert!(query_ports("port=70000").is_err());
        assert_eq!(query_ports(""), Ok(vec![]));
    }
}
