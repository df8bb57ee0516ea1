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

    /// `at` (a `line:column` and more) in the main file, as errors name it.
    fn at(&self, at: &str) -> String {
        format!("{}:{at}", self.path().display())
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

/// The first commented-out example of configs/crius.yaml whose first
/// line starts with `# {first_line}`, uncommented.
fn shipped_example(first_line: &str) -> String {
    let text = fs::read_to_string(repo_config()).expect("read configs/crius.yaml");
    let first_line = format!("# {first_line}");
    text.lines()
        .skip_while(|line| !line.starts_with(&first_line))
        .take_while(|line| line.starts_with('#'))
        .map(|line| {
            line.strip_prefix("# ")
                .unwrap_or(line.trim_start_matches('#'))
        })
        .map(|line| format!("{line}\n"))
        .collect()
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
    let example = shipped_example("registries:");
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
    let example = shipped_example("runtime_handlers:");
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
    assert!(location.starts_with(&fx.at("")), "{location}");

    // A vm handler without a vm table gets an empty one; other kinds none.
    let fx = Fixture::new(
        "default_runtime_handler: k\nruntime_handlers:\n  k:\n    kind: vm\n    runtime_path: /q\n",
    );
    let k = &fx.load().expect("load").runtime_handlers["k"];
    assert_eq!(k.vm, Some(Default::default()));
    assert_eq!(
        k.vm_location,
        Some(fx.at("4:5")),
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
    assert_eq!(k.vm_location, Some(fx.at("7:7")), "the table's position");
    let fx = Fixture::new(
        "default_runtime_handler: k\nruntime_handlers:\n  k:\n    kind: vm\n    runtime_path: /q\n    \
         vm:\n      shim_path: bin/shim\n",
    );
    let err = fx.err();
    assert!(
        err.contains("runtime_handlers.k.vm: shim_path: must be an absolute path"),
        "{err}"
    );
    let fx = Fixture::new(
        "runtime_handlers:\n  runc:\n    kind: oci\n    runtime_path: /r\n    monitor_path: /m\n    \
         vm:\n      default_vcpus: 2\n",
    );
    let err = fx.err();
    assert!(
        err.contains("only handlers of kind `vm` take a `vm` table"),
        "{err}"
    );
    let fx = Fixture::new(
        "runtime_handlers:\n  runc:\n    kind: oci\n    runtime_path: /r\n    monitor_path: /m\n    \
         call_timeout_seconds: 0\n",
    );
    let err = fx.err();
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
    let expected = fx.at("5:5: unknown field `monitor`");
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
    assert!(err.starts_with(&fx.at("3:29: ")), "{err}");
    assert!(err.contains("max_concurrent_downloads: lots"), "{err}");

    let fx = Fixture::new("runtime_handlers:\n  runc:\n    kind: docker\n");
    let err = fx.err();
    assert!(err.starts_with(&fx.at("3:11: ")), "{err}");
    assert!(err.contains("docker"), "{err}");

    let fx = Fixture::new("cni:\n  bin_dirs: /usr/lib/cni\n");
    assert!(fx.err().starts_with(&fx.at("2:13: ")));
}

#[test]
fn yaml_syntax_errors_and_duplicate_keys_are_located() {
    let fx = Fixture::new("listen: /a\nroot: [/b\n");
    let err = fx.err();
    assert!(err.starts_with(&fx.at("")), "{err}");
    assert!(
        matches!(fx.load(), Err(ConfigError::Parse { line: 2.., .. })),
        "{err}"
    );

    let fx = Fixture::new("listen: /a\nlisten: /b\n");
    assert!(fx.err().starts_with(&fx.at("2:1: duplicate")));
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
    let fx = Fixture::new("registries:\n  - prefix: a.example\n  - prefix: b.example\n").drop_in(
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
    assert!(err.starts_with(&fx.at("1:26: ")), "{err}");
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
    let config = Config {
        registries: vec![
            RegistryConfig::new("docker.io"),
            RegistryConfig::new(""),
            RegistryConfig::new("docker.io"),
            RegistryConfig {
                location: Some("http://x".into()),
                mirrors: vec![MirrorConfig {
                    location: String::new(),
                    insecure: true,
                }],
                ..RegistryConfig::new("quay.io")
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
        config.registries.push(RegistryConfig::new(prefix));
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

#[test]
fn an_otlp_endpoint_must_be_an_http_url_and_is_named_where_set() {
    let fx = Fixture::new("log_level: info\notlp_endpoint: collector:4318\n");
    let err = fx.err();
    assert!(err.starts_with(&fx.at("2:")), "{err}");
    assert!(
        err.contains("otlp_endpoint") && err.contains("collector:4318"),
        "{err}"
    );
    let fx = Fixture::new("otlp_endpoint: http://127.0.0.1:4318/v1/traces\n");
    let config = fx.load().expect("load");
    assert_eq!(
        config.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
}
