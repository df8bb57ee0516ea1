//! Pod sandbox plumbing: pinned network namespaces, the CNI client and
//! cgroupfs pod cgroups. These are building blocks; the RunPodSandbox flow
//! that combines them lives in the server. The intended order:
//!
//! * run: [`cgroup::pod_cgroup_path`] + [`PodCgroup::create`] (+
//!   [`PodCgroup::set_resources`] for pod overhead), [`NetNs::create`] under
//!   the state dir, [`NetNs::bring_up_loopback`], then
//!   [`CniNetwork::add_recorded`] with a record path in the sandbox's state
//!   (the pod IPs are [`CniResult::pod_ips`]), then the pause container with
//!   the netns path and cgroup parent. Undo in reverse on any failure.
//! * stop: [`Attachment::teardown`] on the record; when there is none (a
//!   crash between ADD and the record write), DEL with the current network
//!   and no `prevResult` (host-local releases by container id and ifname).
//!   Then [`NetNs::remove`] / [`netns::remove_path`].
//! * remove: after the containers are gone, [`PodCgroup::remove`].

pub mod cgroup;
pub mod cni;
pub mod netns;
pub mod systemd;
pub mod userns;

pub use cgroup::{CgroupError, CgroupLayout, CgroupMode, PodCgroup, Resources};
pub use cni::{
    Attachment, CheckOutcome, CniError, CniNetwork, CniRequest, CniResult, Command as CniCommand,
    Invocation, PluginExec, PortMapping, ProcessExec,
};
pub use netns::{NetNs, NetnsError};

#[cfg(test)]
mod testutil;
