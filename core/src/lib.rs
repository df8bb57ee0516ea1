//! The crius daemon as a library: configuration, the CRI gRPC services, the
//! image service and the routing of pods to runtime handlers.

pub mod bounded;
pub mod config;
pub mod deadlines;
pub mod events;
pub mod fsusage;
pub mod handlers;
pub mod image;
pub mod leftovers;
pub mod metrics;
pub mod path_io;
pub mod perms;
pub mod plugin;
pub mod pod;
pub mod remote;
pub mod restore_gate;
pub mod rootfs;
pub mod sandbox;
pub mod server;
pub mod spec;
pub mod streaming;
