//! The crun handler: a configuration of the shared OCI-runtime handler
//! ([`crius_handler_runc::OciHandler`]) with crun's binary and defaults.
//! Nothing here re-implements runtime logic.

use std::path::PathBuf;

use crius_handler_runc::{DEFAULT_MONITOR_PATH, OciHandler, OciHandlerConfig, runc_config};

/// Default crun binary (Debian's package).
pub const DEFAULT_RUNTIME_PATH: &str = "/usr/bin/crun";
/// Default state root crius gives crun; separate from crun's own default
/// (`/run/crun`) so crius never touches containers it did not make.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/crius/crun";

/// The crun handler is the OCI handler configured for crun.
pub type CrunHandler = OciHandler;

/// A crun handler configuration with the given paths.
pub fn config(
    name: impl Into<String>,
    runtime_path: impl Into<PathBuf>,
    runtime_root: impl Into<PathBuf>,
    monitor_path: impl Into<PathBuf>,
) -> OciHandlerConfig {
    // The same fields as runc's, with no feature overrides: crun 1.8.1 has
    // no `features` subcommand; crius then reports the features as
    // unsupported rather than guessing from the version. Operators who
    // know better set overrides in the config.
    runc_config(name, runtime_path, runtime_root, monitor_path)
}

/// A crun handler configuration with the Debian default paths.
pub fn default_config(name: impl Into<String>) -> OciHandlerConfig {
    config(
        name,
        DEFAULT_RUNTIME_PATH,
        DEFAULT_RUNTIME_ROOT,
        DEFAULT_MONITOR_PATH,
    )
}

/// Builds a crun handler (probes crun's features; never fails, see
/// [`OciHandler::new`]).
pub async fn new_handler(config: OciHandlerConfig) -> CrunHandler {
    OciHandler::new(config).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_handler_runc::FeatureOverrides;
    use crius_shim_api::RuntimeHandler;
    use std::path::Path;

    #[test]
    fn defaults_point_at_crun() {
        let c = default_config("crun");
        assert_eq!(c.name, "crun");
        assert_eq!(c.runtime_path, Path::new("/usr/bin/crun"));
        assert_eq!(c.runtime_root, Path::new(DEFAULT_RUNTIME_ROOT));
        assert_eq!(c.monitor_path, Path::new("/usr/bin/conmon"));
        assert_eq!(c.feature_overrides, FeatureOverrides::default());
    }

    #[tokio::test]
    async fn real_crun_is_ready() {
        if !crius_testkit::require_tools(&[DEFAULT_RUNTIME_PATH, DEFAULT_MONITOR_PATH]) {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let h = new_handler(config(
            "crun",
            DEFAULT_RUNTIME_PATH,
            root.path(),
            DEFAULT_MONITOR_PATH,
        ))
        .await;
        assert_eq!(h.name(), "crun");
        h.check_ready().await.unwrap();
    }
}
