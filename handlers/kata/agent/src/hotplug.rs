//! Bringing hot-plugged vCPUs and memory online (OnlineCPUMem).
//!
//! The host adds vCPUs and DIMMs through QEMU; the guest kernel learns of
//! them by ACPI but leaves new CPUs offline (no udev here), and new memory
//! too unless `memhp_default_state=online` is on its command line. The
//! agent writes `1`/`online` to their sysfs `online`/`state` files.

use std::path::Path;
use std::time::{Duration, Instant};

const CPUS: &str = "/sys/devices/system/cpu";
const MEMORY: &str = "/sys/devices/system/memory";
/// How long the CPUs the host added may take to appear (ACPI is
/// asynchronous, slower still under TCG).
const APPEAR_TIMEOUT: Duration = Duration::from_secs(20);

/// Entries `prefix<N>` of `dir` whose file `name` reads `offline_value`.
async fn offline(
    dir: &str,
    prefix: &str,
    name: &str,
    offline_value: &str,
) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(e)) = entries.next_entry().await {
        let file_name = e.file_name();
        let Some(n) = file_name.to_str().and_then(|f| f.strip_prefix(prefix)) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let file = e.path().join(name);
        if let Ok(v) = tokio::fs::read_to_string(&file).await
            && v.trim() == offline_value
        {
            out.push(file);
        }
    }
    out
}

async fn write(file: &Path, value: &str) -> std::io::Result<()> {
    tokio::fs::write(file, value).await
}

/// Onlines offline memory blocks, then CPUs until `cpus` of them came
/// online (0: whatever is offline now). Returns how many CPUs it onlined.
pub async fn online(cpus: u32, wait: bool, cpu_only: bool) -> Result<u32, String> {
    if !cpu_only {
        for state in offline(MEMORY, "memory", "state", "offline").await {
            write(&state, "online")
                .await
                .map_err(|e| format!("{}: {e}", state.display()))?;
        }
    }
    let deadline = Instant::now() + APPEAR_TIMEOUT;
    let mut onlined = 0;
    loop {
        for file in offline(CPUS, "cpu", "online", "0").await {
            match write(&file, "1").await {
                Ok(()) => onlined += 1,
                Err(e) => tracing::warn!(file = %file.display(), error = %e, "onlining a CPU"),
            }
        }
        if cpus == 0 || onlined >= cpus || !wait {
            return Ok(onlined);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{onlined} of {cpus} hot-plugged CPUs came online within {APPEAR_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
