//! The part of the configuration pulls run with, swapped as a whole when
//! SIGHUP reloads the configuration (`ImageManager::reconfigure`).

use std::collections::BTreeMap;

use crate::config::registries_conf::is_qualified;
use crate::config::{Config, RegistryConfig};

/// What pulls read from the configuration (`image.*`, `registries`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PullSettings {
    pub(super) default_registry: String,
    pub(super) registries: Vec<RegistryConfig>,
    pub(super) max_concurrent_downloads: usize,
    /// `image.max_layer_size`, `image.max_image_size`.
    pub(super) max_layer_size: u64,
    pub(super) max_image_size: u64,
    /// `image.pull_progress_timeout_seconds` (`None` when 0).
    pub(super) pull_progress_timeout: Option<std::time::Duration>,
    /// `image.pinned_images`.
    pub(super) pinned_images: Vec<String>,
    /// registries.conf's `unqualified-search-registries` and `[aliases]`.
    pub(super) search: Vec<String>,
    pub(super) aliases: BTreeMap<String, String>,
    /// `image.signature_policy`, `signature_policy_dir`, `registries_d`.
    pub(super) trust: super::trust::TrustSettings,
}

impl PullSettings {
    pub(super) fn from_config(config: &Config) -> Self {
        Self {
            default_registry: config.image.default_registry.clone(),
            registries: config.registries.clone(),
            max_concurrent_downloads: config.image.max_concurrent_downloads.max(1),
            max_layer_size: config.image.max_layer_size,
            max_image_size: config.image.max_image_size,
            pull_progress_timeout: match config.image.pull_progress_timeout_seconds {
                0 => None,
                s => Some(std::time::Duration::from_secs(s)),
            },
            pinned_images: config.image.pinned_images.clone(),
            search: config.image.unqualified_search_registries.clone(),
            aliases: config.image.short_name_aliases.clone(),
            trust: super::trust::TrustSettings {
                policy: config.image.signature_policy.clone(),
                policy_dir: config.image.signature_policy_dir.clone(),
                registries_d: config.image.registries_d.clone(),
            },
        }
    }

    /// What a name the CRI gave stands for, as (name, registry for a short
    /// one) pairs to try in order: a qualified name is itself; a short
    /// name with an alias is the alias (the input's tag or digest kept);
    /// any other short name is looked for in each search registry, else in
    /// `default_registry`.
    pub(super) fn candidates(&self, image: &str) -> Vec<(String, String)> {
        if is_qualified(image) {
            return vec![(image.to_string(), self.default_registry.clone())];
        }
        let (repository, suffix) = split_suffix(image);
        if let Some(full) = self.aliases.get(repository) {
            return vec![(format!("{full}{suffix}"), self.default_registry.clone())];
        }
        if self.search.is_empty() {
            return vec![(image.to_string(), self.default_registry.clone())];
        }
        self.search
            .iter()
            .map(|registry| (image.to_string(), registry.clone()))
            .collect()
    }
}

/// `name[:tag][@digest]` as (`name`, the rest).
fn split_suffix(image: &str) -> (&str, &str) {
    let end = image.find('@').unwrap_or(image.len());
    let last_slash = image[..end].rfind('/').map_or(0, |i| i + 1);
    let end = image[last_slash..end]
        .find(':')
        .map_or(end, |i| last_slash + i);
    image.split_at(end)
}

/// Whether `name` matches a `pinned_images` pattern: exact, `prefix*`, or
/// `*word*`.
pub(super) fn pin_matches(pattern: &str, name: &str) -> bool {
    if let Some(word) = pattern.strip_prefix('*').and_then(|p| p.strip_suffix('*')) {
        return !word.is_empty() && name.contains(word);
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_names_go_through_aliases_then_the_search_list() {
        let mut config = crate::config::Config::default();
        config.image.unqualified_search_registries = vec!["a.example".into(), "b.example".into()];
        config
            .image
            .short_name_aliases
            .insert("app".into(), "registry.example/team/app".into());
        let s = super::PullSettings::from_config(&config);
        let names = |image: &str| s.candidates(image);
        assert_eq!(
            names("app:1.2"),
            [(
                "registry.example/team/app:1.2".to_string(),
                "docker.io".to_string()
            )]
        );
        assert_eq!(
            names("tool@sha256:abc"),
            [
                ("tool@sha256:abc".to_string(), "a.example".to_string()),
                ("tool@sha256:abc".to_string(), "b.example".to_string())
            ]
        );
        assert_eq!(
            names("localhost:5000/app").len(),
            1,
            "qualified: itself only"
        );
        assert_eq!(super::split_suffix("org/app:1"), ("org/app", ":1"));
        assert_eq!(super::split_suffix("app"), ("app", ""));
    }

    #[test]
    fn pin_patterns_are_exact_prefix_or_keyword() {
        use super::pin_matches;
        let name = "registry.k8s.io/pause:3.10";
        assert!(pin_matches("registry.k8s.io/pause:3.10", name));
        assert!(!pin_matches("registry.k8s.io/pause", name));
        assert!(pin_matches("registry.k8s.io/*", name));
        assert!(pin_matches("*pause*", name));
        assert!(!pin_matches("*busybox*", name));
        assert!(!pin_matches("**", name));
    }

    use super::*;

    #[test]
    fn zero_means_no_stall_timeout_and_downloads_are_at_least_one() {
        let mut config = Config::default();
        assert_eq!(
            PullSettings::from_config(&config).pull_progress_timeout,
            Some(std::time::Duration::from_secs(60))
        );
        config.image.pull_progress_timeout_seconds = 0;
        config.image.max_concurrent_downloads = 0;
        let settings = PullSettings::from_config(&config);
        assert_eq!(settings.pull_progress_timeout, None);
        assert_eq!(settings.max_concurrent_downloads, 1);
    }
}
