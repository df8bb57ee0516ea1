//! crictl's pod and container config files: a `PodSandboxConfig` or
//! `ContainerConfig` as JSON or YAML with the CRI's proto field names
//! (`log_directory`, `namespace_options`, …; lowerCamelCase is read too).
//! Fields this CRI version does not know are skipped, as crictl does.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// Reads `path` as JSON (a `.json` file, or text that starts with `{`) or
/// else YAML.
pub async fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    parse(path, &text)
}

fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if json {
        serde_json::from_str(text)
            .with_context(|| format!("{} is not a valid config", path.display()))
    } else {
        serde_saphyr::from_str(text)
            .with_context(|| format!("{} is not a valid config", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri;

    fn namespaces(linux: Option<cri::LinuxContainerConfig>) -> cri::NamespaceOption {
        linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap()
    }

    #[test]
    fn crictl_pod_config_json_loads() {
        let text = r#"{
            "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1, "uid": "hdishd83"},
            "log_directory": "/tmp",
            "linux": {"security_context": {"namespace_options": {"network": 2}}},
            "some_future_field": true
        }"#;
        let config: cri::PodSandboxConfig = parse(Path::new("pod.json"), text).unwrap();
        let meta = config.metadata.unwrap();
        assert_eq!((meta.name.as_str(), meta.attempt), ("nginx-sandbox", 1));
        assert_eq!(config.log_directory, "/tmp");
        let ns = config
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
    }

    #[test]
    fn crictl_container_config_yaml_loads_with_enum_names() {
        let text = "metadata:\n  name: busybox\nimage:\n  image: busybox:latest\ncommand: [top]\nlog_path: busybox.0.log\nlinux:\n  security_context:\n    namespace_options:\n      pid: CONTAINER\n";
        let config: cri::ContainerConfig = parse(Path::new("ctr.yaml"), text).unwrap();
        assert_eq!(config.metadata.unwrap().name, "busybox");
        assert_eq!(config.image.unwrap().image, "busybox:latest");
        assert_eq!(config.command, ["top"]);
        let ns = namespaces(config.linux);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
    }

    #[test]
    fn a_config_of_the_wrong_shape_is_refused_with_the_file_named() {
        let err = parse::<cri::PodSandboxConfig>(Path::new("pod.json"), r#"{"metadata": 3}"#)
            .unwrap_err();
        assert!(format!("{err:#}").contains("pod.json"), "{err:#}");
    }
}
