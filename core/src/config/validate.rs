//! Semantic checks on a merged [`Config`]: things YAML typing cannot express
//! (cross references, absolute paths, names Kubernetes would reject).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use super::{Config, ConfigError, HandlerConfig, HandlerKind, RegistryConfig};

/// Log levels `log_level` accepts; `--log-level` on the command line may
/// still pass a full tracing directive.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// One semantic problem, tied to the config key it is about so the loader
/// can point at the file and line that set that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) key: Key,
    pub(crate) message: String,
}

/// The key a [`Problem`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Listen,
    Root,
    StateDir,
    LogLevel,
    DefaultRuntimeHandler,
    /// A handler as a whole (its name, or a field that is missing).
    Handler(String),
    /// One field of a handler.
    HandlerField(String, &'static str),
    CniConfDir,
    CniBinDirs,
    MaxConcurrentDownloads,
    DefaultRegistry,
    MaxLayerSize,
    MaxImageSize,
    /// An entry of `registries`, by index.
    Registry(usize),
    /// A field of `streaming`.
    Streaming(&'static str),
    OtlpEndpoint,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Listen => f.write_str("listen"),
            Key::Root => f.write_str("root"),
            Key::StateDir => f.write_str("state_dir"),
            Key::LogLevel => f.write_str("log_level"),
            Key::OtlpEndpoint => f.write_str("otlp_endpoint"),
            Key::DefaultRuntimeHandler => f.write_str("default_runtime_handler"),
            Key::Handler(name) => write!(f, "runtime_handlers.{name}"),
            Key::HandlerField(name, field) => write!(f, "runtime_handlers.{name}.{field}"),
            Key::CniConfDir => f.write_str("cni.conf_dir"),
            Key::CniBinDirs => f.write_str("cni.bin_dirs"),
            Key::MaxConcurrentDownloads => f.write_str("image.max_concurrent_downloads"),
            Key::DefaultRegistry => f.write_str("image.default_registry"),
            Key::MaxLayerSize => f.write_str("image.max_layer_size"),
            Key::MaxImageSize => f.write_str("image.max_image_size"),
            Key::Registry(index) => write!(f, "registries[{index}]"),
            Key::Streaming(field) => write!(f, "streaming.{field}"),
        }
    }
}

impl Problem {
    fn new(key: Key, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Joins problems into one message: a single problem stays on one line,
/// several are listed one per line so none is hidden behind the first.
pub(crate) fn join_problems(lines: &[String]) -> String {
    match lines {
        [one] => one.clone(),
        many => {
            let mut out = format!("{} problems:", many.len());
            for line in many {
                out.push_str("\n  - ");
                out.push_str(line);
            }
            out
        }
    }
}

impl Config {
    /// Checks what deserialization cannot: the default handler exists,
    /// handler names are valid RuntimeClass handler names, `oci` handlers have
    /// a monitor, paths are absolute, registry entries are usable, and so on.
    /// Reports every problem found, not only the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
        Err(ConfigError::Invalid {
            message: join_problems(&lines),
        })
    }

    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();

        for (key, path) in [
            (Key::Listen, &self.listen),
            (Key::Root, &self.root),
            (Key::StateDir, &self.state_dir),
        ] {
            check_absolute(&mut out, key, path);
        }

        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            out.push(Problem::new(
                Key::LogLevel,
                format!(
                    "`{}` is not one of {}",
                    self.log_level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }

        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            out.push(Problem::new(
                Key::OtlpEndpoint,
                format!(
                    "`{}` is not an http(s) URL of an OTLP/HTTP traces endpoint",
                    endpoint.chars().take(200).collect::<String>()
                ),
            ));
        }

        if !self
            .runtime_handlers
            .contains_key(&self.default_runtime_handler)
        {
            let known = if self.runtime_handlers.is_empty() {
                "none are configured".to_string()
            } else {
                let names: Vec<&str> = self.runtime_handlers.keys().map(String::as_str).collect();
                format!("known handlers: {}", names.join(", "))
            };
            out.push(Problem::new(
                Key::DefaultRuntimeHandler,
                format!(
                    "`{}` is not an entry of runtime_handlers ({known})",
                    self.default_runtime_handler
                ),
            ));
        }

        for (name, handler) in &self.runtime_handlers {
            check_handler(&mut out, name, handler);
        }

        check_absolute(&mut out, Key::CniConfDir, &self.cni.conf_dir);
        for dir in &self.cni.bin_dirs {
            check_absolute(&mut out, Key::CniBinDirs, dir);
        }

        if self.image.max_concurrent_downloads == 0 {
            out.push(Problem::new(
                Key::MaxConcurrentDownloads,
                "must be at least 1",
            ));
        }
        if self.image.max_layer_size == 0 {
            out.push(Problem::new(Key::MaxLayerSize, "must be at least 1 byte"));
        }
        if self.image.max_image_size < self.image.max_layer_size {
            out.push(Problem::new(
                Key::MaxImageSize,
                format!(
                    "must be at least image.max_layer_size ({} bytes)",
                    self.image.max_layer_size
                ),
            ));
        }
        if let Some(problem) = host_problem(&self.image.default_registry) {
            out.push(Problem::new(Key::DefaultRegistry, problem));
        }

        check_streaming(&mut out, &self.streaming);

        let mut prefixes = BTreeSet::new();
        for (index, registry) in self.registries.iter().enumerate() {
            check_registry(&mut out, index, registry, &mut prefixes);
        }
        out
    }

    /// The registry entry that applies to a fully qualified image name
    /// (`docker.io/library/busybox:latest`; normalize short names first):
    /// the one with the longest `prefix` that matches at a boundary. A
    /// prefix matches the whole name, or a leading part of it followed by
    /// `/`, by `@` (digest), or, when the prefix contains a repository path,
    /// by `:` (tag). So `docker.io` and `docker.io/library` match
    /// `docker.io/library/busybox`, `docker.io/lib` does not, and the host
    /// `localhost` does not match `localhost:5000/x` (a different registry).
    pub fn registry_for(&self, image_name: &str) -> Option<&RegistryConfig> {
        self.registries
            .iter()
            .filter(|registry| prefix_matches(&registry.prefix, image_name))
            .max_by_key(|registry| registry.prefix.len())
    }
}

fn check_streaming(out: &mut Vec<Problem>, streaming: &super::StreamingConfig) {
    // HTTPS needs both; the files themselves are read (and checked) when
    // the streaming server starts.
    match (&streaming.tls_cert, &streaming.tls_key) {
        (Some(_), None) => out.push(Problem::new(
            Key::Streaming("tls_cert"),
            "is set without tls_key; HTTPS needs both (or neither, for plain HTTP)",
        )),
        (None, Some(_)) => out.push(Problem::new(
            Key::Streaming("tls_key"),
            "is set without tls_cert; HTTPS needs both (or neither, for plain HTTP)",
        )),
        _ => {}
    }
    for (field, value) in [
        ("token_ttl_seconds", streaming.token_ttl_seconds),
        ("idle_timeout_seconds", streaming.idle_timeout_seconds),
        ("max_sessions", streaming.max_sessions as u64),
    ] {
        if value == 0 {
            out.push(Problem::new(Key::Streaming(field), "must be at least 1"));
        }
    }
}

fn prefix_matches(prefix: &str, name: &str) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    match rest.chars().next() {
        None | Some('/' | '@') => true,
        // After a bare host a ':' starts a port, which names another registry.
        Some(':') => prefix.contains('/'),
        Some(_) => false,
    }
}

fn check_absolute(out: &mut Vec<Problem>, key: Key, path: &Path) {
    if !path.is_absolute() {
        out.push(Problem::new(
            key,
            format!("path `{}` must be absolute", path.display()),
        ));
    }
}

/// RuntimeClass `handler` values must be lowercase RFC 1123 labels, so a
/// handler with any other name could never be selected by a pod.
fn dns_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the handler name is empty".to_string());
    }
    if name.len() > 63 {
        return Some(format!(
            "the handler name `{name}` is longer than 63 characters"
        ));
    }
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let alnum_ends = !name.starts_with('-') && !name.ends_with('-');
    if !valid_chars || !alnum_ends {
        return Some(format!(
            "the handler name `{name}` is not a valid RuntimeClass handler (lowercase letters, \
             digits and `-`, starting and ending with a letter or digit)"
        ));
    }
    None
}

fn check_handler(out: &mut Vec<Problem>, name: &str, handler: &HandlerConfig) {
    let field = |f: &'static str| Key::HandlerField(name.to_string(), f);
    if let Some(problem) = dns_label_problem(name) {
        out.push(Problem::new(Key::Handler(name.to_string()), problem));
    }
    check_absolute(out, field("runtime_path"), &handler.runtime_path);
    if let Some(root) = &handler.runtime_root {
        check_absolute(out, field("runtime_root"), root);
    }
    match (&handler.monitor_path, handler.kind) {
        (Some(monitor), _) => check_absolute(out, field("monitor_path"), monitor),
        (None, HandlerKind::Oci) => out.push(Problem::new(
            Key::Handler(name.to_string()),
            "`oci` handlers need `monitor_path` (the conmon binary)",
        )),
        (None, HandlerKind::Vm | HandlerKind::Plugin) => {}
    }
    for pattern in &handler.allowed_annotations {
        let star = pattern.find('*');
        if pattern.is_empty() || pattern == "*" {
            out.push(Problem::new(
                field("allowed_annotations"),
                format!(
                    "`{pattern}` would allow every annotation; list keys or `prefix*` patterns"
                ),
            ));
        } else if star.is_some_and(|i| i != pattern.len() - 1) {
            out.push(Problem::new(
                field("allowed_annotations"),
                format!("`{pattern}`: `*` is only allowed at the end, as a prefix match"),
            ));
        }
    }
    match (&handler.vm, handler.kind) {
        (Some(_), HandlerKind::Oci | HandlerKind::Plugin) => {
            out.push(Problem::new(
                field("vm"),
                "only handlers of kind `vm` take a `vm` table",
            ));
        }
        (Some(vm), HandlerKind::Vm) => {
            // The shim checks the table; the daemon only runs `shim_path`.
            match vm.get(super::VM_SHIM_PATH_KEY) {
                None => {}
                Some(serde_json::Value::String(path)) if path.is_empty() => {}
                Some(serde_json::Value::String(path)) if Path::new(path).is_absolute() => {}
                Some(other) => out.push(Problem::new(
                    field("vm"),
                    format!(
                        "{}: must be an absolute path, got {other}",
                        super::VM_SHIM_PATH_KEY
                    ),
                )),
            }
        }
        (None, _) => {}
    }
    for (key, value) in [
        (
            "run_sandbox_timeout_seconds",
            handler.run_sandbox_timeout_seconds,
        ),
        ("call_timeout_seconds", handler.call_timeout_seconds),
    ] {
        if value == Some(0) {
            out.push(Problem::new(field(key), "must be at least 1"));
        }
    }
    if handler.default_annotations.keys().any(String::is_empty) {
        out.push(Problem::new(
            field("default_annotations"),
            "an annotation key is empty",
        ));
    }
}

/// Problems with a registry host or `host/path` value, `None` if usable.
fn host_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("must not be empty".to_string())
    } else if value.contains("://") {
        Some(format!(
            "`{value}` must be a host (with optional port and path), not a URL; \
             use `insecure: true` for plain HTTP"
        ))
    } else if value.ends_with('/') {
        Some(format!("`{value}` must not end with `/`"))
    } else if value.chars().any(char::is_whitespace) {
        Some(format!("`{value}` contains whitespace"))
    } else {
        None
    }
}

fn check_registry(
    out: &mut Vec<Problem>,
    index: usize,
    registry: &RegistryConfig,
    prefixes: &mut BTreeSet<String>,
) {
    let key = || Key::Registry(index);
    match host_problem(&registry.prefix) {
        Some(problem) => out.push(Problem::new(key(), format!("prefix {problem}"))),
        None => {
            if !prefixes.insert(registry.prefix.clone()) {
                out.push(Problem::new(
                    key(),
                    format!("prefix `{}` appears more than once", registry.prefix),
                ));
            }
        }
    }
    if let Some(location) = &registry.location
        && let Some(problem) = host_problem(location)
    {
        out.push(Problem::new(key(), format!("location {problem}")));
    }
    for (m, mirror) in registry.mirrors.iter().enumerate() {
        if let Some(problem) = host_problem(&mirror.location) {
            out.push(Problem::new(
                key(),
                format!("mirrors[{m}].location {problem}"),
            ));
        }
    }
}
