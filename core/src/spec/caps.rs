//! Capability sets from the CRI's add/drop lists.

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

use super::SpecError;

/// Every capability the spec format knows, by its kernel number (the bit
/// in `/proc/<pid>/status` masks): the candidates for privileged containers
/// and `add: [ALL]`, of which only those in the host's bounding set are
/// given (see [`all`]).
pub(crate) const ALL: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The default set of unprivileged containers (the one CRI-O and
/// containerd use).
pub(crate) const DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "KILL",
];

/// Parses `NET_ADMIN`, `CAP_NET_ADMIN` or `net_admin`.
pub(crate) fn parse(name: &str) -> Result<Capability, SpecError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| SpecError::InvalidArgument(format!("unknown capability {name:?}")))
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL")
}

/// What "every capability" means on this host: the known capabilities in
/// the daemon's bounding set (as CRI-O and containerd do). Asking the
/// runtime for one the host lacks (a reduced bounding set, e.g. without
/// `CAP_SYS_RESOURCE` in some sandboxes) makes it fail with "unable to
/// apply caps".
pub(crate) fn all() -> HashSet<Capability> {
    let mask = host_bounding_mask();
    ALL.iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, c)| parse(c).expect("known capability"))
        .collect()
}

/// The daemon's capability bounding set as a bit mask (`CapBnd`), read
/// once. When it cannot be read every known capability is assumed, as
/// before this check existed.
fn host_bounding_mask() -> u64 {
    static MASK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        match std::fs::read_to_string("/proc/self/status")
            .ok()
            .as_deref()
            .and_then(bounding_mask_of)
        {
            Some(mask) => mask,
            None => {
                tracing::warn!(
                    "cannot read CapBnd from /proc/self/status; assuming every capability"
                );
                u64::MAX
            }
        }
    })
}

/// The `CapBnd:` mask of a `/proc/<pid>/status` text.
fn bounding_mask_of(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Kubernetes semantics: start from the default set; `drop: [ALL]` empties
/// it and `add: [ALL]` fills it; then named adds, then named drops (a
/// capability both added and dropped ends up dropped).
pub(crate) fn effective_set(
    add: &[String],
    drop: &[String],
) -> Result<HashSet<Capability>, SpecError> {
    let mut set: HashSet<Capability> = DEFAULT
        .iter()
        .map(|c| parse(c).expect("known capability"))
        .collect();
    if drop.iter().any(|d| is_all(d)) {
        set.clear();
    }
    if add.iter().any(|a| is_all(a)) {
        set = all();
    }
    for a in add.iter().filter(|a| !is_all(a)) {
        set.insert(parse(a)?);
    }
    for d in drop.iter().filter(|d| !is_all(d)) {
        set.remove(&parse(d)?);
    }
    Ok(set)
}

/// The process capability sets: bounding, effective and permitted get
/// `set`; inheritable stays empty (so file capabilities cannot regain
/// anything across exec); ambient gets the CRI's ambient adds, which are
/// also added to the other sets as the kernel requires.
pub(crate) fn process_caps(
    mut set: HashSet<Capability>,
    ambient: &[String],
) -> Result<LinuxCapabilities, SpecError> {
    let ambient: HashSet<Capability> =
        ambient.iter().map(|a| parse(a)).collect::<Result<_, _>>()?;
    set.extend(ambient.iter().copied());
    let mut inheritable = HashSet::new();
    inheritable.extend(ambient.iter().copied());
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(inheritable)
        .ambient(ambient)
        .build()
        .map_err(|e| SpecError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &HashSet<Capability>) -> Vec<String> {
        let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
        v.sort();
        v
    }
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_add_drop() {
        let d = effective_set(&[], &[]).unwrap();
        assert_eq!(d.len(), 9);
        assert!(d.contains(&Capability::NetBindService));
        assert!(!d.contains(&Capability::NetRaw) && !d.contains(&Capability::SysAdmin));
        let x = effective_set(&s(&["NET_ADMIN", "CAP_SYS_TIME"]), &s(&["kill"])).unwrap();
        assert!(x.contains(&Capability::NetAdmin) && x.contains(&Capability::SysTime));
        assert!(!x.contains(&Capability::Kill));
        assert_eq!(x.len(), 10);
    }

    #[test]
    fn all_keyword() {
        let only = effective_set(&s(&["NET_BIND_SERVICE"]), &s(&["ALL"])).unwrap();
        assert_eq!(names(&only), vec!["NET_BIND_SERVICE"]);
        let none = effective_set(&[], &s(&["all"])).unwrap();
        assert!(none.is_empty());
        let most = effective_set(&s(&["ALL"]), &s(&["SYS_ADMIN"])).unwrap();
        let host = all();
        assert_eq!(
            most.len(),
            host.len() - usize::from(host.contains(&Capability::SysAdmin))
        );
        assert!(!most.contains(&Capability::SysAdmin));
        // add ALL + drop ALL: the add wins, as in the other CRI runtimes.
        assert_eq!(effective_set(&s(&["ALL"]), &s(&["ALL"])).unwrap(), host);
    }

    #[test]
    fn table_is_in_kernel_bit_order_and_host_mask_is_parsed() {
        // Spot checks of the bit numbers (linux/capability.h).
        let bit = |name: &str| ALL.iter().position(|c| *c == name).unwrap();
        assert_eq!(bit("CHOWN"), 0);
        assert_eq!(bit("NET_BIND_SERVICE"), 10);
        assert_eq!(bit("SYS_ADMIN"), 21);
        assert_eq!(bit("SYS_RESOURCE"), 24);
        assert_eq!(bit("SETFCAP"), 31);
        assert_eq!(bit("CHECKPOINT_RESTORE"), 40);
        let status = "Name:\tx\nCapEff:\t0000000000000000\nCapBnd:\t000001fffeffffff\n";
        let mask = bounding_mask_of(status).unwrap();
        assert_eq!(mask & (1 << 24), 0, "SYS_RESOURCE is not in that set");
        assert_ne!(mask & (1 << 21), 0);
        assert_eq!(bounding_mask_of("Name:\tx\n"), None);
    }

    #[test]
    fn unknown_capability_is_invalid() {
        assert!(matches!(
            effective_set(&s(&["FLY"]), &[]),
            Err(SpecError::InvalidArgument(_))
        ));
        assert!(matches!(
            effective_set(&[], &s(&["CAP_NOPE"])),
            Err(SpecError::InvalidArgument(_))
        ));
    }

    #[test]
    fn ambient_caps_are_in_every_set() {
        let c = process_caps(effective_set(&[], &[]).unwrap(), &s(&["NET_RAW"])).unwrap();
        for set in [
            c.bounding(),
            c.effective(),
            c.permitted(),
            c.ambient(),
            c.inheritable(),
        ] {
            assert!(set.as_ref().unwrap().contains(&Capability::NetRaw));
        }
        let c = process_caps(effective_set(&[], &[]).unwrap(), &[]).unwrap();
        assert!(c.inheritable().as_ref().unwrap().is_empty());
        assert!(c.ambient().as_ref().unwrap().is_empty());
    }
}
