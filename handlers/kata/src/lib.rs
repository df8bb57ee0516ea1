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

pub mod agent_client;
pub mod config;
pub mod container;
pub mod crilog;
pub mod net;
pub mod qemu;
pub mod shim;
pub mod spawn;
pub mod vm;
