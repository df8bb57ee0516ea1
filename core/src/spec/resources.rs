//! The container's cgroup resources, checked up front.

use super::*;

pub(super) fn resources(
    r: Option<&cri::LinuxContainerResources>,
    device_rules: Vec<oci_spec::runtime::LinuxDeviceCgroup>,
) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let mut b = LinuxResourcesBuilder::default().devices(device_rules);
    if let Some(r) = r {
        let mut cpu = LinuxCpuBuilder::default();
        let mut any_cpu = false;
        if r.cpu_shares > 0 {
            cpu = cpu.shares(r.cpu_shares as u64);
            any_cpu = true;
        }
        if r.cpu_quota != 0 {
            cpu = cpu.quota(r.cpu_quota);
            any_cpu = true;
        }
        if r.cpu_period > 0 {
            cpu = cpu.period(r.cpu_period as u64);
            any_cpu = true;
        }
        if !r.cpuset_cpus.is_empty() {
            cpu = cpu.cpus(r.cpuset_cpus.clone());
            any_cpu = true;
        }
        if !r.cpuset_mems.is_empty() {
            cpu = cpu.mems(r.cpuset_mems.clone());
            any_cpu = true;
        }
        if any_cpu {
            b = b.cpu(cpu.build().map_err(build_err)?);
        }
        if r.memory_limit_in_bytes > 0 || r.memory_swap_limit_in_bytes > 0 {
            let mut mem = LinuxMemoryBuilder::default();
            if r.memory_limit_in_bytes > 0 {
                mem = mem.limit(r.memory_limit_in_bytes);
            }
            if r.memory_swap_limit_in_bytes > 0 {
                mem = mem.swap(r.memory_swap_limit_in_bytes);
            }
            b = b.memory(mem.build().map_err(build_err)?);
        }
        if !r.hugepage_limits.is_empty() {
            let limits = r
                .hugepage_limits
                .iter()
                .map(|h| {
                    LinuxHugepageLimitBuilder::default()
                        .page_size(h.page_size.clone())
                        .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                        .build()
                        .map_err(build_err)
                })
                .collect::<Result<Vec<_>, _>>()?;
            b = b.hugepage_limits(limits);
        }
        if !r.unified.is_empty() {
            b = b.unified(r.unified.clone());
        }
    }
    b.build().map_err(build_err)
}

/// The lowest memory limit a container may ask for: below it runc's init
/// and the container's first process cannot even start, and the failure
/// would surface as an opaque runtime error at StartContainer (CRI-O uses
/// the same bound).
pub const MIN_MEMORY_LIMIT_BYTES: i64 = 12 * 1024 * 1024;

/// Refuses resource values the kernel or the OCI runtime would reject, so
/// the client gets `InvalidArgument` up front instead of an internal error
/// from deep inside container creation.
pub fn validate_resources(r: &cri::LinuxContainerResources) -> Result<(), SpecError> {
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(SpecError::InvalidArgument(format!(
            "oom_score_adj {} is outside -1000..=1000",
            r.oom_score_adj
        )));
    }
    if r.memory_limit_in_bytes < 0
        || (r.memory_limit_in_bytes > 0 && r.memory_limit_in_bytes < MIN_MEMORY_LIMIT_BYTES)
    {
        return Err(SpecError::InvalidArgument(format!(
            "memory_limit_in_bytes {} is below the minimum of {MIN_MEMORY_LIMIT_BYTES} bytes (12 MiB)",
            r.memory_limit_in_bytes
        )));
    }
    for (what, v) in [("cpu_period", r.cpu_period), ("cpu_shares", r.cpu_shares)] {
        if v < 0 {
            return Err(SpecError::InvalidArgument(format!(
                "{what} {v} is negative"
            )));
        }
    }
    Ok(())
}
