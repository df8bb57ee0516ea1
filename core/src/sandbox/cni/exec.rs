//! Running one plugin: the invocation, its environment and timeout, and
//! the plugin's error format.

use super::*;

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

pub(super) fn join_paths(dirs: &[PathBuf]) -> String {
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
