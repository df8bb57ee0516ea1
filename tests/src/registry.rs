//! A throw-away `docker-registry` (distribution 2.x) on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where Debian's `docker-registry` package installs the binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry with its own temporary storage; killed on drop.
pub struct Registry {
    child: Child,
    addr: String,
    storage: PathBuf,
    log: PathBuf,
    // Keeps the storage and config alive for the registry's lifetime.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("storage", &self.storage)
            .finish()
    }
}

impl Registry {
    /// Starts a registry on a free port and waits until `GET /v2/` answers.
    pub async fn start() -> Result<Self> {
        // Picking a free port and binding it later is racy; retry a few times
        // in case another process grabbed the port in between.
        let mut last_err = None;
        for _ in 0..5 {
            match Self::try_start().await {
                Ok(registry) => return Ok(registry),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    async fn try_start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("crius-registry-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                storage.display()
            ),
        )?;
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {REGISTRY_BIN}"))?;
        let mut registry = Registry {
            child,
            addr,
            storage,
            log,
            _dir: dir,
        };
        registry.wait_ready().await?;
        Ok(registry)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v2/", self.addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "docker-registry exited with {status} before serving: {}",
                    self.log_text()
                );
            }
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer {url} within 10 s: {}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:PORT`, the registry part of image names.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The registry's filesystem storage root.
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// Where the registry keeps the bytes of blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("not a sha256 digest: {digest}"))?;
        Ok(self
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"))
    }

    /// The registry's own log output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `127.0.0.1:PORT/<name>:<tag>`.
    pub fn image_ref(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Overwrites the stored blob `digest` with different bytes of the same
/// length, so the registry serves content that no longer matches its digest.
pub fn corrupt_blob(registry: &Registry, digest: &str) -> Result<()> {
    let path = registry.blob_path(digest)?;
    let mut bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    for b in &mut bytes {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
