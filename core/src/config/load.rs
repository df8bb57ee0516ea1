//! Reading the config file and its drop-ins. (Being written: see issue 2.)

use std::path::Path;

use super::Config;

/// A configuration that cannot be used, with the file and line at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Loads `path` and the drop-ins in `<path>.d/*.yaml`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    serde_saphyr::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
