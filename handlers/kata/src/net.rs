//! Bridging the pod's network namespace (set up by CNI) to the VM: a tap
//! device next to the CNI interface, with tc `mirred` redirecting every
//! frame between the two, so the guest NIC (given the CNI interface's MAC,
//! IP and routes through the agent) *is* the pod's interface on the wire.
//! What CNI configured comes from the core (`RunSandboxRequest.network`);
//! nothing is probed in the netns.
//!
//! The plumbing is done over rtnetlink (and the tun ioctls for the tap), not
//! with `ip`/`tc`: errors are typed and the host needs neither binary. A
//! netlink socket belongs to the netns it was opened in, so every request
//! runs on a thread of its own that has entered the pod's netns.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec};

/// The tap device QEMU attaches to, inside the pod's netns.
pub const TAP_NAME: &str = "tap0_kata";

/// The pod interface as CNI configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub name: String,
    pub mac: String,
    pub mtu: u64,
    /// (address, prefix length, is IPv6)
    pub addresses: Vec<(String, u8, bool)>,
}

/// One route of the pod netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    /// CIDR or `default`.
    pub dest: String,
    pub gateway: String,
    pub device: String,
    pub source: String,
    /// 253 = link, 0 = universe.
    pub scope: u32,
    pub ipv6: bool,
}

/// What was found and set up in the netns; undone by [`teardown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSetup {
    /// The pod, for the logs.
    pub pod_id: String,
    pub netns: PathBuf,
    pub interface: PodInterface,
    pub routes: Vec<PodRoute>,
    pub tap: String,
}

impl NetSetup {
    /// The span the netns thread logs in.
    fn span(&self) -> tracing::Span {
        tracing::debug_span!("pod_network", pod_id = %self.pod_id, handler = "kata")
    }
}

/// Errors setting up the bridge.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("entering the pod netns {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the netns thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the netns thread died before it answered")]
    ThreadDied,
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("creating tap {tap}: {source}")]
    Tap {
        tap: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no link {0:?} in the pod netns")]
    NoLink(String),
    #[error("no pod interface: {0}")]
    NoInterface(String),
    #[error("bad CNI result: {0}")]
    Parse(String),
}

/// MTU of the tap when CNI does not report the interface's (the bridge
/// plugin's default).
pub const DEFAULT_MTU: u64 = 1500;

/// The pod interface and its routes from the CNI result the core sends in
/// RunSandbox (`RunSandboxRequest.network`): the first interface with an
/// address, and the routes that go through it.
pub fn from_network(
    network: &crius_shim_api::types::PodNetwork,
) -> Result<(PodInterface, Vec<PodRoute>), NetError> {
    let Some(iface) = network
        .interfaces
        .iter()
        .find(|i| !i.addresses.is_empty() && !i.name.is_empty())
    else {
        return Err(NetError::NoInterface(
            "the CNI result names no interface with an address".to_string(),
        ));
    };
    let mut addresses = Vec::new();
    for cidr in &iface.addresses {
        let (address, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| NetError::Parse(format!("address {cidr:?} is not in CIDR form")))?;
        let ip: std::net::IpAddr = address
            .parse()
            .map_err(|_| NetError::Parse(format!("address {cidr:?} is not an IP address")))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= if ip.is_ipv6() { 128 } else { 32 })
            .ok_or_else(|| NetError::Parse(format!("address {cidr:?} has a bad prefix")))?;
        addresses.push((ip.to_string(), prefix, ip.is_ipv6()));
    }
    let interface = PodInterface {
        name: iface.name.clone(),
        mac: iface.mac.clone(),
        mtu: if iface.mtu > 0 {
            u64::from(iface.mtu)
        } else {
            DEFAULT_MTU
        },
        addresses,
    };
    let gateway_of = |v6: bool| {
        iface
            .gateways
            .iter()
            .find(|g| g.contains(':') == v6)
            .cloned()
            .unwrap_or_default()
    };
    let routes = network
        .routes
        .iter()
        .filter(|r| r.interface.is_empty() || r.interface == iface.name)
        .map(|r| {
            let ipv6 = r.destination.contains(':');
            let default = matches!(r.destination.as_str(), "0.0.0.0/0" | "::/0");
            PodRoute {
                dest: if default {
                    "default".to_string()
                } else {
                    r.destination.clone()
                },
                // CNI: a route without a gateway uses the address's gateway.
                gateway: if r.gateway.is_empty() {
                    gateway_of(ipv6)
                } else {
                    r.gateway.clone()
                },
                device: iface.name.clone(),
                source: String::new(),
                scope: 0,
                ipv6,
            }
        })
        .filter(|r| !r.gateway.is_empty() || r.dest != "default")
        .collect();
    Ok((interface, routes))
}

/// `protocol all` of tc: ETH_P_ALL, which the kernel compares in network
/// byte order (tc sends `htons(ETH_P_ALL)`).
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

/// `parent ffff:` of tc: the ingress qdisc's handle.
const INGRESS_PARENT: u32 = 0xffff_0000;

/// Runs `work` with a netlink handle opened inside `netns`. setns(2) moves
/// the calling thread for good, so this is a thread of its own (with a
/// current-thread runtime for the requests), never an executor thread nor
/// a pooled blocking one that a later task would inherit. The thread logs
/// in `span`.
async fn in_netns<T, F, Fut>(span: tracing::Span, netns: &Path, work: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    let netns = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kata-netns".to_string())
        .spawn(move || {
            let _span = span.enter();
            // The receiver is gone only when the caller was cancelled; what
            // the work made then goes away with the pod's netns.
            let _ = tx.send(run_in_netns(&netns, work));
        })
        .map_err(NetError::Thread)?;
    rx.await.map_err(|_| NetError::ThreadDied)?
}

/// The body of the [`in_netns`] thread.
fn run_in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let entered = |source| NetError::Netns {
        netns: netns.display().to_string(),
        source,
    };
    let file = File::open(netns).map_err(entered)?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|errno| entered(errno.into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetError::Thread)?;
    runtime.block_on(async {
        // Opened after the setns: the socket talks to the pod's netns.
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(connection);
        work(handle).await
    })
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// Creates the persistent tap `name` in the calling thread's netns, as
/// `ip tuntap add mode tap` does: IFF_TAP | IFF_NO_PI, one queue, no vnet
/// header (QEMU asks for that when it attaches; the tun driver takes the
/// attaching open's feature flags).
fn create_tap(name: &str) -> std::io::Result<()> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data (a name array and a union of integers and
    // addresses), for which all zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // The flags fit a c_short: they are what the kernel reads there.
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is;
    // it lives across the call and `tun` is an open /dev/net/tun.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Until now the tap lives only as long as `tun`: a failure here leaves
    // nothing behind.
    let persist: libc::c_ulong = 1;
    // SAFETY: TUNSETPERSIST takes its argument by value (non-zero: persist)
    // and touches no memory of ours; `tun` is attached to the tap.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, persist) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The index of link `name` in the handle's netns.
async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        // The kernel answers a lookup by name with ENODEV.
        Ok(None) => Err(NetError::NoLink(name.to_string())),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            Err(NetError::NoLink(name.to_string()))
        }
        Err(source) => Err(netlink(format!("looking up link {name}"))(source)),
    }
}

/// A link index as tc requests take it. The kernel's ifindex is a positive
/// int; one that did not fit would name no device, which the kernel then
/// reports.
fn tc_index(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

/// `tc qdisc add dev FROM ingress` and `tc filter add dev FROM parent ffff:
/// protocol all u32 match u8 0 0 action mirred egress redirect dev TO`:
/// every frame arriving on `from` leaves through `to`.
async fn redirect(
    handle: &Handle,
    (from, from_name): (u32, &str),
    to: u32,
) -> Result<(), NetError> {
    handle
        .qdisc()
        .add(tc_index(from))
        .ingress()
        .execute()
        .await
        .map_err(netlink(format!("adding the ingress qdisc of {from_name}")))?;
    let filter = handle
        .traffic_filter(tc_index(from))
        .add()
        .parent(INGRESS_PARENT)
        .protocol(PROTOCOL_ALL)
        .redirect(to)
        .map_err(netlink(format!("building the redirect of {from_name}")))?;
    filter
        .execute()
        .await
        .map_err(netlink(format!("adding the redirect of {from_name}")))
}

/// Brings the tap up at the pod interface's MTU and redirects each way.
async fn plumb(handle: &Handle, eth: &str, tap: &str, mtu: u32) -> Result<(), NetError> {
    let tap_index = link_index(handle, tap).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(netlink(format!("setting {tap} up with MTU {mtu}")))?;
    let eth_index = link_index(handle, eth).await?;
    redirect(handle, (eth_index, eth), tap_index).await?;
    redirect(handle, (tap_index, tap), eth_index).await
}

/// Removes the redirects and the tap: the ingress qdisc of `eth` (its
/// filter goes with it) and the tap (with its qdisc and filter). Each step
/// is tried; one that finds nothing is not an error (idempotent).
async fn unplumb(handle: &Handle, eth: &str, tap: &str) {
    match link_index(handle, eth).await {
        Ok(index) => {
            let mut del = handle.qdisc().del(tc_index(index));
            del.message_mut().header.parent = TcHandle::INGRESS;
            if let Err(err) = del.execute().await {
                tracing::debug!("removing the ingress qdisc of {eth}: {err}");
            }
        }
        Err(err) => tracing::debug!("{err}"),
    }
    match link_index(handle, tap).await {
        Ok(index) => {
            if let Err(err) = handle.link().del(index).execute().await {
                tracing::debug!("removing {tap}: {err}");
            }
        }
        Err(err) => tracing::debug!("{err}"),
    }
}

/// Creates the tap next to the CNI interface (as the CNI result names it)
/// and the two redirects. On failure, what was created is removed.
pub async fn setup(
    pod_id: &str,
    netns: &Path,
    network: &crius_shim_api::types::PodNetwork,
) -> Result<NetSetup, NetError> {
    let (interface, routes) = from_network(network)?;
    let mtu = u32::try_from(interface.mtu)
        .map_err(|_| NetError::Parse(format!("MTU {} is out of range", interface.mtu)))?;
    let net = NetSetup {
        pod_id: pod_id.to_string(),
        netns: netns.to_path_buf(),
        interface,
        routes,
        tap: TAP_NAME.to_string(),
    };
    let (eth, tap) = (net.interface.name.clone(), net.tap.clone());
    in_netns(net.span(), netns, move |handle| async move {
        create_tap(&tap).map_err(|source| NetError::Tap {
            tap: tap.clone(),
            source,
        })?;
        let plumbed = plumb(&handle, &eth, &tap, mtu).await;
        if plumbed.is_err() {
            unplumb(&handle, &eth, &tap).await;
        }
        plumbed
    })
    .await?;
    tracing::debug!(
        pod_id,
        handler = "kata",
        netns = %netns.display(),
        "pod network bridged to {TAP_NAME}"
    );
    Ok(net)
}

/// Removes the tap and the redirect. Idempotent, best effort (the netns
/// itself goes away with the pod).
pub async fn teardown(net: &NetSetup) {
    if !net.netns.exists() {
        return;
    }
    let (eth, tap) = (net.interface.name.clone(), net.tap.clone());
    let removed = in_netns(net.span(), &net.netns, move |handle| async move {
        unplumb(&handle, &eth, &tap).await;
        Ok(())
    })
    .await;
    if let Err(err) = removed {
        tracing::warn!(
            pod_id = %net.pod_id,
            handler = "kata",
            "removing the tap from the pod netns: {err}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_shim_api::types::{NetworkInterface, NetworkRoute, PodNetwork};

    fn network() -> PodNetwork {
        PodNetwork {
            interfaces: vec![
                NetworkInterface {
                    name: "lo".into(),
                    ..Default::default()
                },
                NetworkInterface {
                    name: "eth0".into(),
                    mac: "2a:1b:3c:4d:5e:6f".into(),
                    addresses: vec!["10.88.0.5/16".into(), "fd00::5/64".into()],
                    gateways: vec!["10.88.0.1".into()],
                    mtu: 0,
                },
            ],
            routes: vec![
                NetworkRoute {
                    destination: "0.0.0.0/0".into(),
                    ..Default::default()
                },
                NetworkRoute {
                    destination: "192.168.9.0/24".into(),
                    gateway: "10.88.0.254".into(),
                    interface: "eth0".into(),
                },
                NetworkRoute {
                    destination: "172.16.0.0/12".into(),
                    gateway: "10.88.0.254".into(),
                    interface: "other".into(),
                },
                // No IPv6 gateway: a default route has nowhere to go.
                NetworkRoute {
                    destination: "::/0".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn takes_the_interface_and_routes_from_the_cni_result() {
        let (iface, routes) = from_network(&network()).unwrap();
        assert_eq!(
            iface,
            PodInterface {
                name: "eth0".into(),
                mac: "2a:1b:3c:4d:5e:6f".into(),
                mtu: DEFAULT_MTU,
                addresses: vec![
                    ("10.88.0.5".into(), 16, false),
                    ("fd00::5".into(), 64, true)
                ],
            }
        );
        let routes: Vec<_> = routes
            .iter()
            .map(|r| {
                (
                    r.dest.as_str(),
                    r.gateway.as_str(),
                    r.device.as_str(),
                    r.ipv6,
                )
            })
            .collect();
        assert_eq!(
            routes,
            [
                ("default", "10.88.0.1", "eth0", false),
                ("192.168.9.0/24", "10.88.0.254", "eth0", false),
            ]
        );
    }

    #[test]
    fn refuses_results_without_a_usable_interface() {
        assert!(matches!(
            from_network(&PodNetwork::default()),
            Err(NetError::NoInterface(_))
        ));
        let mut bad = network();
        bad.interfaces[1].addresses = vec!["10.88.0.5".into()];
        let err = from_network(&bad).unwrap_err().to_string();
        assert!(err.contains("not in CIDR form"), "{err}");
    }

    /// A network namespace of the test's own, held by a thread that has
    /// unshared into it, with a veth standing for the CNI one (its peer,
    /// `peer0`, stays down). It goes away (with any tap left in it) when
    /// dropped.
    struct ScratchNetns {
        path: PathBuf,
        _hold: std::sync::mpsc::Sender<()>,
    }

    impl ScratchNetns {
        fn new(link: &'static str) -> Self {
            let (path_tx, path_rx) = std::sync::mpsc::channel();
            let (hold, held) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let (connection, handle, _) = rtnetlink::new_connection().unwrap();
                    tokio::spawn(connection);
                    let veth = rtnetlink::LinkVeth::new(link, "peer0").up().build();
                    handle.link().add(veth).execute().await.unwrap();
                });
                let (pid, tid) = (std::process::id(), nix::unistd::gettid());
                let path = format!("/proc/{pid}/task/{tid}/ns/net");
                path_tx.send(PathBuf::from(path)).unwrap();
                // Until the test drops its sender.
                let _ = held.recv();
            });
            Self {
                path: path_rx.recv().unwrap(),
                _hold: hold,
            }
        }
    }

    /// One link of the netns: name, MTU, up, and the protocols of the
    /// filters under its ingress qdisc (None: no ingress qdisc).
    type LinkState = (String, u32, bool, Option<Vec<u16>>);

    /// The links of `netns` but `lo`, by name.
    async fn links_of(netns: &Path) -> Vec<LinkState> {
        use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
        in_netns(tracing::Span::none(), netns, |handle| async move {
            let links: Vec<_> = handle.link().get().execute().try_collect().await.unwrap();
            let qdiscs: Vec<_> = handle.qdisc().get().execute().try_collect().await.unwrap();
            let mut out = Vec::new();
            for link in links {
                let index = link.header.index;
                let name = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                let mtu = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                });
                let ingress = qdiscs.iter().any(|q| {
                    q.header.index == tc_index(index) && q.header.parent == TcHandle::INGRESS
                });
                let filters = if ingress {
                    let mut get = handle.traffic_filter(tc_index(index)).get();
                    get = get.ingress();
                    let filters: Vec<_> = get.execute().try_collect().await.unwrap();
                    let protocols = filters.iter().map(|f| (f.header.info & 0xffff) as u16);
                    Some(protocols.collect())
                } else {
                    None
                };
                let name = name.unwrap_or_default();
                if name != "lo" {
                    out.push((
                        name,
                        mtu.unwrap_or_default(),
                        link.header.flags.contains(LinkFlags::Up),
                        filters,
                    ));
                }
            }
            out.sort();
            Ok(out)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn bridges_the_pod_interface_to_a_tap_and_removes_it_again() {
        if !crius_testkit::require_root() {
            return;
        }
        let ns = ScratchNetns::new("eth0");
        let mut network = network();
        network.interfaces[1].mtu = 1400;
        let net = setup("pod-1", &ns.path, &network).await.unwrap();
        assert_eq!(net.tap, TAP_NAME);
        let links = links_of(&ns.path).await;
        let redirected = |mtu| (mtu, true, Some(vec![PROTOCOL_ALL]));
        let found: Vec<_> = links
            .iter()
            .map(|(name, mtu, up, filters)| {
                let filters = filters.as_ref().map(|f| {
                    let mut f = f.clone();
                    f.dedup();
                    f
                });
                (name.as_str(), (*mtu, *up, filters))
            })
            .collect();
        assert_eq!(
            found,
            [
                ("eth0", redirected(1500)),
                ("peer0", (1500, false, None)),
                (TAP_NAME, redirected(1400))
            ],
            "{links:?}"
        );

        teardown(&net).await;
        assert_eq!(
            links_of(&ns.path).await,
            [
                ("eth0".to_string(), 1500, true, None),
                ("peer0".to_string(), 1500, false, None)
            ]
        );
        // Again: nothing left to remove is no error.
        teardown(&net).await;
    }

    #[tokio::test]
    async fn a_setup_that_fails_half_way_leaves_no_tap() {
        if !crius_testkit::require_root() {
            return;
        }
        // The tap is created, then the CNI interface is not there.
        let ns = ScratchNetns::new("eth9");
        let err = setup("pod-2", &ns.path, &network()).await.unwrap_err();
        assert!(
            matches!(&err, NetError::NoLink(name) if name == "eth0"),
            "{err}"
        );
        assert_eq!(
            links_of(&ns.path).await,
            [
                ("eth9".to_string(), 1500, true, None),
                ("peer0".to_string(), 1500, false, None)
            ]
        );
    }
}
