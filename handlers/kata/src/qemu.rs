//! The QEMU command line for one pod's VM, built by a pure function so every
//! flag is unit-tested without starting anything.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::{Accelerator, Machine};

/// How the guest's vsock device is provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// vhost-user device served by vhost-device-vsock on this socket.
    Hybrid { vhost_user_socket: PathBuf },
    /// The host kernel's vhost-vsock with this guest CID.
    Vhost { guest_cid: u32 },
}

/// How the pod's shared directory reaches the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedDevice {
    /// virtio-9p served by QEMU from `path`.
    NineP { path: PathBuf, tag: String },
    /// virtio-fs served by virtiofsd on this vhost-user socket.
    Virtiofs {
        vhost_user_socket: PathBuf,
        tag: String,
    },
}

/// The guest NIC: a tap device (in the netns QEMU runs in) and its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    pub tap: String,
    pub mac: String,
}

/// Everything that decides QEMU's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// `-name`, shown in `ps` and QEMU's messages (the sandbox id).
    pub name: String,
    pub machine: Machine,
    pub accelerator: Accelerator,
    /// The `-cpu` value.
    pub cpu: String,
    pub vcpus: u32,
    /// vCPUs the VM can grow to (hot-plug); at most `vcpus` = no room.
    pub max_vcpus: u32,
    pub memory_mib: u64,
    /// Memory the VM can grow to by DIMM hot-plug (q35); at most
    /// `memory_mib` = no room.
    pub max_memory_mib: u64,
    /// The QMP socket the shim resizes the VM through.
    pub qmp_socket: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_cmdline: String,
    pub vsock: VsockDevice,
    pub shared: SharedDevice,
    pub net: Option<NetDevice>,
    /// The guest's serial console is written here.
    pub console_log: PathBuf,
    /// QEMU writes its pid here.
    pub pidfile: PathBuf,
    /// `-bios`: None = QEMU's default (SeaBIOS on q35).
    pub firmware: Option<PathBuf>,
    /// TCG's translation cache (`-accel tcg,tb-size=`), MiB; 0 = QEMU's
    /// default (up to 1 GiB, touched as code is translated).
    pub tcg_tb_size_mib: u32,
    /// A virtio-balloon with free page reporting: the guest tells QEMU
    /// which pages it freed and QEMU gives them back to the host.
    pub free_page_reporting: bool,
}

/// qboot, QEMU's minimal firmware (Debian's qemu-system-data): it loads
/// the kernel through fw_cfg about 0.1 s sooner than SeaBIOS under TCG and
/// passes QEMU's ACPI tables through, so CPU and DIMM hot-plug work as
/// with SeaBIOS.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// Kernel parameters that only cut boot time (measured under TCG, where
/// they save about 0.45 s of 2.4 s): `cryptomgr.notests` skips the crypto
/// self-tests the kernel runs when an algorithm is first registered (0.4
/// s); the clocksource watchdog and timer check have nothing to find in a
/// VM; the guest has one PCI bus, no PS/2 devices and one serial port; RCU
/// grace periods are expedited (one vCPU by default). The same set Kata's
/// guests boot with, minus what does not apply.
pub const BOOT_SPEED_PARAMS: &str = "cryptomgr.notests tsc=reliable no_timer_check \
     pci=lastbus=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 \
     rcupdate.rcu_expedited=1";

/// The kernel command line: a serial console, a quick boot, and a panic
/// that powers the VM off (with `-no-reboot`) instead of hanging, then the
/// guest image's and the operator's parameters (later ones win, so either
/// may undo one of [`BOOT_SPEED_PARAMS`]).
pub fn kernel_cmdline(parts: &[&str]) -> String {
    let mut out = String::from("console=ttyS0 quiet loglevel=3 panic=-1 ");
    out.push_str(BOOT_SPEED_PARAMS);
    for part in parts {
        let part = part.trim();
        if !part.is_empty() {
            out.push(' ');
            out.push_str(part);
        }
    }
    out
}

/// DIMM slots for memory hot-plug: each resize that adds memory takes one.
pub const MEMORY_SLOTS: u32 = 8;

/// QEMU's arguments (without the program name).
pub fn qemu_args(spec: &VmSpec) -> Vec<OsString> {
    let mut args = Args::default();
    // vhost-user devices need guest RAM the backend can map: a shared memfd.
    let memory_backend = format!(
        "memory-backend-memfd,id=mem,size={}M,share=on",
        spec.memory_mib
    );
    // microvm has no PCI bus: its virtio devices are the virtio-mmio kind.
    let (machine, bus) = match spec.machine {
        Machine::Q35 => ("q35", "pci"),
        Machine::Microvm => ("microvm", "device"),
    };
    args.pair("-name", &spec.name);
    args.pair("-machine", format!("{machine},memory-backend=mem"));
    args.pair(
        "-accel",
        match spec.accelerator {
            Accelerator::Kvm => "kvm".to_string(),
            // One host thread per vCPU instead of one for all.
            Accelerator::Tcg if spec.tcg_tb_size_mib == 0 => "tcg,thread=multi".to_string(),
            // A bounded translation cache bounds QEMU's anonymous memory.
            Accelerator::Tcg => format!("tcg,thread=multi,tb-size={}", spec.tcg_tb_size_mib),
        },
    );
    args.pair("-cpu", &spec.cpu);
    if spec.max_vcpus > spec.vcpus {
        args.pair("-smp", format!("{},maxcpus={}", spec.vcpus, spec.max_vcpus));
    } else {
        args.pair("-smp", spec.vcpus.to_string());
    }
    // microvm has no ACPI memory hot-plug.
    if spec.machine == Machine::Q35 && spec.max_memory_mib > spec.memory_mib {
        args.pair(
            "-m",
            format!(
                "{}M,slots={MEMORY_SLOTS},maxmem={}M",
                spec.memory_mib, spec.max_memory_mib
            ),
        );
    } else {
        args.pair("-m", format!("{}M", spec.memory_mib));
    }
    let mut qmp = path_arg("unix:", &spec.qmp_socket);
    qmp.push(",server=on,wait=off");
    args.pair("-qmp", qmp);
    args.pair("-object", memory_backend);
    args.flag("-nodefaults");
    args.flag("-no-user-config");
    args.pair("-display", "none");
    args.flag("-no-reboot");
    args.pair("-serial", path_arg("file:", &spec.console_log));
    args.pair("-pidfile", spec.pidfile.as_os_str());
    if let Some(firmware) = &spec.firmware {
        args.pair("-bios", firmware.as_os_str());
    }
    args.pair("-kernel", spec.kernel.as_os_str());
    args.pair("-initrd", spec.initrd.as_os_str());
    args.pair("-append", &spec.kernel_cmdline);

    match &spec.vsock {
        VsockDevice::Hybrid { vhost_user_socket } => {
            args.pair(
                "-chardev",
                path_arg("socket,id=vsock,path=", vhost_user_socket),
            );
            args.pair("-device", format!("vhost-user-vsock-{bus},chardev=vsock"));
        }
        VsockDevice::Vhost { guest_cid } => {
            args.pair(
                "-device",
                format!("vhost-vsock-{bus},guest-cid={guest_cid}"),
            );
        }
    }
    match &spec.shared {
        SharedDevice::NineP { path, tag } => {
            let mut fsdev = path_arg("local,id=shared,security_model=none,path=", path);
            fsdev.push(",multidevs=remap");
            args.pair("-fsdev", fsdev);
            args.pair(
                "-device",
                format!("virtio-9p-{bus},fsdev=shared,mount_tag={tag}"),
            );
        }
        SharedDevice::Virtiofs {
            vhost_user_socket,
            tag,
        } => {
            args.pair(
                "-chardev",
                path_arg("socket,id=virtiofs,path=", vhost_user_socket),
            );
            args.pair(
                "-device",
                format!("vhost-user-fs-{bus},chardev=virtiofs,tag={tag}"),
            );
        }
    }
    if spec.free_page_reporting {
        // Never inflated: it is there for the guest to report free pages
        // (the boot's initramfs buffers, a container's exited processes),
        // which QEMU then discards from the shared memfd.
        args.pair(
            "-device",
            format!("virtio-balloon-{bus},free-page-reporting=on"),
        );
    }
    if let Some(net) = &spec.net {
        // vhost-net needs /dev/vhost-net, which is not everywhere; the
        // userspace backend is fast enough for the pod's traffic.
        args.pair(
            "-netdev",
            format!(
                "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
                net.tap
            ),
        );
        args.pair(
            "-device",
            format!("virtio-net-{bus},netdev=net0,mac={}", net.mac),
        );
    }
    args.0
}

/// `prefix` followed by a path, without assuming the path is UTF-8; a comma
/// in the path is doubled, as QEMU's option syntax requires.
fn path_arg(prefix: &str, path: &Path) -> OsString {
    let mut out = OsString::from(prefix);
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.contains(&b',') {
        let mut escaped = Vec::with_capacity(bytes.len() + 4);
        for &b in bytes {
            escaped.push(b);
            if b == b',' {
                escaped.push(b',');
            }
        }
        // SAFETY: the input was a valid OsStr encoding and we only inserted
        // ASCII commas next to ASCII commas, which keeps it valid.
        out.push(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(&escaped) });
    } else {
        out.push(path.as_os_str());
    }
    out
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, flag: &str) {
        self.0.push(flag.into());
    }
    fn pair(&mut self, flag: &str, value: impl Into<OsString>) {
        self.0.push(flag.into());
        self.0.push(value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "pod1".into(),
            machine: Machine::Q35,
            accelerator: Accelerator::Tcg,
            cpu: "max".into(),
            vcpus: 2,
            max_vcpus: 2,
            memory_mib: 320,
            max_memory_mib: 320,
            qmp_socket: "/s/qmp.sock".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            kernel_cmdline: kernel_cmdline(&["a=1", " ", "b"]),
            vsock: VsockDevice::Hybrid {
                vhost_user_socket: "/s/vhu.sock".into(),
            },
            shared: SharedDevice::NineP {
                path: "/s/shared".into(),
                tag: "crius".into(),
            },
            net: None,
            console_log: "/s/console.log".into(),
            pidfile: "/s/qemu.pid".into(),
            firmware: None,
            tcg_tb_size_mib: 0,
            free_page_reporting: false,
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    /// The value following each occurrence of `flag`.
    fn values(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn room_to_grow_is_reserved_on_q35_and_qmp_is_always_there() {
        let mut s = spec();
        s.max_vcpus = 4;
        s.max_memory_mib = 2048;
        let args = strings(qemu_args(&s));
        assert_eq!(values(&args, "-smp"), ["2,maxcpus=4"]);
        assert_eq!(values(&args, "-m"), ["320M,slots=8,maxmem=2048M"]);
        assert_eq!(
            values(&args, "-qmp"),
            ["unix:/s/qmp.sock,server=on,wait=off"]
        );
        s.machine = Machine::Microvm;
        let args = strings(qemu_args(&s));
        assert_eq!(
            values(&args, "-m"),
            ["320M"],
            "microvm has no memory hot-plug"
        );
    }

    #[test]
    fn tcg_q35_with_hybrid_vsock_and_9p() {
        let args = strings(qemu_args(&spec()));
        assert_eq!(values(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(values(&args, "-accel"), ["tcg,thread=multi"]);
        assert_eq!(values(&args, "-cpu"), ["max"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(values(&args, "-m"), ["320M"]);
        assert_eq!(
            values(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=320M,share=on"]
        );
        assert_eq!(values(&args, "-kernel"), ["/k/vmlinux"]);
        assert_eq!(values(&args, "-initrd"), ["/k/initrd"]);
        assert_eq!(
            values(&args, "-append"),
            [format!(
                "console=ttyS0 quiet loglevel=3 panic=-1 {BOOT_SPEED_PARAMS} a=1 b"
            )]
        );
        assert!(values(&args, "-bios").is_empty());
        assert_eq!(values(&args, "-serial"), ["file:/s/console.log"]);
        assert_eq!(values(&args, "-pidfile"), ["/s/qemu.pid"]);
        assert_eq!(
            values(&args, "-chardev"),
            ["socket,id=vsock,path=/s/vhu.sock"]
        );
        assert_eq!(
            values(&args, "-device"),
            [
                "vhost-user-vsock-pci,chardev=vsock",
                "virtio-9p-pci,fsdev=shared,mount_tag=crius"
            ]
        );
        assert_eq!(
            values(&args, "-fsdev"),
            ["local,id=shared,security_model=none,path=/s/shared,multidevs=remap"]
        );
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            assert!(
                args.iter().any(|a| a == flag),
                "{flag} missing from {args:?}"
            );
        }
        assert!(values(&args, "-netdev").is_empty());
    }

    #[test]
    fn kvm_microvm_uses_mmio_devices() {
        let mut spec = spec();
        spec.machine = Machine::Microvm;
        spec.accelerator = Accelerator::Kvm;
        spec.cpu = "host".into();
        spec.vsock = VsockDevice::Vhost { guest_cid: 7 };
        spec.shared = SharedDevice::Virtiofs {
            vhost_user_socket: "/s/vfs.sock".into(),
            tag: "t".into(),
        };
        spec.net = Some(NetDevice {
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
        });
        let args = strings(qemu_args(&spec));
        assert_eq!(values(&args, "-machine"), ["microvm,memory-backend=mem"]);
        assert_eq!(values(&args, "-accel"), ["kvm"]);
        assert_eq!(values(&args, "-cpu"), ["host"]);
        assert_eq!(
            values(&args, "-chardev"),
            ["socket,id=virtiofs,path=/s/vfs.sock"]
        );
        assert_eq!(
            values(&args, "-device"),
            [
                "vhost-vsock-device,guest-cid=7",
                "vhost-user-fs-device,chardev=virtiofs,tag=t",
                "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01",
            ]
        );
        assert_eq!(
            values(&args, "-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off"]
        );
        assert!(values(&args, "-fsdev").is_empty());
    }

    #[test]
    fn firmware_and_translation_cache_size_are_passed() {
        let mut s = spec();
        s.firmware = Some(QBOOT.into());
        s.tcg_tb_size_mib = 64;
        let args = strings(qemu_args(&s));
        assert_eq!(values(&args, "-bios"), [QBOOT]);
        assert_eq!(values(&args, "-accel"), ["tcg,thread=multi,tb-size=64"]);
        s.accelerator = Accelerator::Kvm;
        let args = strings(qemu_args(&s));
        assert_eq!(values(&args, "-accel"), ["kvm"], "tb-size is TCG's");
        assert!(
            !BOOT_SPEED_PARAMS.contains("  "),
            "one space between parameters"
        );
    }

    #[test]
    fn free_page_reporting_adds_a_reporting_balloon() {
        let mut s = spec();
        s.free_page_reporting = true;
        let args = strings(qemu_args(&s));
        assert!(
            values(&args, "-device").contains(&"virtio-balloon-pci,free-page-reporting=on".into()),
            "{args:?}"
        );
        s.machine = Machine::Microvm;
        let args = strings(qemu_args(&s));
        assert!(
            values(&args, "-device")
                .contains(&"virtio-balloon-device,free-page-reporting=on".into()),
            "{args:?}"
        );
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut spec = spec();
        spec.console_log = "/s/a,b/console.log".into();
        let args = strings(qemu_args(&spec));
        assert_eq!(values(&args, "-serial"), ["file:/s/a,,b/console.log"]);
    }
}
