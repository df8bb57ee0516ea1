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
        put(&mut self.listen, other.listen, file);
        put(&mut self.root, other.root, file);
        put(&mut self.state_dir, other.state_dir, file);
        put(&mut self.log_level, other.log_level, file);
        put(&mut self.cdi_spec_dirs, other.cdi_spec_dirs, file);
        put(&mut self.hooks_dirs, other.hooks_dirs, file);
        put(&mut self.metrics_address, other.metrics_address, file);
        put(
            &mut self.restrict_oom_score_adj,
            other.restrict_oom_score_adj,
            file,
        );
        put(&mut self.cgroup_driver, other.cgroup_driver, file);
        put(&mut self.storage_driver, other.storage_driver, file);
        put(
            &mut self.default_runtime_handler,
            other.default_runtime_handler,
            file,
        );
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
            let merged = self.cni.get_or_insert_default();
            put(&mut merged.conf_dir, cni.conf_dir, file);
            put(&mut merged.bin_dirs, cni.bin_dirs, file);
        }
        if let Some(image) = other.image {
            let merged = self.image.get_or_insert_default();
            put(
                &mut merged.max_concurrent_downloads,
                image.max_concurrent_downloads,
                file,
            );
            put(
                &mut merged.max_concurrent_pulls,
                image.max_concurrent_pulls,
                file,
            );
            put(&mut merged.default_registry, image.default_registry, file);
            put(&mut merged.max_layer_size, image.max_layer_size, file);
            put(&mut merged.max_image_size, image.max_image_size, file);
            put(
                &mut merged.pull_progress_timeout_seconds,
                image.pull_progress_timeout_seconds,
                file,
            );
            put(&mut merged.pinned_images, image.pinned_images, file);
            put(&mut merged.registries_conf, image.registries_conf, file);
            put(
                &mut merged.registries_conf_dir,
                image.registries_conf_dir,
                file,
            );
            put(&mut merged.signature_policy, image.signature_policy, file);
            put(
                &mut merged.signature_policy_dir,
                image.signature_policy_dir,
                file,
            );
            put(&mut merged.registries_d, image.registries_d, file);
        }
        if let Some(pause) = other.pause {
            let merged = self.pause.get_or_insert_default();
            put(&mut merged.catatonit_path, pause.catatonit_path, file);
        }
        if let Some(streaming) = other.streaming {
            let merged = self.streaming.get_or_insert_default();
            put(&mut merged.address, streaming.address, file);
            put(&mut merged.port, streaming.port, file);
            put(&mut merged.tls_cert, streaming.tls_cert, file);
            put(&mut merged.tls_key, streaming.tls_key, file);
            put(
                &mut merged.token_ttl_seconds,
                streaming.token_ttl_seconds,
                file,
            );
            put(
                &mut merged.idle_timeout_seconds,
                streaming.idle_timeout_seconds,
                file,
            );
            put(&mut merged.max_sessions, streaming.max_sessions, file);
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
        fn value<T: Clone>(src: &Option<Src<T>>, default: T) -> T {
            src.as_ref().map_or(default, |s| s.value.clone())
        }

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

        let cni_defaults = CniConfig::default();
        let image_defaults = ImageConfig::default();
        let no_cni = FileCni::default();
        let no_image = FileImage::default();
        let cni = self.cni.as_ref().unwrap_or(&no_cni);
        let image = self.image.as_ref().unwrap_or(&no_image);
        Ok(Config {
            listen: value(&self.listen, defaults.listen),
            root: value(&self.root, defaults.root),
            state_dir: value(&self.state_dir, defaults.state_dir),
            log_level: value(&self.log_level, defaults.log_level),
            cdi_spec_dirs: value(&self.cdi_spec_dirs, defaults.cdi_spec_dirs),
            hooks_dirs: value(&self.hooks_dirs, defaults.hooks_dirs),
            restrict_oom_score_adj: value(
                &self.restrict_oom_score_adj,
                defaults.restrict_oom_score_adj,
            ),
            cgroup_driver: value(&self.cgroup_driver, defaults.cgroup_driver),
            storage_driver: value(&self.storage_driver, defaults.storage_driver),
            default_runtime_handler: value(
                &self.default_runtime_handler,
                defaults.default_runtime_handler,
            ),
            runtime_handlers,
            cni: CniConfig {
                conf_dir: value(&cni.conf_dir, cni_defaults.conf_dir),
                bin_dirs: value(&cni.bin_dirs, cni_defaults.bin_dirs),
            },
            image: ImageConfig {
                max_concurrent_downloads: value(
                    &image.max_concurrent_downloads,
                    image_defaults.max_concurrent_downloads,
                ),
                max_concurrent_pulls: value(
                    &image.max_concurrent_pulls,
                    image_defaults.max_concurrent_pulls,
                ),
                default_registry: value(&image.default_registry, image_defaults.default_registry),
                max_layer_size: value(&image.max_layer_size, image_defaults.max_layer_size),
                max_image_size: value(&image.max_image_size, image_defaults.max_image_size),
                pull_progress_timeout_seconds: value(
                    &image.pull_progress_timeout_seconds,
                    image_defaults.pull_progress_timeout_seconds,
                ),
                pinned_images: value(&image.pinned_images, image_defaults.pinned_images),
                registries_conf: value(&image.registries_conf, image_defaults.registries_conf),
                registries_conf_dir: value(
                    &image.registries_conf_dir,
                    image_defaults.registries_conf_dir,
                ),
                signature_policy: value(&image.signature_policy, image_defaults.signature_policy),
                signature_policy_dir: value(
                    &image.signature_policy_dir,
                    image_defaults.signature_policy_dir,
                ),
                registries_d: value(&image.registries_d, image_defaults.registries_d),
                // Filled from registries.conf by `load`.
                unqualified_search_registries: Vec::new(),
                short_name_aliases: BTreeMap::new(),
            },
            registries: self
                .registries
                .as_ref()
                .map_or(defaults.registries, |registries| {
                    registries
                        .value
                        .iter()
                        .map(|entry| entry.value.clone())
                        .collect()
                }),
            pause: PauseConfig {
                catatonit_path: self
                    .pause
                    .as_ref()
                    .map_or(defaults.pause.catatonit_path.clone(), |p| {
                        value(&p.catatonit_path, defaults.pause.catatonit_path.clone())
                    }),
            },
            metrics_address: self.metrics_address.as_ref().map(|s| s.value),
            streaming: self
                .streaming
                .as_ref()
                .map_or(defaults.streaming.clone(), |s| {
                    let d = StreamingConfig::default();
                    StreamingConfig {
                        address: value(&s.address, d.address),
                        port: value(&s.port, d.port),
                        tls_cert: s.tls_cert.as_ref().map(|v| v.value.clone()),
                        tls_key: s.tls_key.as_ref().map(|v| v.value.clone()),
                        token_ttl_seconds: value(&s.token_ttl_seconds, d.token_ttl_seconds),
                        idle_timeout_seconds: value(
                            &s.idle_timeout_seconds,
                            d.idle_timeout_seconds,
                        ),
                        max_sessions: value(&s.max_sessions, d.max_sessions),
                    }
                }),
        })
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
        put(&mut self.kind, other.kind, file);
        put(&mut self.runtime_path, other.runtime_path, file);
        put(&mut self.runtime_root, other.runtime_root, file);
        put(&mut self.monitor_path, other.monitor_path, file);
        put(
            &mut self.allowed_annotations,
            other.allowed_annotations,
            file,
        );
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
            let merged = self.features.get_or_insert_default();
            put(
                &mut merged.recursive_read_only_mounts,
                features.recursive_read_only_mounts,
                file,
            );
            put(&mut merged.user_namespaces, features.user_namespaces, file);
        }
        // The plugin sub-table is small; a later file replaces it whole.
        put(&mut self.plugin, other.plugin, file);
        if let Some(vm) = other.vm {
            match &mut self.vm {
                Some(merged) => merge_json_maps(&mut merged.value, vm.value),
                None => put(&mut self.vm, Some(vm), file),
            }
        }
        put(
            &mut self.run_sandbox_timeout_seconds,
            other.run_sandbox_timeout_seconds,
            file,
        );
        put(
            &mut self.call_timeout_seconds,
            other.call_timeout_seconds,
            file,
        );
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
mod tests {
    use std::fs;

    use super::*;
    use crate::config::MirrorConfig;

    /// A config file (and optional drop-ins) in a fresh temporary directory.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(main: &str) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::write(dir.path().join("crius.yaml"), main).expect("write main");
            Self { dir }
        }

        fn drop_in(self, name: &str, text: &str) -> Self {
            let d = self.dir.path().join("crius.yaml.d");
            fs::create_dir_all(&d).expect("mkdir .d");
            fs::write(d.join(name), text).expect("write drop-in");
            self
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("crius.yaml")
        }

        fn load(&self) -> Result<Config, ConfigError> {
            load_files(&self.path())
        }

        fn err(&self) -> String {
            match self.load() {
                Ok(config) => panic!("expected an error, loaded {config:?}"),
                Err(err) => err.to_string(),
            }
        }
    }

    fn repo_config() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/crius.yaml")
    }

    #[test]
    fn shipped_config_is_the_default_config() {
        let config = load_files(&repo_config()).expect("configs/crius.yaml loads");
        config.validate().expect("and validates");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn streaming_table_merges_and_refuses_half_tls_and_zero_bounds() {
        let config = Fixture::new("streaming:\n  address: 0.0.0.0\n  port: 10010\n")
            .drop_in("10.yaml", "streaming:\n  max_sessions: 8\n")
            .load()
            .expect("loads");
        assert_eq!(config.streaming.address.to_string(), "0.0.0.0");
        assert_eq!(config.streaming.port, 10010);
        assert_eq!(config.streaming.max_sessions, 8);
        assert_eq!(config.streaming.token_ttl_seconds, 60);

        let err = Fixture::new("streaming:\n  tls_cert: /etc/crius/cert.pem\n").err();
        assert!(err.contains("crius.yaml:2:"), "{err}");
        assert!(err.contains("streaming.tls_cert"), "{err}");
        assert!(err.contains("without tls_key"), "{err}");
        let config = Fixture::new(
            "streaming:\n  tls_cert: /etc/crius/cert.pem\n  tls_key: /etc/crius/key.pem\n",
        )
        .load()
        .expect("both TLS paths load");
        assert_eq!(
            config.streaming.tls_key.as_deref(),
            Some(std::path::Path::new("/etc/crius/key.pem"))
        );

        let err = Fixture::new("streaming:\n  max_sessions: 0\n").err();
        assert!(
            err.contains("streaming.max_sessions: must be at least 1"),
            "{err}"
        );

        let err = Fixture::new("streaming:\n  address: localhost\n").err();
        assert!(err.contains("crius.yaml:2"), "{err}");
    }

    #[test]
    fn shipped_registries_example_is_valid() {
        // The commented-out `registries` example must stay loadable.
        let text = fs::read_to_string(repo_config()).expect("read configs/crius.yaml");
        let example: String = text
            .lines()
            .skip_while(|line| !line.starts_with("# registries:"))
            .take_while(|line| line.starts_with('#'))
            .map(|line| {
                line.strip_prefix("# ")
                    .unwrap_or(line.trim_start_matches('#'))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(
            example.contains("prefix: docker.io"),
            "example not found: {example}"
        );
        let config = Fixture::new(&example).load().expect("example loads");
        assert_eq!(config.registries.len(), 4);
        let hub = config
            .registry_for("docker.io/library/busybox:latest")
            .expect("docker.io entry");
        assert!(hub.blocked);
        assert_eq!(
            hub.mirrors,
            vec![MirrorConfig {
                location: "127.0.0.1:5000/dockerhub".into(),
                insecure: true
            }]
        );
        assert!(
            config
                .registry_for("127.0.0.1:5000/busybox:1")
                .expect("local")
                .insecure
        );
    }

    #[test]
    fn shipped_kata_example_loads_and_its_vm_table_merges_key_by_key() {
        // The commented-out kata example of configs/crius.yaml must load; its
        // `vm` table is the shim's (whose tests check that the example holds
        // the defaults): the daemon keeps it as given and merges drop-ins
        // into it key by key.
        let text = fs::read_to_string(repo_config()).expect("read configs/crius.yaml");
        let example: String = text
            .lines()
            .skip_while(|line| !line.starts_with("# runtime_handlers:"))
            .take_while(|line| line.starts_with('#'))
            .map(|line| {
                line.strip_prefix("# ")
                    .unwrap_or(line.trim_start_matches('#'))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(example.contains("kind: vm"), "example not found: {example}");
        let plain = Fixture::new(&format!("default_runtime_handler: kata\n{example}"));
        let example_vm = plain.load().expect("example loads").runtime_handlers["kata"]
            .vm
            .clone()
            .expect("vm handlers always have a vm table");
        assert_eq!(example_vm["boot_timeout_seconds"], 60, "{example_vm:?}");
        let fx = Fixture::new(&format!("default_runtime_handler: kata\n{example}")).drop_in(
            "10-fast.yaml",
            "runtime_handlers:\n  kata:\n    vm:\n      boot_timeout_seconds: 5\n",
        );
        let config = fx.load().expect("example loads");
        let kata = &config.runtime_handlers["kata"];
        assert_eq!(kata.kind, HandlerKind::Vm);
        let vm = kata.vm.clone().expect("vm handlers always have a vm table");
        assert_eq!(vm["boot_timeout_seconds"], 5, "the drop-in changed one key");
        let mut rest = vm.clone();
        rest.insert("boot_timeout_seconds".into(), 60.into());
        assert_eq!(rest, example_vm, "the rest are the example's");
        // The table is located where the main file wrote it.
        let location = kata.vm_location.clone().expect("located");
        assert!(
            location.starts_with(&format!("{}:", fx.path().display())),
            "{location}"
        );

        // A vm handler without a vm table gets an empty one; other kinds none.
        let fx = Fixture::new(
            "default_runtime_handler: k\nruntime_handlers:\n  k:\n    kind: vm\n    runtime_path: /q\n",
        );
        let k = &fx.load().expect("load").runtime_handlers["k"];
        assert_eq!(k.vm, Some(Default::default()));
        assert_eq!(
            k.vm_location,
            Some(format!("{}:4:5", fx.path().display())),
            "without a table, the entry's position"
        );
        assert_eq!(Config::default().runtime_handlers["runc"].vm, None);

        // Keys and values are the shim's business, except the shim path
        // the daemon runs.
        let fx = Fixture::new(
            "default_runtime_handler: k\nruntime_handlers:\n  k:\n    kind: vm\n    runtime_path: /q\n    \
             vm:\n      bogus: 1\n      default_vcpus: 0\n",
        );
        let k = &fx
            .load()
            .expect("the shim checks the table")
            .runtime_handlers["k"];
        assert_eq!(k.vm.as_ref().unwrap()["bogus"], 1);
        assert_eq!(
            k.vm_location,
            Some(format!("{}:7:7", fx.path().display())),
            "the table's position"
        );
        let fx = Fixture::new(
            "default_runtime_handler: k\nruntime_handlers:\n  k:\n    kind: vm\n    runtime_path: /q\n    \
             vm:\n      shim_path: bin/shim\n",
        );
        let err = fx.load().unwrap_err().to_string();
        assert!(
            err.contains("runtime_handlers.k.vm: shim_path: must be an absolute path"),
            "{err}"
        );
        let fx = Fixture::new(
            "runtime_handlers:\n  runc:\n    kind: oci\n    runtime_path: /r\n    monitor_path: /m\n    \
             vm:\n      default_vcpus: 2\n",
        );
        let err = fx.load().unwrap_err().to_string();
        assert!(
            err.contains("only handlers of kind `vm` take a `vm` table"),
            "{err}"
        );
        let fx = Fixture::new(
            "runtime_handlers:\n  runc:\n    kind: oci\n    runtime_path: /r\n    monitor_path: /m\n    \
             call_timeout_seconds: 0\n",
        );
        let err = fx.load().unwrap_err().to_string();
        assert!(
            err.contains("runtime_handlers.runc.call_timeout_seconds: must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn empty_and_comment_only_files_give_the_defaults() {
        assert_eq!(Fixture::new("").load().expect("empty"), Config::default());
        assert_eq!(
            Fixture::new("# nothing\n").load().expect("comments"),
            Config::default()
        );
    }

    #[test]
    fn default_config_round_trips_through_yaml() {
        // Every field of Config must be accepted by the per-file types.
        let text = serde_saphyr::to_string(&Config::default()).expect("serialize");
        assert_eq!(
            Fixture::new(&text).load().expect("load serialized"),
            Config::default()
        );
    }

    #[test]
    fn unknown_top_level_key_names_file_and_line() {
        let fx = Fixture::new("listen: /run/x.sock\nroot: /var/lib/x\nruntime_handler: runc\n");
        let err = fx.err();
        let expected = format!(
            "{}:3:1: unknown field `runtime_handler`",
            fx.path().display()
        );
        assert!(err.starts_with(&expected), "{err}");
        assert!(err.contains("expected one of"), "{err}");
        assert!(matches!(
            fx.load(),
            Err(ConfigError::Parse {
                line: 3,
                column: 1,
                ..
            })
        ));
    }

    #[test]
    fn unknown_key_inside_a_handler_names_file_and_line() {
        let fx = Fixture::new(
            "runtime_handlers:\n  runc:\n    kind: oci\n    runtime_path: /usr/sbin/runc\n    \
             monitor: /usr/bin/conmon\n",
        );
        let err = fx.err();
        let expected = format!("{}:5:5: unknown field `monitor`", fx.path().display());
        assert!(err.starts_with(&expected), "{err}");
        assert!(
            err.contains("monitor_path"),
            "should list the known keys: {err}"
        );
    }

    #[test]
    fn unknown_key_in_a_drop_in_names_the_drop_in() {
        let fx = Fixture::new("").drop_in("10-a.yaml", "image:\n  max_downloads: 2\n");
        let err = fx.err();
        let drop_in = fx.dir.path().join("crius.yaml.d/10-a.yaml");
        assert!(
            err.starts_with(&format!("{}:2:3: unknown field", drop_in.display())),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_file_line_and_the_line_text() {
        let fx = Fixture::new("log_level: info\nimage:\n  max_concurrent_downloads: lots\n");
        let err = fx.err();
        assert!(
            err.starts_with(&format!("{}:3:29: ", fx.path().display())),
            "{err}"
        );
        assert!(err.contains("max_concurrent_downloads: lots"), "{err}");

        let fx = Fixture::new("runtime_handlers:\n  runc:\n    kind: docker\n");
        let err = fx.err();
        assert!(
            err.starts_with(&format!("{}:3:11: ", fx.path().display())),
            "{err}"
        );
        assert!(err.contains("docker"), "{err}");

        let fx = Fixture::new("cni:\n  bin_dirs: /usr/lib/cni\n");
        assert!(
            fx.err()
                .starts_with(&format!("{}:2:13: ", fx.path().display()))
        );
    }

    #[test]
    fn yaml_syntax_errors_and_duplicate_keys_are_located() {
        let fx = Fixture::new("listen: /a\nroot: [/b\n");
        let err = fx.err();
        assert!(
            err.starts_with(&format!("{}:", fx.path().display())),
            "{err}"
        );
        assert!(
            matches!(fx.load(), Err(ConfigError::Parse { line: 2.., .. })),
            "{err}"
        );

        let fx = Fixture::new("listen: /a\nlisten: /b\n");
        assert!(
            fx.err()
                .starts_with(&format!("{}:2:1: duplicate", fx.path().display()))
        );
    }

    #[test]
    fn missing_main_file_is_an_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.yaml");
        let err = load(&path).expect_err("missing file");
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn drop_ins_apply_in_lexical_order() {
        let fx = Fixture::new("log_level: warn\nimage:\n  max_concurrent_downloads: 5\n")
            // Written out of order on purpose: the file name decides.
            .drop_in("20-b.yaml", "log_level: debug\n")
            .drop_in("10-a.yaml", "log_level: error\nroot: /srv/crius\n")
            .drop_in("30-ignored.yml", "log_level: trace\n")
            .drop_in(".40-hidden.yaml", "log_level: trace\n");
        let config = fx.load().expect("load");
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.root, PathBuf::from("/srv/crius"));
        assert_eq!(config.image.max_concurrent_downloads, 5);
        assert_eq!(
            config.image.default_registry, "docker.io",
            "unset nested key keeps default"
        );
        let names: Vec<String> = config_files(&fx.path())
            .expect("files")
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["crius.yaml", "10-a.yaml", "20-b.yaml"]);
    }

    #[test]
    fn drop_in_adds_a_handler_and_changes_one_field_of_another() {
        let main = fs::read_to_string(repo_config()).expect("read configs/crius.yaml");
        let fx = Fixture::new(&main).drop_in(
            "10-kata.yaml",
            "runtime_handlers:\n  runc:\n    monitor_path: /opt/conmon\n    default_annotations:\n      \
             a: b\n  kata:\n    kind: vm\n    runtime_path: /usr/bin/qemu-system-x86_64\n",
        );
        let config = fx.load().expect("load");
        let defaults = Config::default();

        let runc = &config.runtime_handlers["runc"];
        assert_eq!(runc.monitor_path, Some(PathBuf::from("/opt/conmon")));
        assert_eq!(
            runc.runtime_path,
            PathBuf::from("/usr/sbin/runc"),
            "other fields kept"
        );
        assert_eq!(
            runc.runtime_root,
            defaults.runtime_handlers["runc"].runtime_root
        );
        assert_eq!(
            runc.default_annotations,
            BTreeMap::from([("a".into(), "b".into())])
        );
        assert_eq!(
            config.runtime_handlers["crun"],
            defaults.runtime_handlers["crun"]
        );

        let kata = &config.runtime_handlers["kata"];
        assert_eq!(kata.kind, HandlerKind::Vm);
        assert_eq!(kata.monitor_path, None);
        assert_eq!(config.runtime_handlers.len(), 3);
    }

    #[test]
    fn maps_merge_but_lists_replace() {
        let fx = Fixture::new(
            "runtime_handlers:\n  r:\n    kind: oci\n    runtime_path: /r\n    monitor_path: /m\n    \
             allowed_annotations: [a, b]\n    default_annotations: {x: '1', y: '2'}\n    \
             features: {user_namespaces: true}\ndefault_runtime_handler: r\n",
        )
        .drop_in(
            "1.yaml",
            "runtime_handlers:\n  r:\n    allowed_annotations: [c]\n    \
             default_annotations: {y: '3'}\n    features: {recursive_read_only_mounts: false}\n",
        );
        let config = fx.load().expect("load");
        let r = &config.runtime_handlers["r"];
        assert_eq!(r.allowed_annotations, ["c"]);
        assert_eq!(
            r.default_annotations,
            BTreeMap::from([("x".into(), "1".into()), ("y".into(), "3".into())])
        );
        assert_eq!(
            r.features,
            FeatureOverrides {
                recursive_read_only_mounts: Some(false),
                user_namespaces: Some(true)
            }
        );
        assert_eq!(
            config.runtime_handlers.len(),
            1,
            "the file's table replaces the defaults"
        );
    }

    #[test]
    fn registries_list_is_replaced_by_a_drop_in() {
        let fx = Fixture::new("registries:\n  - prefix: a.example\n  - prefix: b.example\n")
            .drop_in(
                "1.yaml",
                "registries:\n  - prefix: c.example\n    insecure: true\n",
            );
        let config = fx.load().expect("load");
        let prefixes: Vec<&str> = config
            .registries
            .iter()
            .map(|r| r.prefix.as_str())
            .collect();
        assert_eq!(prefixes, ["c.example"]);
    }

    #[test]
    fn missing_default_handler_lists_known_names() {
        let fx = Fixture::new("default_runtime_handler: kata\n");
        let err = fx.load().expect_err("unknown default handler");
        assert!(matches!(err, ConfigError::Invalid { .. }));
        let err = err.to_string();
        assert!(
            err.starts_with(&format!("{}:1:26: ", fx.path().display())),
            "{err}"
        );
        assert!(err.contains("`kata`"), "{err}");
        assert!(err.contains("known handlers: crun, runc"), "{err}");
    }

    #[test]
    fn handler_missing_required_keys_after_merge_points_at_its_definition() {
        let fx = Fixture::new("").drop_in(
            "10-x.yaml",
            "runtime_handlers:\n  runc:\n    monitor_path: /m\n",
        );
        let err = fx.err();
        let drop_in = fx.dir.path().join("crius.yaml.d/10-x.yaml");
        assert!(
            err.starts_with(&format!(
                "{}:3:5: runtime_handlers.runc:",
                drop_in.display()
            )),
            "{err}"
        );
        assert!(err.contains("`kind` and `runtime_path`"), "{err}");
    }

    #[test]
    fn semantic_problems_are_all_reported_with_their_files() {
        let fx = Fixture::new(
            "root: var/lib/crius\nlog_level: loud\nruntime_handlers:\n  Bad_Name:\n    kind: oci\n    \
             runtime_path: /x\n  runc:\n    kind: oci\n    runtime_path: /usr/sbin/runc\n",
        )
        .drop_in("1.yaml", "image:\n  max_concurrent_downloads: 0\n");
        let err = fx.err();
        let main = fx.path().display().to_string();
        let drop_in = fx
            .dir
            .path()
            .join("crius.yaml.d/1.yaml")
            .display()
            .to_string();
        for expected in [
            format!("{main}:1:7: root: path `var/lib/crius` must be absolute"),
            format!("{main}:2:12: log_level: `loud` is not one of error, warn, info, debug, trace"),
            format!("{main}:5:5: runtime_handlers.Bad_Name: the handler name `Bad_Name` is not"),
            format!("{main}:5:5: runtime_handlers.Bad_Name: `oci` handlers need `monitor_path`"),
            format!("{main}:8:5: runtime_handlers.runc: `oci` handlers need `monitor_path`"),
            format!("{drop_in}:2:29: image.max_concurrent_downloads: must be at least 1"),
        ] {
            assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
        }
        assert!(err.starts_with("6 problems:"), "{err}");
    }

    fn validate_err(config: &Config) -> String {
        config.validate().expect_err("invalid config").to_string()
    }

    #[test]
    fn validate_checks_handlers() {
        let mut config = Config::default();
        config.validate().expect("defaults are valid");

        config.runtime_handlers.clear();
        assert!(validate_err(&config).contains("none are configured"));

        let mut config = Config::default();
        let runc = config.runtime_handlers["runc"].clone();
        config.runtime_handlers.insert(String::new(), runc.clone());
        config.runtime_handlers.insert("-x".into(), runc.clone());
        config.runtime_handlers.insert("a".repeat(64), runc.clone());
        let mut relative = runc.clone();
        relative.runtime_path = PathBuf::from("runc");
        relative.allowed_annotations = vec!["*".into(), "io.a*.b".into(), "io.kata.*".into()];
        config.runtime_handlers.insert("rel".into(), relative);
        let mut vm = runc;
        vm.kind = HandlerKind::Vm;
        vm.monitor_path = None;
        config.runtime_handlers.insert("vm".into(), vm);
        let err = validate_err(&config);
        assert!(err.contains("the handler name is empty"), "{err}");
        assert!(
            err.contains("the handler name `-x` is not a valid"),
            "{err}"
        );
        assert!(err.contains("longer than 63"), "{err}");
        assert!(
            err.contains("runtime_handlers.rel.runtime_path: path `runc` must be absolute"),
            "{err}"
        );
        assert!(err.contains("`*` would allow every annotation"), "{err}");
        assert!(
            err.contains("`io.a*.b`: `*` is only allowed at the end"),
            "{err}"
        );
        assert!(!err.contains("io.kata.*"), "a trailing * is fine: {err}");
        assert!(
            !err.contains("runtime_handlers.vm"),
            "vm handlers need no monitor: {err}"
        );
        assert!(err.starts_with("6 problems:"), "{err}");
    }

    #[test]
    fn validate_checks_registries() {
        let registry = |prefix: &str| RegistryConfig {
            prefix: prefix.into(),
            location: None,
            insecure: false,
            mirrors: Vec::new(),
            blocked: false,
            mirror_by_digest_only: false,
        };
        let config = Config {
            registries: vec![
                registry("docker.io"),
                registry(""),
                registry("docker.io"),
                RegistryConfig {
                    location: Some("http://x".into()),
                    mirrors: vec![MirrorConfig {
                        location: String::new(),
                        insecure: true,
                    }],
                    ..registry("quay.io")
                },
            ],
            ..Config::default()
        };
        let err = validate_err(&config);
        assert!(
            err.contains("registries[1]: prefix must not be empty"),
            "{err}"
        );
        assert!(
            err.contains("registries[2]: prefix `docker.io` appears more than once"),
            "{err}"
        );
        assert!(
            err.contains("registries[3]: location `http://x` must be a host"),
            "{err}"
        );
        assert!(
            err.contains("registries[3]: mirrors[0].location must not be empty"),
            "{err}"
        );
        assert!(err.starts_with("4 problems:"), "{err}");

        let mut config = Config::default();
        config.image.default_registry = String::new();
        assert!(validate_err(&config).contains("image.default_registry: must not be empty"));
    }

    #[test]
    fn registry_for_picks_the_longest_prefix_at_a_boundary() {
        let mut config = Config::default();
        for prefix in [
            "docker.io",
            "docker.io/library",
            "docker.io/lib",
            "localhost",
            "quay.io/org/app",
        ] {
            config.registries.push(RegistryConfig {
                prefix: prefix.into(),
                location: None,
                insecure: false,
                mirrors: Vec::new(),
                blocked: false,
                mirror_by_digest_only: false,
            });
        }
        let prefix = |name: &str| config.registry_for(name).map(|r| r.prefix.as_str());
        assert_eq!(
            prefix("docker.io/library/busybox:latest"),
            Some("docker.io/library")
        );
        assert_eq!(
            prefix("docker.io/libfoo/x:1"),
            Some("docker.io"),
            "`docker.io/lib` is no match"
        );
        assert_eq!(prefix("docker.io/lib/x:1"), Some("docker.io/lib"));
        assert_eq!(prefix("docker.io"), Some("docker.io"));
        assert_eq!(prefix("docker.iox/a"), None);
        assert_eq!(prefix("localhost/a:1"), Some("localhost"));
        assert_eq!(
            prefix("localhost:5000/a:1"),
            None,
            "a port names another registry"
        );
        assert_eq!(
            prefix("quay.io/org/app:v1"),
            Some("quay.io/org/app"),
            "tag after a path"
        );
        assert_eq!(prefix("quay.io/org/app@sha256:00"), Some("quay.io/org/app"));
        assert_eq!(prefix("quay.io/org/application:v1"), None);
        assert_eq!(prefix("registry.k8s.io/pause:3.10"), None);
    }
}
