//! Bridging the pod's network namespace (set up by CNI) to the VM: a tap
//! device next to the CNI interface, with tc `mirred` redirecting every
//! frame between the two, so the guest NIC (given the CNI interface's MAC,
//! IP and routes through the agent) *is* the pod's interface on the wire.

use std::path::{Path, PathBuf};

use serde_json::Value;

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
    #[error("no network interface with an address in the pod netns {0}")]
    NoInterface(String),
    #[error("cannot parse `ip` output: {0}")]
    Parse(String),
}

/// Picks the pod interface from `ip -j addr show`: the first Ethernet link
/// other than our tap that has an address.
pub fn parse_interface(json: &str) -> Result<Option<PodInterface>, NetError> {
    let links: Vec<Value> =
        serde_json::from_str(json).map_err(|e| NetError::Parse(e.to_string()))?;
    for link in links {
        let name = link["ifname"].as_str().unwrap_or_default();
        if name == "lo" || name == TAP_NAME || link["link_type"].as_str() != Some("ether") {
            continue;
        }
        let addresses: Vec<(String, u8, bool)> = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"].as_str() != Some("link"))
            .filter_map(|a| {
                Some((
                    a["local"].as_str()?.to_string(),
                    a["prefixlen"].as_u64()? as u8,
                    a["family"].as_str() == Some("inet6"),
                ))
            })
            .collect();
        if addresses.is_empty() {
            continue;
        }
        return Ok(Some(PodInterface {
            name: name.to_string(),
            mac: link["address"].as_str().unwrap_or_default().to_string(),
            mtu: link["mtu"].as_u64().unwrap_or(1500),
            addresses,
        }));
    }
    Ok(None)
}

/// Routes from `ip -j route show` (one family) that use `device`.
pub fn parse_routes(json: &str, device: &str, ipv6: bool) -> Result<Vec<PodRoute>, NetError> {
    let routes: Vec<Value> =
        serde_json::from_str(json).map_err(|e| NetError::Parse(e.to_string()))?;
    Ok(routes
        .into_iter()
        .filter(|r| r["dev"].as_str() == Some(device))
        .map(|r| PodRoute {
            dest: r["dst"].as_str().unwrap_or("default").to_string(),
            gateway: r["gateway"].as_str().unwrap_or_default().to_string(),
            device: device.to_string(),
            source: r["prefsrc"].as_str().unwrap_or_default().to_string(),
            scope: if r["scope"].as_str() == Some("link") {
                253
            } else {
                0
            },
            ipv6,
        })
        .collect())
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

/// Finds the CNI interface, creates the tap and the two redirects. On
/// failure, what was created is removed.
pub async fn setup(netns: &Path) -> Result<NetSetup, NetError> {
    let addrs = run_in(netns, &["ip", "-j", "addr", "show"]).await?;
    let interface = parse_interface(&addrs)?
        .ok_or_else(|| NetError::NoInterface(netns.display().to_string()))?;
    let mut routes = parse_routes(
        &run_in(netns, &["ip", "-j", "-4", "route", "show"]).await?,
        &interface.name,
        false,
    )?;
    if interface.addresses.iter().any(|a| a.2) {
        let v6 = run_in(netns, &["ip", "-j", "-6", "route", "show"]).await?;
        routes.extend(
            parse_routes(&v6, &interface.name, true)?
                .into_iter()
                .filter(|r| !r.dest.starts_with("fe80")),
        );
    }
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

    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00","mtu":65536,
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":3,"ifname":"eth0","link_type":"ether","address":"2a:1b:3c:4d:5e:6f","mtu":1450,
       "addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16,"scope":"global"},
                    {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}
    ]"#;

    #[test]
    fn finds_the_cni_interface() {
        let iface = parse_interface(ADDRS).unwrap().unwrap();
        assert_eq!(
            iface,
            PodInterface {
                name: "eth0".into(),
                mac: "2a:1b:3c:4d:5e:6f".into(),
                mtu: 1450,
                addresses: vec![("10.88.0.5".into(), 16, false)],
            }
        );
        assert_eq!(parse_interface("[]").unwrap(), None);
        assert!(parse_interface("not json").is_err());
    }

    #[test]
    fn keeps_the_interface_routes() {
        let json = r#"[
          {"dst":"default","gateway":"10.88.0.1","dev":"eth0"},
          {"dst":"10.88.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.0.5"},
          {"dst":"192.168.9.0/24","dev":"other"}
        ]"#;
        let routes = parse_routes(json, "eth0", false).unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(
            (
                routes[0].dest.as_str(),
                routes[0].gateway.as_str(),
                routes[0].scope
            ),
            ("default", "10.88.0.1", 0)
        );
        assert_eq!(
            (
                routes[1].dest.as_str(),
                routes[1].source.as_str(),
                routes[1].scope
            ),
            ("10.88.0.0/16", "10.88.0.5", 253)
        );
    }
}
