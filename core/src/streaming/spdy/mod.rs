//! SPDY/3.1 as the Kubernetes streaming protocols use it: an HTTP/1.1
//! upgrade (`Upgrade: SPDY/3.1`, the subprotocol negotiated with
//! `X-Stream-Protocol-Version`), then client-opened streams told apart by
//! their `streamtype` header.

pub mod conn;
pub mod frame;
pub(crate) mod handshake;
pub(crate) mod portforward;
pub(crate) mod remotecommand;

#[cfg(test)]
mod tests;

/// The request header carrying the subprotocols a client offers (one per
/// header line) and the response header carrying the chosen one.
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// The response header listing what the server supports, on refusal.
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";
/// The `Upgrade` token.
pub const UPGRADE_TOKEN: &str = "SPDY/3.1";
