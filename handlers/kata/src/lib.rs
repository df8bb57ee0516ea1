//! The kata runtime handler: one VM per pod, run by a per-pod shim process.
//!
//! - [`handler::KataHandler`] (in the daemon) starts `crius-kata-shim` for
//!   each pod and forwards the pod's calls to it over [`wire`].
//! - [`shim::PodShim`] (in the shim) owns the VM ([`vm`]: QEMU built by
//!   [`qemu`], vhost-device-vsock, virtiofsd, started through [`spawn`]) and
//!   talks to the guest agent.
//! - [`config`]: the handler entry's `vm:` table and VM sizing.

pub mod agent_client;
pub mod config;
pub mod container;
pub mod crilog;
pub mod handler;
pub mod net;
pub mod qemu;
pub mod shim;
pub mod spawn;
pub mod vm;
pub mod wire;

pub use handler::{KataHandler, KataHandlerConfig};
