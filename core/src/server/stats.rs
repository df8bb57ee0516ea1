//! Helpers of the RuntimeService's list streams, stats and runtime-config
//! RPCs (kept out of `runtime.rs` to keep it readable).

use std::net::IpAddr;
use std::pin::Pin;

use futures::Stream;
use tonic::Status;

/// Items per message of the paginated list streams (StreamPodSandboxes,
/// StreamContainers); stats messages carry fewer, larger items.
pub const LIST_CHUNK: usize = 100;
pub const STATS_CHUNK: usize = 50;

pub type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `items` as a stream of pages of at most `size` items (no message at all
/// for an empty list, as StreamImages does).
pub fn paged<T, R>(items: Vec<T>, size: usize, page: impl Fn(Vec<T>) -> R) -> RpcStream<R>
where
    T: Clone,
    R: Send + 'static,
{
    let pages: Vec<Result<R, Status>> = items
        .chunks(size.max(1))
        .map(|c| Ok(page(c.to_vec())))
        .collect();
    Box::pin(futures::stream::iter(pages))
}

/// Checks the kubelet's pod CIDR: empty (none), or comma-separated
/// `address/prefix` entries (dual stack sends one per family).
pub fn check_pod_cidr(cidr: &str) -> Result<(), Status> {
    if cidr.is_empty() {
        return Ok(());
    }
    if cidr.len() > 256 {
        return Err(Status::invalid_argument(
            "UpdateRuntimeConfig: pod_cidr is longer than 256 bytes",
        ));
    }
    for part in cidr.split(',') {
        let part = part.trim();
        let bad = || {
            Status::invalid_argument(format!(
                "UpdateRuntimeConfig: pod_cidr entry {part:?} is not an address/prefix CIDR"
            ))
        };
        let (addr, prefix) = part.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn pod_cidrs() {
        for ok in [
            "",
            "10.244.0.0/24",
            "10.244.0.0/24,fd00:10::/64",
            "0.0.0.0/0",
        ] {
            assert!(check_pod_cidr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.244.0.0",
            "10.244.0.0/33",
            "x/24",
            "fd00::/129",
            "10.0.0.0/24,",
        ] {
            let err = check_pod_cidr(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[tokio::test]
    async fn pages_hold_at_most_the_chunk() {
        let pages: Vec<_> = paged((0..250).collect::<Vec<u32>>(), 100, |v| v)
            .map(|p| p.unwrap().len())
            .collect()
            .await;
        assert_eq!(pages, [100, 100, 50]);
        let none: Vec<_> = paged(Vec::<u32>::new(), 100, |v| v).collect().await;
        assert!(none.is_empty());
    }
}
