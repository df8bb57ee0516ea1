//! Pod cgroups: the implementation is shared with handlers that place
//! their own host processes in a pod's cgroup (see `crius_shim_api::cgroupfs`).

pub use crius_shim_api::cgroupfs::*;
