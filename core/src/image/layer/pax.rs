//! PAX records and tar header metadata of an entry.

use super::unpacker::*;
use super::*;

/// PAX records of one entry that we act on.
#[derive(Default)]
pub(super) struct PaxInfo {
    pub(super) xattrs: Vec<(CString, Vec<u8>)>,
    pub(super) mtime: Option<Timespec>,
    pub(super) gnu_sparse: bool,
}

pub(super) fn read_pax<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    entry_path: &str,
) -> Result<PaxInfo, LayerError> {
    let mut info = PaxInfo::default();
    let Some(exts) = entry.pax_extensions().map_err(|e| LayerError::Archive {
        context: format!("PAX records of entry {entry_path:?}"),
        source: e,
    })?
    else {
        return Ok(info);
    };
    for ext in exts {
        let ext = ext.map_err(|e| LayerError::Archive {
            context: format!("PAX records of entry {entry_path:?}"),
            source: e,
        })?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            if xattr_allowed(name) {
                let name = CString::new(name).map_err(|_| LayerError::InvalidEntry {
                    path: entry_path.to_owned(),
                    reason: "xattr name contains a NUL byte".into(),
                })?;
                info.xattrs.push((name, ext.value_bytes().to_vec()));
            } else {
                debug!(
                    entry = %entry_path,
                    xattr = %String::from_utf8_lossy(name),
                    "ignoring xattr outside the allowed namespaces"
                );
            }
        } else if key == b"mtime" {
            info.mtime = parse_pax_time(ext.value_bytes());
        } else if key.starts_with(b"GNU.sparse.") {
            info.gnu_sparse = true;
        }
    }
    Ok(info)
}

/// Only file capabilities and user xattrs are applied. `trusted.*` (which
/// includes overlayfs' own metadata), `security.*` labels and ACLs are not
/// ours to take from an image; `user.overlay.*` is overlayfs metadata when
/// a filesystem is mounted with `userxattr`.
pub(crate) fn xattr_allowed(name: &[u8]) -> bool {
    name == b"security.capability"
        || (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
}

/// Parses a PAX time (`[-]seconds[.fraction]`).
pub(super) fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let negative = int.starts_with('-');
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10_i64.pow(8 - u32::try_from(i).ok()?);
    }
    if negative && nanos > 0 {
        Some(Timespec {
            tv_sec: secs.checked_sub(1)?,
            tv_nsec: 1_000_000_000 - nanos,
        })
    } else {
        Some(Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        })
    }
}

pub(super) fn header_meta(
    header: &tar::Header,
    pax: PaxInfo,
    entry_path: &str,
) -> Result<Meta, LayerError> {
    let bad = |what: &str, e: io::Error| LayerError::InvalidEntry {
        path: entry_path.to_owned(),
        reason: format!("{what}: {e}"),
    };
    let old = header.as_old();
    let mode = blank_is_zero(&old.mode, header.mode()).map_err(|e| bad("mode", e))? & 0o7777;
    // The tar crate already applied PAX uid/gid records to the header.
    let uid = blank_is_zero(&old.uid, header.uid()).map_err(|e| bad("uid", e))?;
    let gid = blank_is_zero(&old.gid, header.gid()).map_err(|e| bad("gid", e))?;
    // u32::MAX is "no change" for chown, not an id.
    let id = |what: &str, v: u64| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| LayerError::InvalidEntry {
                path: entry_path.to_owned(),
                reason: format!("{what} {v} out of range"),
            })
    };
    let uid = id("uid", uid)?;
    let gid = id("gid", gid)?;
    let mtime = match pax.mtime {
        Some(t) => t,
        None => {
            let secs = blank_is_zero(&old.mtime, header.mtime()).map_err(|e| bad("mtime", e))?;
            Timespec {
                tv_sec: i64::try_from(secs).map_err(|_| LayerError::InvalidEntry {
                    path: entry_path.to_owned(),
                    reason: format!("mtime {secs} out of range"),
                })?,
                tv_nsec: 0,
            }
        }
    };
    Ok(Meta {
        mode: Mode::from_bits_truncate(mode),
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mtime,
        xattrs: pax.xattrs,
    })
}

/// Reads an empty (all NUL/space) numeric header field as 0, as Go's
/// archive/tar (which wrote most layers out there) does; the tar crate
/// refuses such fields.
pub(super) fn blank_is_zero<T: Default>(field: &[u8], parsed: io::Result<T>) -> io::Result<T> {
    match parsed {
        Err(_) if field.iter().all(|b| *b == 0 || *b == b' ') => Ok(T::default()),
        other => other,
    }
}
