//! Where the kata test suites find the host parts `scripts/setup
//! --with-kata` installs, and which shared filesystem they run with.

use std::path::PathBuf;

/// The guest image (vmlinux, initramfs.cpio.gz, kernel-release):
/// `CRIUS_KATA_GUEST_DIR`, else where the setup writes it.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("CRIUS_KATA_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/crius/kata".into())
}

/// A `cargo install`ed tool on `PATH` or in `~/.cargo/bin`, if installed.
fn cargo_tool(name: &str) -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([home.join(".cargo/bin")])
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

/// `vhost-device-vsock`, if installed.
pub fn vhost_device_vsock() -> Option<PathBuf> {
    cargo_tool("vhost-device-vsock")
}

/// `virtiofsd`, if installed.
pub fn virtiofsd() -> Option<PathBuf> {
    cargo_tool("virtiofsd")
}

/// The shared filesystem the kata suite runs with: `virtiofs` when
/// `CRIUS_TEST_KATA_SHARED_FS=virtiofs` (scripts/test runs the suite once
/// with each), else 9p, the handler's default.
pub fn uses_virtiofs() -> bool {
    match std::env::var("CRIUS_TEST_KATA_SHARED_FS").as_deref() {
        Ok("virtiofs") => true,
        Ok("9p") | Err(_) => false,
        Ok(other) => panic!("CRIUS_TEST_KATA_SHARED_FS={other:?}: use 9p or virtiofs"),
    }
}

/// QEMU as Debian installs it.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// The host parts a `kind: vm` handler entry points at, found where
/// `scripts/setup --with-kata` puts them.
pub struct VmParts {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vsock: PathBuf,
    /// Set when this run uses virtio-fs ([`uses_virtiofs`]).
    pub virtiofsd: Option<PathBuf>,
    /// The guest kernel's `uname -r`.
    pub guest_release: String,
}

/// How one `kind: vm` entry is configured beyond the host parts.
pub struct VmEntry<'a> {
    pub boot_timeout_seconds: u64,
    pub allowed_annotations: &'a [&'a str],
    /// 0: the handler's default (no room to grow).
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
}

impl Default for VmEntry<'_> {
    fn default() -> Self {
        Self {
            // Generous: TCG on a loaded 2-core machine.
            boot_timeout_seconds: 150,
            allowed_annotations: &[],
            max_vcpus: 0,
            max_memory_mib: 0,
        }
    }
}

impl VmParts {
    /// The parts, or `None` after [`crate::skip`] (a failure under CI)
    /// naming what is missing: root, QEMU, the guest image,
    /// vhost-device-vsock, virtiofsd for a virtio-fs run, the VM shim.
    pub fn find() -> Option<Self> {
        let guest = guest_dir();
        let kernel = guest.join("vmlinux");
        let initrd = guest.join("initramfs.cpio.gz");
        let (kernel_s, initrd_s) = (kernel.display().to_string(), initrd.display().to_string());
        if !crate::require_root_and_tools(&[QEMU, &kernel_s, &initrd_s]) {
            return None;
        }
        let Some(vsock) = vhost_device_vsock() else {
            crate::skip(
                "vhost-device-vsock is not installed (scripts/setup --with-kata installs it)",
            );
            return None;
        };
        let virtiofsd = if uses_virtiofs() {
            let Some(path) = virtiofsd() else {
                crate::skip("virtiofsd is not installed (scripts/setup --with-kata installs it)");
                return None;
            };
            Some(path)
        } else {
            None
        };
        let shim = crate::daemon::crius_bin().with_file_name("crius-kata-shim");
        assert!(
            shim.exists(),
            "{} does not exist: build it (`cargo build -p crius-handler-kata`) with the daemon",
            shim.display()
        );
        let guest_release = std::fs::read_to_string(guest.join("kernel-release"))
            .expect("the guest image has kernel-release")
            .trim()
            .to_string();
        Some(Self {
            kernel,
            initrd,
            vsock,
            virtiofsd,
            guest_release,
        })
    }

    /// `  <name>:` and its `kind: vm` table, for a `runtime_handlers:` block.
    pub fn entry_yaml(&self, name: &str, entry: &VmEntry<'_>) -> String {
        let mut yaml = format!(
            "  {name}:\n    kind: vm\n    runtime_path: {QEMU}\n    allowed_annotations: [{}]\n    vm:\n      \
             kernel: \"{}\"\n      initrd: \"{}\"\n      boot_timeout_seconds: {}\n      \
             vhost_device_vsock_path: \"{}\"\n",
            entry.allowed_annotations.join(", "),
            self.kernel.display(),
            self.initrd.display(),
            entry.boot_timeout_seconds,
            self.vsock.display(),
        );
        if entry.max_vcpus > 0 {
            yaml.push_str(&format!("      max_vcpus: {}\n", entry.max_vcpus));
        }
        if entry.max_memory_mib > 0 {
            yaml.push_str(&format!("      max_memory_mib: {}\n", entry.max_memory_mib));
        }
        if let Some(virtiofsd) = &self.virtiofsd {
            yaml.push_str(&format!(
                "      shared_fs: virtiofs\n      virtiofsd_path: \"{}\"\n",
                virtiofsd.display()
            ));
        }
        yaml
    }
}
