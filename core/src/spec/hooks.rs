//! OCI hooks from hook directories, in the format CRI-O and podman read
//! (`oci-hooks(5)`, schema 1.0.0): one JSON file per hook,
//!
//! ```json
//! {"version": "1.0.0",
//!  "hook": {"path": "/usr/libexec/oci/hooks.d/my-hook", "args": ["my-hook", "x"]},
//!  "when": {"annotations": {"^com\\.example\\.gpu$": "^yes$"}},
//!  "stages": ["createRuntime", "poststop"]}
//! ```
//!
//! `when` needs at least one condition, and the hook is injected only when
//! every condition it sets matches: `always: true`; `annotations`: each
//! key/value pair of regular expressions matches some annotation of the
//! container's spec; `commands`: `process.args[0]` matches one of the
//! expressions; `hasBindMounts: true`: the container asked for host mounts.
//! (Expressions are Rust `regex` syntax, which agrees with POSIX EREs for
//! what hook files use; unanchored, as in the ERE matchers.) Stages are the
//! OCI ones: `prestart`, `createRuntime`, `createContainer`,
//! `startContainer`, `poststart`, `poststop`.
//!
//! `hooks_dirs` are read lowest priority first: a file in a later dir masks
//! the file of the same name in an earlier one. Hooks are injected in the
//! order of their lower-cased file names. A file that cannot be used is
//! logged and skipped (the 0.1.0 schema is deprecated and not read), so one
//! broken file does not stop every container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hook, Spec};
use regex::Regex;
use serde::Deserialize;

use super::SpecError;

/// Default hook dirs, lowest priority first (CRI-O's and podman's).
pub const DEFAULT_HOOKS_DIRS: &[&str] = &[
    "/usr/share/containers/oci/hooks.d",
    "/etc/containers/oci/hooks.d",
];
const STAGES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];
const MAX_HOOK_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookFile {
    version: String,
    hook: Hook,
    when: WhenFile,
    stages: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WhenFile {
    always: Option<bool>,
    annotations: Option<BTreeMap<String, String>>,
    commands: Option<Vec<String>>,
    has_bind_mounts: Option<bool>,
}

/// One usable hook file.
#[derive(Debug)]
struct HookEntry {
    file: PathBuf,
    hook: Hook,
    always: Option<bool>,
    annotations: Vec<(Regex, Regex)>,
    commands: Option<Vec<Regex>>,
    has_bind_mounts: Option<bool>,
    stages: Vec<String>,
}

impl HookEntry {
    fn parse(file: &Path) -> Result<Self, String> {
        let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
        if meta.len() > MAX_HOOK_FILE_BYTES {
            return Err(format!("larger than {MAX_HOOK_FILE_BYTES} bytes"));
        }
        let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
        let parsed: HookFile = serde_json::from_slice(&bytes).map_err(|e| {
            format!("not a 1.0.0 hook definition (the 0.1.0 schema is not supported): {e}")
        })?;
        if parsed.version != "1.0.0" {
            return Err(format!("unsupported version {:?}", parsed.version));
        }
        if !parsed.hook.path().is_absolute() {
            return Err("hook.path is not absolute".into());
        }
        let when = parsed.when;
        if when.always.is_none()
            && when.annotations.is_none()
            && when.commands.is_none()
            && when.has_bind_mounts.is_none()
        {
            return Err("`when` sets no condition".into());
        }
        if parsed.stages.is_empty() {
            return Err("`stages` is empty".into());
        }
        for stage in &parsed.stages {
            if !STAGES.contains(&stage.as_str()) {
                return Err(format!("unknown stage {stage:?}"));
            }
        }
        let regex =
            |text: &str| Regex::new(text).map_err(|e| format!("bad expression {text:?}: {e}"));
        let annotations = when
            .annotations
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| Ok((regex(k)?, regex(v)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let commands = when
            .commands
            .map(|list| list.iter().map(|c| regex(c)).collect::<Result<Vec<_>, _>>())
            .transpose()?;
        Ok(Self {
            file: file.to_path_buf(),
            hook: parsed.hook,
            always: when.always,
            annotations,
            commands,
            has_bind_mounts: when.has_bind_mounts,
            stages: parsed.stages,
        })
    }

    fn matches(&self, spec: &Spec, has_bind_mounts: bool) -> bool {
        if self.always == Some(false) {
            return false;
        }
        if self.has_bind_mounts == Some(true) && !has_bind_mounts {
            return false;
        }
        let annotations = spec.annotations().clone().unwrap_or_default();
        let annotations_match = self.annotations.iter().all(|(key, value)| {
            annotations
                .iter()
                .any(|(k, v)| key.is_match(k) && value.is_match(v))
        });
        if !annotations_match {
            return false;
        }
        if let Some(commands) = &self.commands {
            let arg0 = spec
                .process()
                .as_ref()
                .and_then(|p| p.args().as_ref())
                .and_then(|a| a.first().cloned())
                .unwrap_or_default();
            if !commands.iter().any(|c| c.is_match(&arg0)) {
                return false;
            }
        }
        true
    }
}

/// The hooks of the hook dirs, read at one moment.
#[derive(Debug, Default)]
pub struct HookRegistry {
    entries: Vec<HookEntry>,
}

impl HookRegistry {
    /// Reads the `*.json` files of `dirs` (missing dirs are empty).
    /// Blocking: call it off the async executor.
    pub fn load(dirs: &[PathBuf]) -> Self {
        // File name → path; a later dir masks an earlier one.
        let mut files: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if !name.ends_with(".json") {
                    continue;
                }
                files.insert(name.to_string(), (name.to_lowercase(), path.clone()));
            }
        }
        let mut ordered: Vec<(String, PathBuf)> = files.into_values().collect();
        ordered.sort();
        let mut entries = Vec::new();
        for (_, path) in ordered {
            match HookEntry::parse(&path) {
                Ok(entry) => entries.push(entry),
                Err(reason) => {
                    tracing::warn!(file = %path.display(), "ignoring OCI hook: {reason}");
                }
            }
        }
        Self { entries }
    }

    /// Injects the matching hooks into `spec`.
    pub fn apply(&self, spec: &mut Spec, has_bind_mounts: bool) -> Result<(), SpecError> {
        for entry in &self.entries {
            if !entry.matches(spec, has_bind_mounts) {
                continue;
            }
            for stage in &entry.stages {
                super::cdi::add_hook(spec, stage, entry.hook.clone()).map_err(|e| {
                    SpecError::InvalidArgument(format!("hook {}: {e}", entry.file.display()))
                })?;
            }
            tracing::debug!(file = %entry.file.display(), "OCI hook injected");
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::ProcessBuilder;
    use std::collections::HashMap;

    fn spec_with(args: &[&str], annotations: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .build()
                .unwrap(),
        ));
        spec.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        ));
        spec.set_hooks(None);
        spec
    }

    fn hooks(spec: &Spec, stage: &str) -> Vec<PathBuf> {
        let Some(h) = spec.hooks() else {
            return Vec::new();
        };
        let list = match stage {
            "createRuntime" => h.create_runtime().clone(),
            "poststop" => h.poststop().clone(),
            _ => unreachable!(),
        };
        list.unwrap_or_default()
            .iter()
            .map(|h| h.path().clone())
            .collect()
    }

    #[test]
    fn conditions_must_all_match_and_later_dirs_mask_earlier_ones() {
        let low = tempfile::tempdir().unwrap();
        let high = tempfile::tempdir().unwrap();
        let write =
            |dir: &Path, name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write(
            low.path(),
            "10-gpu.json",
            r#"{"version":"1.0.0","hook":{"path":"/low"},"when":{"always":true},"stages":["createRuntime"]}"#,
        );
        write(
            high.path(),
            "10-gpu.json",
            r#"{"version":"1.0.0","hook":{"path":"/gpu"},
                "when":{"annotations":{"^example\\.com/gpu$":"^yes$"},"commands":["sleep$"]},
                "stages":["createRuntime","poststop"]}"#,
        );
        write(
            high.path(),
            "20-always.json",
            r#"{"version":"1.0.0","hook":{"path":"/always"},"when":{"always":true},"stages":["poststop"]}"#,
        );
        write(
            high.path(),
            "30-old.json",
            r#"{"hook":"/old","stages":["prestart"]}"#,
        );
        write(
            high.path(),
            "40-nothing.json",
            r#"{"version":"1.0.0","hook":{"path":"/x"},"when":{},"stages":["prestart"]}"#,
        );
        let registry = HookRegistry::load(&[low.path().into(), high.path().into()]);
        assert_eq!(registry.entries.len(), 2, "{registry:?}");

        let mut spec = spec_with(&["/bin/sleep", "1"], &[("example.com/gpu", "yes")]);
        registry.apply(&mut spec, false).unwrap();
        assert_eq!(hooks(&spec, "createRuntime"), vec![PathBuf::from("/gpu")]);
        assert_eq!(
            hooks(&spec, "poststop"),
            vec![PathBuf::from("/gpu"), PathBuf::from("/always")]
        );

        // One condition fails: not injected.
        let mut spec = spec_with(&["/bin/sh"], &[("example.com/gpu", "yes")]);
        registry.apply(&mut spec, false).unwrap();
        assert!(hooks(&spec, "createRuntime").is_empty());
        let mut spec = spec_with(&["sleep"], &[("example.com/gpu", "no")]);
        registry.apply(&mut spec, false).unwrap();
        assert!(hooks(&spec, "createRuntime").is_empty());
    }
}
