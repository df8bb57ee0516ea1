//! The result of a plugin chain (CNI spec result format) and the pod
//! network it describes.

use super::*;

/// An address with prefix length, as CNI results carry them (`10.88.0.5/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} has no prefix length"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix length over {max}"));
        }
        Ok(IpCidr { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An interface from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniInterface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the pod; empty for host-side ones.
    pub sandbox: String,
}

/// An address from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniIp {
    pub address: IpCidr,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// A route from a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniRoute {
    pub dst: IpCidr,
    pub gw: Option<IpAddr>,
}

/// DNS settings from a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniDns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// A plugin's (or the whole chain's) ADD result.
///
/// Serialises as exactly the JSON the plugin printed, so it can be passed on
/// as `prevResult` and cached without losing fields this type does not model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct CniResult {
    pub(super) raw: Value,
    pub cni_version: String,
    pub interfaces: Vec<CniInterface>,
    pub ips: Vec<CniIp>,
    pub routes: Vec<CniRoute>,
    pub dns: CniDns,
}

impl CniResult {
    /// The pod's addresses: IPs on interfaces inside the sandbox, or with no
    /// interface reference (which older plugins omit). Host-side addresses
    /// (a bridge's gateway address reported on the bridge) are left out.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter(
                |ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                    Some(iface) => !iface.sandbox.is_empty(),
                    None => true,
                },
            )
            .map(|ip| ip.address.addr)
            .collect()
    }

    /// The pod-side part of the result as the handler contract carries it:
    /// interfaces inside the sandbox with their addresses, routes and DNS.
    pub fn pod_network(&self) -> crius_shim_api::types::PodNetwork {
        use crius_shim_api::types::{NetworkInterface, NetworkRoute, PodNetwork};
        let interfaces = self
            .interfaces
            .iter()
            .enumerate()
            .filter(|(_, iface)| !iface.sandbox.is_empty())
            .map(|(index, iface)| {
                let ips = self.ips.iter().filter(|ip| ip.interface == Some(index));
                NetworkInterface {
                    name: iface.name.clone(),
                    mac: iface.mac.clone(),
                    addresses: ips.clone().map(|ip| ip.address.to_string()).collect(),
                    gateways: ips
                        .filter_map(|ip| ip.gateway.map(|g| g.to_string()))
                        .collect(),
                    mtu: 0,
                }
            })
            .collect();
        let routes = self
            .routes
            .iter()
            .map(|route| NetworkRoute {
                destination: route.dst.to_string(),
                gateway: route.gw.map(|g| g.to_string()).unwrap_or_default(),
                interface: String::new(),
            })
            .collect();
        PodNetwork {
            interfaces,
            routes,
            dns_servers: self.dns.nameservers.clone(),
            dns_searches: self.dns.search.clone(),
            dns_options: self.dns.options.clone(),
        }
    }

    /// The result exactly as the plugin printed it.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// Parses a result printed by a plugin.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CniError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| CniError::Result(e.to_string()))?;
        Self::try_from(v).map_err(CniError::Result)
    }
}

impl TryFrom<Value> for CniResult {
    type Error = String;
    fn try_from(raw: Value) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Iface {
            name: String,
            #[serde(default)]
            mac: String,
            #[serde(default)]
            sandbox: String,
        }
        #[derive(Deserialize)]
        struct Ip {
            address: String,
            #[serde(default)]
            gateway: Option<IpAddr>,
            #[serde(default)]
            interface: Option<usize>,
        }
        #[derive(Deserialize)]
        struct Route {
            dst: String,
            #[serde(default)]
            gw: Option<IpAddr>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Repr {
            #[serde(default)]
            cni_version: String,
            #[serde(default)]
            interfaces: Vec<Iface>,
            #[serde(default)]
            ips: Vec<Ip>,
            #[serde(default)]
            routes: Vec<Route>,
            #[serde(default)]
            dns: CniDns,
        }
        if !raw.is_object() {
            return Err("result is not a JSON object".into());
        }
        let r: Repr = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        let ips = r
            .ips
            .into_iter()
            .map(|ip| {
                if let Some(i) = ip.interface
                    && i >= r.interfaces.len()
                {
                    return Err(format!(
                        "ip {} refers to interface {i} of {}",
                        ip.address,
                        r.interfaces.len()
                    ));
                }
                Ok(CniIp {
                    address: ip.address.parse()?,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let routes = r
            .routes
            .into_iter()
            .map(|rt| {
                Ok(CniRoute {
                    dst: rt.dst.parse()?,
                    gw: rt.gw,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CniResult {
            raw,
            cni_version: r.cni_version,
            interfaces: r
                .interfaces
                .into_iter()
                .map(|i| CniInterface {
                    name: i.name,
                    mac: i.mac,
                    sandbox: i.sandbox,
                })
                .collect(),
            ips,
            routes,
            dns: r.dns,
        })
    }
}

impl From<CniResult> for Value {
    fn from(r: CniResult) -> Value {
        r.raw
    }
}
