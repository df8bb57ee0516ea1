use super::*;
use super::{pax::*, unpacker::*};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use tar::{EntryType, Header};

const MTIME: u64 = 1_600_000_000;

/// What `Tar::entry` writes into an entry's header.
struct Head<'a> {
    name: &'a [u8],
    kind: EntryType,
    mode: u32,
    link: &'a [u8],
    data: &'a [u8],
    /// uid, gid
    owner: (u64, u64),
    /// major, minor
    dev: (u32, u32),
}

/// Builds archives entry by entry, writing names as raw header bytes so
/// that malicious names (`..`, absolute) reach the unpacker unchanged.
struct Tar {
    builder: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// An entry owned by root, with device numbers 0.
    fn raw(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        link: &[u8],
        data: &[u8],
    ) -> &mut Self {
        self.entry(Head {
            name,
            kind,
            mode,
            link,
            data,
            owner: (0, 0),
            dev: (0, 0),
        })
    }

    fn entry(&mut self, entry: Head) -> &mut Self {
        let Head {
            name,
            kind,
            mode,
            link,
            data,
            owner,
            dev,
        } = entry;
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(MTIME);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_size(data.len() as u64);
        h.set_device_major(dev.0)
            .expect("gnu header has device fields");
        h.set_device_minor(dev.1)
            .expect("gnu header has device fields");
        h.set_cksum();
        self.builder
            .append(&h, data)
            .expect("append to in-memory tar");
        self
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Directory, mode, b"", b"")
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Regular, mode, b"", data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            0o777,
            target.as_bytes(),
            b"",
        )
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            target.as_bytes(),
            b"",
        )
    }

    fn device(&mut self, name: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
        self.entry(Head {
            name: name.as_bytes(),
            kind,
            mode: 0o666,
            link: b"",
            data: b"",
            owner: (0, 0),
            dev: (major, minor),
        })
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .expect("append pax");
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().expect("finish tar")
    }
}

struct Fixture {
    base: tempfile::TempDir,
    dest: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let base = tempfile::tempdir().expect("tempdir");
        let dest = base.path().join("root");
        std::fs::create_dir(&dest).expect("create dest");
        Self { base, dest }
    }

    fn unpack(&self, tar: &[u8], opts: &UnpackOptions) -> Result<UnpackedLayer, LayerError> {
        unpack_layer(tar, Compression::None, &self.dest, opts)
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }
}

fn root_opts() -> UnpackOptions {
    UnpackOptions {
        allow_device_nodes: false,
        preserve_ownership: true,
    }
}

fn sha256_id(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn meta(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(p, name, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(Errno::NODATA) => None,
        Err(e) => panic!("getxattr {name} on {}: {e}", p.display()),
    }
}

#[test]
fn media_types_map_to_compression() {
    let cases = [
        ("application/vnd.oci.image.layer.v1.tar", Compression::None),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::Zstd,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            Compression::Zstd,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            Compression::None,
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Compression::Gzip,
        ),
    ];
    for (mt, want) in cases {
        assert_eq!(Compression::from_media_type(mt).expect(mt), want, "{mt}");
    }
    for bad in [
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        "",
    ] {
        let err = Compression::from_media_type(bad).expect_err(bad);
        assert!(
            matches!(err, LayerError::UnsupportedMediaType(_)),
            "{bad}: {err}"
        );
    }
}

#[test]
fn basic_entry_types_round_trip() {
    let fx = Fixture::new();
    let mut t = Tar::new();
    t.dir("etc/", 0o750)
        .file("etc/hosts", 0o640, b"127.0.0.1 localhost\n")
        .symlink("etc/link", "hosts")
        .hardlink("etc/hard", "etc/hosts")
        .raw(b"etc/fifo", EntryType::Fifo, 0o620, b"", b"")
        .entry(Head {
            name: b"bin/su",
            kind: EntryType::Regular,
            mode: 0o4755,
            link: b"",
            data: b"xx",
            owner: (1234, 5678),
            dev: (0, 0),
        })
        .file("implicit/deep/file", 0o600, b"x");
    let tar = t.finish();
    let out = fx.unpack(&tar, &root_opts()).expect("unpack");
    assert_eq!(out.size, 20 + 2 + 1);
    assert_eq!(out.entries, 7);
    assert_eq!(out.skipped_device_nodes, 0);

    let etc = meta(&fx.p("etc"));
    assert!(etc.is_dir());
    assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
    // Directory mtime is applied after its children were created.
    assert_eq!(etc.mtime() as u64, MTIME);

    let hosts = meta(&fx.p("etc/hosts"));
    assert!(hosts.is_file());
    assert_eq!(hosts.permissions().mode() & 0o7777, 0o640);
    assert_eq!(hosts.mtime() as u64, MTIME);
    assert_eq!(hosts.nlink(), 2);
    assert_eq!(
        std::fs::read(fx.p("etc/hosts")).expect("read"),
        b"127.0.0.1 localhost\n"
    );

    let hard = meta(&fx.p("etc/hard"));
    assert_eq!(hard.ino(), hosts.ino());

    let link = meta(&fx.p("etc/link"));
    assert!(link.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(fx.p("etc/link")).expect("readlink"),
        Path::new("hosts")
    );
    assert_eq!(link.mtime() as u64, MTIME);

    let fifo = meta(&fx.p("etc/fifo"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.permissions().mode() & 0o7777, 0o620);

    // Ownership applied before the mode, so the set-uid bit survives.
    let su = meta(&fx.p("bin/su"));
    assert_eq!((su.uid(), su.gid()), (1234, 5678));
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);

    let implicit = meta(&fx.p("implicit/deep"));
    assert!(implicit.is_dir());
    assert_eq!(implicit.permissions().mode() & 0o7777, 0o755);
}

#[test]
fn read_only_directory_still_receives_children() {
    let fx = Fixture::new();
    let tar = Tar::new()
        .dir("ro/", 0o555)
        .file("ro/f", 0o444, b"data")
        .finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    assert_eq!(meta(&fx.p("ro")).permissions().mode() & 0o7777, 0o555);
    assert_eq!(std::fs::read(fx.p("ro/f")).expect("read"), b"data");
}

#[test]
fn diff_id_covers_whole_uncompressed_stream() {
    let mut tar = Tar::new()
        .dir("a/", 0o755)
        .file("a/b", 0o644, b"hello")
        .finish();
    // Writers pad to a record size; the padding is part of the diff_id.
    tar.extend_from_slice(&[0u8; 4096]);
    let want = sha256_id(&tar);

    let fx = Fixture::new();
    let out = fx.unpack(&tar, &root_opts()).expect("plain");
    assert_eq!(out.diff_id, want);
    assert_eq!(std::fs::read(fx.p("a/b")).expect("read"), b"hello");

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    let gz = gz.finish().expect("gzip finish");
    let fx = Fixture::new();
    let out = unpack_layer(gz.as_slice(), Compression::Gzip, &fx.dest, &root_opts()).expect("gzip");
    assert_eq!(out.diff_id, want);
    assert_eq!(std::fs::read(fx.p("a/b")).expect("read"), b"hello");

    let zst = zstd::stream::encode_all(tar.as_slice(), 3).expect("zstd");
    let fx = Fixture::new();
    let out =
        unpack_layer(zst.as_slice(), Compression::Zstd, &fx.dest, &root_opts()).expect("zstd");
    assert_eq!(out.diff_id, want);
    assert_eq!(std::fs::read(fx.p("a/b")).expect("read"), b"hello");
}

#[test]
fn corrupt_or_truncated_streams_fail() {
    let tar = Tar::new().file("f", 0o644, &[7u8; 5000]).finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    let mut gz = gz.finish().expect("gzip finish");
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    let fx = Fixture::new();
    let err = unpack_layer(gz.as_slice(), Compression::Gzip, &fx.dest, &root_opts())
        .expect_err("corrupt gzip must fail");
    assert!(matches!(err, LayerError::Archive { .. }), "{err}");

    let fx = Fixture::new();
    let err = fx
        .unpack(&tar[..1024], &root_opts())
        .expect_err("truncated tar must fail");
    assert!(matches!(err, LayerError::Archive { .. }), "{err}");
}

#[test]
fn whiteouts_become_overlay_char_devices() {
    let fx = Fixture::new();
    let tar = Tar::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.passwd", 0o644, b"")
        .file(".wh.toplevel", 0o644, b"")
        .file("missing/parent/.wh.gone", 0o644, b"")
        .file(".wh..wh.plnk", 0o644, b"")
        .finish();
    let out = fx.unpack(&tar, &root_opts()).expect("unpack");
    assert_eq!(out.skipped_device_nodes, 0);
    for wh in ["etc/passwd", "toplevel", "missing/parent/gone"] {
        let m = meta(&fx.p(wh));
        assert!(m.file_type().is_char_device(), "{wh} is not a char device");
        assert_eq!(m.rdev(), 0, "{wh}");
    }
    assert!(!fx.p("etc/.wh.passwd").exists());
    assert!(!fx.p(".wh..wh.plnk").exists());
    assert!(!fx.p("plnk").exists());
}

#[test]
fn opaque_marker_sets_overlay_xattr() {
    let fx = Fixture::new();
    let tar = Tar::new()
        .dir("var/", 0o755)
        .dir("var/cache/", 0o755)
        .file("var/cache/.wh..wh..opq", 0o644, b"")
        .file("var/cache/new", 0o644, b"n")
        .file("implicit/.wh..wh..opq", 0o644, b"")
        .finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    assert_eq!(
        xattr(&fx.p("var/cache"), OVERLAY_OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&fx.p("implicit"), OVERLAY_OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&fx.p("var"), OVERLAY_OPAQUE_XATTR), None);
    assert!(!fx.p("var/cache/.wh..wh..opq").exists());
    assert!(fx.p("var/cache/new").is_file());
}

#[test]
fn whiteout_and_directory_in_same_layer_make_an_opaque_directory() {
    for order_whiteout_first in [true, false] {
        let fx = Fixture::new();
        let mut t = Tar::new();
        if order_whiteout_first {
            t.file(".wh.d", 0o644, b"").dir("d/", 0o755);
        } else {
            t.dir("d/", 0o755).file(".wh.d", 0o644, b"");
        }
        t.file("d/x", 0o644, b"x");
        let tar = t.finish();
        fx.unpack(&tar, &root_opts()).expect("unpack");
        assert!(meta(&fx.p("d")).is_dir());
        assert_eq!(
            xattr(&fx.p("d"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..]),
            "whiteout first: {order_whiteout_first}"
        );
        assert!(fx.p("d/x").is_file());
    }
    // A file in this layer already hides the lower one; the whiteout
    // must not replace it.
    let fx = Fixture::new();
    let tar = Tar::new()
        .file("f", 0o644, b"keep")
        .file(".wh.f", 0o644, b"")
        .finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    assert_eq!(std::fs::read(fx.p("f")).expect("read"), b"keep");
}

#[test]
fn dotdot_names_are_rejected_and_nothing_lands_outside() {
    for name in [
        &b"../escape"[..],
        b"a/../../escape",
        b"/../escape",
        b"ok/..",
    ] {
        let fx = Fixture::new();
        let tar = Tar::new()
            .file("before", 0o644, b"b")
            .raw(name, EntryType::Regular, 0o644, b"", b"pwned")
            .finish();
        let err = fx.unpack(&tar, &root_opts()).expect_err("must be rejected");
        assert!(
            matches!(&err, LayerError::UnsafePath { path, .. } if path.as_bytes() == name),
            "{}: {err}",
            String::from_utf8_lossy(name)
        );
        assert!(!fx.base.path().join("escape").exists());
        assert!(
            err.to_string().contains(&*String::from_utf8_lossy(name)),
            "{err}"
        );
    }
}

#[test]
fn absolute_names_land_inside() {
    let fx = Fixture::new();
    let tar = Tar::new()
        .raw(b"/etc/x", EntryType::Regular, 0o644, b"", b"inside")
        .raw(b"///./etc//y", EntryType::Regular, 0o644, b"", b"too")
        .finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    assert_eq!(std::fs::read(fx.p("etc/x")).expect("read"), b"inside");
    assert_eq!(std::fs::read(fx.p("etc/y")).expect("read"), b"too");
}

#[test]
fn symlinked_parents_cannot_escape() {
    let fx = Fixture::new();
    let outside = fx.base.path().join("outside");
    std::fs::create_dir(&outside).expect("outside dir");
    let outside_str = outside.to_str().expect("utf-8 temp path");

    // Absolute symlink to an existing host directory: inside the root it
    // points at a path that does not exist, so the entry fails.
    let tar = Tar::new()
        .symlink("evil", outside_str)
        .file("evil/pwned", 0o644, b"pwned")
        .finish();
    let res = fx.unpack(&tar, &root_opts());
    assert!(
        !outside.join("pwned").exists(),
        "wrote through an absolute symlink"
    );
    if res.is_ok() {
        assert!(
            fx.p(&format!("{}/pwned", outside_str.trim_start_matches('/')))
                .exists()
        );
    }

    // Symlinks to the host root, relative and absolute, followed by
    // entries aimed at a host path. That host path is a scratch directory,
    // so even a broken unpacker cannot damage the machine running the
    // test; a correct one lands everything inside the root.
    let fx2 = Fixture::new();
    let scratch = fx2.base.path().join("outside");
    std::fs::create_dir(&scratch).expect("scratch dir");
    let rel = scratch
        .strip_prefix("/")
        .expect("absolute temp path")
        .to_str()
        .expect("utf-8 temp path")
        .to_owned();
    let tar = Tar::new()
        .symlink("up", "../../../../../../../../../..")
        .file(&format!("up/{rel}/pwned2"), 0o644, b"pwned")
        .symlink("slash", "/")
        .file(&format!("slash/{rel}/pwned3"), 0o644, b"pwned")
        .finish();
    fx2.unpack(&tar, &root_opts())
        .expect("clamped symlinks stay inside");
    assert!(!scratch.join("pwned2").exists(), "escaped via ../..");
    assert!(!scratch.join("pwned3").exists(), "escaped via /");
    assert_eq!(
        std::fs::read(fx2.p(&format!("{rel}/pwned2"))).expect("landed inside"),
        b"pwned"
    );
    assert_eq!(
        std::fs::read(fx2.p(&format!("{rel}/pwned3"))).expect("landed inside"),
        b"pwned"
    );

    // Only now (resolution is proven to stay inside) the classic case.
    let fx3 = Fixture::new();
    let tar = Tar::new()
        .symlink("evil", "/")
        .file("evil/etc/passwd", 0o644, b"root::0:0::/:/bin/sh\n")
        .finish();
    fx3.unpack(&tar, &root_opts()).expect("lands inside");
    assert_eq!(
        std::fs::read(fx3.p("etc/passwd")).expect("landed inside"),
        b"root::0:0::/:/bin/sh\n"
    );
    let host = std::fs::read("/etc/passwd").unwrap_or_default();
    assert_ne!(host, b"root::0:0::/:/bin/sh\n");
}

#[test]
fn entry_replacing_a_symlink_does_not_write_through_it() {
    let fx = Fixture::new();
    let victim = fx.base.path().join("victim");
    std::fs::write(&victim, b"original").expect("victim");
    let tar = Tar::new()
        .symlink("f", victim.to_str().expect("utf-8"))
        .file("f", 0o644, b"overwritten")
        .symlink("d", victim.to_str().expect("utf-8"))
        .dir("d/", 0o755)
        .finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"original");
    assert_eq!(std::fs::read(fx.p("f")).expect("f"), b"overwritten");
    assert!(meta(&fx.p("d")).is_dir());
}

#[test]
fn hardlinks_cannot_reach_outside() {
    let fx = Fixture::new();
    let tar = Tar::new().hardlink("h", "../../etc/passwd").finish();
    let err = fx.unpack(&tar, &root_opts()).expect_err("must be rejected");
    assert!(matches!(err, LayerError::UnsafePath { .. }), "{err}");
    assert!(!fx.p("h").exists());

    // Through a symlinked parent the target resolves inside the root,
    // where it does not exist.
    let passwd_links = std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
    let fx = Fixture::new();
    let tar = Tar::new()
        .symlink("s", "/etc")
        .hardlink("h2", "s/passwd")
        .finish();
    let err = fx.unpack(&tar, &root_opts()).expect_err("must fail");
    assert!(matches!(err, LayerError::InvalidEntry { .. }), "{err}");
    assert!(!fx.p("h2").exists());
    assert_eq!(
        std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
        passwd_links
    );

    // A hardlink to a symlink links the symlink itself.
    let fx = Fixture::new();
    let tar = Tar::new()
        .symlink("s", "/etc/passwd")
        .hardlink("h3", "s")
        .finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    assert!(meta(&fx.p("h3")).file_type().is_symlink());
}

#[test]
fn device_nodes_follow_the_option() {
    let tar = Tar::new()
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/sda", EntryType::Block, 8, 0)
        .hardlink("dev/null2", "dev/null")
        .device("dev/wh", EntryType::Char, 0, 0)
        .finish();

    let fx = Fixture::new();
    let out = fx.unpack(&tar, &root_opts()).expect("skipped, not failed");
    assert_eq!(out.skipped_device_nodes, 2);
    assert!(!fx.p("dev/null").exists());
    assert!(!fx.p("dev/sda").exists());
    assert!(!fx.p("dev/null2").exists());
    // A 0/0 char device is a whiteout, not a usable device: kept.
    assert!(meta(&fx.p("dev/wh")).file_type().is_char_device());

    let fx = Fixture::new();
    let opts = UnpackOptions {
        allow_device_nodes: true,
        preserve_ownership: true,
    };
    let out = fx.unpack(&tar, &opts).expect("unpack");
    assert_eq!(out.skipped_device_nodes, 0);
    let null = meta(&fx.p("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);
    let sda = meta(&fx.p("dev/sda"));
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), rustix::fs::makedev(8, 0));
    assert_eq!(meta(&fx.p("dev/null2")).ino(), null.ino());
}

#[test]
fn later_entries_replace_earlier_ones() {
    let fx = Fixture::new();
    let tar = Tar::new()
        .file("a", 0o644, b"file")
        .dir("a/", 0o700)
        .dir("b/", 0o755)
        .file("b/child", 0o644, b"c")
        .dir("b/sub/", 0o755)
        .file("b/sub/deeper", 0o644, b"d")
        .file("b", 0o600, b"now a file")
        .file("c", 0o644, b"one")
        .file("c", 0o600, b"two")
        .dir("d/", 0o700)
        .dir("d/", 0o711)
        .finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    assert!(meta(&fx.p("a")).is_dir());
    assert_eq!(std::fs::read(fx.p("b")).expect("b"), b"now a file");
    assert_eq!(std::fs::read(fx.p("c")).expect("c"), b"two");
    assert_eq!(meta(&fx.p("c")).permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta(&fx.p("d")).permissions().mode() & 0o7777, 0o711);
}

#[test]
fn xattrs_from_pax_records() {
    // VFS_CAP_REVISION_2 with the effective flag, CAP_NET_RAW permitted.
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    let fx = Fixture::new();
    let mut t = Tar::new();
    t.pax(&[
        ("SCHILY.xattr.user.note", b"hello"),
        ("SCHILY.xattr.trusted.evil", b"x"),
        ("SCHILY.xattr.user.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.security.capability", &cap),
    ])
    .raw(b"bin/ping", EntryType::Regular, 0o755, b"", b"elf")
    .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
    .dir("notopaque/", 0o755);
    let tar = t.finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    let ping = fx.p("bin/ping");
    assert_eq!(xattr(&ping, "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(xattr(&ping, "trusted.evil"), None);
    assert_eq!(xattr(&ping, "user.overlay.redirect"), None);
    assert!(xattr(&ping, "security.capability").is_some());
    assert_eq!(xattr(&fx.p("notopaque"), OVERLAY_OPAQUE_XATTR), None);
}

#[test]
fn long_names_and_pax_paths() {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &long, &b"long"[..])
        .expect("gnu long name");
    b.append_pax_extensions([
        ("path", b"pax/name".as_slice()),
        ("mtime", b"1234567890.5".as_slice()),
    ])
    .expect("pax");
    let mut h = Header::new_ustar();
    h.set_path("short").expect("path");
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    b.append(&h, &b"pax"[..]).expect("append");
    let tar = b.into_inner().expect("finish");

    let fx = Fixture::new();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    assert_eq!(std::fs::read(fx.p(&long)).expect("long"), b"long");
    assert_eq!(std::fs::read(fx.p("pax/name")).expect("pax"), b"pax");
    assert!(!fx.p("short").exists());
    let m = meta(&fx.p("pax/name"));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 500_000_000));
}

#[test]
fn unsupported_or_invalid_entries_fail_clearly() {
    let fx = Fixture::new();
    let tar = Tar::new()
        .raw(b"vol", EntryType::new(b'V'), 0o644, b"", b"")
        .finish();
    let err = fx.unpack(&tar, &root_opts()).expect_err("unknown type");
    assert!(matches!(err, LayerError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("vol"), "{err}");

    let fx = Fixture::new();
    let tar = Tar::new()
        .raw(b"./", EntryType::Regular, 0o644, b"", b"x")
        .finish();
    let err = fx.unpack(&tar, &root_opts()).expect_err("file at the root");
    assert!(matches!(err, LayerError::InvalidEntry { .. }), "{err}");

    let fx = Fixture::new();
    let tar = Tar::new()
        .file("notdir", 0o644, b"")
        .file("notdir/child", 0o644, b"")
        .finish();
    let err = fx.unpack(&tar, &root_opts()).expect_err("file as parent");
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn root_directory_entry_sets_root_metadata() {
    let fx = Fixture::new();
    let tar = Tar::new().dir("./", 0o711).file("x", 0o644, b"").finish();
    fx.unpack(&tar, &root_opts()).expect("unpack");
    let m = meta(&fx.dest);
    assert_eq!(m.permissions().mode() & 0o7777, 0o711);
    assert_eq!(m.mtime() as u64, MTIME);
}

#[test]
fn pax_time_parsing() {
    let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
    assert_eq!(t("10"), Some((10, 0)));
    assert_eq!(t("10.25"), Some((10, 250_000_000)));
    assert_eq!(t("10.1234567891"), Some((10, 123_456_789)));
    assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(t("x"), None);
    assert_eq!(t("1.x"), None);
}
