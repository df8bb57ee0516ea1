//! CDI (Container Device Interface) devices: what DRA drivers and device
//! plugins hand a container by name (`vendor.com/class=device`).
//!
//! The kubelet names devices in `ContainerConfig.CDI_devices` (and, from
//! older device plugins, in `cdi.k8s.io/*` annotations whose values are
//! comma-separated names). Vendors describe them in spec files (JSON or
//! YAML) in the configured spec dirs (`cdi_spec_dirs`, default `/etc/cdi`
//! then `/var/run/cdi`; a later dir wins for a device defined twice). Each
//! requested device's `containerEdits`, and those of the spec file that
//! defines it, are applied to the OCI spec: env, device nodes (with a
//! cgroup rule allowing them), mounts, hooks, additional GIDs. An unknown
//! device is an error: a container must never start without the device it
//! asked for.
//!
//! The maintained `container-device-interface` crate was considered; it
//! brings a JSON-schema engine, a CLI parser and another major version of
//! `oci-spec`, for what is here a small data format, so crius reads the
//! format itself.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook, HookBuilder, Hooks, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, Mount, MountBuilder, Spec,
};
use serde::Deserialize;

use super::SpecError;

/// Annotation prefix under which device plugins name CDI devices.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";
/// Default spec dirs, lowest priority first.
pub const DEFAULT_SPEC_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];
/// Spec files larger than this are refused (a spec is a few KiB).
const MAX_SPEC_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    #[serde(default)]
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<DeviceEntry>,
    #[serde(default)]
    container_edits: Option<ContainerEdits>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceEntry {
    name: String,
    #[serde(default)]
    container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerEdits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    mounts: Vec<CdiMount>,
    #[serde(default)]
    hooks: Vec<CdiHook>,
    #[serde(default, rename = "additionalGIDs")]
    additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceNode {
    path: String,
    #[serde(default)]
    host_path: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    major: Option<i64>,
    #[serde(default)]
    minor: Option<i64>,
    #[serde(default)]
    file_mode: Option<u32>,
    #[serde(default)]
    permissions: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CdiMount {
    host_path: String,
    container_path: String,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CdiHook {
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    timeout: Option<i64>,
}

/// One device and where it was defined.
#[derive(Debug, Clone)]
struct Known {
    file: PathBuf,
    spec_edits: Option<ContainerEdits>,
    edits: ContainerEdits,
}

/// The devices of the spec dirs, read at one moment.
#[derive(Debug, Default)]
pub struct CdiRegistry {
    devices: HashMap<String, Known>,
    /// Spec files that could not be used, with the reason (named in the
    /// error for an unknown device: the device may be in one of them).
    broken: Vec<String>,
}

impl CdiRegistry {
    /// Reads every `*.json`, `*.yaml`, `*.yml` in `dirs` (missing dirs are
    /// empty). Blocking: call it off the async executor.
    pub fn load(dirs: &[PathBuf]) -> Self {
        let mut registry = Self::default();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
                })
                .collect();
            files.sort();
            for file in files {
                if let Err(reason) = registry.add_file(&file) {
                    tracing::warn!(file = %file.display(), "ignoring CDI spec: {reason}");
                    registry
                        .broken
                        .push(format!("{}: {reason}", file.display()));
                }
            }
        }
        registry
    }

    fn add_file(&mut self, file: &Path) -> Result<(), String> {
        let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
        if meta.len() > MAX_SPEC_BYTES {
            return Err(format!("larger than {MAX_SPEC_BYTES} bytes"));
        }
        let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
        // JSON is YAML; one parser reads both.
        let spec: SpecFile = serde_saphyr::from_str(&text).map_err(|e| e.to_string())?;
        if spec.cdi_version.is_empty() {
            return Err("cdiVersion is missing".into());
        }
        check_kind(&spec.kind)?;
        for device in &spec.devices {
            check_device_name(&device.name)?;
            self.devices.insert(
                format!("{}={}", spec.kind, device.name),
                Known {
                    file: file.to_path_buf(),
                    spec_edits: spec.container_edits.clone(),
                    edits: device.container_edits.clone(),
                },
            );
        }
        Ok(())
    }

    /// Applies the devices `names` (fully qualified) to `spec`.
    pub fn apply(&self, spec: &mut Spec, names: &[String]) -> Result<(), SpecError> {
        let mut spec_files_done: Vec<&Path> = Vec::new();
        for name in names {
            let (kind, _) = name.split_once('=').ok_or_else(|| {
                invalid(format!(
                    "CDI device {:?} is not a fully qualified name (vendor.com/class=name)",
                    crate::bounded::bounded(name)
                ))
            })?;
            check_kind(kind).map_err(|e| invalid(format!("CDI device {name:?}: {e}")))?;
            let Some(known) = self.devices.get(name) else {
                let mut message = format!(
                    "unknown CDI device {:?}: no spec in the CDI spec dirs defines it",
                    crate::bounded::bounded(name)
                );
                if !self.broken.is_empty() {
                    message.push_str(&format!(
                        " (unusable spec files: {})",
                        self.broken.join("; ")
                    ));
                }
                return Err(invalid(message));
            };
            if !spec_files_done.contains(&known.file.as_path()) {
                if let Some(edits) = &known.spec_edits {
                    apply_edits(spec, edits, name)?;
                }
                spec_files_done.push(&known.file);
            }
            apply_edits(spec, &known.edits, name)?;
        }
        Ok(())
    }
}

fn invalid(message: String) -> SpecError {
    SpecError::InvalidArgument(crate::bounded::bound_message(message))
}

/// `vendor.com/class`: a vendor of DNS-like labels, a class of
/// alphanumerics, `-`, `_`, `.`.
fn check_kind(kind: &str) -> Result<(), String> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| format!("kind {kind:?} is not vendor/class"))?;
    let ok_vendor = !vendor.is_empty()
        && vendor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    let ok_class = !class.is_empty()
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok_vendor && ok_class {
        Ok(())
    } else {
        Err(format!("kind {kind:?} is not a valid vendor/class"))
    }
}

fn check_device_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("device name {name:?} is not valid"))
    }
}

/// The device names a container asks for: the CRI field, then the
/// annotations (sorted by key), without duplicates.
pub fn requested(
    devices: &[crius_proto::cri::CdiDevice],
    annotations: &std::collections::HashMap<String, String>,
) -> Vec<String> {
    let mut names: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
    let by_key: BTreeMap<&String, &String> = annotations
        .iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    for value in by_key.values() {
        names.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn apply_edits(spec: &mut Spec, edits: &ContainerEdits, device: &str) -> Result<(), SpecError> {
    let at = |what: &str| format!("CDI device {device}: {what}");
    if let Some(process) = spec.process_mut() {
        let mut env = process.env().clone().unwrap_or_default();
        for var in &edits.env {
            if !var.contains('=') {
                return Err(invalid(at(&format!("env entry {var:?} is not KEY=VALUE"))));
            }
            let key = var.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(var.clone());
        }
        process.set_env(Some(env));
        if !edits.additional_gids.is_empty() {
            let user = process.user_mut();
            let mut gids = user.additional_gids().clone().unwrap_or_default();
            for gid in &edits.additional_gids {
                if *gid != 0 && !gids.contains(gid) {
                    gids.push(*gid);
                }
            }
            user.set_additional_gids(Some(gids));
        }
    }
    for node in &edits.device_nodes {
        let (device, rule_access) = device_node(node).map_err(|e| invalid(at(&e)))?;
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        let mut devices = linux.devices().clone().unwrap_or_default();
        devices.retain(|d| d.path() != device.path());
        let rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(device.typ())
            .major(device.major())
            .minor(device.minor())
            .access(rule_access)
            .build()
            .map_err(|e| invalid(at(&e.to_string())))?;
        devices.push(device);
        linux.set_devices(Some(devices));
        let resources = linux.resources_mut().get_or_insert_with(Default::default);
        let mut rules = resources.devices().clone().unwrap_or_default();
        rules.push(rule);
        resources.set_devices(Some(rules));
    }
    for m in &edits.mounts {
        if !m.container_path.starts_with('/') {
            return Err(invalid(at(&format!(
                "mount target {:?} is not absolute",
                m.container_path
            ))));
        }
        let kind = m.kind.clone().unwrap_or_else(|| "bind".into());
        let mut options = m.options.clone();
        if kind == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.push("bind".into());
        }
        let mount: Mount = MountBuilder::default()
            .destination(&m.container_path)
            .source(&m.host_path)
            .typ(kind)
            .options(options)
            .build()
            .map_err(|e| invalid(at(&e.to_string())))?;
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.retain(|existing| existing.destination() != mount.destination());
        mounts.push(mount);
        spec.set_mounts(Some(mounts));
    }
    for h in &edits.hooks {
        let mut hook = HookBuilder::default().path(&h.path);
        if !h.args.is_empty() {
            hook = hook.args(h.args.clone());
        }
        if !h.env.is_empty() {
            hook = hook.env(h.env.clone());
        }
        if let Some(timeout) = h.timeout {
            hook = hook.timeout(timeout);
        }
        let hook: Hook = hook.build().map_err(|e| invalid(at(&e.to_string())))?;
        add_hook(spec, &h.hook_name, hook).map_err(|e| invalid(at(&e)))?;
    }
    Ok(())
}

/// Adds `hook` at the OCI lifecycle stage `stage`.
pub(crate) fn add_hook(spec: &mut Spec, stage: &str, hook: Hook) -> Result<(), String> {
    let mut hooks: Hooks = spec.hooks().clone().unwrap_or_default();
    let push = |list: Option<Vec<Hook>>| {
        let mut list = list.unwrap_or_default();
        list.push(hook);
        Some(list)
    };
    match stage {
        "prestart" => {
            #[allow(deprecated)]
            let list = push(hooks.prestart().clone());
            #[allow(deprecated)]
            hooks.set_prestart(list);
        }
        "createRuntime" => {
            hooks.set_create_runtime(push(hooks.create_runtime().clone()));
        }
        "createContainer" => {
            hooks.set_create_container(push(hooks.create_container().clone()));
        }
        "startContainer" => {
            hooks.set_start_container(push(hooks.start_container().clone()));
        }
        "poststart" => {
            hooks.set_poststart(push(hooks.poststart().clone()));
        }
        "poststop" => {
            hooks.set_poststop(push(hooks.poststop().clone()));
        }
        other => return Err(format!("unknown hook stage {other:?}")),
    }
    spec.set_hooks(Some(hooks));
    Ok(())
}

/// The OCI device for a CDI node (type and numbers from the host node when
/// the spec leaves them out) and the cgroup access it gets.
fn device_node(node: &DeviceNode) -> Result<(LinuxDevice, String), String> {
    if !node.path.starts_with('/') {
        return Err(format!("device path {:?} is not absolute", node.path));
    }
    let host = node.host_path.clone().unwrap_or_else(|| node.path.clone());
    let (mut kind, mut major, mut minor, mut mode) =
        (node.kind.clone(), node.major, node.minor, node.file_mode);
    if kind.is_none() || major.is_none() || minor.is_none() {
        let meta = std::fs::metadata(&host).map_err(|e| format!("device node {host}: {e}"))?;
        let file_type = meta.file_type();
        let found = if file_type.is_char_device() {
            "c"
        } else if file_type.is_block_device() {
            "b"
        } else {
            return Err(format!("{host} is not a device node"));
        };
        let rdev = meta.rdev();
        kind.get_or_insert_with(|| found.into());
        major.get_or_insert(rustix::fs::major(rdev) as i64);
        minor.get_or_insert(rustix::fs::minor(rdev) as i64);
        mode.get_or_insert(meta.mode() & 0o777);
    }
    let typ = match kind.as_deref() {
        Some("c") | Some("u") => LinuxDeviceType::C,
        Some("b") => LinuxDeviceType::B,
        Some("p") => LinuxDeviceType::P,
        other => return Err(format!("device type {other:?} is not one of c, b, u, p")),
    };
    let access = node.permissions.clone().unwrap_or_else(|| "rwm".into());
    if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(format!("permissions {access:?} are not a subset of rwm"));
    }
    let mut device = LinuxDeviceBuilder::default()
        .path(&node.path)
        .typ(typ)
        .major(major.unwrap_or_default())
        .minor(minor.unwrap_or_default());
    if let Some(mode) = mode {
        device = device.file_mode(mode);
    }
    if let Some(uid) = node.uid {
        device = device.uid(uid);
    }
    if let Some(gid) = node.gid {
        device = device.gid(gid);
    }
    let device = device.build().map_err(|e| e.to_string())?;
    Ok((device, access))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec::default()
    }

    fn registry_with(files: &[(&str, &str)]) -> (tempfile::TempDir, CdiRegistry) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let registry = CdiRegistry::load(&[dir.path().to_path_buf()]);
        (dir, registry)
    }

    const SPEC: &str = r#"{
        "cdiVersion": "0.6.0",
        "kind": "example.com/dev",
        "containerEdits": {"env": ["FROM_SPEC=1"]},
        "devices": [{
            "name": "null0",
            "containerEdits": {
                "env": ["DEVICE=null0"],
                "deviceNodes": [{"path": "/dev/example-null", "hostPath": "/dev/null"}],
                "mounts": [{"hostPath": "/etc/hostname", "containerPath": "/etc/example", "options": ["ro"]}],
                "hooks": [{"hookName": "createContainer", "path": "/bin/true"}],
                "additionalGIDs": [4242]
            }
        }]
    }"#;

    #[test]
    fn a_device_applies_its_edits_and_its_spec_files() {
        let (_dir, registry) = registry_with(&[("example.json", SPEC)]);
        let mut spec = spec();
        registry
            .apply(&mut spec, &["example.com/dev=null0".into()])
            .unwrap();
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&"DEVICE=null0".into()) && env.contains(&"FROM_SPEC=1".into()));
        let linux = spec.linux().as_ref().unwrap();
        let device = &linux.devices().as_ref().unwrap()[0];
        assert_eq!(device.path(), &PathBuf::from("/dev/example-null"));
        assert_eq!(
            (device.typ(), device.major(), device.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(
            rules
                .iter()
                .any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3))
        );
        let mounts = spec.mounts().clone().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.destination() == &PathBuf::from("/etc/example"))
        );
        assert_eq!(
            spec.hooks()
                .as_ref()
                .unwrap()
                .create_container()
                .as_ref()
                .unwrap()[0]
                .path(),
            &PathBuf::from("/bin/true")
        );
        let gids = spec
            .process()
            .as_ref()
            .unwrap()
            .user()
            .additional_gids()
            .clone();
        assert_eq!(gids, Some(vec![4242]));
    }

    #[test]
    fn unknown_and_malformed_names_are_invalid_arguments() {
        let (_dir, registry) = registry_with(&[("example.json", SPEC), ("broken.yaml", "kind: [")]);
        for (name, needle) in [
            ("example.com/dev=missing", "unknown CDI device"),
            ("example.com/dev=missing", "broken.yaml"),
            ("not-qualified", "not a fully qualified name"),
            ("bad kind/x=y", "not a valid vendor/class"),
        ] {
            let err = registry.apply(&mut spec(), &[name.into()]).unwrap_err();
            assert!(
                matches!(&err, SpecError::InvalidArgument(m) if m.contains(needle)),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn later_dirs_win_and_annotations_add_names() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        std::fs::write(first.path().join("a.json"), SPEC).unwrap();
        std::fs::write(
            second.path().join("a.yaml"),
            "cdiVersion: 0.6.0\nkind: example.com/dev\ndevices:\n- name: null0\n  containerEdits:\n    env: [DEVICE=override]\n",
        )
        .unwrap();
        let registry =
            CdiRegistry::load(&[first.path().to_path_buf(), second.path().to_path_buf()]);
        let mut spec = spec();
        registry
            .apply(&mut spec, &["example.com/dev=null0".into()])
            .unwrap();
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&"DEVICE=override".into()), "{env:?}");

        let annotations = std::collections::HashMap::from([
            (
                "cdi.k8s.io/plugin".to_string(),
                "a.com/x=1, b.com/y=2".to_string(),
            ),
            ("other".to_string(), "c.com/z=3".to_string()),
        ]);
        let names = requested(
            &[crius_proto::cri::CdiDevice {
                name: "a.com/x=1".into(),
            }],
            &annotations,
        );
        assert_eq!(
            names,
            vec!["a.com/x=1".to_string(), "b.com/y=2".to_string()]
        );
    }
}
