//! A CNI client: loads the network configuration and runs its plugin chain.
//!
//! Follows the CNI specification 1.0 (and accepts 0.3.x/0.4.0 configs, whose
//! result format is the same apart from fields we ignore):
//!
//! * The network is the first file, in lexical order of file names, in the
//!   configured directory ending in `.conflist`, `.conf` or `.json`. A single
//!   plugin config (`.conf`/`.json`) is wrapped into a one-plugin list.
//! * ADD runs the plugins in order, each receiving the previous plugin's
//!   result as `prevResult`; the last result is the network's result. When
//!   plugin *k* fails, DEL runs for plugins *k*..0 so no IP allocation,
//!   veth or iptables rule is left behind, and the ADD error is returned.
//! * DEL runs the plugins in reverse order with the ADD result as
//!   `prevResult`. Unlike libcni it does not stop at the first failing
//!   plugin: the remaining plugins still run (so one broken plugin cannot
//!   leak the IP that host-local holds), and the first error is returned.
//!   When the namespace is gone, `CNI_NETNS` is passed empty, which the spec
//!   allows for DEL and the reference plugins handle.
//! * CHECK (0.4.0+, unless `disableCheck`) runs the plugins in order with the
//!   ADD result. Plugin types in the network's *check skip list* are not run;
//!   the default list is `portmap`, whose CHECK fails on IPv4-only setups in
//!   the Debian 12 plugins ("could not check ipv6 dnat").
//!
//! The ADD result and the exact configuration used can be recorded in an
//! [`Attachment`] file, so a restarted daemon tears the pod down with the
//! same configuration and `prevResult` even if the config directory changed.
//!
//! Plugins are run through the [`PluginExec`] trait; [`ProcessExec`] runs the
//! real binaries with a timeout.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::config::CniConfig;

/// Interface name inside the pod, as kubelet expects.
pub const DEFAULT_IFNAME: &str = "eth0";
/// Per-plugin-invocation timeout of [`ProcessExec::default`].
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Plugin types whose CHECK is skipped unless overridden (see module docs).
pub const DEFAULT_CHECK_SKIP: &[&str] = &["portmap"];

/// Config versions whose result format this client understands.
const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Errors from the CNI client.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network config (*.conflist, *.conf, *.json) in {dir}")]
    NoConfig { dir: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse CNI config {path}: {source}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid CNI config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("invalid CNI request: {0}")]
    InvalidRequest(String),
    #[error("CNI plugin {plugin:?} of network {network:?} not found in {dirs}")]
    PluginNotFound {
        network: String,
        plugin: String,
        dirs: String,
    },
    #[error(
        "CNI plugin {plugin:?} of network {network:?} failed on {command}: {msg} (code {code}){}",
        fmt_details(details)
    )]
    Plugin {
        network: String,
        plugin: String,
        command: Command,
        code: u32,
        msg: String,
        details: String,
    },
    #[error(
        "CNI plugin {plugin:?} of network {network:?} failed on {command}: {status}; stderr: {stderr}"
    )]
    PluginFailed {
        network: String,
        plugin: String,
        command: Command,
        status: String,
        stderr: String,
    },
    #[error(
        "CNI plugin {plugin:?} of network {network:?} timed out after {timeout:?} on {command}"
    )]
    Timeout {
        network: String,
        plugin: String,
        command: Command,
        timeout: Duration,
    },
    #[error("run CNI plugin {plugin:?} of network {network:?}: {source}")]
    Spawn {
        network: String,
        plugin: String,
        #[source]
        source: io::Error,
    },
    #[error("CNI plugin {plugin:?} of network {network:?} returned an invalid result: {reason}")]
    InvalidResult {
        network: String,
        plugin: String,
        reason: String,
    },
    #[error("invalid CNI result: {0}")]
    Result(String),
    #[error("CNI attachment record {path}: {reason}")]
    Attachment { path: PathBuf, reason: String },
}

fn fmt_details(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

/// A CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    #[serde(rename = "ADD")]
    Add,
    #[serde(rename = "DEL")]
    Del,
    #[serde(rename = "CHECK")]
    Check,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        })
    }
}

/// One host port forwarded into the pod (portmap's `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (lower case, as portmap expects).
    pub protocol: String,
    /// Host address to bind; empty means all.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// What to attach: one pod sandbox to the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRequest {
    /// The sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub container_id: String,
    /// The pinned network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// Interface name inside the namespace (`CNI_IFNAME`).
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

impl CniRequest {
    /// A request for `eth0` without pod metadata or port mappings.
    pub fn new(container_id: impl Into<String>, netns: impl Into<PathBuf>) -> Self {
        Self {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: DEFAULT_IFNAME.to_string(),
            pod_namespace: String::new(),
            pod_name: String::new(),
            pod_uid: String::new(),
            port_mappings: Vec::new(),
        }
    }

    /// The `CNI_ARGS` value kubelet-era plugins expect.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }

    fn validate(&self) -> Result<(), CniError> {
        let bad = |m: String| Err(CniError::InvalidRequest(m));
        if self.container_id.is_empty()
            || !self
                .container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return bad(format!(
                "container id {:?} must be non-empty [A-Za-z0-9_.-]",
                self.container_id
            ));
        }
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self.ifname == "."
            || self.ifname == ".."
            || self
                .ifname
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
        {
            return bad(format!(
                "interface name {:?} is not a valid Linux interface name",
                self.ifname
            ));
        }
        for (what, v) in [
            ("pod namespace", &self.pod_namespace),
            ("pod name", &self.pod_name),
            ("pod uid", &self.pod_uid),
        ] {
            // These end up inside CNI_ARGS, a `;`-separated list of `K=V`.
            if v.contains([';', '=']) || v.contains('\0') {
                return bad(format!("{what} {v:?} contains ';', '=' or NUL"));
            }
        }
        if self.netns.as_os_str().is_empty() {
            return bad("network namespace path is empty".into());
        }
        Ok(())
    }
}

/// An address with prefix length, as CNI results carry them (`10.88.0.5/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no prefix length"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix length over {max}"));
        }
        Ok(IpCidr { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An interface from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniInterface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the pod; empty for host-side ones.
    pub sandbox: String,
}

/// An address from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniIp {
    pub address: IpCidr,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// A route from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniRoute {
    pub dst: IpCidr,
    pub gw: Option<IpAddr>,
}

/// DNS settings from a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniDns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// A plugin's (or the whole chain's) ADD result.
///
/// Serialises as exactly the JSON the plugin printed, so it can be passed on
/// as `prevResult` and cached without losing fields this type does not model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct CniResult {
    raw: Value,
    pub cni_version: String,
    pub interfaces: Vec<CniInterface>,
    pub ips: Vec<CniIp>,
    pub routes: Vec<CniRoute>,
    pub dns: CniDns,
}

impl CniResult {
    /// The pod's addresses: IPs on interfaces inside the sandbox, or with no
    /// interface reference (which older plugins omit). Host-side addresses
    /// (a bridge's gateway address reported on the bridge) are left out.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter(
                |ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                    Some(iface) => !iface.sandbox.is_empty(),
                    None => true,
                },
            )
            .map(|ip| ip.address.addr)
            .collect()
    }

    /// The pod-side part of the result as the handler contract carries it:
    /// interfaces inside the sandbox with their addresses, routes and DNS.
    pub fn pod_network(&self) -> crius_shim_api::types::PodNetwork {
        use crius_shim_api::types::{NetworkInterface, NetworkRoute, PodNetwork};
        let interfaces = self
            .interfaces
            .iter()
            .enumerate()
            .filter(|(_, iface)| !iface.sandbox.is_empty())
            .map(|(index, iface)| {
                let ips = self.ips.iter().filter(|ip| ip.interface == Some(index));
                NetworkInterface {
                    name: iface.name.clone(),
                    mac: iface.mac.clone(),
                    addresses: ips.clone().map(|ip| ip.address.to_string()).collect(),
                    gateways: ips
                        .filter_map(|ip| ip.gateway.map(|g| g.to_string()))
                        .collect(),
                    mtu: 0,
                }
            })
            .collect();
        let routes = self
            .routes
            .iter()
            .map(|route| NetworkRoute {
                destination: route.dst.to_string(),
                gateway: route.gw.map(|g| g.to_string()).unwrap_or_default(),
                interface: String::new(),
            })
            .collect();
        PodNetwork {
            interfaces,
            routes,
            dns_servers: self.dns.nameservers.clone(),
            dns_searches: self.dns.search.clone(),
            dns_options: self.dns.options.clone(),
        }
    }

    /// The result exactly as the plugin printed it.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// Parses a result printed by a plugin.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CniError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| CniError::Result(e.to_string()))?;
        Self::try_from(v).map_err(CniError::Result)
    }
}

impl TryFrom<Value> for CniResult {
    type Error = String;
    fn try_from(raw: Value) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Iface {
            name: String,
            #[serde(default)]
            mac: String,
            #[serde(default)]
            sandbox: String,
        }
        #[derive(Deserialize)]
        struct Ip {
            address: String,
            #[serde(default)]
            gateway: Option<IpAddr>,
            #[serde(default)]
            interface: Option<usize>,
        }
        #[derive(Deserialize)]
        struct Route {
            dst: String,
            #[serde(default)]
            gw: Option<IpAddr>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Repr {
            #[serde(default)]
            cni_version: String,
            #[serde(default)]
            interfaces: Vec<Iface>,
            #[serde(default)]
            ips: Vec<Ip>,
            #[serde(default)]
            routes: Vec<Route>,
            #[serde(default)]
            dns: CniDns,
        }
        if !raw.is_object() {
            return Err("result is not a JSON object".into());
        }
        let r: Repr = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        let ips = r
            .ips
            .into_iter()
            .map(|ip| {
                if let Some(i) = ip.interface
                    && i >= r.interfaces.len()
                {
                    return Err(format!(
                        "ip {} refers to interface {i} of {}",
                        ip.address,
                        r.interfaces.len()
                    ));
                }
                Ok(CniIp {
                    address: ip.address.parse()?,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let routes = r
            .routes
            .into_iter()
            .map(|rt| {
                Ok(CniRoute {
                    dst: rt.dst.parse()?,
                    gw: rt.gw,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CniResult {
            raw,
            cni_version: r.cni_version,
            interfaces: r
                .interfaces
                .into_iter()
                .map(|i| CniInterface {
                    name: i.name,
                    mac: i.mac,
                    sandbox: i.sandbox,
                })
                .collect(),
            ips,
            routes,
            dns: r.dns,
        })
    }
}

impl From<CniResult> for Value {
    fn from(r: CniResult) -> Value {
        r.raw
    }
}

/// One plugin invocation, everything a [`PluginExec`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// Network name, for error messages.
    pub network: String,
    /// The plugin's `type`: the binary name.
    pub plugin_type: String,
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`; empty on DEL when the namespace is gone.
    pub netns: String,
    pub ifname: String,
    pub args: String,
    /// Directories searched for the binary, also passed as `CNI_PATH`.
    pub path: Vec<PathBuf>,
    /// The plugin's config (with `name`, `cniVersion`, `runtimeConfig`,
    /// `prevResult` injected), written to its stdin.
    pub stdin: Value,
}

/// Runs one plugin and returns its stdout on success. Errors must already be
/// typed (a plugin's `{"code","msg"}` becomes [`CniError::Plugin`]).
#[async_trait]
pub trait PluginExec: Send + Sync + fmt::Debug {
    async fn exec(&self, inv: &Invocation) -> Result<Vec<u8>, CniError>;
}

/// Runs plugin binaries as child processes.
#[derive(Debug, Clone)]
pub struct ProcessExec {
    pub timeout: Duration,
}

impl Default for ProcessExec {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_PLUGIN_TIMEOUT,
        }
    }
}

/// Finds an executable file named `plugin_type` in `dirs`.
pub fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(plugin_type)).find(|p| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[async_trait]
impl PluginExec for ProcessExec {
    async fn exec(&self, inv: &Invocation) -> Result<Vec<u8>, CniError> {
        let bin =
            find_plugin(&inv.plugin_type, &inv.path).ok_or_else(|| CniError::PluginNotFound {
                network: inv.network.clone(),
                plugin: inv.plugin_type.clone(),
                dirs: join_paths(&inv.path),
            })?;
        let stdin_bytes = serde_json::to_vec(&inv.stdin).expect("a JSON value always serialises");
        let spawn_err = |source| CniError::Spawn {
            network: inv.network.clone(),
            plugin: inv.plugin_type.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(&bin)
            .env("CNI_COMMAND", inv.command.to_string())
            .env("CNI_CONTAINERID", &inv.container_id)
            .env("CNI_NETNS", &inv.netns)
            .env("CNI_IFNAME", &inv.ifname)
            .env("CNI_ARGS", &inv.args)
            .env("CNI_PATH", join_paths(&inv.path))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // A plugin that outlives its timeout is killed, not leaked.
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Write and read concurrently so a plugin that prints before it has
        // read all its input cannot deadlock us.
        let write = async move {
            let r = stdin.write_all(&stdin_bytes).await;
            drop(stdin);
            r
        };
        let run = async { tokio::join!(write, child.wait_with_output()) };
        let (written, output) =
            tokio::time::timeout(self.timeout, run)
                .await
                .map_err(|_| CniError::Timeout {
                    network: inv.network.clone(),
                    plugin: inv.plugin_type.clone(),
                    command: inv.command,
                    timeout: self.timeout,
                })?;
        let output = output.map_err(spawn_err)?;
        if output.status.success() {
            // A plugin that exits 0 without reading its config is broken, but
            // what it printed is what counts; only report a write failure
            // when the plugin also failed.
            return Ok(output.stdout);
        }
        if let Some(err) =
            parse_plugin_error(&inv.network, &inv.plugin_type, inv.command, &output.stdout)
        {
            return Err(err);
        }
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        if let Err(e) = written {
            stderr.push_str(&format!(" (writing its config failed: {e})"));
        }
        Err(CniError::PluginFailed {
            network: inv.network.clone(),
            plugin: inv.plugin_type.clone(),
            command: inv.command,
            status: output.status.to_string(),
            stderr,
        })
    }
}

/// Parses the spec's error object (`{"code": N, "msg": "...", "details": "..."}`).
pub fn parse_plugin_error(
    network: &str,
    plugin: &str,
    command: Command,
    stdout: &[u8],
) -> Option<CniError> {
    #[derive(Deserialize)]
    struct ErrorRepr {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    let e: ErrorRepr = serde_json::from_slice(stdout).ok()?;
    Some(CniError::Plugin {
        network: network.to_string(),
        plugin: plugin.to_string(),
        command,
        code: e.code,
        msg: e.msg,
        details: e.details,
    })
}

/// A plugin in the chain.
#[derive(Debug, Clone)]
struct PluginConf {
    plugin_type: String,
    conf: Map<String, Value>,
}

impl PluginConf {
    fn capability(&self, name: &str) -> bool {
        self.conf
            .get("capabilities")
            .and_then(|c| c.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// What [`CniNetwork::check`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// CHECK ran for every plugin except the listed (skipped) types.
    Checked { skipped: Vec<String> },
    /// CHECK was not run: the config is older than 0.4.0 or sets `disableCheck`.
    NotSupported { reason: String },
}

/// A loaded CNI network: its plugin chain and how to run it.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    name: String,
    cni_version: String,
    disable_check: bool,
    plugins: Vec<PluginConf>,
    source: PathBuf,
    bin_dirs: Vec<PathBuf>,
    exec: Arc<dyn PluginExec>,
    check_skip: BTreeSet<String>,
}

impl CniNetwork {
    /// Loads the first network config from `conf.conf_dir`; plugins are run
    /// from `conf.bin_dirs` with [`ProcessExec::default`].
    pub fn load(conf: &CniConfig) -> Result<CniNetwork, CniError> {
        let path = find_config(&conf.conf_dir)?;
        Self::from_file(&path, &conf.bin_dirs)
    }

    /// Loads one config file (`.conflist`, or a single plugin `.conf`/`.json`).
    pub fn from_file(path: &Path, bin_dirs: &[PathBuf]) -> Result<CniNetwork, CniError> {
        let bytes = std::fs::read(path).map_err(|source| CniError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|source| CniError::ParseConfig {
                path: path.to_path_buf(),
                source,
            })?;
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        Self::from_value(value, is_list, path, bin_dirs)
    }

    /// Builds a network from parsed JSON: a list (`plugins: [...]`) when
    /// `is_list`, else a single plugin config wrapped into a list. `source`
    /// is only used in messages.
    pub fn from_value(
        value: Value,
        is_list: bool,
        source: &Path,
        bin_dirs: &[PathBuf],
    ) -> Result<CniNetwork, CniError> {
        let invalid = |reason: String| CniError::InvalidConfig {
            path: source.to_path_buf(),
            reason,
        };
        let Value::Object(top) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        let str_field = |m: &Map<String, Value>, k: &str| -> Result<String, CniError> {
            match m.get(k) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(_) => Err(invalid(format!("{k:?} must be a non-empty string"))),
                None => Err(invalid(format!("{k:?} is missing"))),
            }
        };
        let name = str_field(&top, "name")?;
        let cni_version = str_field(&top, "cniVersion")?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(invalid(format!(
                "cniVersion {cni_version:?} not supported (supported: {SUPPORTED_VERSIONS:?})"
            )));
        }
        // The name becomes a directory name for host-local and a chain name
        // for iptables; the spec restricts it accordingly.
        if !name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(invalid(format!(
                "network name {name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
            )));
        }
        let disable_check = match top.get("disableCheck") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("\"disableCheck\" must be a boolean".into())),
        };
        let raw_plugins = if is_list {
            match top.get("plugins") {
                Some(Value::Array(a)) if !a.is_empty() => a.clone(),
                Some(Value::Array(_)) => return Err(invalid("\"plugins\" is empty".into())),
                _ => return Err(invalid("\"plugins\" must be a list".into())),
            }
        } else {
            vec![Value::Object(top.clone())]
        };
        let mut plugins = Vec::with_capacity(raw_plugins.len());
        for (i, p) in raw_plugins.into_iter().enumerate() {
            let Value::Object(conf) = p else {
                return Err(invalid(format!("plugin {i} is not an object")));
            };
            let plugin_type =
                str_field(&conf, "type").map_err(|e| invalid(format!("plugin {i}: {e}")))?;
            if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
                return Err(invalid(format!(
                    "plugin {i}: type {plugin_type:?} is not a plain binary name"
                )));
            }
            plugins.push(PluginConf { plugin_type, conf });
        }
        Ok(CniNetwork {
            name,
            cni_version,
            disable_check,
            plugins,
            source: source.to_path_buf(),
            bin_dirs: bin_dirs.to_vec(),
            exec: Arc::new(ProcessExec::default()),
            check_skip: DEFAULT_CHECK_SKIP.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Replaces the plugin runner (tests, or a different timeout).
    pub fn with_exec(mut self, exec: Arc<dyn PluginExec>) -> Self {
        self.exec = exec;
        self
    }

    /// Replaces the list of plugin types skipped by CHECK.
    pub fn with_check_skip<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.check_skip = types.into_iter().map(Into::into).collect();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cni_version(&self) -> &str {
        &self.cni_version
    }

    /// The file the network was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Plugin types in chain order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect()
    }

    /// The network as a normalised conflist (what [`Attachment`] records).
    pub fn to_conflist(&self) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), self.cni_version.clone().into());
        m.insert("name".into(), self.name.clone().into());
        if self.disable_check {
            m.insert("disableCheck".into(), true.into());
        }
        m.insert(
            "plugins".into(),
            Value::Array(
                self.plugins
                    .iter()
                    .map(|p| Value::Object(p.conf.clone()))
                    .collect(),
            ),
        );
        Value::Object(m)
    }

    /// Attaches the pod: ADD through the chain. On failure, everything the
    /// chain did so far is undone (DEL) before the error is returned.
    pub async fn add(&self, req: &CniRequest) -> Result<CniResult, CniError> {
        req.validate()?;
        let started = Instant::now();
        let netns = req.netns.display().to_string();
        let mut prev: Option<CniResult> = None;
        for (k, plugin) in self.plugins.iter().enumerate() {
            let step = match self
                .invoke(plugin, Command::Add, req, &netns, prev.as_ref())
                .await
            {
                Ok(out) => CniResult::from_json(&out).map_err(|e| CniError::InvalidResult {
                    network: self.name.clone(),
                    plugin: plugin.plugin_type.clone(),
                    reason: e.to_string(),
                }),
                Err(e) => Err(e),
            };
            match step {
                Ok(result) => prev = Some(result),
                Err(err) => {
                    tracing::warn!(
                        network = %self.name, plugin = %plugin.plugin_type, container_id = %req.container_id,
                        error = %err, "CNI ADD failed; rolling back"
                    );
                    // Plugin k may have done part of its work before failing.
                    for e in self
                        .del_chain(&self.plugins[..=k], req, prev.as_ref())
                        .await
                    {
                        tracing::warn!(network = %self.name, container_id = %req.container_id, error = %e, "CNI rollback DEL failed");
                    }
                    return Err(err);
                }
            }
        }
        let result = prev.expect("a network has at least one plugin");
        tracing::info!(
            network = %self.name, container_id = %req.container_id, ips = ?result.pod_ips(),
            elapsed_ms = started.elapsed().as_millis() as u64, "CNI ADD done"
        );
        Ok(result)
    }

    /// [`add`](Self::add), then records the attachment at `record`. If the
    /// record cannot be written the pod is detached again, so nothing exists
    /// that a restarted daemon would not know about.
    pub async fn add_recorded(
        &self,
        req: &CniRequest,
        record: &Path,
    ) -> Result<CniResult, CniError> {
        let result = self.add(req).await?;
        if let Err(e) = self.attachment(req, &result).save(record) {
            if let Err(del) = self.del(req, Some(&result)).await {
                tracing::warn!(network = %self.name, container_id = %req.container_id, error = %del, "CNI DEL after failed record write failed");
            }
            return Err(e);
        }
        Ok(result)
    }

    /// Detaches the pod: DEL through the chain in reverse. `prev` is the ADD
    /// result when known. Works when the namespace is gone, and when the pod
    /// was never (or only partly) attached.
    pub async fn del(&self, req: &CniRequest, prev: Option<&CniResult>) -> Result<(), CniError> {
        req.validate()?;
        let mut errors = self.del_chain(&self.plugins, req, prev).await;
        if errors.is_empty() {
            tracing::info!(network = %self.name, container_id = %req.container_id, "CNI DEL done");
            return Ok(());
        }
        for e in &errors[1..] {
            tracing::warn!(network = %self.name, container_id = %req.container_id, error = %e, "CNI DEL failed");
        }
        Err(errors.swap_remove(0))
    }

    /// Checks the attachment: CHECK through the chain with the ADD result.
    pub async fn check(
        &self,
        req: &CniRequest,
        prev: &CniResult,
    ) -> Result<CheckOutcome, CniError> {
        req.validate()?;
        if self.disable_check {
            return Ok(CheckOutcome::NotSupported {
                reason: "disableCheck is set".into(),
            });
        }
        if matches!(self.cni_version.as_str(), "0.3.0" | "0.3.1") {
            return Ok(CheckOutcome::NotSupported {
                reason: format!("cniVersion {} has no CHECK", self.cni_version),
            });
        }
        let netns = req.netns.display().to_string();
        let mut skipped = Vec::new();
        for plugin in &self.plugins {
            if self.check_skip.contains(&plugin.plugin_type) {
                skipped.push(plugin.plugin_type.clone());
                continue;
            }
            self.invoke(plugin, Command::Check, req, &netns, Some(prev))
                .await?;
        }
        Ok(CheckOutcome::Checked { skipped })
    }

    /// The record [`Attachment::save`] writes for this network and pod.
    pub fn attachment(&self, req: &CniRequest, result: &CniResult) -> Attachment {
        Attachment {
            version: ATTACHMENT_VERSION,
            network: self.to_conflist(),
            request: req.clone(),
            result: result.clone(),
        }
    }

    /// Rebuilds the network recorded in `att` (for DEL after a restart).
    pub fn from_attachment(att: &Attachment, bin_dirs: &[PathBuf]) -> Result<CniNetwork, CniError> {
        Self::from_value(
            att.network.clone(),
            true,
            Path::new("<attachment record>"),
            bin_dirs,
        )
    }

    /// Runs DEL for `plugins` in reverse order, continuing past failures.
    async fn del_chain(
        &self,
        plugins: &[PluginConf],
        req: &CniRequest,
        prev: Option<&CniResult>,
    ) -> Vec<CniError> {
        // DEL must work after the namespace is gone; an empty CNI_NETNS tells
        // plugins to skip the in-namespace part.
        let netns = if super::netns::is_netns(&req.netns) {
            req.netns.display().to_string()
        } else {
            String::new()
        };
        let mut errors = Vec::new();
        for plugin in plugins.iter().rev() {
            if let Err(e) = self.invoke(plugin, Command::Del, req, &netns, prev).await {
                errors.push(e);
            }
        }
        errors
    }

    async fn invoke(
        &self,
        plugin: &PluginConf,
        command: Command,
        req: &CniRequest,
        netns: &str,
        prev: Option<&CniResult>,
    ) -> Result<Vec<u8>, CniError> {
        let inv = Invocation {
            network: self.name.clone(),
            plugin_type: plugin.plugin_type.clone(),
            command,
            container_id: req.container_id.clone(),
            netns: netns.to_string(),
            ifname: req.ifname.clone(),
            args: req.cni_args(),
            path: self.bin_dirs.clone(),
            stdin: self.plugin_stdin(plugin, req, prev),
        };
        let started = Instant::now();
        let out = self.exec.exec(&inv).await;
        tracing::debug!(
            network = %self.name, plugin = %plugin.plugin_type, %command, container_id = %req.container_id,
            ok = out.is_ok(), elapsed_ms = started.elapsed().as_millis() as u64, "CNI plugin ran"
        );
        out
    }

    /// The config a plugin reads on stdin.
    fn plugin_stdin(
        &self,
        plugin: &PluginConf,
        req: &CniRequest,
        prev: Option<&CniResult>,
    ) -> Value {
        let mut conf = plugin.conf.clone();
        conf.insert("name".into(), self.name.clone().into());
        conf.insert("cniVersion".into(), self.cni_version.clone().into());
        // Runtime config only for capabilities the plugin declares, as the
        // conventions document requires.
        if plugin.capability("portMappings") {
            let mut rc = match conf.remove("runtimeConfig") {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            rc.insert(
                "portMappings".into(),
                serde_json::to_value(&req.port_mappings).expect("plain struct"),
            );
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        match prev {
            Some(p) => {
                conf.insert("prevResult".into(), p.raw.clone());
            }
            None => {
                conf.remove("prevResult");
            }
        }
        Value::Object(conf)
    }
}

/// The first config file in `dir`, in lexical order of file names.
pub fn find_config(dir: &Path) -> Result<PathBuf, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CniError::NoConfig {
                dir: dir.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(CniError::Io {
                op: "read directory",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files.into_iter().next().ok_or_else(|| CniError::NoConfig {
        dir: dir.to_path_buf(),
    })
}

const ATTACHMENT_VERSION: u32 = 1;

/// What was attached: the network config used, the request and the ADD
/// result. Saved next to the sandbox's state so DEL after a daemon restart
/// uses the same configuration and `prevResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub version: u32,
    /// Normalised conflist ([`CniNetwork::to_conflist`]).
    pub network: Value,
    pub request: CniRequest,
    pub result: CniResult,
}

impl Attachment {
    /// Writes the record atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), CniError> {
        let io = |op, source| CniError::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            crate::perms::ensure_private_dir(dir).map_err(|e| io("create directory for", e))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let bytes = serde_json::to_vec_pretty(self).expect("plain data serialises");
        // The result and the request (pod names, addresses) are root's only.
        crate::perms::create_private_file(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
            .map_err(|e| io("write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("rename into place", e)
        })
    }

    /// Reads a record; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Attachment>, CniError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CniError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let att: Attachment = serde_json::from_slice(&bytes).map_err(|e| CniError::Attachment {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if att.version != ATTACHMENT_VERSION {
            return Err(CniError::Attachment {
                path: path.to_path_buf(),
                reason: format!("unknown version {}", att.version),
            });
        }
        Ok(Some(att))
    }

    /// Deletes a record; missing is fine.
    pub fn remove(path: &Path) -> Result<(), CniError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Io {
                op: "remove",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Detaches what the record at `path` describes (DEL with the recorded
    /// config, request and result) and deletes the record. Returns `false`
    /// when there was no record. `exec` overrides the plugin runner.
    pub async fn teardown(
        path: &Path,
        bin_dirs: &[PathBuf],
        exec: Option<Arc<dyn PluginExec>>,
    ) -> Result<bool, CniError> {
        let Some(att) = Self::load(path)? else {
            return Ok(false);
        };
        let mut net = CniNetwork::from_attachment(&att, bin_dirs)?;
        if let Some(exec) = exec {
            net = net.with_exec(exec);
        }
        net.del(&att.request, Some(&att.result)).await?;
        Self::remove(path)?;
        Ok(true)
    }
}

#[cfg(test)]
#[path = "cni_tests.rs"]
mod tests;
