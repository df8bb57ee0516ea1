//! What a pod's network was set up with, recorded for its teardown.

use super::*;

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
        let io = |op, source| PathIoError::of::<CniError>(op, path)(source);
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
            Err(e) => return Err(PathIoError::of("read", path)(e)),
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
            Err(e) => Err(PathIoError::of("remove", path)(e)),
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
