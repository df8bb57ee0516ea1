//! Helpers for the privileged tests. Whether a test without root or a
//! tool skips or fails is decided by `crius_testkit` (fails under CI).

use std::path::Path;

pub use crius_testkit::{require_root, require_tools};

/// Whether `path` is a mount point according to /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    // Field 5 is the mount point (octal-escaped; test paths have no spaces).
    info.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

/// A short random hex string for unique names.
pub fn random_suffix() -> String {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    hex::encode(b)
}

/// A random byte (for test subnets).
pub fn random_byte() -> u8 {
    let s = random_suffix();
    u8::from_str_radix(&s[..2], 16).unwrap()
}
