//! Parsing of the OCI runtime-spec "features" document (`<runtime> features`).
//!
//! Only the fields crius reports are read, and every field is optional: the
//! document grew over runtime versions, and a field a runtime does not print
//! means it does not advertise the capability.

use crius_shim_api::HandlerFeatures;
use serde::Deserialize;

/// The mount option that asks for a recursive read-only bind mount.
const RRO_MOUNT_OPTION: &str = "rro";

#[derive(Debug, Default, Deserialize)]
struct FeaturesDocument {
    #[serde(rename = "mountOptions", default)]
    mount_options: Option<Vec<String>>,
    #[serde(default)]
    linux: Option<LinuxFeatures>,
}

#[derive(Debug, Default, Deserialize)]
struct LinuxFeatures {
    #[serde(rename = "mountExtensions", default)]
    mount_extensions: Option<MountExtensions>,
}

#[derive(Debug, Default, Deserialize)]
struct MountExtensions {
    #[serde(default)]
    idmap: Option<IdMapFeature>,
}

#[derive(Debug, Default, Deserialize)]
struct IdMapFeature {
    #[serde(default)]
    enabled: Option<bool>,
}

/// The features document could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("runtime features output is not a valid OCI features document: {0}")]
pub struct FeaturesParseError(#[from] serde_json::Error);

/// Reads the capabilities crius reports from a runtime's `features` output.
///
/// * `mountOptions` containing `rro` => recursive read-only mounts;
/// * `linux.mountExtensions.idmap.enabled == true` => user namespaces (pods in
///   a user namespace need id-mapped mounts of their volumes).
pub fn parse_features(json: &[u8]) -> Result<HandlerFeatures, FeaturesParseError> {
    let doc: FeaturesDocument = serde_json::from_slice(json)?;
    let recursive_read_only_mounts = doc
        .mount_options
        .as_deref()
        .is_some_and(|opts| opts.iter().any(|o| o == RRO_MOUNT_OPTION));
    let user_namespaces = doc
        .linux
        .and_then(|l| l.mount_extensions)
        .and_then(|m| m.idmap)
        .and_then(|i| i.enabled)
        .unwrap_or(false);
    Ok(HandlerFeatures {
        recursive_read_only_mounts,
        user_namespaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rro_and_idmap_enabled() {
        let json = br#"{"ociVersionMin":"1.0.0","mountOptions":["bind","rro","ro"],
            "linux":{"mountExtensions":{"idmap":{"enabled":true}}}}"#;
        let f = parse_features(json).unwrap();
        assert!(f.recursive_read_only_mounts);
        assert!(f.user_namespaces);
    }

    #[test]
    fn rro_absent_idmap_disabled() {
        let json = br#"{"mountOptions":["bind","rbind","ro"],
            "linux":{"mountExtensions":{"idmap":{"enabled":false}}}}"#;
        let f = parse_features(json).unwrap();
        assert!(!f.recursive_read_only_mounts);
        assert!(!f.user_namespaces);
    }

    #[test]
    fn idmap_absent_like_runc_1_1() {
        // Shape of runc 1.1.5's output: no mountExtensions at all.
        let json = br#"{"ociVersionMin":"1.0.0","ociVersionMax":"1.0.2-dev",
            "mountOptions":["rro","rrw"],"linux":{"namespaces":["user"],
            "cgroup":{"v1":true,"v2":true}},"annotations":{}}"#;
        let f = parse_features(json).unwrap();
        assert!(f.recursive_read_only_mounts);
        assert!(!f.user_namespaces);
    }

    #[test]
    fn idmap_without_enabled_field_is_false() {
        let json = br#"{"linux":{"mountExtensions":{"idmap":{}}}}"#;
        assert_eq!(parse_features(json).unwrap(), HandlerFeatures::default());
    }

    #[test]
    fn empty_document_reports_nothing() {
        assert_eq!(parse_features(b"{}").unwrap(), HandlerFeatures::default());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_features(b"unknown command features").is_err());
    }
}
