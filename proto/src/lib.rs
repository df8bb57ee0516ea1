//! Generated code for crius's wire contracts.

/// Kubernetes CRI `runtime.v1`: RuntimeService and ImageService.
pub mod cri {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.serde.rs"));

    impl std::fmt::Debug for AuthConfig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            fn redacted(s: &str) -> &'static str {
                if s.is_empty() { "" } else { "<redacted>" }
            }
            f.debug_struct("AuthConfig")
                .field("username", &self.username)
                .field("password", &redacted(&self.password))
                .field("auth", &redacted(&self.auth))
                .field("server_address", &self.server_address)
                .field("identity_token", &redacted(&self.identity_token))
                .field("registry_token", &redacted(&self.registry_token))
                .finish()
        }
    }
}

/// The handler contract `crius.handler.v1`: what the core and a runtime
/// handler exchange, in-process, across the plugin ABI and over ttrpc.
pub mod handler {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("crius.handler.v1");
}

/// The channel numbers of Kubernetes' remote-command streams over
/// WebSocket (`v4.channel.k8s.io`, `v5.channel.k8s.io`): the first byte of
/// every binary message names its stream. The server (crius's streaming
/// server) and the client (criusctl) share them.
pub mod remotecommand {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// The final status of the command (a Kubernetes `Status` as JSON).
    pub const ERROR: u8 = 3;
    /// Terminal resizes from the client (`{"Width":…,"Height":…}`).
    pub const RESIZE: u8 = 4;
    /// v5: the client closes the stream named by the payload's byte.
    pub const CLOSE: u8 = 255;
}

pub use prost;

#[cfg(test)]
mod tests {
    use super::cri::AuthConfig;

    #[test]
    fn auth_config_debug_hides_secrets() {
        let auth = AuthConfig {
            username: "alice".into(),
            password: "hunter2".into(),
            auth: "YWxpY2U6aHVudGVyMg==".into(),
            server_address: "registry.example".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
        };
        let printed = format!("{auth:?}");
        assert!(printed.contains("alice"));
        for secret in ["hunter2", "YWxpY2U6aHVudGVyMg==", "idtok", "regtok"] {
            assert!(!printed.contains(secret), "{secret} leaked in {printed}");
        }
    }
}
