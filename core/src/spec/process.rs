//! The container's process: its arguments, environment and rlimits.

use super::*;

/// Kubernetes command rules: `command` replaces the entrypoint and drops the
/// image's cmd; `args` replace the cmd.
pub(super) fn process_args(
    cfg: &cri::ContainerConfig,
    image: &crate::image::ContainerDefaults,
) -> Vec<String> {
    let mut args = if cfg.command.is_empty() {
        image.entrypoint.clone()
    } else {
        cfg.command.clone()
    };
    if !cfg.args.is_empty() {
        args.extend(cfg.args.iter().cloned());
    } else if cfg.command.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    args
}

/// HOSTNAME, then the image's env, then the CRI's (later keys replace
/// earlier ones in place); PATH is added when nobody set it.
pub(super) fn merge_env(
    image_env: &[String],
    cri_env: &[cri::KeyValue],
    hostname: &str,
) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |k: &str, v: &str, out: &mut Vec<(String, String)>| {
        if k.is_empty() {
            return;
        }
        match out.iter_mut().find(|(ok, _)| ok == k) {
            Some(e) => e.1 = v.to_string(),
            None => out.push((k.to_string(), v.to_string())),
        }
    };
    if !hostname.is_empty() {
        set("HOSTNAME", hostname, &mut out);
    }
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v, &mut out);
    }
    for kv in cri_env {
        set(&kv.key, &String::from_utf8_lossy(&kv.value), &mut out);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        let (k, v) = DEFAULT_PATH.split_once('=').expect("PATH=...");
        out.insert(0, (k.into(), v.into()));
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// RLIMIT_NOFILE of 1048576, capped at the daemon's own hard limit: the
/// runtime cannot raise a hard limit where the host denies it (it fails
/// with EPERM), and a lower one is what the host operator chose.
pub(super) fn nofile_limit() -> u64 {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if hard != RLIM_INFINITY => hard.min(NOFILE),
        _ => NOFILE,
    }
}

pub(super) fn rlimits() -> Vec<oci_spec::runtime::PosixRlimit> {
    let nofile = nofile_limit();
    vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(nofile)
            .soft(nofile)
            .build()
            .expect("complete rlimit"),
    ]
}
