//! Seccomp: the built-in RuntimeDefault profile and the CRI profile choice.
//!
//! The RuntimeDefault profile is **default-deny**: every syscall fails with
//! EPERM unless it is on the allow-list, in effect the profile Docker,
//! containerd and CRI-O apply (the same allowed set; written here as data of
//! our own). Ordinary programs (libc, shells, language runtimes, servers)
//! only use allowed calls; what reaches kernel state that namespaces do not
//! isolate (keyrings, modules, kexec, reboot, the clock, BPF/perf, the
//! mount API, namespace creation, handle-based opens, NUMA policy, other
//! processes' memory) is denied, and a syscall added to the kernel later is
//! denied until it is reviewed. Some groups are allowed only to containers
//! holding the capability that makes them legitimate (CAP_SYS_ADMIN: mount
//! & co; CAP_SYS_PTRACE: ptrace, kcmp; ...), so capability grants keep
//! their meaning. Without CAP_SYS_ADMIN, `clone` is allowed only without
//! namespace flags and `clone3` answers ENOSYS (its flags live in memory
//! where seccomp cannot read them), so libc falls back to `clone`.
//! `socket` is allowed for every family but AF_VSOCK (the host's vsock is
//! not namespaced), `personality` only for the values programs use.
//!
//! The filter names the native and compat architectures so 32-bit syscall
//! entry points are covered by the same rules. Names the host's libseccomp
//! does not know are skipped by the runtimes (runc, crun).

use std::collections::HashSet;
use std::path::Path;

use crius_proto::cri::{
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, SecurityProfile,
    security_profile::ProfileType,
};
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::SpecError;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// What a CRI security context asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeccompChoice {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The seccomp fields of the CRI security contexts (pod and container).
pub(crate) trait SeccompContext {
    fn privileged(&self) -> bool;
    fn seccomp(&self) -> Option<&SecurityProfile>;
    /// `seccomp_profile_path`, deprecated but still sent by older kubelets.
    fn seccomp_profile_path(&self) -> &str;
}

macro_rules! seccomp_context {
    ($($context:ty),*) => {$(
        impl SeccompContext for $context {
            fn privileged(&self) -> bool {
                self.privileged
            }
            fn seccomp(&self) -> Option<&SecurityProfile> {
                self.seccomp.as_ref()
            }
            #[allow(deprecated)]
            fn seccomp_profile_path(&self) -> &str {
                &self.seccomp_profile_path
            }
        }
    )*};
}

seccomp_context!(LinuxContainerSecurityContext, LinuxSandboxSecurityContext);

/// The filter for a process with security context `sc` holding `caps`:
/// none for a privileged one, else what the context chooses.
pub(crate) fn for_context(
    sc: Option<&impl SeccompContext>,
    caps: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if sc.is_some_and(|s| s.privileged()) {
        return Ok(None);
    }
    let choice = choice(
        sc.and_then(|s| s.seccomp()),
        sc.map(|s| s.seccomp_profile_path()).unwrap_or_default(),
    )?;
    profile(&choice, caps)
}

/// Reads the CRI choice: the `seccomp` field, else the deprecated
/// `seccomp_profile_path` (`runtime/default`, `docker/default`,
/// `unconfined`, `localhost/<path>`). Nothing set means unconfined, as in
/// the other CRI runtimes (the kubelet sends RuntimeDefault explicitly).
pub(crate) fn choice(
    profile: Option<&SecurityProfile>,
    deprecated_path: &str,
) -> Result<SeccompChoice, SpecError> {
    if let Some(p) = profile {
        return Ok(match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => SeccompChoice::RuntimeDefault,
            Ok(ProfileType::Unconfined) => SeccompChoice::Unconfined,
            Ok(ProfileType::Localhost) => SeccompChoice::Localhost(p.localhost_ref.clone()),
            Err(_) => {
                return Err(SpecError::InvalidArgument(format!(
                    "unknown seccomp profile type {}",
                    p.profile_type
                )));
            }
        });
    }
    Ok(match deprecated_path {
        "" | "unconfined" => SeccompChoice::Unconfined,
        "runtime/default" | "docker/default" => SeccompChoice::RuntimeDefault,
        other => match other.strip_prefix("localhost/") {
            Some(path) => SeccompChoice::Localhost(path.to_string()),
            None => {
                return Err(SpecError::InvalidArgument(format!(
                    "unknown seccomp profile {other:?}"
                )));
            }
        },
    })
}

/// The spec's seccomp section for a choice; `None` = unconfined.
pub(crate) fn profile(
    choice: &SeccompChoice,
    caps: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    match choice {
        SeccompChoice::Unconfined => Ok(None),
        SeccompChoice::RuntimeDefault => Ok(Some(runtime_default(caps))),
        SeccompChoice::Localhost(path) => load_localhost(Path::new(path)).map(Some),
    }
}

fn load_localhost(path: &Path) -> Result<LinuxSeccomp, SpecError> {
    if !path.is_absolute() {
        return Err(SpecError::InvalidArgument(format!(
            "seccomp localhost profile {} must be an absolute path",
            path.display()
        )));
    }
    let data = std::fs::read(path).map_err(|e| {
        SpecError::InvalidArgument(format!("seccomp localhost profile {}: {e}", path.display()))
    })?;
    serde_json::from_slice(&data).map_err(|e| {
        SpecError::InvalidArgument(format!(
            "seccomp localhost profile {} is not an OCI seccomp profile: {e}",
            path.display()
        ))
    })
}

fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "x86" => vec![Arch::ScmpArchX86],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "arm" => vec![Arch::ScmpArchArm],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        "powerpc64" => vec![Arch::ScmpArchPpc64le],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// Allowed to every container. Sorted; `allow_lists_are_sorted_and_disjoint`
/// keeps it so.
const ALLOWED: &[&str] = &[
    "_llseek",
    "_newselect",
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "process_vm_readv",
    "process_vm_writev",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed on 32- and 64-bit ARM alike.
const ALLOWED_ON_ARM: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "breakpoint",
    "cacheflush",
    "set_tls",
    "sync_file_range2",
];

/// Allowed on one architecture family only (Rust's `target_arch` names).
const ALLOWED_ON_ARCH: &[(&str, &[&str])] = &[
    ("x86_64", &["arch_prctl", "modify_ldt"]),
    ("x86", &["modify_ldt"]),
    ("aarch64", ALLOWED_ON_ARM),
    ("arm", ALLOWED_ON_ARM),
    ("powerpc64", &["swapcontext", "sync_file_range2"]),
    (
        "s390x",
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
    ),
    ("riscv64", &["riscv_flush_icache"]),
];

/// Allowed to containers holding any of the capabilities.
const ALLOWED_WITH_CAP: &[(&[Capability], &[&str])] = &[
    (
        &[Capability::SysAdmin],
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (&[Capability::Bpf], &["bpf"]),
    (&[Capability::Perfmon], &["perf_event_open"]),
    (&[Capability::Syslog], &["syslog"]),
    (&[Capability::DacReadSearch], &["open_by_handle_at"]),
    (&[Capability::SysBoot], &["reboot"]),
    (&[Capability::SysChroot], &["chroot"]),
    (
        &[Capability::SysModule],
        &["delete_module", "finit_module", "init_module"],
    ),
    (&[Capability::SysPacct], &["acct"]),
    (
        &[Capability::SysPtrace],
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    (&[Capability::SysRawio], &["ioperm", "iopl"]),
    (
        &[Capability::SysTime],
        &["clock_settime", "clock_settime64", "settimeofday", "stime"],
    ),
    (&[Capability::SysTtyConfig], &["vhangup"]),
    (
        &[Capability::SysNice],
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
];

/// `personality(2)` values programs set: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (the query).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];
/// AF_VSOCK: the host's vsock is not namespaced.
const AF_VSOCK: u64 = 40;
/// The clone flags that create namespaces (NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID, NEWNET).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

fn arg(index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .expect("complete seccomp arg")
}

fn allow_rule(names: Vec<String>, args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActAllow);
    if let Some(args) = args {
        b = b.args(args);
    }
    b.build().expect("complete syscall rule")
}

/// The built-in RuntimeDefault profile for a container holding `caps`.
pub fn runtime_default(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let mut allowed: Vec<String> = ALLOWED.iter().map(|s| s.to_string()).collect();
    for (arch, names) in ALLOWED_ON_ARCH {
        if *arch == std::env::consts::ARCH {
            allowed.extend(names.iter().map(|s| s.to_string()));
        }
    }
    for (unlock, names) in ALLOWED_WITH_CAP {
        if unlock.iter().any(|c| caps.contains(c)) {
            allowed.extend(names.iter().map(|s| s.to_string()));
        }
    }
    allowed.sort();
    allowed.dedup();
    let mut syscalls = vec![allow_rule(allowed, None)];
    syscalls.push(allow_rule(
        vec!["socket".into()],
        Some(vec![arg(0, AF_VSOCK, 0, LinuxSeccompOperator::ScmpCmpNe)]),
    ));
    // Several rules for one syscall are alternatives (any match allows).
    for value in PERSONALITIES {
        syscalls.push(allow_rule(
            vec!["personality".into()],
            Some(vec![arg(0, *value, 0, LinuxSeccompOperator::ScmpCmpEq)]),
        ));
    }
    if !caps.contains(&Capability::SysAdmin) {
        // s390 passes clone's flags second.
        let flags_index = if std::env::consts::ARCH == "s390x" {
            1
        } else {
            0
        };
        syscalls.push(allow_rule(
            vec!["clone".into()],
            Some(vec![arg(
                flags_index,
                CLONE_NAMESPACE_FLAGS,
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )]),
        ));
        syscalls.push(errno_rule(vec!["clone3".into()], ENOSYS, None));
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
        .expect("complete seccomp profile")
}

fn errno_rule(names: Vec<String>, errno: u32, args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno);
    if let Some(args) = args {
        b = b.args(args);
    }
    b.build().expect("complete syscall rule")
}

#[cfg(test)]
mod tests;
