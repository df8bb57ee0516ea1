//! Recursive read-only mounts, found by trying them, for runtimes that
//! print no features document (crun 1.8.1 has no `features` command but
//! does apply `rro`).
//!
//! The trial: `<runtime> create` (never start) a container whose only extra
//! mount is an `rbind,rro` bind of a directory holding a tmpfs submount,
//! then read the container init's mountinfo. `rro` works when that
//! submount is read-only in the container; a runtime that does not know the
//! option either refuses the spec or leaves the submount writable. Nothing
//! of the container's process ever runs: `create` stops before the exec.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// What the trial container's mountinfo is searched for.
const PROBE_TARGET: &str = "/probe/sub";

/// Upper bound for the whole trial (create, inspect, delete).
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Tries `rro` with `runtime` (state under `runtime_root`, scratch files
/// under `work_parent`). `Ok(supported)` when the trial ran, `Err(why)`
/// when it could not be run at all (then nothing is claimed).
pub async fn try_rro(
    runtime: &Path,
    runtime_root: &Path,
    work_parent: &Path,
) -> Result<bool, String> {
    let id = format!("crius-rro-probe-{}", std::process::id());
    let work = work_parent.join(format!(".{id}"));
    let prepared = {
        let work = work.clone();
        tokio::task::spawn_blocking(move || prepare(&work))
            .await
            .map_err(|e| e.to_string())?
    };
    let result = match prepared {
        Ok(()) => tokio::time::timeout(TRIAL_TIMEOUT, trial(runtime, runtime_root, &work, &id))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {TRIAL_TIMEOUT:?}"))),
        Err(e) => Err(e),
    };
    // Whatever happened: no container, no mount, no files left.
    let _ = runtime_command(runtime, runtime_root)
        .args(["delete", "--force", &id])
        .status()
        .await;
    let cleanup = {
        let work = work.clone();
        tokio::task::spawn_blocking(move || cleanup(&work)).await
    };
    if let Ok(Err(e)) = cleanup {
        tracing::warn!(dir = %work.display(), "rro probe left files: {e}");
    }
    result
}

fn runtime_command(runtime: &Path, runtime_root: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(runtime);
    cmd.arg("--root")
        .arg(runtime_root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn trial(runtime: &Path, runtime_root: &Path, work: &Path, id: &str) -> Result<bool, String> {
    let bundle = work.join("bundle");
    let pid_file = work.join("pid");
    let log = work.join("log");
    // The container's stdio goes to /dev/null: `create` leaves its init
    // holding them, so pipes would never reach EOF.
    let status = runtime_command(runtime, runtime_root)
        .arg("--log")
        .arg(&log)
        .arg("create")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .status()
        .await
        .map_err(|e| format!("cannot run {}: {e}", runtime.display()))?;
    if !status.success() {
        let said = tokio::fs::read_to_string(&log).await.unwrap_or_default();
        tracing::debug!(runtime = %runtime.display(), %status, log = %said.trim(), "rro refused");
        return Ok(false);
    }
    let pid = tokio::fs::read_to_string(&pid_file)
        .await
        .map_err(|e| format!("reading {}: {e}", pid_file.display()))?;
    let mountinfo = tokio::fs::read_to_string(format!("/proc/{}/mountinfo", pid.trim()))
        .await
        .map_err(|e| format!("reading the trial container's mountinfo: {e}"))?;
    Ok(submount_is_read_only(&mountinfo))
}

/// Whether the mount at [`PROBE_TARGET`] is read-only (mountinfo field 6:
/// the per-mount options).
fn submount_is_read_only(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut fields = line.split(' ');
        fields.nth(4) == Some(PROBE_TARGET)
            && fields
                .next()
                .is_some_and(|opts| opts.split(',').any(|o| o == "ro"))
    })
}

/// The bundle (an empty rootfs with the mount points) and the volume with
/// its tmpfs submount.
fn prepare(work: &Path) -> Result<(), String> {
    cleanup(work)?;
    let io = |what: &str, p: &Path| {
        let p = p.display().to_string();
        let what = what.to_string();
        move |e: std::io::Error| format!("{what} {p}: {e}")
    };
    let rootfs = work.join("bundle/rootfs");
    for d in ["dev", "proc", "probe"] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
    }
    // Runtimes check at create time that the process's executable exists
    // (it is never run): an empty file with the exec bit.
    let init = rootfs.join("init");
    std::fs::write(&init, b"").map_err(io("creating", &init))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io("chmod", &init))?;
    let sub = work.join("volume/sub");
    std::fs::create_dir_all(&sub).map_err(io("creating", &sub))?;
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting a tmpfs at {}: {e}", sub.display()))?;
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["/init"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
        },
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/probe",
                "type": "bind",
                "source": work.join("volume"),
                "options": ["rbind", "rro"],
            },
        ],
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]},
    });
    let config = work.join("bundle/config.json");
    std::fs::write(&config, spec.to_string()).map_err(io("writing", &config))?;
    Ok(())
}

fn cleanup(work: &Path) -> Result<(), String> {
    let sub: PathBuf = work.join("volume/sub");
    let _ = nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH);
    match std::fs::remove_dir_all(work) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", work.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_submount_options() {
        let ro = "30 29 0:40 / /probe ro,relatime - ext4 /dev/vda rw\n\
                  31 30 0:41 / /probe/sub ro,relatime - tmpfs tmpfs rw\n";
        let rw = "30 29 0:40 / /probe ro,relatime - ext4 /dev/vda rw\n\
                  31 30 0:41 / /probe/sub rw,relatime - tmpfs tmpfs rw\n";
        assert!(submount_is_read_only(ro));
        assert!(!submount_is_read_only(rw));
        assert!(!submount_is_read_only(""));
    }
}
