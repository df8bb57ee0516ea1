//! The `vm:` sub-table of a `kind: vm` handler entry, and how a pod's
//! resources and annotations size its VM.
//!
//! The daemon treats the table as opaque: it merges it key by key across
//! drop-ins and hands it to the shim as `HandlerParams.options`. The shim
//! parses and checks it here ([`VmConfig::from_options`]); a problem fails
//! the shim's `info`, naming the key, and the daemon lists the handler as
//! not ready with that message.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    #[default]
    Q35,
    Microvm,
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// Software emulation (`-accel tcg,thread=multi -cpu max`): slow but
    /// works where /dev/kvm cannot boot an unmodified kernel.
    #[default]
    Tcg,
}

/// How the host reaches the guest agent's vsock port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VsockMode {
    /// The kernel's vhost-vsock (`/dev/vhost-vsock`, `vhost-vsock-pci`).
    Vhost,
    /// `vhost-device-vsock` (vhost-user) exposing the guest's ports on a
    /// unix socket (`CONNECT <port>` handshake). Needs no host module.
    #[default]
    Hybrid,
}

/// How container rootfs and volumes are shared into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SharedFs {
    /// virtio-9p served by QEMU itself.
    #[default]
    #[serde(rename = "9p")]
    NineP,
    /// virtio-fs served by one `virtiofsd` per VM.
    Virtiofs,
}

macro_rules! vm_config {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr ),* $(,)?) => {
        /// Settings of a `kind: vm` (kata) handler; the QEMU binary itself is
        /// the entry's `runtime_path`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct VmConfig {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for VmConfig {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }
    };
}

vm_config! {
    /// `q35` or `microvm`.
    machine: Machine = Machine::Q35,
    /// `kvm` or `tcg`.
    accelerator: Accelerator = Accelerator::Tcg,
    /// TCG's translation cache per VM in MiB (`-accel tcg,tb-size=`); 0 =
    /// QEMU's default (up to 1 GiB). It is host memory each VM touches as
    /// the guest runs new code; 64 MiB holds a booted guest and its agent
    /// without retranslating (boot time measured the same as with 1 GiB).
    tcg_tb_size_mib: u32 = 64,
    /// A virtio-balloon through which the guest reports the pages it frees,
    /// so that host memory follows what the guest uses rather than the most
    /// it ever touched (it costs the guest a little CPU when it frees).
    free_page_reporting: bool = true,
    /// `-cpu` model; empty = `host` with kvm, `max` with tcg.
    cpu_model: String = String::new(),
    /// Extra `-cpu` flags appended to the model (`+x2apic`, `-svm`).
    cpu_flags: Vec<String> = Vec::new(),
    /// Guest kernel (an uncompressed vmlinux boots fastest under TCG).
    kernel: PathBuf = PathBuf::from("/var/lib/crius/kata/vmlinux"),
    /// Guest initramfs holding the agent.
    initrd: PathBuf = PathBuf::from("/var/lib/crius/kata/initramfs.cpio.gz"),
    /// Appended to the kernel command line after crius's own parameters.
    kernel_params: String = "crius.agent_log=info".to_string(),
    /// vCPUs of a pod without CPU limits; limits add to it.
    default_vcpus: u32 = 1,
    /// Guest memory of a pod without memory limits; limits add to it.
    default_memory_mib: u64 = 256,
    /// Most vCPUs a pod's VM grows to when its containers' CPU limits rise
    /// (hot-plug); 0 = the host's CPU count. The VM boots with room for
    /// them (`-smp N,maxcpus=MAX`).
    max_vcpus: u32 = 0,
    /// Most guest memory a pod's VM grows to by DIMM hot-plug, in MiB
    /// (q35 only); 0 = the host's memory.
    max_memory_mib: u64 = 0,
    /// Host memory QEMU, its helpers and the shim use beyond the guest's.
    memory_overhead_mib: u64 = 64,
    /// CPU the VM's fixed work costs, reported as pod overhead.
    cpu_overhead_millis: i64 = 250,
    /// Seconds from starting QEMU until the agent must answer.
    boot_timeout_seconds: u64 = 60,
    /// `hybrid` (vhost-device-vsock) or `vhost` (/dev/vhost-vsock).
    vsock: VsockMode = VsockMode::Hybrid,
    /// The vhost-device-vsock binary (absolute, or a name searched on PATH).
    vhost_device_vsock_path: PathBuf = PathBuf::from("vhost-device-vsock"),
    /// `9p` or `virtiofs`.
    shared_fs: SharedFs = SharedFs::NineP,
    /// The virtiofsd binary (absolute, or a name searched on PATH).
    virtiofsd_path: PathBuf = PathBuf::from("virtiofsd"),
    /// The VM shim binary; empty = `crius-kata-shim` next to the daemon.
    /// Read by the daemon (it runs the shim); the shim only checks it.
    shim_path: PathBuf = PathBuf::new(),
    /// Guest vsock CID: with `hybrid` every VM uses it (each has its own
    /// vhost-device-vsock); with `vhost` the lowest CID searched for a free
    /// one per VM.
    guest_cid: u32 = 3,
}

/// Annotation keys a pod may use to size its VM (they reach the handler
/// only if the entry's `allowed_annotations` admits them).
pub const ANNOTATION_MEMORY: &str = "io.katacontainers.config.hypervisor.default_memory";
pub const ANNOTATION_VCPUS: &str = "io.katacontainers.config.hypervisor.default_vcpus";
pub const ANNOTATION_KERNEL_PARAMS: &str = "io.katacontainers.config.hypervisor.kernel_params";

/// A problem with a [`VmConfig`], named by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfigProblem {
    pub key: &'static str,
    pub message: String,
}

impl VmConfig {
    /// Parses and checks the entry's `vm:` table (keys left out keep their
    /// defaults). The error names every bad key:
    /// `kernel: path `vmlinux` must be absolute; default_vcpus: must be at least 1`.
    pub fn from_options(
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, crius_shim_api::HandlerError> {
        let config: VmConfig =
            serde_json::from_value(serde_json::Value::Object(options.clone()))
                .map_err(|e| crius_shim_api::HandlerError::invalid_argument(e.to_string()))?;
        let problems = config.problems();
        if problems.is_empty() {
            return Ok(config);
        }
        let message = problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect::<Vec<_>>()
            .join("; ");
        Err(crius_shim_api::HandlerError::invalid_argument(message))
    }

    /// Checks what typing cannot; one entry per problem.
    pub fn problems(&self) -> Vec<VmConfigProblem> {
        let mut out = Vec::new();
        let mut problem = |key, message: String| out.push(VmConfigProblem { key, message });
        for (key, path) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if !path.is_absolute() {
                problem(key, format!("path `{}` must be absolute", path.display()));
            }
        }
        if !self.shim_path.as_os_str().is_empty() && !self.shim_path.is_absolute() {
            problem(
                "shim_path",
                format!("path `{}` must be absolute", self.shim_path.display()),
            );
        }
        if self.default_vcpus == 0 {
            problem("default_vcpus", "must be at least 1".to_string());
        }
        if self.default_memory_mib < 64 {
            problem(
                "default_memory_mib",
                "must be at least 64 (MiB)".to_string(),
            );
        }
        if self.max_vcpus != 0 && self.max_vcpus < self.default_vcpus {
            problem(
                "max_vcpus",
                format!(
                    "must be 0 (the host's CPUs) or at least default_vcpus ({})",
                    self.default_vcpus
                ),
            );
        }
        if self.max_vcpus > 240 {
            problem("max_vcpus", "must be at most 240".to_string());
        }
        if self.max_memory_mib != 0 && self.max_memory_mib < self.default_memory_mib {
            problem(
                "max_memory_mib",
                format!(
                    "must be 0 (the host's memory) or at least default_memory_mib ({})",
                    self.default_memory_mib
                ),
            );
        }
        if self.boot_timeout_seconds == 0 {
            problem("boot_timeout_seconds", "must be at least 1".to_string());
        }
        if self.guest_cid < 3 {
            problem(
                "guest_cid",
                "CIDs 0-2 are reserved; use 3 or more".to_string(),
            );
        }
        if let Err(e) = check_configured_kernel_params(&self.kernel_params) {
            problem("kernel_params", e);
        }
        out
    }

    /// The `-cpu` value: the model (or the accelerator's best) plus flags.
    pub fn cpu(&self) -> String {
        let model = if !self.cpu_model.is_empty() {
            self.cpu_model.as_str()
        } else {
            match self.accelerator {
                Accelerator::Kvm => "host",
                Accelerator::Tcg => "max",
            }
        };
        let mut out = model.to_string();
        for flag in &self.cpu_flags {
            out.push(',');
            out.push_str(flag);
        }
        out
    }
}

/// Kernel parameters a pod may add (annotation
/// `io.katacontainers.config.hypervisor.kernel_params`): logging, debugging
/// and tuning of the guest kernel only. Matched on the name before `=`.
pub const ALLOWED_POD_KERNEL_PARAMS: &[&str] = &[
    "debug",
    "quiet",
    "loglevel",
    "ignore_loglevel",
    "printk.devkmsg",
    "panic",
    "panic_on_warn",
    "oops",
    "nokaslr",
    "mitigations",
    "nosmt",
    "audit",
    "cgroup_no_v1",
    "transparent_hugepage",
    "hugepagesz",
    "hugepages",
    "default_hugepagesz",
    "swiotlb",
    "tsc",
    "clocksource",
    "nohz",
    "rcu_nocbs",
    "ipv6.disable",
    "net.ifnames",
    "random.trust_cpu",
    "init_on_alloc",
    "init_on_free",
    "slab_nomerge",
];

/// Longest kernel parameter string accepted from a pod.
const MAX_POD_KERNEL_PARAMS: usize = 1024;

/// Why a parameter can never be set: it would replace the guest's init
/// (and so the agent), move its console, or reach the agent or the init
/// script, whose parameters are the host's to set.
fn forbidden_kernel_param(param: &str) -> Option<&'static str> {
    let name = param.split('=').next().unwrap_or(param);
    if param == "--" {
        Some("`--` hands the rest of the command line to init")
    } else if matches!(name, "init" | "rdinit") {
        Some("it would replace the guest's init and agent")
    } else if matches!(name, "console" | "earlycon" | "earlyprintk") {
        Some("the guest console is the host's")
    } else if name.starts_with("agent.") || name.starts_with("crius.") {
        Some("agent parameters are the host's to set")
    } else if param.contains(['"', '\'', '\\']) {
        Some("quoting is not accepted")
    } else {
        None
    }
}

/// Checks a pod's kernel parameters against [`ALLOWED_POD_KERNEL_PARAMS`]
/// (bounded messages: the input is the user's).
pub fn check_pod_kernel_params(params: &str) -> Result<(), String> {
    if params.len() > MAX_POD_KERNEL_PARAMS {
        return Err(format!(
            "kernel parameters are {} bytes long, more than {MAX_POD_KERNEL_PARAMS}",
            params.len()
        ));
    }
    if params.contains(['\n', '\r', '\0']) {
        return Err("kernel parameters must be one line".to_string());
    }
    for param in params.split_whitespace() {
        let shown: String = param.chars().take(64).collect();
        if let Some(why) = forbidden_kernel_param(param) {
            return Err(format!("kernel parameter {shown:?} is not allowed: {why}"));
        }
        let name = param.split('=').next().unwrap_or(param);
        if !ALLOWED_POD_KERNEL_PARAMS.contains(&name) {
            return Err(format!(
                "kernel parameter {shown:?} is not in the allowed list ({})",
                ALLOWED_POD_KERNEL_PARAMS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks the entry's own `kernel_params`: anything but init, the console
/// and `--` (the operator may set agent parameters such as
/// `crius.agent_log`).
fn check_configured_kernel_params(params: &str) -> Result<(), String> {
    if params.contains(['\n', '\r', '\0']) {
        return Err("must be one line".to_string());
    }
    for param in params.split_whitespace() {
        let name = param.split('=').next().unwrap_or(param);
        let bad = param == "--" || matches!(name, "init" | "rdinit" | "console");
        if bad {
            return Err(format!(
                "{param:?} is not allowed: crius sets the guest's init and console itself"
            ));
        }
    }
    Ok(())
}

/// How big one pod's VM is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Extra kernel parameters from the pod's annotations.
    pub extra_kernel_params: String,
}

/// Sizes a pod's VM: the defaults (or the pod's allowed annotations), plus
/// its CPU and memory limits so the workload gets what it asked for on top
/// of the guest's own needs. Bad annotation values are errors, not ignored:
/// the user asked for something specific.
pub fn size_vm(
    config: &VmConfig,
    annotations: &HashMap<String, String>,
    memory_limit_bytes: i64,
    cpu_quota: i64,
    cpu_period: i64,
) -> Result<VmSize, String> {
    let mut vcpus = config.default_vcpus;
    let mut memory_mib = config.default_memory_mib;
    if let Some(value) = annotations.get(ANNOTATION_VCPUS) {
        vcpus = value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v <= 256.0)
            .map(|v| v.ceil() as u32)
            .ok_or_else(|| {
                format!("annotation {ANNOTATION_VCPUS}={value:?} is not a vCPU count")
            })?;
    }
    if let Some(value) = annotations.get(ANNOTATION_MEMORY) {
        memory_mib = value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|v| (64..=1 << 20).contains(v))
            .ok_or_else(|| {
                format!("annotation {ANNOTATION_MEMORY}={value:?} is not a memory size in MiB (64 or more)")
            })?;
    }
    if memory_limit_bytes > 0 {
        memory_mib += (memory_limit_bytes as u64).div_ceil(1 << 20);
    }
    if cpu_quota > 0 && cpu_period > 0 {
        vcpus += (cpu_quota as u64).div_ceil(cpu_period as u64) as u32;
    }
    let extra_kernel_params = annotations
        .get(ANNOTATION_KERNEL_PARAMS)
        .cloned()
        .unwrap_or_default();
    check_pod_kernel_params(&extra_kernel_params)
        .map_err(|e| format!("annotation {ANNOTATION_KERNEL_PARAMS}: {e}"))?;
    Ok(VmSize {
        vcpus,
        memory_mib,
        extra_kernel_params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_kernel_params_are_checked_against_the_allow_list() {
        check_pod_kernel_params("").unwrap();
        check_pod_kernel_params("quiet loglevel=4  printk.devkmsg=on").unwrap();
        for (bad, why) in [
            ("init=/bin/sh", "replace the guest's init"),
            ("quiet rdinit=/bin/sh", "replace the guest's init"),
            ("console=ttyS1", "console"),
            ("agent.debug_console", "agent parameters"),
            ("crius.agent_log=debug", "agent parameters"),
            ("quiet -- init", "`--`"),
            ("loglevel=\"3 init=/bin/sh\"", "quoting"),
            ("systemd.unit=rescue.target", "not in the allowed list"),
            ("quiet\ninit=/bin/sh", "one line"),
        ] {
            let err = check_pod_kernel_params(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long = "quiet ".repeat(1000);
        assert!(check_pod_kernel_params(&long).unwrap_err().len() < 200);
        let annotations = HashMap::from([(
            ANNOTATION_KERNEL_PARAMS.to_string(),
            "init=/bin/sh".to_string(),
        )]);
        let err = size_vm(&VmConfig::default(), &annotations, 0, 0, 0).unwrap_err();
        assert!(err.contains(ANNOTATION_KERNEL_PARAMS), "{err}");
    }

    #[test]
    fn configured_kernel_params_may_not_replace_init_or_console() {
        check_configured_kernel_params("crius.agent_log=debug quiet").unwrap();
        for bad in ["init=/x", "console=tty0", "a -- b"] {
            assert!(check_configured_kernel_params(bad).is_err(), "{bad}");
        }
    }

    fn options(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        json.as_object().cloned().expect("an object")
    }

    /// The commented-out kata example of `configs/crius.yaml` documents
    /// every `vm` key with its default value: its table must parse to the
    /// defaults.
    #[test]
    fn shipped_kata_example_is_valid_and_has_the_defaults() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/crius.yaml");
        let text = std::fs::read_to_string(&path).expect("read configs/crius.yaml");
        let example: String = text
            .lines()
            .skip_while(|line| !line.starts_with("# runtime_handlers:"))
            .take_while(|line| line.starts_with('#'))
            .map(|line| {
                line.strip_prefix("# ")
                    .unwrap_or(line.trim_start_matches('#'))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(example.contains("kind: vm"), "example not found: {example}");
        let doc: serde_json::Value = serde_saphyr::from_str(&example).expect("example is YAML");
        let kata = &doc["runtime_handlers"]["kata"];
        assert_eq!(kata["kind"], "vm");
        let vm = VmConfig::from_options(kata["vm"].as_object().expect("a vm table"))
            .expect("the example is valid");
        assert_eq!(vm, VmConfig::default(), "the example shows the defaults");

        // Keys left out keep their defaults.
        let vm = VmConfig::from_options(&options(serde_json::json!({
            "boot_timeout_seconds": 5
        })))
        .unwrap();
        assert_eq!(vm.boot_timeout_seconds, 5);
        assert_eq!(
            VmConfig {
                boot_timeout_seconds: 60,
                ..vm
            },
            VmConfig::default()
        );
        assert_eq!(
            VmConfig::from_options(&serde_json::Map::new()).unwrap(),
            VmConfig::default()
        );
    }

    #[test]
    fn bad_tables_are_refused_naming_the_key() {
        let err = VmConfig::from_options(&options(serde_json::json!({
            "kernel": "vmlinux",
            "default_vcpus": 0
        })))
        .unwrap_err();
        assert_eq!(err.kind, crius_shim_api::ErrorKind::InvalidArgument);
        assert!(
            err.message
                .contains("kernel: path `vmlinux` must be absolute"),
            "{err}"
        );
        assert!(
            err.message.contains("default_vcpus: must be at least 1"),
            "{err}"
        );
        let err = VmConfig::from_options(&options(serde_json::json!({ "bogus": 1 }))).unwrap_err();
        assert!(err.message.contains("bogus"), "{err}");
        let err = VmConfig::from_options(&options(serde_json::json!({ "default_vcpus": "two" })))
            .unwrap_err();
        assert!(err.message.contains("invalid type"), "{err}");
    }

    #[test]
    fn cpu_defaults_follow_the_accelerator() {
        let mut config = VmConfig::default();
        assert_eq!(config.cpu(), "max");
        config.accelerator = Accelerator::Kvm;
        config.cpu_flags = vec!["-svm".into(), "+x2apic".into()];
        assert_eq!(config.cpu(), "host,-svm,+x2apic");
        config.cpu_model = "Skylake-Server".into();
        assert_eq!(config.cpu(), "Skylake-Server,-svm,+x2apic");
    }

    #[test]
    fn problems_name_their_key() {
        let config = VmConfig {
            kernel: "vmlinux".into(),
            default_vcpus: 0,
            guest_cid: 2,
            ..Default::default()
        };
        let keys: Vec<_> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["kernel", "default_vcpus", "guest_cid"]);
        assert!(VmConfig::default().problems().is_empty());
    }

    #[test]
    fn size_adds_limits_to_defaults_and_honours_annotations() {
        let config = VmConfig::default();
        let none = HashMap::new();
        let size = size_vm(&config, &none, 0, 0, 0).unwrap();
        assert_eq!((size.vcpus, size.memory_mib), (1, 256));
        // 100 MiB + 1 byte rounds up; 1.5 CPUs round up to 2.
        let size = size_vm(&config, &none, (100 << 20) + 1, 150_000, 100_000).unwrap();
        assert_eq!((size.vcpus, size.memory_mib), (3, 256 + 101));

        let annotations = HashMap::from([
            (ANNOTATION_MEMORY.to_string(), "512".to_string()),
            (ANNOTATION_VCPUS.to_string(), "2".to_string()),
            (ANNOTATION_KERNEL_PARAMS.to_string(), "debug".to_string()),
        ]);
        let size = size_vm(&config, &annotations, 0, 0, 0).unwrap();
        assert_eq!((size.vcpus, size.memory_mib), (2, 512));
        assert_eq!(size.extra_kernel_params, "debug");

        let bad = HashMap::from([(ANNOTATION_MEMORY.to_string(), "lots".to_string())]);
        let err = size_vm(&config, &bad, 0, 0, 0).unwrap_err();
        assert!(err.contains(ANNOTATION_MEMORY), "{err}");
    }
}
