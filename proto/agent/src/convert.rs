//! Conversion between the OCI runtime spec as JSON (`config.json`) and the
//! agent API's `grpc.Spec`.
//!
//! The host converts the spec it built into `grpc.Spec` for CreateContainer
//! (and `grpc.Process` for ExecProcess); the agent converts it back to JSON for
//! the in-guest OCI runtime. proto3 scalars cannot tell "unset" from zero, so
//! zero values and empty lists are left out of the JSON, except where the OCI
//! spec gives zero a meaning the runtime needs (uid/gid, device numbers).
//! Device cgroup rules use -1 for "any" major/minor (JSON: field absent).

use crate::oci;
use protobuf::MessageField;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------- JSON -> proto

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}
fn string(v: &Value, key: &str) -> String {
    get(v, key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
fn boolean(v: &Value, key: &str) -> bool {
    get(v, key).and_then(Value::as_bool).unwrap_or(false)
}
fn u64_(v: &Value, key: &str) -> u64 {
    get(v, key).and_then(Value::as_u64).unwrap_or(0)
}
fn i64_(v: &Value, key: &str) -> i64 {
    get(v, key).and_then(Value::as_i64).unwrap_or(0)
}
fn u32_(v: &Value, key: &str) -> u32 {
    u64_(v, key) as u32
}
fn strings(v: &Value, key: &str) -> Vec<String> {
    get(v, key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
fn list<T>(v: &Value, key: &str, f: impl Fn(&Value) -> T) -> Vec<T> {
    get(v, key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default()
}
fn string_map(v: &Value, key: &str) -> std::collections::HashMap<String, String> {
    get(v, key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}
fn field<T>(v: &Value, key: &str, f: impl Fn(&Value) -> T) -> MessageField<T> {
    get(v, key).map(f).into()
}

/// Converts an OCI runtime spec (`config.json` as JSON) to `grpc.Spec`.
pub fn spec_from_json(v: &Value) -> oci::Spec {
    oci::Spec {
        Version: string(v, "ociVersion"),
        Process: field(v, "process", process_from_json),
        Root: field(v, "root", |r| oci::Root {
            Path: string(r, "path"),
            Readonly: boolean(r, "readonly"),
            ..Default::default()
        }),
        Hostname: string(v, "hostname"),
        Mounts: list(v, "mounts", |m| oci::Mount {
            destination: string(m, "destination"),
            source: string(m, "source"),
            type_: string(m, "type"),
            options: strings(m, "options"),
            ..Default::default()
        }),
        Hooks: field(v, "hooks", |h| oci::Hooks {
            Prestart: list(h, "prestart", hook_from_json),
            Poststart: list(h, "poststart", hook_from_json),
            Poststop: list(h, "poststop", hook_from_json),
            ..Default::default()
        }),
        Annotations: string_map(v, "annotations"),
        Linux: field(v, "linux", linux_from_json),
        ..Default::default()
    }
}

fn hook_from_json(h: &Value) -> oci::Hook {
    oci::Hook {
        Path: string(h, "path"),
        Args: strings(h, "args"),
        Env: strings(h, "env"),
        Timeout: i64_(h, "timeout"),
        ..Default::default()
    }
}

/// Converts an OCI `process` object to `grpc.Process` (ExecProcess).
pub fn process_from_json(p: &Value) -> oci::Process {
    oci::Process {
        Terminal: boolean(p, "terminal"),
        ConsoleSize: field(p, "consoleSize", |b| oci::Box {
            Height: u32_(b, "height"),
            Width: u32_(b, "width"),
            ..Default::default()
        }),
        User: field(p, "user", |u| oci::User {
            UID: u32_(u, "uid"),
            GID: u32_(u, "gid"),
            AdditionalGids: list(u, "additionalGids", |g| g.as_u64().unwrap_or(0) as u32),
            Username: string(u, "username"),
            ..Default::default()
        }),
        Args: strings(p, "args"),
        Env: strings(p, "env"),
        Cwd: string(p, "cwd"),
        Capabilities: field(p, "capabilities", |c| oci::LinuxCapabilities {
            Bounding: strings(c, "bounding"),
            Effective: strings(c, "effective"),
            Inheritable: strings(c, "inheritable"),
            Permitted: strings(c, "permitted"),
            Ambient: strings(c, "ambient"),
            ..Default::default()
        }),
        Rlimits: list(p, "rlimits", |r| oci::POSIXRlimit {
            Type: string(r, "type"),
            Hard: u64_(r, "hard"),
            Soft: u64_(r, "soft"),
            ..Default::default()
        }),
        NoNewPrivileges: boolean(p, "noNewPrivileges"),
        ApparmorProfile: string(p, "apparmorProfile"),
        OOMScoreAdj: i64_(p, "oomScoreAdj"),
        SelinuxLabel: string(p, "selinuxLabel"),
        ..Default::default()
    }
}

fn id_mapping_from_json(m: &Value) -> oci::LinuxIDMapping {
    oci::LinuxIDMapping {
        HostID: u32_(m, "hostID"),
        ContainerID: u32_(m, "containerID"),
        Size: u32_(m, "size"),
        ..Default::default()
    }
}

fn linux_from_json(l: &Value) -> oci::Linux {
    oci::Linux {
        UIDMappings: list(l, "uidMappings", id_mapping_from_json),
        GIDMappings: list(l, "gidMappings", id_mapping_from_json),
        Sysctl: string_map(l, "sysctl"),
        Resources: field(l, "resources", resources_from_json),
        CgroupsPath: string(l, "cgroupsPath"),
        Namespaces: list(l, "namespaces", |n| oci::LinuxNamespace {
            Type: string(n, "type"),
            Path: string(n, "path"),
            ..Default::default()
        }),
        Devices: list(l, "devices", |d| oci::LinuxDevice {
            Path: string(d, "path"),
            Type: string(d, "type"),
            Major: i64_(d, "major"),
            Minor: i64_(d, "minor"),
            FileMode: u32_(d, "fileMode"),
            UID: u32_(d, "uid"),
            GID: u32_(d, "gid"),
            ..Default::default()
        }),
        Seccomp: field(l, "seccomp", |s| oci::LinuxSeccomp {
            DefaultAction: string(s, "defaultAction"),
            Architectures: strings(s, "architectures"),
            Flags: strings(s, "flags"),
            Syscalls: list(s, "syscalls", |c| oci::LinuxSyscall {
                Names: strings(c, "names"),
                Action: string(c, "action"),
                ErrnoRet: get(c, "errnoRet")
                    .and_then(Value::as_u64)
                    .map(|e| oci::linux_syscall::ErrnoRet::Errnoret(e as u32)),
                Args: list(c, "args", |a| oci::LinuxSeccompArg {
                    Index: u64_(a, "index"),
                    Value: u64_(a, "value"),
                    ValueTwo: u64_(a, "valueTwo"),
                    Op: string(a, "op"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        RootfsPropagation: string(l, "rootfsPropagation"),
        MaskedPaths: strings(l, "maskedPaths"),
        ReadonlyPaths: strings(l, "readonlyPaths"),
        MountLabel: string(l, "mountLabel"),
        IntelRdt: field(l, "intelRdt", |r| oci::LinuxIntelRdt {
            L3CacheSchema: string(r, "l3CacheSchema"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn throttle_from_json(d: &Value) -> oci::LinuxThrottleDevice {
    oci::LinuxThrottleDevice {
        Major: i64_(d, "major"),
        Minor: i64_(d, "minor"),
        Rate: u64_(d, "rate"),
        ..Default::default()
    }
}

/// Converts an OCI `linux.resources` object to `grpc.LinuxResources`
/// (UpdateContainer).
pub fn resources_from_json(r: &Value) -> oci::LinuxResources {
    oci::LinuxResources {
        Devices: list(r, "devices", |d| oci::LinuxDeviceCgroup {
            Allow: boolean(d, "allow"),
            Type: string(d, "type"),
            Major: get(d, "major").and_then(Value::as_i64).unwrap_or(-1),
            Minor: get(d, "minor").and_then(Value::as_i64).unwrap_or(-1),
            Access: string(d, "access"),
            ..Default::default()
        }),
        Memory: field(r, "memory", |m| oci::LinuxMemory {
            Limit: i64_(m, "limit"),
            Reservation: i64_(m, "reservation"),
            Swap: i64_(m, "swap"),
            Kernel: i64_(m, "kernel"),
            KernelTCP: i64_(m, "kernelTCP"),
            Swappiness: u64_(m, "swappiness"),
            DisableOOMKiller: boolean(m, "disableOOMKiller"),
            ..Default::default()
        }),
        CPU: field(r, "cpu", |c| oci::LinuxCPU {
            Shares: u64_(c, "shares"),
            Quota: i64_(c, "quota"),
            Period: u64_(c, "period"),
            RealtimeRuntime: i64_(c, "realtimeRuntime"),
            RealtimePeriod: u64_(c, "realtimePeriod"),
            Cpus: string(c, "cpus"),
            Mems: string(c, "mems"),
            ..Default::default()
        }),
        Pids: field(r, "pids", |p| oci::LinuxPids {
            Limit: i64_(p, "limit"),
            ..Default::default()
        }),
        BlockIO: field(r, "blockIO", |b| oci::LinuxBlockIO {
            Weight: u32_(b, "weight"),
            LeafWeight: u32_(b, "leafWeight"),
            WeightDevice: list(b, "weightDevice", |d| oci::LinuxWeightDevice {
                Major: i64_(d, "major"),
                Minor: i64_(d, "minor"),
                Weight: u32_(d, "weight"),
                LeafWeight: u32_(d, "leafWeight"),
                ..Default::default()
            }),
            ThrottleReadBpsDevice: list(b, "throttleReadBpsDevice", throttle_from_json),
            ThrottleWriteBpsDevice: list(b, "throttleWriteBpsDevice", throttle_from_json),
            ThrottleReadIOPSDevice: list(b, "throttleReadIOPSDevice", throttle_from_json),
            ThrottleWriteIOPSDevice: list(b, "throttleWriteIOPSDevice", throttle_from_json),
            ..Default::default()
        }),
        HugepageLimits: list(r, "hugepageLimits", |h| oci::LinuxHugepageLimit {
            Pagesize: string(h, "pageSize"),
            Limit: u64_(h, "limit"),
            ..Default::default()
        }),
        Network: field(r, "network", |n| oci::LinuxNetwork {
            ClassID: u32_(n, "classID"),
            Priorities: list(n, "priorities", |p| oci::LinuxInterfacePriority {
                Name: string(p, "name"),
                Priority: u32_(p, "priority"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- proto -> JSON

/// Builds a JSON object, leaving out zero/empty values.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn s(mut self, k: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn b(mut self, k: &str, v: bool) -> Self {
        if v {
            self.0.insert(k.into(), json!(true));
        }
        self
    }
    fn n<T: Into<Value> + Default + PartialEq>(mut self, k: &str, v: T) -> Self {
        if v != T::default() {
            self.0.insert(k.into(), v.into());
        }
        self
    }
    /// Always present, even when zero.
    fn z<T: Into<Value>>(mut self, k: &str, v: T) -> Self {
        self.0.insert(k.into(), v.into());
        self
    }
    fn strs(mut self, k: &str, v: &[String]) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn arr<T>(mut self, k: &str, v: &[T], f: impl Fn(&T) -> Value) -> Self {
        if !v.is_empty() {
            self.0
                .insert(k.into(), Value::Array(v.iter().map(f).collect()));
        }
        self
    }
    fn map(mut self, k: &str, v: &std::collections::HashMap<String, String>) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn opt<T>(mut self, k: &str, v: &MessageField<T>, f: impl Fn(&T) -> Value) -> Self {
        if let Some(v) = v.as_ref() {
            self.0.insert(k.into(), f(v));
        }
        self
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// Converts `grpc.Spec` to an OCI runtime spec (`config.json`).
pub fn spec_to_json(s: &oci::Spec) -> Value {
    Obj::default()
        .z(
            "ociVersion",
            if s.Version.is_empty() {
                "1.0.2"
            } else {
                s.Version.as_str()
            },
        )
        .opt("process", &s.Process, process_to_json)
        .opt("root", &s.Root, |r| {
            Obj::default()
                .z("path", r.Path.as_str())
                .b("readonly", r.Readonly)
                .done()
        })
        .s("hostname", &s.Hostname)
        .z(
            "mounts",
            Value::Array(
                s.Mounts
                    .iter()
                    .map(|m| {
                        Obj::default()
                            .z("destination", m.destination.as_str())
                            .s("source", &m.source)
                            .s("type", &m.type_)
                            .strs("options", &m.options)
                            .done()
                    })
                    .collect(),
            ),
        )
        .opt("hooks", &s.Hooks, |h| {
            Obj::default()
                .arr("prestart", &h.Prestart, hook_to_json)
                .arr("poststart", &h.Poststart, hook_to_json)
                .arr("poststop", &h.Poststop, hook_to_json)
                .done()
        })
        .map("annotations", &s.Annotations)
        .opt("linux", &s.Linux, linux_to_json)
        .done()
}

fn hook_to_json(h: &oci::Hook) -> Value {
    Obj::default()
        .z("path", h.Path.as_str())
        .strs("args", &h.Args)
        .strs("env", &h.Env)
        .n("timeout", h.Timeout)
        .done()
}

/// Converts `grpc.Process` to an OCI `process` object.
pub fn process_to_json(p: &oci::Process) -> Value {
    let user = p.User.as_ref().cloned().unwrap_or_default();
    Obj::default()
        .b("terminal", p.Terminal)
        .opt(
            "consoleSize",
            &p.ConsoleSize,
            |b| json!({"height": b.Height, "width": b.Width}),
        )
        .z(
            "user",
            Obj::default()
                .z("uid", user.UID)
                .z("gid", user.GID)
                .arr("additionalGids", &user.AdditionalGids, |g| json!(g))
                .s("username", &user.Username)
                .done(),
        )
        .strs("args", &p.Args)
        .strs("env", &p.Env)
        .z(
            "cwd",
            if p.Cwd.is_empty() {
                "/"
            } else {
                p.Cwd.as_str()
            },
        )
        .opt("capabilities", &p.Capabilities, |c| {
            Obj::default()
                .strs("bounding", &c.Bounding)
                .strs("effective", &c.Effective)
                .strs("inheritable", &c.Inheritable)
                .strs("permitted", &c.Permitted)
                .strs("ambient", &c.Ambient)
                .done()
        })
        .arr(
            "rlimits",
            &p.Rlimits,
            |r| json!({"type": r.Type, "hard": r.Hard, "soft": r.Soft}),
        )
        .b("noNewPrivileges", p.NoNewPrivileges)
        .s("apparmorProfile", &p.ApparmorProfile)
        .n("oomScoreAdj", p.OOMScoreAdj)
        .s("selinuxLabel", &p.SelinuxLabel)
        .done()
}

fn id_mapping_to_json(m: &oci::LinuxIDMapping) -> Value {
    json!({"containerID": m.ContainerID, "hostID": m.HostID, "size": m.Size})
}

fn linux_to_json(l: &oci::Linux) -> Value {
    Obj::default()
        .arr("uidMappings", &l.UIDMappings, id_mapping_to_json)
        .arr("gidMappings", &l.GIDMappings, id_mapping_to_json)
        .map("sysctl", &l.Sysctl)
        .opt("resources", &l.Resources, resources_to_json)
        .s("cgroupsPath", &l.CgroupsPath)
        .arr("namespaces", &l.Namespaces, |n| {
            Obj::default()
                .z("type", n.Type.as_str())
                .s("path", &n.Path)
                .done()
        })
        .arr("devices", &l.Devices, |d| {
            Obj::default()
                .z("path", d.Path.as_str())
                .z("type", d.Type.as_str())
                .z("major", d.Major)
                .z("minor", d.Minor)
                .n("fileMode", d.FileMode)
                .z("uid", d.UID)
                .z("gid", d.GID)
                .done()
        })
        .opt("seccomp", &l.Seccomp, |s| {
            Obj::default()
                .z("defaultAction", s.DefaultAction.as_str())
                .strs("architectures", &s.Architectures)
                .strs("flags", &s.Flags)
                .arr("syscalls", &s.Syscalls, |c| {
                    let mut o = Obj::default()
                        .strs("names", &c.Names)
                        .z("action", c.Action.as_str())
                        .arr("args", &c.Args, |a| {
                            Obj::default()
                                .z("index", a.Index)
                                .z("value", a.Value)
                                .n("valueTwo", a.ValueTwo)
                                .z("op", a.Op.as_str())
                                .done()
                        });
                    if let Some(oci::linux_syscall::ErrnoRet::Errnoret(e)) = c.ErrnoRet {
                        o = o.z("errnoRet", e);
                    }
                    o.done()
                })
                .done()
        })
        .s("rootfsPropagation", &l.RootfsPropagation)
        .strs("maskedPaths", &l.MaskedPaths)
        .strs("readonlyPaths", &l.ReadonlyPaths)
        .s("mountLabel", &l.MountLabel)
        .opt(
            "intelRdt",
            &l.IntelRdt,
            |r| json!({"l3CacheSchema": r.L3CacheSchema}),
        )
        .done()
}

fn throttle_to_json(d: &oci::LinuxThrottleDevice) -> Value {
    json!({"major": d.Major, "minor": d.Minor, "rate": d.Rate})
}

/// Converts `grpc.LinuxResources` to an OCI `linux.resources` object.
pub fn resources_to_json(r: &oci::LinuxResources) -> Value {
    Obj::default()
        .arr("devices", &r.Devices, |d| {
            let mut o = Obj::default().z("allow", d.Allow).s("type", &d.Type).s("access", &d.Access);
            if d.Major >= 0 {
                o = o.z("major", d.Major);
            }
            if d.Minor >= 0 {
                o = o.z("minor", d.Minor);
            }
            o.done()
        })
        .opt("memory", &r.Memory, |m| {
            Obj::default()
                .n("limit", m.Limit)
                .n("reservation", m.Reservation)
                .n("swap", m.Swap)
                .n("kernel", m.Kernel)
                .n("kernelTCP", m.KernelTCP)
                .n("swappiness", m.Swappiness)
                .b("disableOOMKiller", m.DisableOOMKiller)
                .done()
        })
        .opt("cpu", &r.CPU, |c| {
            Obj::default()
                .n("shares", c.Shares)
                .n("quota", c.Quota)
                .n("period", c.Period)
                .n("realtimeRuntime", c.RealtimeRuntime)
                .n("realtimePeriod", c.RealtimePeriod)
                .s("cpus", &c.Cpus)
                .s("mems", &c.Mems)
                .done()
        })
        .opt("pids", &r.Pids, |p| json!({"limit": p.Limit}))
        .opt("blockIO", &r.BlockIO, |b| {
            Obj::default()
                .n("weight", b.Weight)
                .n("leafWeight", b.LeafWeight)
                .arr("weightDevice", &b.WeightDevice, |d| {
                    json!({"major": d.Major, "minor": d.Minor, "weight": d.Weight, "leafWeight": d.LeafWeight})
                })
                .arr("throttleReadBpsDevice", &b.ThrottleReadBpsDevice, throttle_to_json)
                .arr("throttleWriteBpsDevice", &b.ThrottleWriteBpsDevice, throttle_to_json)
                .arr("throttleReadIOPSDevice", &b.ThrottleReadIOPSDevice, throttle_to_json)
                .arr("throttleWriteIOPSDevice", &b.ThrottleWriteIOPSDevice, throttle_to_json)
                .done()
        })
        .arr("hugepageLimits", &r.HugepageLimits, |h| json!({"pageSize": h.Pagesize, "limit": h.Limit}))
        .opt("network", &r.Network, |n| {
            Obj::default()
                .n("classID", n.ClassID)
                .arr("priorities", &n.Priorities, |p| json!({"name": p.Name, "priority": p.Priority}))
                .done()
        })
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_proto() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
                "args": ["uname", "-r"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {"bounding": ["CAP_KILL"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true,
                "oomScoreAdj": 5
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "pod",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "annotations": {"a": "b"},
            "linux": {
                "resources": {
                    "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
                    "memory": {"limit": 67108864},
                    "cpu": {"shares": 512, "quota": 50000, "period": 100000},
                    "pids": {"limit": 100}
                },
                "cgroupsPath": "/crius/x",
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/x"}],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]},
                "maskedPaths": ["/proc/kcore"]
            }
        });
        let proto = spec_from_json(&spec);
        assert_eq!(proto.Process.Args, ["uname", "-r"]);
        assert_eq!(proto.Linux.Resources.Devices[0].Major, -1);
        let back = spec_to_json(&proto);
        assert_eq!(
            back,
            spec,
            "{}",
            serde_json::to_string_pretty(&back).unwrap_or_default()
        );
    }
}
