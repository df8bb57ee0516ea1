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
use crate::path_io::PathIoError;

mod attachment;
mod exec;
mod result;
#[cfg(test)]
mod tests;

pub use attachment::Attachment;
pub use exec::*;
pub use result::*;

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
    #[error(transparent)]
    Io(#[from] PathIoError),
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
        let bytes = std::fs::read(path).map_err(PathIoError::of::<CniError>("read", path))?;
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

    /// Where the chain's `host-local` IPAM keeps this network's leases
    /// (`<dataDir>/<network name>`, `dataDir` defaulting to
    /// `/var/lib/cni/networks`).
    pub fn host_local_lease_dirs(&self) -> Vec<PathBuf> {
        self.plugins
            .iter()
            .filter_map(|p| p.conf.get("ipam"))
            .filter(|ipam| ipam.get("type").and_then(Value::as_str) == Some("host-local"))
            .map(|ipam| {
                let data_dir = ipam
                    .get("dataDir")
                    .and_then(Value::as_str)
                    .unwrap_or("/var/lib/cni/networks");
                Path::new(data_dir).join(&self.name)
            })
            .collect()
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
        Err(e) => return Err(PathIoError::of("read directory", dir)(e)),
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
