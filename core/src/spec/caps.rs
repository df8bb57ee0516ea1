//! Capability sets from the CRI's add/drop lists.

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

use super::SpecError;

/// Every capability the spec format knows, for privileged containers and
/// `add: [ALL]`.
pub(crate) const ALL: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETGID",
    "SETFCAP",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
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

pub(crate) fn all() -> HashSet<Capability> {
    ALL.iter()
        .map(|c| parse(c).expect("known capability"))
        .collect()
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
        assert_eq!(most.len(), ALL.len() - 1);
        assert!(!most.contains(&Capability::SysAdmin));
        // add ALL + drop ALL: the add wins, as in the other CRI runtimes.
        assert_eq!(
            effective_set(&s(&["ALL"]), &s(&["ALL"])).unwrap().len(),
            ALL.len()
        );
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
