//! The HTTP side of a SPDY upgrade: the subprotocol offered and chosen
//! (`X-Stream-Protocol-Version`) and the 101 answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::{ACCEPTED_PROTOCOLS_HEADER, PROTOCOL_HEADER, UPGRADE_TOKEN};
use crate::streaming::session::{HttpResponse, text};

/// The subprotocols a SPDY client offers, in its order of preference.
pub(crate) fn offered_spdy_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The SPDY subprotocol to use: the client's first that we support; `""`
/// when the client offered none (legacy clients). `Err` is the refusal.
// The refusal is the response itself, returned as is by the caller.
#[allow(clippy::result_large_err)]
pub(crate) fn negotiate(headers: &HeaderMap, supported: &[&str]) -> Result<String, HttpResponse> {
    let offered = offered_spdy_protocols(headers);
    if offered.is_empty() {
        return Ok(String::new());
    }
    match offered.iter().find(|p| supported.contains(&p.as_str())) {
        Some(p) => Ok(p.clone()),
        None => {
            let mut response = text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: none of the offered protocols {offered:?} is supported; \
                     supported: {supported:?}"
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&supported.join(", ")) {
                response
                    .headers_mut()
                    .insert(ACCEPTED_PROTOCOLS_HEADER, value);
            }
            Err(response)
        }
    }
}

/// The 101 answer to a SPDY upgrade.
pub(crate) fn switching(protocol: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_TOKEN));
    if let Ok(value) = HeaderValue::from_str(protocol)
        && !protocol.is_empty()
    {
        headers.insert(PROTOCOL_HEADER, value);
    }
    response
}
