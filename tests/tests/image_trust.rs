//! Signature policy through the CRI socket: images signed with GPG (simple
//! signing, published on a lookaside HTTP server) and cosign-style (an
//! ECDSA P-256 signature attached in the registry) pull under a
//! `signedBy` / `sigstoreSigned` policy; unsigned images and images
//! signed by another key are refused naming the requirement, and nothing
//! of them is kept; a per-namespace policy applies to that namespace's
//! pulls only. Keys and signatures are made by `gpg` and `openssl`, the
//! lookaside server is Python's `http.server`: tools we did not write.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crius_proto::cri;
use crius_tests::image::{self, Compression, ManifestFormat, PushedImage};
use crius_tests::registry::{REGISTRY_BIN, Registry, free_port};
use crius_tests::{Daemon, require_root_and_tools};
use tonic::Code;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A throw-away GnuPG home with one signing key.
struct GpgKey {
    home: tempfile::TempDir,
    uid: String,
}

impl GpgKey {
    fn new(name: &str) -> Self {
        let home = tempfile::Builder::new()
            .prefix("crius-gpg-")
            .tempdir()
            .unwrap();
        let uid = format!("{name} <{name}@crius.test>");
        run(Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args(["--batch", "--passphrase", "", "--quick-gen-key", &uid])
            .args(["rsa2048", "sign", "never"]));
        Self { home, uid }
    }

    /// The public key, binary (`gpg --export`).
    fn export(&self, to: &Path) {
        let key = run(Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--export", &self.uid]));
        assert!(!key.is_empty());
        std::fs::write(to, key).unwrap();
    }

    /// `gpg --sign` of `payload` (binary, compressed: what containers'
    /// tools write).
    fn sign(&self, payload: &[u8], to: &Path) {
        let input = to.with_extension("payload");
        std::fs::write(&input, payload).unwrap();
        run(Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--yes", "--local-user", &self.uid, "--sign"])
            .arg("--output")
            .arg(to)
            .arg(&input));
    }
}

/// An ECDSA P-256 key pair made by openssl (what `cosign generate-key-pair` makes).
struct EcKey {
    private: PathBuf,
    public: PathBuf,
}

impl EcKey {
    fn new(dir: &Path, name: &str) -> Self {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        run(Command::new("openssl")
            .args([
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
            ])
            .arg(&private));
        run(Command::new("openssl")
            .args(["ec", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public));
        Self { private, public }
    }

    /// Base64 of the DER signature of `payload` (SHA-256).
    fn sign(&self, payload: &[u8]) -> String {
        use base64::Engine as _;
        let input = self.private.with_extension("payload");
        std::fs::write(&input, payload).unwrap();
        let der = run(Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.private)
            .arg(&input));
        base64::engine::general_purpose::STANDARD.encode(der)
    }
}

fn simple_signing(kind: &str, digest: &str, reference: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "type": kind,
            "image": {"docker-manifest-digest": digest},
            "identity": {"docker-reference": reference}
        },
        "optional": {"creator": "crius tests"}
    })
    .to_string()
    .into_bytes()
}

/// Attaches a cosign signature: an OCI manifest under `sha256-<hex>.sig`
/// whose layer is the payload, its signature in the layer annotation.
async fn attach_cosign(registry: &Registry, image: &PushedImage, key: &EcKey) {
    let reference = format!("{}/{}", registry.addr(), image.name);
    let payload = simple_signing(
        "cosign container image signature",
        &image.manifest_digest,
        &reference,
    );
    let signature = key.sign(&payload);
    let config = b"{}";
    let config_digest = image::push_blob(registry, &image.name, config)
        .await
        .unwrap();
    let payload_digest = image::push_blob(registry, &image.name, &payload)
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": payload_digest, "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": signature}
        }]
    })
    .to_string();
    let tag = format!("{}.sig", image.manifest_digest.replacen(':', "-", 1));
    image::push_manifest(
        registry,
        &image.name,
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    )
    .await
    .unwrap();
}

/// `python3 -m http.server` serving `dir`; killed on drop.
struct StaticServer {
    child: std::process::Child,
    url: String,
}

impl StaticServer {
    async fn start(dir: &Path) -> Self {
        let port = free_port().unwrap();
        let mut child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self { child, url };
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("http.server did not listen on {port}");
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn pull(
    daemon: &Daemon,
    image: &str,
    namespace: Option<&str>,
) -> Result<String, tonic::Status> {
    let sandbox_config = namespace.map(|ns| cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "trust".into(),
            uid: "trust".into(),
            namespace: ns.into(),
            attempt: 0,
        }),
        ..Default::default()
    });
    daemon
        .image()
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

fn blobs_in_store(daemon: &Daemon) -> Vec<PathBuf> {
    crius_tests::files_below(&daemon.root().join("blobs"))
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_policy_accepts_signed_images_and_refuses_the_rest() {
    if !require_root_and_tools(&[
        REGISTRY_BIN,
        image::BUSYBOX_STATIC,
        "gpg",
        "openssl",
        "python3",
    ]) {
        return;
    }
    let registry = Registry::start().await.expect("registry starts");
    let push = |name: &'static str| {
        let registry = &registry;
        async move {
            image::push_busybox(registry, name, "1", ManifestFormat::Oci, Compression::Gzip)
                .await
                .expect("push")
        }
    };
    let signed = push("signed").await;
    let unsigned = push("unsigned").await;
    let wrong_gpg = push("wrongkey").await;
    let cosigned = push("cosigned").await;
    let wrong_cosign = push("cosignedwrong").await;
    let plain = push("plain").await;

    let dir = tempfile::Builder::new()
        .prefix("crius-trust-")
        .tempdir()
        .unwrap();
    let trusted = GpgKey::new("trusted");
    let stranger = GpgKey::new("stranger");
    let keyring = dir.path().join("trusted.gpg");
    trusted.export(&keyring);

    // The lookaside store, as containers' signature-protocols lay it out.
    let lookaside = dir.path().join("lookaside");
    for (image, key) in [(&signed, &trusted), (&wrong_gpg, &stranger)] {
        let hex = image.manifest_digest.trim_start_matches("sha256:");
        let at = lookaside.join(format!("{}@sha256={hex}", image.name));
        std::fs::create_dir_all(&at).unwrap();
        key.sign(
            &simple_signing(
                "atomic container signature",
                &image.manifest_digest,
                &image.reference(&registry),
            ),
            &at.join("signature-1"),
        );
    }
    let server = StaticServer::start(&lookaside).await;
    let registries_d = dir.path().join("registries.d");
    std::fs::create_dir_all(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("test.yaml"),
        format!(
            "docker:\n  \"{}\":\n    lookaside: {}\n",
            registry.addr(),
            server.url
        ),
    )
    .unwrap();

    let cosign_key = EcKey::new(dir.path(), "cosign");
    let other_cosign_key = EcKey::new(dir.path(), "other");
    attach_cosign(&registry, &cosigned, &cosign_key).await;
    attach_cosign(&registry, &wrong_cosign, &other_cosign_key).await;

    let addr = registry.addr();
    let policy = dir.path().join("policy.json");
    let gpg_rule =
        serde_json::json!([{"type": "signedBy", "keyType": "GPGKeys", "keyPath": keyring}]);
    let cosign_rule = serde_json::json!([{"type": "sigstoreSigned", "keyPath": cosign_key.public,
        "signedIdentity": {"type": "matchRepository"}}]);
    std::fs::write(
        &policy,
        serde_json::json!({
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {"docker": {
                format!("{addr}/signed"): gpg_rule,
                format!("{addr}/unsigned"): gpg_rule,
                format!("{addr}/wrongkey"): gpg_rule,
                format!("{addr}/cosigned"): cosign_rule,
                format!("{addr}/cosignedwrong"): cosign_rule,
            }}
        })
        .to_string(),
    )
    .unwrap();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(
        policy_dir.join("strict.json"),
        r#"{"default":[{"type":"reject"}]}"#,
    )
    .unwrap();

    let daemon = Daemon::builder()
        .registry(&registry)
        .signature_trust(&policy, &policy_dir, &registries_d)
        .start()
        .await
        .expect("daemon starts");

    for image in [&signed, &cosigned] {
        pull(&daemon, &image.reference(&registry), None)
            .await
            .unwrap_or_else(|e| panic!("{} is signed and pulls: {e:?}", image.name));
    }
    let kept = blobs_in_store(&daemon);

    for (image, requirement, why) in [
        (&unsigned, "signedBy", "no GPG signature"),
        (&wrong_gpg, "signedBy", "not signed by a key of the keyring"),
        (
            &wrong_cosign,
            "sigstoreSigned",
            "not signed by any of the policy's keys",
        ),
    ] {
        let err = pull(&daemon, &image.reference(&registry), None)
            .await
            .expect_err("refused by the policy");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains(requirement) && err.message().contains(why),
            "{}: the refusal names {requirement} and why: {}",
            image.name,
            err.message()
        );
    }
    assert_eq!(
        blobs_in_store(&daemon),
        kept,
        "refused pulls stored nothing"
    );
    let images = daemon
        .image()
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    // The test images share their content, so one record carries the tags.
    let mut tags: Vec<String> = images.iter().flat_map(|i| i.repo_tags.clone()).collect();
    tags.sort();
    assert_eq!(
        tags,
        [cosigned.reference(&registry), signed.reference(&registry)],
        "only the signed images are stored"
    );

    // The `strict` namespace's own policy rejects everything; other
    // namespaces keep the node's policy.
    let err = pull(&daemon, &plain.reference(&registry), Some("strict"))
        .await
        .expect_err("refused in namespace strict");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("reject") && err.message().contains("strict.json"),
        "{}",
        err.message()
    );
    pull(&daemon, &plain.reference(&registry), Some("relaxed"))
        .await
        .expect("namespace relaxed uses the node's policy");
}
