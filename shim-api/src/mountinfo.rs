//! The one reader of `/proc/<pid>/mountinfo` for the core and the handlers
//! (cgroup hierarchies, mount propagation, mounts below a directory, the
//! filesystem holding a path).
//!
//! Not `procfs-core`: it keeps mount points as the kernel escaped them
//! (`\040` for a space, `\134` for a backslash), so a path with a space
//! would never match.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo (`proc_pid_mountinfo(5)`), with the fields crius
/// reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted, unescaped.
    pub mount_point: PathBuf,
    /// The optional fields (`shared:N`, `master:N`, `propagate_from:N`,
    /// `unbindable`).
    pub optional_fields: Vec<String>,
    /// The filesystem type (`cgroup`, `cgroup2`, `overlay`, ...).
    pub fs_type: String,
    /// The mount source (`none`, a device, ...).
    pub source: String,
    /// The per-superblock options, comma-separated as the kernel wrote them.
    pub super_options: String,
}

impl MountEntry {
    /// Whether this mount propagates to peers (`shared:N`).
    pub fn is_shared(&self) -> bool {
        self.optional_fields
            .iter()
            .any(|f| f.starts_with("shared:"))
    }

    /// Whether this mount receives from a master (`master:N`).
    pub fn is_slave(&self) -> bool {
        self.optional_fields
            .iter()
            .any(|f| f.starts_with("master:"))
    }

    /// The per-superblock options one by one.
    pub fn super_options(&self) -> impl Iterator<Item = &str> {
        self.super_options.split(',').filter(|o| !o.is_empty())
    }
}

/// The entries of mountinfo `text`, in the kernel's order (a later entry
/// on the same mount point is mounted on top). Malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (pre, post) = line.split_once(" - ")?;
    let mut pre = pre.split(' ');
    // id, parent id, major:minor, root, mount point, mount options.
    let mount_point = unescape(pre.nth(4)?);
    pre.next()?;
    let optional_fields = pre.map(str::to_string).collect();
    let mut post = post.split(' ');
    Some(MountEntry {
        mount_point,
        optional_fields,
        fs_type: post.next()?.to_string(),
        source: post.next().unwrap_or("").to_string(),
        super_options: post.next().unwrap_or("").to_string(),
    })
}

/// The mounts of the calling process's mount namespace.
pub fn read_self() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// A mountinfo path field decoded: the kernel writes space, tab, newline
/// and backslash as a backslash and three octal digits.
pub fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_and_others_kept() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/a\\134b"), PathBuf::from("/a\\b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape("/x\\é1"), PathBuf::from("/x\\é1"));
        assert_eq!(unescape("/end\\04"), PathBuf::from("/end\\04"));
    }

    #[test]
    fn fields_are_read_around_the_optional_ones() {
        let text = "\
36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue
37 35 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
garbage
";
        let entries = parse(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mount_point, PathBuf::from("/mnt/with space"));
        assert!(entries[0].is_shared() && entries[0].is_slave());
        assert_eq!(entries[0].fs_type, "ext3");
        assert_eq!(entries[0].source, "/dev/root");
        assert_eq!(
            entries[0].super_options().collect::<Vec<_>>(),
            ["rw", "errors=continue"]
        );
        assert!(entries[1].optional_fields.is_empty());
        assert!(!entries[1].is_shared() && !entries[1].is_slave());
        assert_eq!(entries[1].fs_type, "cgroup");
    }
}
