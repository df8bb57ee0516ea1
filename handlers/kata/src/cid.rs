//! Guest vsock CIDs for `vm.vsock: vhost`, where every VM on the host
//! shares the kernel's `/dev/vhost-vsock` and so needs a CID of its own.
//! (With hybrid vsock each VM has its own vhost-device-vsock and the CID
//! does not matter.)
//!
//! As Kata does, a CID is free when `VHOST_VSOCK_SET_GUEST_CID` on a fresh
//! `/dev/vhost-vsock` descriptor succeeds; the descriptor is closed again
//! and QEMU claims the CID for good a moment later. The shim records the
//! CID in its `handler_state` so a restore knows it.

use std::os::fd::AsRawFd;
use std::path::Path;

/// The kernel's vhost-vsock device.
pub const VHOST_VSOCK_DEVICE: &str = "/dev/vhost-vsock";
/// How many CIDs above the configured base are tried.
const SEARCH: u32 = 4096;
/// `_IOW(VHOST_VIRTIO, 0x60, __u64)`.
const VHOST_VSOCK_SET_GUEST_CID: libc::c_ulong = 0x4008_af60;

/// Why no CID could be had.
#[derive(Debug, thiserror::Error)]
pub enum CidError {
    #[error("cannot open {VHOST_VSOCK_DEVICE}: {0}")]
    Open(std::io::Error),
    #[error("no free vsock CID in {first}..{last}")]
    Exhausted { first: u32, last: u32 },
    #[error("{VHOST_VSOCK_DEVICE}: {0}")]
    Ioctl(std::io::Error),
}

/// Whether `cid` is free on `device` (claims it while the probe runs).
fn probe(device: &Path, cid: u32) -> Result<bool, CidError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(CidError::Open)?;
    let value: u64 = cid.into();
    // SAFETY: VHOST_VSOCK_SET_GUEST_CID reads one u64 through the pointer,
    // which is valid for the call; the descriptor is open and ours.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), VHOST_VSOCK_SET_GUEST_CID, &value) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EADDRINUSE) => Ok(false),
        _ => Err(CidError::Ioctl(err)),
    }
}

/// The first free CID at or above `base`, starting the search at an
/// offset derived from `seed` (the pod id) so concurrent starts seldom try
/// the same CIDs.
pub fn allocate(base: u32, seed: &str) -> Result<u32, CidError> {
    allocate_on(Path::new(VHOST_VSOCK_DEVICE), base, seed, probe)
}

fn allocate_on(
    device: &Path,
    base: u32,
    seed: &str,
    mut probe: impl FnMut(&Path, u32) -> Result<bool, CidError>,
) -> Result<u32, CidError> {
    let offset = seed
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % SEARCH;
    for i in 0..SEARCH {
        let cid = base.saturating_add((offset + i) % SEARCH);
        if probe(device, cid)? {
            return Ok(cid);
        }
    }
    Err(CidError::Exhausted {
        first: base,
        last: base.saturating_add(SEARCH - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_cids_are_skipped_and_the_range_is_bounded() {
        let taken = |_: &Path, cid: u32| Ok(cid.is_multiple_of(2));
        let cid = allocate_on(Path::new("/x"), 3, "pod", taken).unwrap();
        assert!(
            (3..3 + SEARCH).contains(&cid) && cid.is_multiple_of(2),
            "{cid}"
        );
        let a = allocate_on(Path::new("/x"), 3, "pod-a", |_, _| Ok(true)).unwrap();
        let b = allocate_on(Path::new("/x"), 3, "pod-b", |_, _| Ok(true)).unwrap();
        assert_ne!(a, b, "different pods start their search elsewhere");
        let none = allocate_on(Path::new("/x"), 3, "pod", |_, _| Ok(false)).unwrap_err();
        assert!(
            matches!(none, CidError::Exhausted { first: 3, .. }),
            "{none}"
        );
    }

    #[test]
    fn a_missing_device_is_an_error() {
        let err = probe(Path::new("/nonexistent/vhost-vsock"), 3).unwrap_err();
        assert!(matches!(err, CidError::Open(_)), "{err}");
    }
}
