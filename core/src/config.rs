//! Daemon configuration: `crius.yaml` plus drop-ins from `crius.yaml.d/*.yaml`.
//!
//! The types below are the merged, validated configuration the daemon runs
//! with. Loading (YAML parsing, drop-in merging, file:line errors) lives in
//! [`load()`]; semantic checks in [`Config::validate`].
//!
//! Merging: files are applied in order (`crius.yaml`, then the drop-ins by
//! file name). Maps merge key by key, recursively (a drop-in can add a
//! handler, or change one field of a handler defined earlier); scalars and
//! lists replace. A key that no file sets keeps its [`Config::default`]
//! value; note that this is per key: a file that sets `runtime_handlers`
//! replaces the built-in runc/crun table rather than adding to it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod check;
mod load;
pub mod registries_conf;
mod reload;
mod validate;

pub use load::{ConfigError, config_files, drop_in_dir, load};
pub use reload::{LIVE_KEYS, LIVE_STREAMING_KEYS, ReloadPlan, apply_live, is_live};
pub use validate::LOG_LEVELS;

/// The whole daemon configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket the CRI gRPC services listen on.
    pub listen: PathBuf,
    /// Persistent state: images, layers, pod and container records.
    pub root: PathBuf,
    /// Volatile runtime state (cleared on reboot).
    pub state_dir: PathBuf,
    /// Default log filter (`error`, `warn`, `info`, `debug`, `trace`), overridden by `--log-level`.
    pub log_level: String,
    /// Never give a container a lower `oom_score_adj` than the daemon's own
    /// (containerd's `restrict_oom_score_adj`): where even root may not lower
    /// it (unprivileged user namespaces, some sandboxes) a negative value from
    /// the kubelet would make every Guaranteed pod fail to start.
    pub restrict_oom_score_adj: bool,
    /// Only `cgroupfs` is supported.
    pub cgroup_driver: CgroupDriver,
    /// How container root filesystems are made from image layers.
    pub storage_driver: StorageDriver,
    /// Handler used when a pod's `runtime_handler` is empty.
    pub default_runtime_handler: String,
    /// Handler table: RuntimeClass handler name → handler.
    pub runtime_handlers: BTreeMap<String, HandlerConfig>,
    /// Pod networking.
    pub cni: CniConfig,
    /// Image pulling and storage.
    pub image: ImageConfig,
    /// Per-registry settings: mirrors and plain-HTTP (insecure) registries.
    pub registries: Vec<RegistryConfig>,
    /// The pause (infra) process of pods.
    pub pause: PauseConfig,
    /// The streaming server behind Exec, Attach and PortForward.
    pub streaming: StreamingConfig,
    /// Where CDI device specs are read from, lowest priority first (a
    /// device defined in two dirs is taken from the later one).
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// OCI hook definitions (`oci-hooks(5)`), lowest priority first (a file
    /// masks the file of the same name in an earlier dir).
    pub hooks_dirs: Vec<PathBuf>,
    /// `host:port` of the Prometheus metrics endpoint (`GET /metrics`);
    /// unset = no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`) the
    /// daemon's spans are exported to, beside the log; unset = no export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

/// The streaming server (exec/attach/port-forward URLs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// IP address to listen on; the URLs handed to the kubelet carry it.
    pub address: std::net::IpAddr,
    /// TCP port; 0 picks a free port at every start.
    pub port: u16,
    /// PEM certificate chain (leaf first) for HTTPS; set with `tls_key`.
    /// The URLs then start with `https://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// How long a URL stays valid before it is used (once).
    pub token_ttl_seconds: u64,
    /// A session with no traffic in either direction for this long is closed.
    pub idle_timeout_seconds: u64,
    /// Sessions served at once; more are refused with 429.
    pub max_sessions: usize,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port: 0,
            tls_cert: None,
            tls_key: None,
            // As the kubelet's streaming server: a minute to use a URL,
            // four hours of silence before a session is closed.
            token_ttl_seconds: 60,
            idle_timeout_seconds: 4 * 60 * 60,
            max_sessions: 64,
        }
    }
}

/// The infra (pause) container of pods whose handler needs one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PauseConfig {
    /// A static pause binary run as `<binary> -P` (Debian's catatonit).
    pub catatonit_path: PathBuf,
}

impl Default for PauseConfig {
    fn default() -> Self {
        Self {
            catatonit_path: PathBuf::from("/usr/bin/catatonit"),
        }
    }
}

/// How pod and container cgroups are managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Write the cgroup filesystem directly (v1 or v2, detected).
    #[default]
    Cgroupfs,
    /// Pods in slices and containers in scopes, made through systemd (which
    /// must be PID 1): kubeadm's default for kubelet.
    Systemd,
}

/// How a container's root filesystem is made from its image's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageDriver {
    /// An overlayfs mount of the layers with a per-container upper dir.
    #[default]
    Overlay,
    /// A full copy of the layers per container (containers/storage's
    /// `vfs`), for hosts where overlayfs cannot be mounted; slower to
    /// create and as big as the image per container.
    Vfs,
}

/// What kind of runtime a handler is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    /// A native OCI runtime (runc, crun) with conmon as the container monitor.
    Oci,
    /// One VM per pod (kata): a shim handler whose shim executable is
    /// `vm.shim_path` (default: `crius-kata-shim` beside the daemon),
    /// `runtime_path` the hypervisor and `vm:` the shim's own table.
    Vm,
    /// A third-party handler from a plugin library or shim executable.
    Plugin,
}

/// One entry of the handler table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// `oci`, `vm` or `plugin`.
    pub kind: HandlerKind,
    /// The runtime binary (runc/crun), hypervisor, plugin library or shim executable.
    pub runtime_path: PathBuf,
    /// Runtime state root passed to the runtime (`--root`).
    #[serde(default)]
    pub runtime_root: Option<PathBuf>,
    /// Container monitor (conmon) for `oci` handlers.
    #[serde(default)]
    pub monitor_path: Option<PathBuf>,
    /// Pod/container annotations (exact keys, or prefixes ending in `*`) passed through to the handler.
    #[serde(default)]
    pub allowed_annotations: Vec<String>,
    /// Annotations added to every pod of this handler unless the pod sets them.
    #[serde(default)]
    pub default_annotations: BTreeMap<String, String>,
    /// Privileged containers do not get the host's devices.
    #[serde(default)]
    pub privileged_without_host_devices: bool,
    /// Feature overrides; unset features are probed from the runtime itself.
    #[serde(default)]
    pub features: FeatureOverrides,
    /// Settings of `plugin` handlers: always set for them (keys left out
    /// keep their defaults), `None` for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginConfig>,
    /// The `vm:` table of `vm` handlers: always set for them (empty when no
    /// file sets it), `None` for other kinds. Opaque to the daemon, which
    /// merges it key by key across files and hands it to the shim as
    /// `HandlerParams.options`; the shim parses and checks it (see
    /// `configs/crius.yaml`). The daemon itself reads only `vm.shim_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<serde_json::Map<String, serde_json::Value>>,
    /// How long the daemon waits for the handler's RunSandbox (and
    /// RestoreSandbox); default `call_timeout_seconds`, 300 s for `vm`
    /// handlers. A VM handler needs more than its boot timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_sandbox_timeout_seconds: Option<u64>,
    /// How long the daemon waits for any other handler call (StopContainer
    /// adds its grace period, ExecSync its own timeout; Wait has none);
    /// default 120 s. A call that passes it answers DEADLINE_EXCEEDED and
    /// marks the handler unhealthy until it returns (see `core/src/deadlines.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout_seconds: Option<u64>,
    /// Where the entry's `vm:` table (or the entry, without one) was
    /// written, `file:line:column`; the daemon prefixes the shim's verdict
    /// on the table with it. Set by the loader.
    #[serde(skip)]
    pub vm_location: Option<String>,
}

/// The `vm:` key the daemon reads: the shim executable of a `vm` handler.
pub const VM_SHIM_PATH_KEY: &str = "shim_path";

/// Default RunSandbox timeout of `vm` handlers (a VM boots under TCG).
pub const VM_RUN_SANDBOX_TIMEOUT_SECONDS: u64 = 300;

impl HandlerConfig {
    /// `vm.shim_path` of a `vm` handler, if set to a non-empty path.
    pub fn vm_shim_path(&self) -> Option<PathBuf> {
        self.vm
            .as_ref()?
            .get(VM_SHIM_PATH_KEY)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    }
}

/// The `plugin:` sub-table of a `kind: plugin` handler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    /// How `runtime_path` is run.
    pub mode: PluginMode,
    /// Handler-specific settings, handed to the handler as given.
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// How a third-party handler runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginMode {
    /// `runtime_path` is a shim executable, started once per pod; a crash
    /// only affects that pod (recommended).
    #[default]
    Process,
    /// `runtime_path` is a shared library loaded into the daemon (root-owned,
    /// not writable by others); fastest, but a crash takes the daemon down.
    Library,
}

/// Optional overrides of what a handler reports in `Status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureOverrides {
    #[serde(default)]
    pub recursive_read_only_mounts: Option<bool>,
    #[serde(default)]
    pub user_namespaces: Option<bool>,
}

/// CNI settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory searched for the first `*.conflist` / `*.conf` (lexical order).
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/usr/lib/cni")],
        }
    }
}

/// Image service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// Pulls (of different images) that run at once; more wait for a slot.
    /// 0 = no limit.
    pub max_concurrent_pulls: usize,
    /// Registry used for names without a registry host (`busybox` → `docker.io/library/busybox`).
    pub default_registry: String,
    /// Largest layer a pull stores, in bytes: its compressed blob (checked
    /// against the manifest before downloading) and its unpacked tar stream
    /// (counted while unpacking).
    pub max_layer_size: u64,
    /// Largest image a pull stores, in bytes: the sum over its layers, of
    /// the blobs and of the unpacked streams alike.
    pub max_image_size: u64,
    /// A pull whose registry sends no bytes for this long (a blob, a
    /// manifest, or the answer to a request) is aborted with
    /// DEADLINE_EXCEEDED naming the blob; progress, however slow, never
    /// times out (CRI-O's `pull_progress_timeout`). 0 = never abort.
    pub pull_progress_timeout_seconds: u64,
    /// Images the kubelet's image GC must never remove, reported `pinned`
    /// in ListImages/ImageStatus, and refused by RemoveImage: exact names
    /// (`registry.k8s.io/pause:3.10`), prefixes ending in `*`
    /// (`registry.k8s.io/*`), or `*word*` (any name containing `word`).
    /// Matched against the image's tags (fully qualified, as ListImages
    /// shows them).
    pub pinned_images: Vec<String>,
    /// containers-registries.conf(5) read besides `registries` (so a node
    /// set up for CRI-O or podman keeps its mirrors, blocked registries,
    /// search list and short-name aliases); missing = nothing; empty = do
    /// not read one. Precedence: see `config::registries_conf`.
    pub registries_conf: PathBuf,
    /// Its drop-in directory (`*.conf`, read in name order after it).
    pub registries_conf_dir: PathBuf,
    /// containers-policy.json(5): the signatures images must carry to be
    /// pulled. Read on every pull; missing = accept anything; empty = none.
    pub signature_policy: PathBuf,
    /// Per-namespace policies: `<dir>/<namespace>.json` replaces
    /// `signature_policy` for pulls of pods in that namespace (as CRI-O's
    /// `signature_policy_dir`). Empty = none.
    pub signature_policy_dir: PathBuf,
    /// containers-registries.d(5): where GPG signatures are published
    /// (`lookaside`) per registry or repository. Empty = none.
    pub registries_d: PathBuf,
    /// Registries a short name (`busybox`) is looked for in, in order:
    /// registries.conf's `unqualified-search-registries`; empty = only
    /// `default_registry`. Not a YAML key (`crius config` leaves it out).
    #[serde(skip)]
    pub unqualified_search_registries: Vec<String>,
    /// Short names and the fully qualified names they stand for
    /// (registries.conf's `[aliases]`). Not a YAML key either.
    #[serde(skip)]
    pub short_name_aliases: BTreeMap<String, String>,
}

/// Default [`ImageConfig::max_layer_size`]: 10 GiB.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 10 << 30;
/// Default [`ImageConfig::max_image_size`]: 20 GiB.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 20 << 30;
/// Default [`ImageConfig::pull_progress_timeout_seconds`].
pub const DEFAULT_PULL_PROGRESS_TIMEOUT_SECONDS: u64 = 60;

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            max_concurrent_downloads: 3,
            max_concurrent_pulls: 0,
            default_registry: "docker.io".to_string(),
            max_layer_size: DEFAULT_MAX_LAYER_SIZE,
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
            pull_progress_timeout_seconds: DEFAULT_PULL_PROGRESS_TIMEOUT_SECONDS,
            pinned_images: Vec::new(),
            registries_conf: PathBuf::from("/etc/containers/registries.conf"),
            registries_conf_dir: PathBuf::from("/etc/containers/registries.conf.d"),
            signature_policy: PathBuf::from("/etc/containers/policy.json"),
            signature_policy_dir: PathBuf::from("/etc/crius/policies"),
            registries_d: PathBuf::from("/etc/containers/registries.d"),
            unqualified_search_registries: Vec::new(),
            short_name_aliases: BTreeMap::new(),
        }
    }
}

/// Settings for one registry, matched by the longest `prefix` of an image
/// name (`registry.k8s.io`, `docker.io/library`, `127.0.0.1:5000`), as in
/// containers-registries.conf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host, optionally followed by a repository path.
    pub prefix: String,
    /// Where to pull from instead of `prefix` (a host, optionally with a path).
    #[serde(default)]
    pub location: Option<String>,
    /// Speak plain HTTP to this registry (TLS is never skipped silently).
    #[serde(default)]
    pub insecure: bool,
    /// Tried in order before the registry itself.
    #[serde(default)]
    pub mirrors: Vec<MirrorConfig>,
    /// Never contact the registry itself; only its mirrors.
    #[serde(default)]
    pub blocked: bool,
    /// Use the mirrors only for pulls by digest (tags can differ between a
    /// mirror and its registry).
    #[serde(default)]
    pub mirror_by_digest_only: bool,
}

impl RegistryConfig {
    /// An entry for `prefix` that changes nothing: the registry itself,
    /// over HTTPS, without mirrors.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            location: None,
            insecure: false,
            mirrors: Vec::new(),
            blocked: false,
            mirror_by_digest_only: false,
        }
    }
}

/// One mirror of a registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Mirror host, optionally followed by a repository path.
    pub location: String,
    /// Speak plain HTTP to this mirror.
    #[serde(default)]
    pub insecure: bool,
}

impl Default for Config {
    fn default() -> Self {
        let mut runtime_handlers = BTreeMap::new();
        for (name, path) in [("runc", "/usr/sbin/runc"), ("crun", "/usr/bin/crun")] {
            runtime_handlers.insert(
                name.to_string(),
                HandlerConfig {
                    kind: HandlerKind::Oci,
                    runtime_path: PathBuf::from(path),
                    runtime_root: Some(PathBuf::from(format!("/run/crius/{name}"))),
                    monitor_path: Some(PathBuf::from("/usr/bin/conmon")),
                    allowed_annotations: Vec::new(),
                    default_annotations: BTreeMap::new(),
                    privileged_without_host_devices: false,
                    features: FeatureOverrides::default(),
                    plugin: None,
                    vm: None,
                    run_sandbox_timeout_seconds: None,
                    call_timeout_seconds: None,
                    vm_location: None,
                },
            );
        }
        Self {
            listen: PathBuf::from("/run/crius/crius.sock"),
            root: PathBuf::from("/var/lib/crius"),
            state_dir: PathBuf::from("/run/crius"),
            log_level: "info".to_string(),
            restrict_oom_score_adj: true,
            cgroup_driver: CgroupDriver::Cgroupfs,
            storage_driver: StorageDriver::Overlay,
            default_runtime_handler: "runc".to_string(),
            runtime_handlers,
            cni: CniConfig::default(),
            image: ImageConfig::default(),
            registries: Vec::new(),
            pause: PauseConfig::default(),
            streaming: StreamingConfig::default(),
            cdi_spec_dirs: crate::spec::cdi::DEFAULT_SPEC_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            hooks_dirs: crate::spec::hooks::DEFAULT_HOOKS_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            metrics_address: None,
            otlp_endpoint: None,
        }
    }
}
