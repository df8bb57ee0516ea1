//! containers-registries.conf(5), version 2, read beside crius's own
//! `registries`, so that a node set up for CRI-O or podman pulls the same
//! way: `[[registry]]` tables (`prefix`, `location`, `insecure`, `blocked`,
//! `mirror` with `location`/`insecure`, `mirror-by-digest-only`),
//! `unqualified-search-registries` and `[aliases]` (short names).
//!
//! Files: `image.registries_conf`, then the `*.conf` files of
//! `image.registries_conf_dir` in name order (CRI-O's and podman's order;
//! `shortnames.conf` usually lives there). A later file's `[[registry]]`
//! with the same prefix replaces an earlier one, a later
//! `unqualified-search-registries` replaces the list, aliases merge (later
//! wins).
//!
//! Precedence with crius's own configuration: an entry of `registries`
//! wins over a registries.conf entry with the same prefix; registries.conf
//! entries for other prefixes are added. The search list and aliases come
//! only from registries.conf; without a search list, short names use
//! `image.default_registry`. Keys crius does not act on (`short-name-mode`,
//! `credential-helpers`, `pull-from-mirror`, …) are ignored; the version 1
//! format (`[registries.search]`) is refused with a clear error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, MirrorConfig, RegistryConfig};

/// What the files said, merged.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RegistriesConf {
    pub registries: Vec<RegistryConfig>,
    pub search: Option<Vec<String>>,
    pub aliases: BTreeMap<String, String>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    registry: Vec<FileRegistry>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    /// Version 1's tables; only detected, to refuse them by name.
    registries: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileRegistry {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<FileMirror>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
}

/// Reads `main` (if it exists) and the `*.conf` drop-ins of `dir` (if it
/// exists). An empty `main` path reads nothing. `Err` names the file.
pub fn read(main: &Path, dir: &Path) -> Result<RegistriesConf, String> {
    let mut conf = RegistriesConf::default();
    if main.as_os_str().is_empty() {
        return Ok(conf);
    }
    let mut files = Vec::new();
    if main.is_file() {
        files.push(main.to_path_buf());
    }
    if !dir.as_os_str().is_empty()
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        let mut dropins: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        dropins.sort();
        files.extend(dropins);
    }
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        parse_into(&text, &mut conf).map_err(|e| format!("{}: {e}", file.display()))?;
        conf.files.push(file);
    }
    Ok(conf)
}

/// Parses one file's text into `conf` (after what earlier files set).
pub fn parse_into(text: &str, conf: &mut RegistriesConf) -> Result<(), String> {
    let file: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
    if file.registries.is_some() {
        return Err(
            "the version 1 format ([registries.search], [registries.insecure], …) is not \
             supported; write [[registry]] tables and unqualified-search-registries"
                .into(),
        );
    }
    if let Some(search) = file.unqualified_search_registries {
        for host in &search {
            if host.is_empty() || host.contains('/') {
                return Err(format!(
                    "unqualified-search-registries: {host:?} is not a registry host"
                ));
            }
        }
        conf.search = Some(search);
    }
    for (index, r) in file.registry.into_iter().enumerate() {
        let prefix = if r.prefix.is_empty() {
            r.location.clone()
        } else {
            r.prefix.clone()
        };
        if prefix.is_empty() {
            return Err(format!(
                "[[registry]] #{}: needs a prefix or a location",
                index + 1
            ));
        }
        if prefix.starts_with("*.") {
            return Err(format!(
                "[[registry]] prefix {prefix:?}: wildcard prefixes are not supported"
            ));
        }
        let entry = RegistryConfig {
            prefix: prefix.clone(),
            location: (!r.location.is_empty() && r.location != prefix).then_some(r.location),
            insecure: r.insecure,
            mirrors: r
                .mirror
                .into_iter()
                .map(|m| MirrorConfig {
                    location: m.location,
                    insecure: m.insecure,
                })
                .collect(),
            blocked: r.blocked,
            mirror_by_digest_only: r.mirror_by_digest_only,
        };
        conf.registries.retain(|e| e.prefix != prefix);
        conf.registries.push(entry);
    }
    for (short, full) in file.aliases {
        if is_qualified(&short) || short.contains(':') || short.contains('@') {
            return Err(format!(
                "alias {short:?}: must be a short name without registry, tag or digest"
            ));
        }
        if !is_qualified(&full) {
            return Err(format!(
                "alias {short:?} = {full:?}: the target must name its registry"
            ));
        }
        conf.aliases.insert(short, full);
    }
    Ok(())
}

/// Whether `name` starts with a registry host, as image names are parsed.
pub fn is_qualified(name: &str) -> bool {
    crate::image::split_registry_host(name).is_some()
}

/// Adds what `conf` says to `config` (see the module docs for precedence).
pub fn merge_into(config: &mut Config, conf: RegistriesConf) {
    for entry in conf.registries {
        if !config.registries.iter().any(|r| r.prefix == entry.prefix) {
            config.registries.push(entry);
        }
    }
    if let Some(search) = conf.search {
        config.image.unqualified_search_registries = search;
    }
    config.image.short_name_aliases = conf.aliases;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_mirrors_search_and_aliases_are_read() {
        let mut conf = RegistriesConf::default();
        parse_into(
            r#"
unqualified-search-registries = ["registry.example", "docker.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "127.0.0.1:5000/hub"
insecure = true

[[registry]]
location = "quay.io/moved"
blocked = true
mirror-by-digest-only = true

[aliases]
"app" = "registry.example/team/app"
"#,
            &mut conf,
        )
        .unwrap();
        assert_eq!(
            conf.search.as_deref(),
            Some(&["registry.example".to_string(), "docker.io".to_string()][..])
        );
        assert_eq!(conf.registries.len(), 2);
        let hub = &conf.registries[0];
        assert_eq!(
            (hub.prefix.as_str(), hub.location.as_deref()),
            ("docker.io", None)
        );
        assert_eq!(hub.mirrors[0].location, "127.0.0.1:5000/hub");
        assert!(hub.mirrors[0].insecure);
        let quay = &conf.registries[1];
        assert_eq!(
            quay.prefix, "quay.io/moved",
            "the location is the prefix when none is given"
        );
        assert!(quay.blocked && quay.mirror_by_digest_only);
        assert_eq!(conf.aliases["app"], "registry.example/team/app");

        // A later file replaces the same prefix and the search list.
        parse_into(
            "unqualified-search-registries = [\"docker.io\"]\n[[registry]]\nprefix = \"docker.io\"\ninsecure = true\n",
            &mut conf,
        )
        .unwrap();
        assert_eq!(conf.registries.len(), 2);
        let hub = conf
            .registries
            .iter()
            .find(|r| r.prefix == "docker.io")
            .unwrap();
        assert!(hub.insecure && hub.mirrors.is_empty());
        assert_eq!(conf.search.as_deref().map(<[String]>::len), Some(1));
    }

    #[test]
    fn bad_files_are_refused_by_what_is_wrong() {
        for (text, want) in [
            (
                "[registries.search]\nregistries = [\"docker.io\"]\n",
                "version 1",
            ),
            ("[[registry]]\ninsecure = true\n", "needs a prefix"),
            ("[[registry]]\nprefix = \"*.example.com\"\n", "wildcard"),
            (
                "[aliases]\n\"docker.io/x\" = \"docker.io/y\"\n",
                "short name",
            ),
            ("[aliases]\n\"x\" = \"y\"\n", "must name its registry"),
            (
                "unqualified-search-registries = [\"a/b\"]\n",
                "not a registry host",
            ),
            ("[[registry]\n", ""),
        ] {
            let err = parse_into(text, &mut RegistriesConf::default()).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_distributions_shortnames_file_parses() {
        // containers-common's shortnames.conf (skopeo, which scripts/setup
        // installs, brings it): a real file we did not write.
        const SHORTNAMES: &str = "/etc/containers/registries.conf.d/shortnames.conf";
        if !crius_testkit::require_tools(&[SHORTNAMES]) {
            return;
        }
        let text = std::fs::read_to_string(SHORTNAMES).unwrap();
        let mut conf = RegistriesConf::default();
        parse_into(&text, &mut conf).unwrap();
        assert!(conf.aliases.len() > 10, "{:?}", conf.aliases);
    }

    #[test]
    fn yaml_entries_win_over_registries_conf_for_the_same_prefix() {
        let mut config = Config::default();
        config.registries.push(RegistryConfig::new("docker.io"));
        let mut conf = RegistriesConf::default();
        parse_into(
            "[[registry]]\nprefix = \"docker.io\"\nblocked = true\n[[registry]]\nprefix = \"quay.io\"\n",
            &mut conf,
        )
        .unwrap();
        merge_into(&mut config, conf);
        let prefixes: Vec<&str> = config
            .registries
            .iter()
            .map(|r| r.prefix.as_str())
            .collect();
        assert_eq!(prefixes, ["docker.io", "quay.io"]);
        assert!(!config.registries[0].blocked, "the YAML entry is kept");
    }
}
