//! CRI `LinuxContainerResources` as the OCI `LinuxResources` document that
//! `<runtime> update --resources FILE` reads.
//!
//! CRI uses 0 (and empty strings/maps) for "not set"; those fields are left
//! out so the runtime keeps the current value instead of writing 0.

use crius_shim_api::cri::LinuxContainerResources;
use serde_json::{Map, Value, json};

/// A CRI value the runtime cannot take.
#[derive(Debug, thiserror::Error)]
#[error("invalid resources: {0}")]
pub struct ResourcesError(String);

/// Builds the OCI `LinuxResources` JSON for `res`.
pub fn oci_resources(res: &LinuxContainerResources) -> Result<Value, ResourcesError> {
    let negative = |name: &str, v: i64| {
        if v < 0 {
            Err(ResourcesError(format!("{name} is negative ({v})")))
        } else {
            Ok(())
        }
    };
    negative("cpu_period", res.cpu_period)?;
    negative("cpu_shares", res.cpu_shares)?;
    negative("memory_limit_in_bytes", res.memory_limit_in_bytes)?;
    negative("memory_swap_limit_in_bytes", res.memory_swap_limit_in_bytes)?;
    if res.memory_swap_limit_in_bytes > 0
        && res.memory_limit_in_bytes > 0
        && res.memory_swap_limit_in_bytes < res.memory_limit_in_bytes
    {
        return Err(ResourcesError(format!(
            "memory_swap_limit_in_bytes ({}) is below memory_limit_in_bytes ({}); \
             the swap limit includes memory",
            res.memory_swap_limit_in_bytes, res.memory_limit_in_bytes
        )));
    }

    let mut out = Map::new();

    let mut cpu = Map::new();
    if res.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(res.cpu_shares));
    }
    // A quota of -1 means "unlimited" in cgroupfs and is passed through.
    if res.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(res.cpu_quota));
    }
    if res.cpu_period > 0 {
        cpu.insert("period".into(), json!(res.cpu_period));
    }
    if !res.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(res.cpuset_cpus));
    }
    if !res.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(res.cpuset_mems));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }

    let mut memory = Map::new();
    if res.memory_limit_in_bytes > 0 {
        memory.insert("limit".into(), json!(res.memory_limit_in_bytes));
    }
    if res.memory_swap_limit_in_bytes > 0 {
        memory.insert("swap".into(), json!(res.memory_swap_limit_in_bytes));
    }
    if !memory.is_empty() {
        out.insert("memory".into(), Value::Object(memory));
    }

    if !res.hugepage_limits.is_empty() {
        let limits: Vec<Value> = res
            .hugepage_limits
            .iter()
            .map(|h| {
                if h.page_size.is_empty() {
                    Err(ResourcesError("hugepage limit without page_size".into()))
                } else {
                    Ok(json!({"pageSize": h.page_size, "limit": h.limit}))
                }
            })
            .collect::<Result<_, _>>()?;
        out.insert("hugepageLimits".into(), Value::Array(limits));
    }

    if !res.unified.is_empty() {
        out.insert("unified".into(), json!(res.unified));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_shim_api::cri::HugepageLimit;

    #[test]
    fn unset_fields_are_left_out() {
        let v = oci_resources(&LinuxContainerResources::default()).unwrap();
        assert_eq!(v, json!({}));
    }

    #[test]
    fn maps_every_field() {
        let res = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 100,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            memory_swap_limit_in_bytes: 128 << 20,
        };
        let v = oci_resources(&res).unwrap();
        assert_eq!(
            v,
            json!({
                "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
                "memory": {"limit": 67108864, "swap": 134217728},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
                "unified": {"memory.high": "1000000"}
            })
        );
    }

    #[test]
    fn unlimited_quota_passes_through() {
        let res = LinuxContainerResources {
            cpu_quota: -1,
            ..Default::default()
        };
        assert_eq!(oci_resources(&res).unwrap(), json!({"cpu": {"quota": -1}}));
    }

    #[test]
    fn rejects_nonsense() {
        let neg = LinuxContainerResources {
            memory_limit_in_bytes: -5,
            ..Default::default()
        };
        assert!(
            oci_resources(&neg)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        let swap = LinuxContainerResources {
            memory_limit_in_bytes: 100 << 20,
            memory_swap_limit_in_bytes: 50 << 20,
            ..Default::default()
        };
        assert!(oci_resources(&swap).is_err());
    }
}
