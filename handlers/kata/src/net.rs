//! Bridging the pod's network namespace (set up by CNI) to the VM: a tap
//! device next to the CNI interface, with tc `mirred` redirecting every
//! frame between the two, so the guest NIC (given the CNI interface's MAC,
//! IP and routes through the agent) *is* the pod's interface on the wire.
//! What CNI configured comes from the core (`RunSandboxRequest.network`);
//! nothing is probed in the netns.

use std::path::{Path, PathBuf};

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
    pub netns: PathBuf,
    pub interface: PodInterface,
    pub routes: Vec<PodRoute>,
    pub tap: String,
}

/// Errors setting up the bridge.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` in {netns}: {message}")]
    Command {
        command: String,
        netns: String,
        message: String,
    },
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

async fn run_in(netns: &Path, args: &[&str]) -> Result<String, NetError> {
    let mut ns = std::ffi::OsString::from("--net=");
    ns.push(netns);
    let output = tokio::process::Command::new("nsenter")
        .arg(ns)
        .args(args)
        .output()
        .await
        .map_err(|err| NetError::Command {
            command: args.join(" "),
            netns: netns.display().to_string(),
            message: err.to_string(),
        })?;
    if !output.status.success() {
        return Err(NetError::Command {
            command: args.join(" "),
            netns: netns.display().to_string(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Creates the tap next to the CNI interface (as the CNI result names it)
/// and the two redirects. On failure, what was created is removed.
pub async fn setup(
    netns: &Path,
    network: &crius_shim_api::types::PodNetwork,
) -> Result<NetSetup, NetError> {
    let (interface, routes) = from_network(network)?;
    let net = NetSetup {
        netns: netns.to_path_buf(),
        interface,
        routes,
        tap: TAP_NAME.to_string(),
    };
    let eth = net.interface.name.as_str();
    let mtu = net.interface.mtu.to_string();
    let steps: [&[&str]; 6] = [
        &["ip", "tuntap", "add", "dev", TAP_NAME, "mode", "tap"],
        &["ip", "link", "set", "dev", TAP_NAME, "mtu", &mtu, "up"],
        &["tc", "qdisc", "add", "dev", eth, "ingress"],
        &[
            "tc", "filter", "add", "dev", eth, "parent", "ffff:", "protocol", "all", "u32",
            "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", TAP_NAME,
        ],
        &["tc", "qdisc", "add", "dev", TAP_NAME, "ingress"],
        &[
            "tc", "filter", "add", "dev", TAP_NAME, "parent", "ffff:", "protocol", "all", "u32",
            "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", eth,
        ],
    ];
    for step in steps {
        if let Err(err) = run_in(netns, step).await {
            teardown(&net).await;
            return Err(err);
        }
    }
    Ok(net)
}

/// Removes the tap and the redirect. Idempotent, best effort (the netns
/// itself goes away with the pod).
pub async fn teardown(net: &NetSetup) {
    if !net.netns.exists() {
        return;
    }
    let _ = run_in(
        &net.netns,
        &["tc", "qdisc", "del", "dev", &net.interface.name, "ingress"],
    )
    .await;
    let _ = run_in(&net.netns, &["ip", "link", "del", "dev", &net.tap]).await;
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
}
