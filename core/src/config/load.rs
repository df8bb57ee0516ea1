//! Reading `crius.yaml` and its drop-ins (`crius.yaml.d/*.yaml`).
//!
//! Each file is deserialized on its own into the "file" types below: the
//! same keys as [`Config`], every field optional, unknown keys rejected, and
//! every value wrapped in [`Src`] so it remembers the line it came from.
//! Parsing each file separately is what lets unknown keys and type errors be
//! reported as `file:line:column`. The files are then merged in order (maps
//! key by key, recursively; scalars and lists replace), keys no file sets
//! take their [`Config::default`] value, and the result is validated. A
//! semantic problem is reported at the file and line that last set the key
//! it is about.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_saphyr::MessageFormatter as _;

use super::validate::{Key, Problem, join_problems};
use super::{
    CgroupDriver, CniConfig, Config, FeatureOverrides, HandlerConfig, HandlerKind, ImageConfig,
    PauseConfig, RegistryConfig, StorageDriver, StreamingConfig,
};

/// A configuration that cannot be used. `Display` is self-contained
/// (`file:line:column: problem`) so the daemon can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file or the drop-in directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file is not valid YAML, has an unknown key, or a value of the wrong
    /// type. `line` and `column` are 1-based; 0 when the parser gave none.
    #[error("{}: {message}", Located(path, *line, *column))]
    Parse {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    /// The merged configuration is well-formed but unusable (unknown default
    /// handler, relative path, ...). The message names the file and line
    /// of each problem when a file set the key at fault.
    #[error("{message}")]
    Invalid { message: String },
}

/// `path:line:column`, or just `path` when the position is unknown.
struct Located<'a>(&'a Path, u64, u64);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Located(path, line, column) = *self;
        match (line, column) {
            (0, _) => write!(f, "{}", path.display()),
            (line, 0) => write!(f, "{}:{line}", path.display()),
            (line, column) => write!(f, "{}:{line}:{column}", path.display()),
        }
    }
}

/// Loads `path` ([`load_files`]), then the containers-registries.conf
/// files it names (`image.registries_conf`; see `registries_conf`).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut config = load_files(path)?;
    let registries_conf = super::registries_conf::read(
        &config.image.registries_conf,
        &config.image.registries_conf_dir,
    )
    .map_err(|message| ConfigError::Invalid { message })?;
    for file in &registries_conf.files {
        tracing::debug!(file = %file.display(), "registries.conf read");
    }
    super::registries_conf::merge_into(&mut config, registries_conf);
    let problems = config.problems();
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err(ConfigError::Invalid {
            message: join_problems(&lines),
        });
    }
    Ok(config)
}

/// Loads `path`, then the drop-ins from `<path>.d/*.yaml` in lexical order of
/// their file names, merges them, fills unset keys with their defaults and
/// validates the result.
pub fn load_files(path: &Path) -> Result<Config, ConfigError> {
    let files = config_files(path)?;
    let mut merged = FileConfig::default();
    for (index, file) in files.iter().enumerate() {
        let parsed = parse_file(file)?;
        merged.merge(parsed, index);
        tracing::debug!(file = %file.display(), "config file read");
    }
    let located = |problems: Vec<Problem>| {
        let lines: Vec<String> = problems.iter().map(|p| merged.locate(p, &files)).collect();
        ConfigError::Invalid {
            message: join_problems(&lines),
        }
    };
    let mut config = merged.resolve().map_err(located)?;
    for (name, handler) in &mut config.runtime_handlers {
        if handler.vm.is_some() {
            handler.vm_location = merged.vm_location(name, &files);
        }
    }
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(located(problems));
    }
    Ok(config)
}

/// The directory holding drop-ins for the config file `path`: `<path>.d`.
pub fn drop_in_dir(path: &Path) -> PathBuf {
    let mut dir = OsString::from(path.as_os_str());
    dir.push(".d");
    PathBuf::from(dir)
}

/// The files [`load`] reads, in the order they are applied: `path`, then
/// the regular `*.yaml` files of [`drop_in_dir`] sorted by file name (names
/// starting with `.` are skipped, as editors leave such files behind). A
/// missing drop-in directory is not an error.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = drop_in_dir(path);
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Io { path, source }
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(vec![path.to_path_buf()]),
        Err(err) => return Err(io_error(&dir)(err)),
    };
    let mut drop_ins = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(&dir))?;
        let name = entry.file_name();
        let name_bytes = name.as_encoded_bytes();
        if !name_bytes.ends_with(b".yaml") || name_bytes.starts_with(b".") {
            continue;
        }
        let file = entry.path();
        // Follows symlinks: a drop-in may be a link to a shared file.
        let metadata = std::fs::metadata(&file).map_err(io_error(&file))?;
        if metadata.is_file() {
            drop_ins.push((name, file));
        }
    }
    drop_ins.sort();
    let mut files = vec![path.to_path_buf()];
    files.extend(drop_ins.into_iter().map(|(_, file)| file));
    Ok(files)
}

fn parse_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_saphyr::from_str::<FileConfig>(&text).map_err(|err| parse_error(path, &text, &err))
}

/// Turns a serde-saphyr error into `file:line:column: message (at `line text`)`.
/// The quoted source line matters for messages such as "invalid u64" that
/// do not name the key.
fn parse_error(path: &Path, text: &str, err: &serde_saphyr::Error) -> ConfigError {
    let mut inner = err.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let (line, column) = inner
        .location()
        .or_else(|| err.location())
        .map_or((0, 0), |location| (location.line(), location.column()));
    let raw = serde_saphyr::UserMessageFormatter.format_message(inner);
    // The formatter's text is not sanitized for terminals (serde-saphyr's
    // renderer does that); escape control characters the same way.
    let mut message: String = escape_controls(&raw).into_owned();
    let source_line = usize::try_from(line)
        .ok()
        .and_then(|line| line.checked_sub(1))
        .and_then(|index| text.lines().nth(index))
        .map(str::trim)
        .filter(|line| !line.is_empty());
    if let Some(source_line) = source_line {
        let mut shown: String = source_line.chars().take(80).collect();
        if shown.len() < source_line.len() {
            shown.push('…');
        }
        message = format!("{message} (at `{}`)", escape_controls(&shown));
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

fn escape_controls(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if c.is_control() {
                        c.escape_debug().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

/// A value and where it was written: the index of its file in the list
/// [`load`] reads, and its 1-based line and column.
#[derive(Debug, Clone)]
struct Src<T> {
    value: T,
    file: usize,
    line: u64,
    column: u64,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Src<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(Self {
            value: spanned.value,
            // The file is not known to the deserializer; `merge` stamps it.
            file: 0,
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
        })
    }
}

/// Replaces `dst` with `src` (stamped with `file`) if the file set it.
fn put<T>(dst: &mut Option<Src<T>>, src: Option<Src<T>>, file: usize) {
    if let Some(mut src) = src {
        src.file = file;
        *dst = Some(src);
    }
}

/// [`put`] for each named key: `$dst.key` takes `$src.key` when set.
macro_rules! put_keys {
    ($dst:expr, $src:expr, $file:expr; $($key:ident),+ $(,)?) => {
        $(put(&mut $dst.$key, $src.$key, $file);)+
    };
}

/// A `$ty` whose named keys take the merged value or the default's, and
/// whose other fields are given.
macro_rules! resolve_keys {
    ($ty:ident { $src:expr, $defaults:expr; $($key:ident),+ $(,)? } $($field:ident: $value:expr),* $(,)?) => {
        $ty {
            $($key: $src.$key.as_ref().map_or($defaults.$key, |s| s.value.clone()),)+
            $($field: $value,)*
        }
    };
}

/// Every key of [`Config`], all optional. Field names must match
/// [`Config`]'s; [`FileConfig::resolve`] builds a `Config` with a struct
/// literal, so a field added there fails to compile until it is added here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    listen: Option<Src<PathBuf>>,
    root: Option<Src<PathBuf>>,
    state_dir: Option<Src<PathBuf>>,
    log_level: Option<Src<String>>,
    restrict_oom_score_adj: Option<Src<bool>>,
    cgroup_driver: Option<Src<CgroupDriver>>,
    storage_driver: Option<Src<StorageDriver>>,
    default_runtime_handler: Option<Src<String>>,
    runtime_handlers: Option<BTreeMap<String, Src<FileHandler>>>,
    cni: Option<FileCni>,
    image: Option<FileImage>,
    registries: Option<Src<Vec<Src<RegistryConfig>>>>,
    pause: Option<FilePause>,
    streaming: Option<FileStreaming>,
    cdi_spec_dirs: Option<Src<Vec<PathBuf>>>,
    hooks_dirs: Option<Src<Vec<PathBuf>>>,
    metrics_address: Option<Src<std::net::SocketAddr>>,
    otlp_endpoint: Option<Src<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileStreaming {
    address: Option<Src<std::net::IpAddr>>,
    port: Option<Src<u16>>,
    tls_cert: Option<Src<PathBuf>>,
    tls_key: Option<Src<PathBuf>>,
    token_ttl_seconds: Option<Src<u64>>,
    idle_timeout_seconds: Option<Src<u64>>,
    max_sessions: Option<Src<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FilePause {
    catatonit_path: Option<Src<PathBuf>>,
}

/// [`HandlerConfig`] with every key optional, so a drop-in can change one
/// field of a handler defined elsewhere.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileHandler {
    kind: Option<Src<HandlerKind>>,
    runtime_path: Option<Src<PathBuf>>,
    runtime_root: Option<Src<PathBuf>>,
    monitor_path: Option<Src<PathBuf>>,
    allowed_annotations: Option<Src<Vec<String>>>,
    default_annotations: Option<BTreeMap<String, Src<String>>>,
    privileged_without_host_devices: Option<Src<bool>>,
    features: Option<FileFeatures>,
    plugin: Option<Src<super::PluginConfig>>,
    /// Opaque to the daemon (the shim checks it); merged key by key.
    vm: Option<Src<serde_json::Map<String, serde_json::Value>>>,
    run_sandbox_timeout_seconds: Option<Src<u64>>,
    call_timeout_seconds: Option<Src<u64>>,
}

/// Merges a later file's map into an earlier one: maps key by key,
/// recursively; anything else replaces.
fn merge_json_maps(
    into: &mut serde_json::Map<String, serde_json::Value>,
    later: serde_json::Map<String, serde_json::Value>,
) {
    for (key, value) in later {
        match (into.get_mut(&key), value) {
            (Some(serde_json::Value::Object(earlier)), serde_json::Value::Object(later)) => {
                merge_json_maps(earlier, later)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileFeatures {
    recursive_read_only_mounts: Option<Src<bool>>,
    user_namespaces: Option<Src<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileCni {
    conf_dir: Option<Src<PathBuf>>,
    bin_dirs: Option<Src<Vec<PathBuf>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileImage {
    max_concurrent_downloads: Option<Src<usize>>,
    max_concurrent_pulls: Option<Src<usize>>,
    default_registry: Option<Src<String>>,
    max_layer_size: Option<Src<u64>>,
    max_image_size: Option<Src<u64>>,
    pull_progress_timeout_seconds: Option<Src<u64>>,
    pinned_images: Option<Src<Vec<String>>>,
    registries_conf: Option<Src<PathBuf>>,
    registries_conf_dir: Option<Src<PathBuf>>,
    signature_policy: Option<Src<PathBuf>>,
    signature_policy_dir: Option<Src<PathBuf>>,
    registries_d: Option<Src<PathBuf>>,
}

impl FileConfig {
    /// Applies the later file `other` (index `file`) on top of `self`.
    fn merge(&mut self, other: FileConfig, file: usize) {
        put_keys!(self, other, file;
            listen, root, state_dir, log_level, cdi_spec_dirs, hooks_dirs, metrics_address,
            otlp_endpoint,
            restrict_oom_score_adj, cgroup_driver, storage_driver, default_runtime_handler);
        if let Some(handlers) = other.runtime_handlers {
            let merged = self.runtime_handlers.get_or_insert_default();
            for (name, handler) in handlers {
                // A handler keeps the position of the file that introduced it:
                // that is where a missing required field should be added.
                let entry = merged.entry(name).or_insert_with(|| Src {
                    value: FileHandler::default(),
                    file,
                    line: handler.line,
                    column: handler.column,
                });
                entry.value.merge(handler.value, file);
            }
        }
        if let Some(cni) = other.cni {
            put_keys!(self.cni.get_or_insert_default(), cni, file; conf_dir, bin_dirs);
        }
        if let Some(image) = other.image {
            put_keys!(self.image.get_or_insert_default(), image, file;
                max_concurrent_downloads, max_concurrent_pulls, default_registry,
                max_layer_size, max_image_size, pull_progress_timeout_seconds, pinned_images,
                registries_conf, registries_conf_dir, signature_policy, signature_policy_dir,
                registries_d);
        }
        if let Some(pause) = other.pause {
            put_keys!(self.pause.get_or_insert_default(), pause, file; catatonit_path);
        }
        if let Some(streaming) = other.streaming {
            put_keys!(self.streaming.get_or_insert_default(), streaming, file;
                address, port, tls_cert, tls_key, token_ttl_seconds, idle_timeout_seconds,
                max_sessions);
        }
        if let Some(mut registries) = other.registries {
            for entry in &mut registries.value {
                entry.file = file;
            }
            put(&mut self.registries, Some(registries), file);
        }
    }

    /// The merged configuration, with [`Config::default`] for keys no file
    /// set. Fails only for handlers that lack a required key after merging.
    fn resolve(&self) -> Result<Config, Vec<Problem>> {
        let defaults = Config::default();

        let mut problems = Vec::new();
        let runtime_handlers = match &self.runtime_handlers {
            None => defaults.runtime_handlers,
            Some(handlers) => {
                let mut out = BTreeMap::new();
                for (name, handler) in handlers {
                    match handler.value.resolve(name) {
                        Ok(resolved) => {
                            out.insert(name.clone(), resolved);
                        }
                        Err(problem) => problems.push(problem),
                    }
                }
                out
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }

        let no_cni = FileCni::default();
        let no_image = FileImage::default();
        let cni = self.cni.as_ref().unwrap_or(&no_cni);
        let image = self.image.as_ref().unwrap_or(&no_image);
        let no_pause = FilePause::default();
        let pause = self.pause.as_ref().unwrap_or(&no_pause);
        let streaming = self.streaming.as_ref();
        let streaming_defaults = StreamingConfig::default();
        Ok(resolve_keys!(Config { self, defaults;
                listen, root, state_dir, log_level, cdi_spec_dirs, hooks_dirs,
                restrict_oom_score_adj, cgroup_driver, storage_driver, default_runtime_handler }
            runtime_handlers: runtime_handlers,
            cni: resolve_keys!(CniConfig { cni, CniConfig::default(); conf_dir, bin_dirs }),
            image: resolve_keys!(ImageConfig { image, ImageConfig::default();
                    max_concurrent_downloads, max_concurrent_pulls, default_registry,
                    max_layer_size, max_image_size, pull_progress_timeout_seconds, pinned_images,
                    registries_conf, registries_conf_dir, signature_policy, signature_policy_dir,
                    registries_d }
                // Filled from registries.conf by `load`.
                unqualified_search_registries: Vec::new(),
                short_name_aliases: BTreeMap::new(),
            ),
            registries: self.registries.as_ref().map_or(defaults.registries, |registries| {
                registries.value.iter().map(|entry| entry.value.clone()).collect()
            }),
            pause: resolve_keys!(PauseConfig { pause, defaults.pause; catatonit_path }),
            metrics_address: self.metrics_address.as_ref().map(|s| s.value),
            otlp_endpoint: self.otlp_endpoint.as_ref().map(|s| s.value.clone()),
            streaming: match streaming {
                None => defaults.streaming,
                Some(s) => resolve_keys!(StreamingConfig { s, streaming_defaults;
                        address, port, token_ttl_seconds, idle_timeout_seconds, max_sessions }
                    tls_cert: s.tls_cert.as_ref().map(|v| v.value.clone()),
                    tls_key: s.tls_key.as_ref().map(|v| v.value.clone()),
                ),
            },
        ))
    }

    /// Formats `problem` with the position of the value it is about: the
    /// file and line that last set that key, or the main file when the
    /// key kept its default.
    fn locate(&self, problem: &Problem, files: &[PathBuf]) -> String {
        let at = |src: Option<(usize, u64, u64)>| {
            src.map(|(file, line, column)| Located(&files[file], line, column).to_string())
                .unwrap_or_else(|| format!("{} (default value)", files[0].display()))
        };
        fn pos<T>(src: &Option<Src<T>>) -> Option<(usize, u64, u64)> {
            src.as_ref().map(|s| (s.file, s.line, s.column))
        }
        let handler = |name: &str| self.runtime_handlers.as_ref().and_then(|h| h.get(name));
        let position = match &problem.key {
            Key::Listen => pos(&self.listen),
            Key::Root => pos(&self.root),
            Key::StateDir => pos(&self.state_dir),
            Key::LogLevel => pos(&self.log_level),
            Key::OtlpEndpoint => pos(&self.otlp_endpoint),
            Key::DefaultRuntimeHandler => pos(&self.default_runtime_handler),
            Key::Handler(name) => handler(name).map(|h| (h.file, h.line, h.column)),
            Key::HandlerField(name, field) => handler(name).map(|h| {
                let value = &h.value;
                let field_pos = match *field {
                    "runtime_path" => pos(&value.runtime_path),
                    "runtime_root" => pos(&value.runtime_root),
                    "monitor_path" => pos(&value.monitor_path),
                    "allowed_annotations" => pos(&value.allowed_annotations),
                    "plugin" => pos(&value.plugin),
                    "vm" => pos(&value.vm),
                    "run_sandbox_timeout_seconds" => pos(&value.run_sandbox_timeout_seconds),
                    "call_timeout_seconds" => pos(&value.call_timeout_seconds),
                    _ => None,
                };
                field_pos.unwrap_or((h.file, h.line, h.column))
            }),
            Key::CniConfDir => self.cni.as_ref().and_then(|c| pos(&c.conf_dir)),
            Key::CniBinDirs => self.cni.as_ref().and_then(|c| pos(&c.bin_dirs)),
            Key::MaxConcurrentDownloads => self
                .image
                .as_ref()
                .and_then(|i| pos(&i.max_concurrent_downloads)),
            Key::DefaultRegistry => self.image.as_ref().and_then(|i| pos(&i.default_registry)),
            Key::MaxLayerSize => self.image.as_ref().and_then(|i| pos(&i.max_layer_size)),
            Key::MaxImageSize => self.image.as_ref().and_then(|i| pos(&i.max_image_size)),
            Key::Streaming(field) => self.streaming.as_ref().and_then(|s| match *field {
                "tls_cert" => pos(&s.tls_cert),
                "tls_key" => pos(&s.tls_key),
                "token_ttl_seconds" => pos(&s.token_ttl_seconds),
                "idle_timeout_seconds" => pos(&s.idle_timeout_seconds),
                "max_sessions" => pos(&s.max_sessions),
                _ => None,
            }),
            Key::Registry(index) => self
                .registries
                .as_ref()
                .and_then(|r| r.value.get(*index))
                .map(|e| (e.file, e.line, e.column)),
        };
        format!("{}: {problem}", at(position))
    }

    /// `file:line:column` of handler `name`'s `vm:` table (of the entry
    /// when no file gave it one).
    fn vm_location(&self, name: &str, files: &[PathBuf]) -> Option<String> {
        let handler = self.runtime_handlers.as_ref()?.get(name)?;
        let (file, line, column) = match &handler.value.vm {
            Some(vm) => (vm.file, vm.line, vm.column),
            None => (handler.file, handler.line, handler.column),
        };
        Some(Located(files.get(file)?, line, column).to_string())
    }
}

impl FileHandler {
    fn merge(&mut self, other: FileHandler, file: usize) {
        put_keys!(self, other, file;
            kind, runtime_path, runtime_root, monitor_path, allowed_annotations);
        if let Some(annotations) = other.default_annotations {
            let merged = self.default_annotations.get_or_insert_default();
            for (key, mut value) in annotations {
                value.file = file;
                merged.insert(key, value);
            }
        }
        put(
            &mut self.privileged_without_host_devices,
            other.privileged_without_host_devices,
            file,
        );
        if let Some(features) = other.features {
            put_keys!(self.features.get_or_insert_default(), features, file;
                recursive_read_only_mounts, user_namespaces);
        }
        // The plugin sub-table is small; a later file replaces it whole.
        put(&mut self.plugin, other.plugin, file);
        if let Some(vm) = other.vm {
            match &mut self.vm {
                Some(merged) => merge_json_maps(&mut merged.value, vm.value),
                None => put(&mut self.vm, Some(vm), file),
            }
        }
        put_keys!(self, other, file; run_sandbox_timeout_seconds, call_timeout_seconds);
    }

    fn resolve(&self, name: &str) -> Result<HandlerConfig, Problem> {
        let missing: Vec<&str> = [
            ("kind", self.kind.is_none()),
            ("runtime_path", self.runtime_path.is_none()),
        ]
        .into_iter()
        .filter_map(|(key, missing)| missing.then_some(key))
        .collect();
        let (Some(kind), Some(runtime_path)) = (&self.kind, &self.runtime_path) else {
            return Err(Problem {
                key: Key::Handler(name.to_string()),
                message: format!(
                    "missing required {} (a handler needs `kind` and `runtime_path`; setting \
                     runtime_handlers in any file replaces the built-in runc/crun table)",
                    missing
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            });
        };
        let features = self.features.as_ref();
        Ok(HandlerConfig {
            kind: kind.value,
            runtime_path: runtime_path.value.clone(),
            runtime_root: self.runtime_root.as_ref().map(|s| s.value.clone()),
            monitor_path: self.monitor_path.as_ref().map(|s| s.value.clone()),
            allowed_annotations: self
                .allowed_annotations
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default(),
            default_annotations: self
                .default_annotations
                .iter()
                .flatten()
                .map(|(key, value)| (key.clone(), value.value.clone()))
                .collect(),
            privileged_without_host_devices: self
                .privileged_without_host_devices
                .as_ref()
                .is_some_and(|s| s.value),
            features: FeatureOverrides {
                recursive_read_only_mounts: features
                    .and_then(|f| f.recursive_read_only_mounts.as_ref())
                    .map(|s| s.value),
                user_namespaces: features
                    .and_then(|f| f.user_namespaces.as_ref())
                    .map(|s| s.value),
            },
            plugin: match (&self.plugin, kind.value) {
                (Some(plugin), _) => Some(plugin.value.clone()),
                (None, HandlerKind::Plugin) => Some(Default::default()),
                (None, _) => None,
            },
            vm: match (&self.vm, kind.value) {
                (Some(vm), _) => Some(vm.value.clone()),
                (None, HandlerKind::Vm) => Some(Default::default()),
                (None, _) => None,
            },
            run_sandbox_timeout_seconds: self.run_sandbox_timeout_seconds.as_ref().map(|s| s.value),
            call_timeout_seconds: self.call_timeout_seconds.as_ref().map(|s| s.value),
            vm_location: None,
        })
    }
}

#[cfg(test)]
mod tests;
