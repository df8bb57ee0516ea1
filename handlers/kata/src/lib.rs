//! The kata runtime handler: one VM per pod, run by a per-pod shim process.
//!
//! `crius-kata-shim` is a standard crius shim (`crius_shim_api::shim`): the
//! daemon starts, reconnects to and respawns it like any third-party shim,
//! and knows nothing of what is below.
//!
//! - [`shim::PodShim`] is the handler the shim serves: it owns the VM
//!   ([`vm`]: QEMU built by [`qemu`], vhost-device-vsock, virtiofsd, started
//!   through [`spawn`]) and talks to the guest agent ([`agent_client`]).
//! - [`config`]: the handler entry's `vm:` table (parsed and checked by the
//!   shim) and VM sizing.
//! - Interactive processes (`Exec`, `Attach`, `Wait`, ...) go through the
//!   agent's stream calls (`interactive`, `attach`); `PortForward` through
//!   the agent's port-forward vsock port (`portfwd`).

pub mod agent_client;
mod attach;
mod boot;
pub mod cid;
pub mod config;
pub mod container;
pub mod crilog;
mod interactive;
pub mod net;
mod portfwd;
pub mod qemu;
mod qmp;
mod resize;
mod resources;
pub mod shim;
pub mod spawn;
pub mod vm;
