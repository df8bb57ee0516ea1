//! The guest agent API of the kata handler, generated at build time from
//! `protos/*.proto`: Kata-compatible `grpc.AgentService` and `grpc.Health`
//! (same packages, messages and field numbers) for the methods crius
//! implements, as rust-protobuf messages and async ttrpc clients/servers.
//!
//! # Which compatibility we keep with Kata's `grpc.AgentService`
//!
//! Service, method and message names and Kata's field numbers are Kata's,
//! so the messages have Kata's shape on the wire and Kata's tools can call
//! the methods that take no OCI data (Check, CreateSandbox, WaitProcess,
//! the stream calls, …). The OCI runtime spec is different: Kata carries it
//! as a protobuf translation (`grpc.Spec`, `oci.proto`) that cannot say
//! everything the OCI spec says (zero vs unset, newer fields). crius sends
//! it as OCI JSON in extension fields numbered 100
//! (`CreateContainerRequest.oci_spec_json`,
//! `ExecProcessRequest.process_json`, `UpdateContainerRequest.resources_json`;
//! see [`oci_json`]), and the crius agent reads only those: a request with
//! only Kata's protobuf form is refused with `INVALID_ARGUMENT` naming the
//! missing field, rather than run with a spec translated by hand.

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

/// The vsock port of the agent's port-forward listener (a crius extension,
/// not part of Kata's API): one connection per forwarded TCP connection,
/// `PORT <n>\n` → `OK\n` / `ERR <reason>\n`, then raw bytes both ways
/// (see handlers/kata/README.md).
pub const FORWARD_VSOCK_PORT: u32 = 1025;

pub mod oci_json;

pub use oci_spec;
