//! The CRI gRPC services. RPC methods stay thin: they validate, call into the
//! subsystems and convert typed errors to `tonic::Status` here at the edge.
pub mod authority;
pub mod conn;
pub mod image;
pub mod runtime;
pub mod stats;
