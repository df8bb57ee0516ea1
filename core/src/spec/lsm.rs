//! AppArmor profiles and SELinux labels of a container's process.

use super::*;

pub(super) fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

pub(super) fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// The AppArmor profile to apply, only when the host has AppArmor: a
/// Localhost profile by name. RuntimeDefault has no crius profile loaded
/// and runs under the runtime's default (unconfined); privileged
/// containers are unconfined.
pub(super) fn apparmor_profile(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Option<String>, SpecError> {
    let Some(sc) = sc else { return Ok(None) };
    let wanted = match &sc.apparmor {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Localhost) => {
                let name = p.localhost_ref.trim_start_matches("localhost/");
                if name.is_empty() {
                    return Err(SpecError::InvalidArgument(
                        "apparmor Localhost profile without a name".into(),
                    ));
                }
                Some(name.to_string())
            }
            _ => None,
        },
        #[allow(deprecated)] // still sent by older kubelets
        None => sc
            .apparmor_profile
            .strip_prefix("localhost/")
            .map(String::from),
    };
    if privileged || !apparmor_enabled() {
        if let Some(w) = &wanted {
            tracing::debug!(profile = %w, privileged, "apparmor profile not applied");
        }
        return Ok(None);
    }
    Ok(wanted)
}

/// `user:role:type:level` from the CRI's SELinux options, only on SELinux
/// hosts (missing parts take the usual container defaults).
pub(super) fn selinux_label(opts: Option<&cri::SeLinuxOption>) -> Option<String> {
    let o = opts?;
    if (o.r#type.is_empty() && o.level.is_empty()) || !selinux_enabled() {
        return None;
    }
    let or = |v: &str, d: &str| {
        if v.is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    Some(format!(
        "{}:{}:{}:{}",
        or(&o.user, "system_u"),
        or(&o.role, "system_r"),
        or(&o.r#type, "container_t"),
        or(&o.level, "s0")
    ))
}
