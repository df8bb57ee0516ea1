//! The guest agent API of the kata handler, generated at build time from
//! `protos/*.proto`: Kata-compatible `grpc.AgentService` and `grpc.Health`
//! (same packages, messages and field numbers) for the methods crius
//! implements, as rust-protobuf messages and async ttrpc clients/servers.

macro_rules! generated {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            unused,
            unused_results,
            unsafe_op_in_unsafe_fn,
            missing_docs,
            deprecated,
            dead_code
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated!(agent, "agent.rs");
generated!(health, "health.rs");
generated!(oci, "oci.rs");
generated!(types, "types.rs");
generated!(agent_ttrpc, "agent_ttrpc.rs");
generated!(health_ttrpc, "health_ttrpc.rs");

pub use protobuf;
pub use ttrpc;

/// Fully qualified ttrpc service names, as they appear on the wire.
pub const AGENT_SERVICE: &str = "grpc.AgentService";
/// See [`AGENT_SERVICE`].
pub const HEALTH_SERVICE: &str = "grpc.Health";

/// The vsock port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

pub mod convert;
