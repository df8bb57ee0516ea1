//! Looking at the host from a test: CNI test networks, mounts, processes and
//! files that show whether a pod left anything behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes `<dir>/10-test.conflist`: the shipped example bridge network with
/// a network name, bridge, subnet (`<subnet_prefix>.0/24`) and IPAM data dir
/// of the test's own, so parallel tests never share addresses.
pub fn write_test_cni_config(
    dir: &Path,
    network: &str,
    bridge: &str,
    subnet_prefix: &str,
) -> PathBuf {
    let shipped = crate::workspace_root().join("configs/cni/10-crius-bridge.conflist");
    let mut conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&shipped).expect("read shipped conflist"))
            .expect("conflist is JSON");
    conf["name"] = network.into();
    let plugin = &mut conf["plugins"][0];
    plugin["bridge"] = bridge.into();
    // No masquerading rules: the test pods talk only among themselves.
    plugin["ipMasq"] = false.into();
    plugin["ipam"]["ranges"] = serde_json::json!([[{ "subnet": format!("{subnet_prefix}.0/24") }]]);
    plugin["ipam"]["dataDir"] = dir.join("ipam").display().to_string().into();
    let path = dir.join("10-test.conflist");
    std::fs::write(&path, serde_json::to_vec_pretty(&conf).unwrap()).unwrap();
    path
}

/// Lines of this process's mountinfo that contain `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    mounts_of("self", needle)
}

/// Lines of `process`'s (a pid, or `self`) mountinfo that contain `needle`.
pub fn mounts_of(process: &str, needle: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{process}/mountinfo")).unwrap();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// `<pid>: <command line>` of processes whose command line contains every
/// one of `needles`.
pub fn processes_matching(needles: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.is_empty() && needles.iter().all(|n| cmdline.contains(n)) {
            out.push(format!("{}: {cmdline}", name.to_string_lossy()));
        }
    }
    out
}

/// Waits until the file at `path` contains `needle`; returns its text.
/// Panics with what the file has when `timeout` passes.
pub async fn wait_for_log(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {needle:?}; it has:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
