//! The real `crius` daemon on a temporary socket, root and state dir.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crius_proto::cri::VersionRequest;
use crius_proto::cri::image_service_client::ImageServiceClient;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::cri::{self, CriClients};
use crate::registry::Registry;

/// How long a daemon gets to start serving, and to exit after SIGTERM.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon binary: `$CRIUS_BIN`, else `<target dir>/debug/crius` where the
/// target dir is `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn crius_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CRIUS_BIN") {
        return PathBuf::from(bin);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                crate::workspace_root().join(dir)
            }
        }
        None => crate::workspace_root().join("target"),
    };
    target.join("debug").join("crius")
}

/// Configures a [`Daemon`] before starting it.
#[derive(Debug, Clone)]
pub struct DaemonBuilder {
    registries: Option<String>,
    runtime_handlers: Option<String>,
    extra: String,
    /// `None`: no `--log-level`, the config's `log_level` applies.
    log_level: Option<String>,
    /// containers-registries.conf file and drop-in dir the daemon reads;
    /// `None`: none (the host's /etc/containers files stay out of tests).
    registries_conf: Option<(PathBuf, PathBuf)>,
    /// Signature policy, per-namespace policy dir and registries.d;
    /// `None`: none (the host's policy stays out of tests).
    signature_trust: Option<(PathBuf, PathBuf, PathBuf)>,
    /// A command the daemon is run under (`nsenter … --`), if any.
    command_prefix: Vec<String>,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        Self {
            registries: None,
            registries_conf: None,
            signature_trust: None,
            runtime_handlers: None,
            extra: String::new(),
            command_prefix: Vec::new(),
            log_level: Some("info,crius=debug,crius_core=debug".into()),
        }
    }
}

impl DaemonBuilder {
    /// Marks `registry` as a plain-HTTP (insecure) registry in the config.
    pub fn registry(mut self, registry: &Registry) -> Self {
        self.registries = Some(format!(
            "registries:\n  - prefix: \"{}\"\n    insecure: true\n",
            registry.addr()
        ));
        self
    }

    /// Replaces the whole `registries:` block (the text must start with `registries:`).
    pub fn registries_yaml(mut self, block: &str) -> Self {
        self.registries = Some(ensure_newline(block));
        self
    }

    /// Replaces the `default_runtime_handler:` + `runtime_handlers:` block.
    pub fn runtime_handlers_yaml(mut self, block: &str) -> Self {
        self.runtime_handlers = Some(ensure_newline(block));
        self
    }

    /// Reads `file` and the `*.conf` files of `dir` as containers-registries.conf.
    pub fn registries_conf(mut self, file: &Path, dir: &Path) -> Self {
        self.registries_conf = Some((file.to_path_buf(), dir.to_path_buf()));
        self
    }

    /// Checks pulls against `policy` (containers-policy.json), the
    /// `<namespace>.json` files of `policy_dir` and the lookaside stores of
    /// `registries_d`.
    pub fn signature_trust(
        mut self,
        policy: &Path,
        policy_dir: &Path,
        registries_d: &Path,
    ) -> Self {
        self.signature_trust = Some((
            policy.to_path_buf(),
            policy_dir.to_path_buf(),
            registries_d.to_path_buf(),
        ));
        self
    }

    /// Appends top-level YAML keys to the generated config.
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra.push_str(&ensure_newline(yaml));
        self
    }

    /// The `--log-level` filter (default: info, debug for crius itself).
    /// Runs the daemon as the last argument of `prefix` (e.g. `nsenter -t
    /// <pid> -p -m --` to run it beside a private systemd); the daemon's
    /// `pid()` is then the prefix command's.
    pub fn command_prefix(mut self, prefix: Vec<String>) -> Self {
        self.command_prefix = prefix;
        self
    }

    pub fn log_level(mut self, filter: &str) -> Self {
        self.log_level = Some(filter.to_string());
        self
    }

    /// No `--log-level`: the daemon logs at the config's `log_level`.
    pub fn log_level_from_config(mut self) -> Self {
        self.log_level = None;
        self
    }

    /// Writes the config, starts the daemon and waits until it answers `Version`.
    pub async fn start(self) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("crius-test-").tempdir()?;
        // Passable like /run above a real state dir: pods in user
        // namespaces reach their files under it as other users.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let base = dir.path().to_path_buf();
        let socket = base.join("crius.sock");
        let root = base.join("root");
        let state_dir = base.join("state");
        let handlers = self.runtime_handlers.clone().unwrap_or_else(|| {
            let mut block = String::from("default_runtime_handler: runc\nruntime_handlers:\n");
            for (name, path) in [("runc", "/usr/sbin/runc"), ("crun", "/usr/bin/crun")] {
                block.push_str(&format!(
                    "  {name}:\n    kind: oci\n    runtime_path: {path}\n    runtime_root: \"{}\"\n    monitor_path: /usr/bin/conmon\n",
                    state_dir.join(name).display()
                ));
            }
            block
        });
        let config = format!(
            "# Generated by crius-tests.\nlisten: \"{}\"\nroot: \"{}\"\nstate_dir: \"{}\"\n{handlers}{}{}",
            socket.display(),
            root.display(),
            state_dir.display(),
            self.registries.clone().unwrap_or_default(),
            self.extra,
        );
        let config_path = base.join("crius.yaml");
        std::fs::write(&config_path, &config)?;
        // A drop-in, so it merges with any `image:` keys of the tests' own.
        let (conf, conf_dir) = self.registries_conf.clone().unwrap_or_default();
        let (policy, policy_dir, registries_d) = self.signature_trust.clone().unwrap_or_default();
        let drop_ins = base.join("crius.yaml.d");
        std::fs::create_dir_all(&drop_ins)?;
        std::fs::write(
            drop_ins.join("00-registries-conf.yaml"),
            format!(
                "image:\n  registries_conf: \"{}\"\n  registries_conf_dir: \"{}\"\n  \
                 signature_policy: \"{}\"\n  signature_policy_dir: \"{}\"\n  registries_d: \"{}\"\n",
                conf.display(),
                conf_dir.display(),
                policy.display(),
                policy_dir.display(),
                registries_d.display()
            ),
        )?;
        let bin = crius_bin();
        if !bin.exists() {
            bail!(
                "the crius binary {} does not exist: build it first (`cargo build -p crius-core`) or set CRIUS_BIN",
                bin.display()
            );
        }
        let mut daemon = Daemon {
            stderr_path: base.join("crius.stderr"),
            dir,
            bin,
            config_path,
            socket,
            root,
            state_dir,
            log_level: self.log_level,
            command_prefix: self.command_prefix,
            child: None,
            clients: None,
        };
        daemon.spawn().await?;
        Ok(daemon)
    }
}

fn ensure_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// A running `crius`; stopped (SIGTERM, then SIGKILL) on drop. When the test
/// is panicking, the daemon's stderr is printed so the failure has context.
pub struct Daemon {
    dir: tempfile::TempDir,
    bin: PathBuf,
    config_path: PathBuf,
    socket: PathBuf,
    root: PathBuf,
    state_dir: PathBuf,
    stderr_path: PathBuf,
    log_level: Option<String>,
    command_prefix: Vec<String>,
    child: Option<Child>,
    clients: Option<CriClients>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("dir", &self.dir.path())
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// A daemon with the default config plus `extra_yaml` (top-level keys).
    pub async fn start(extra_yaml: &str) -> Result<Self> {
        DaemonBuilder::default()
            .extra_yaml(extra_yaml)
            .start()
            .await
    }

    /// A daemon that may pull from `registry` over plain HTTP.
    pub async fn with_registry(registry: &Registry) -> Result<Self> {
        DaemonBuilder::default().registry(registry).start().await
    }

    async fn spawn(&mut self) -> Result<()> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)?;
        let mut command = match self.command_prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        command.arg("--config").arg(&self.config_path);
        if let Some(filter) = &self.log_level {
            command.arg("--log-level").arg(filter);
        }
        let child = command
            // The log goes to a file that people read: no colour escapes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        self.clients = Some(self.wait_ready().await?);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<CriClients> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = String::from("socket not created");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "crius exited with {status} before serving; its output:\n{}",
                    self.stderr_text()
                );
            }
            if self.socket.exists() {
                match self.try_version().await {
                    Ok(clients) => return Ok(clients),
                    Err(err) => last_err = format!("{err:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "crius did not answer Version on {} within {START_TIMEOUT:?} ({last_err}); its output:\n{}",
                    self.socket.display(),
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_version(&self) -> Result<CriClients> {
        let mut clients = cri::connect(&self.socket).await?;
        tokio::time::timeout(
            Duration::from_secs(2),
            clients.runtime.version(VersionRequest::default()),
        )
        .await
        .context("Version timed out")??;
        Ok(clients)
    }

    /// Both clients (cheap clones sharing one connection).
    pub fn clients(&self) -> CriClients {
        self.clients.clone().expect("daemon is running")
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.clients().runtime
    }

    pub fn image(&self) -> ImageServiceClient<Channel> {
        self.clients().image
    }

    /// A fresh connection (e.g. for concurrent calls on separate channels).
    pub async fn connect(&self) -> Result<CriClients> {
        cri::connect(&self.socket).await
    }

    /// The temporary directory holding config, socket, root and state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config's `root` (image store, pod and container records).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Where the daemon keeps its pod and container records, bundles and
    /// writable layers (`<root>/pods`, persistent).
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon wrote to stdout/stderr so far (all runs).
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Crash: SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        self.clients = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL. Returns how it exited
    /// (`None` if it was not running or had to be killed).
    // Also called from `Drop`, which cannot await. Waiting here in 20 ms
    // steps for the daemon to exit holds up only the test that asked for it.
    #[allow(clippy::disallowed_methods)]
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.clients = None;
        let mut child = self.child.take()?;
        let pid = Pid::from_raw(i32::try_from(child.id()).ok()?);
        if kill(pid, Signal::SIGTERM).is_err() {
            return child.wait().ok();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        eprintln!("crius did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts the daemon again with the same config, root and state (after
    /// [`kill9`](Self::kill9) or [`terminate`](Self::terminate); a running
    /// daemon is terminated first).
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.terminate();
        }
        self.spawn().await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            eprintln!(
                "---- crius output ({}) ----\n{}---- end of crius output ----",
                self.stderr_path.display(),
                self.stderr_text()
            );
        }
    }
}
