//! Guest network configuration (UpdateInterface / UpdateRoutes) over
//! rtnetlink: errors are typed and the guest needs no `ip` binary.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crius_agent_proto::types::{IPFamily, Interface, Route};
use futures::TryStreamExt;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no interface with name {name:?} or MAC {mac:?}")]
    NoSuchInterface { name: String, mac: String },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what} {value:?} is not valid: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },
}

/// A netlink connection for one request (its task ends with the handle).
fn connect() -> Result<Handle, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// Finds the guest link for `iface`: by MAC first, then by name.
fn find_link(iface: &Interface) -> Option<String> {
    let entries = std::fs::read_dir("/sys/class/net").ok()?;
    let mut by_name = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let mac = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if !iface.hwAddr.is_empty() && mac.trim().eq_ignore_ascii_case(&iface.hwAddr) {
            return Some(name);
        }
        if name == iface.name || name == iface.device {
            by_name = Some(name);
        }
    }
    by_name
}

/// The index of link `name`.
async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(netlink(format!("looking up link {name}")))?;
    link.map(|l| l.header.index)
        .ok_or_else(|| NetError::NoSuchInterface {
            name: name.to_string(),
            mac: String::new(),
        })
}

fn parse_ip(what: &'static str, value: &str) -> Result<IpAddr, NetError> {
    value
        .parse()
        .map_err(|e: std::net::AddrParseError| NetError::Invalid {
            what,
            value: value.to_string(),
            why: e.to_string(),
        })
}

/// `addr[/len]`; without a length, the whole address (32 or 128).
fn parse_prefix(what: &'static str, value: &str) -> Result<(IpAddr, u8), NetError> {
    let (addr, len) = match value.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (value, None),
    };
    let ip = parse_ip(what, addr)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| NetError::Invalid {
                what,
                value: value.to_string(),
                why: format!("the prefix length must be 0-{max}"),
            })?,
    };
    Ok((ip, len))
}

/// Applies name, MTU and addresses, and brings the link up.
pub async fn update_interface(iface: &Interface) -> Result<Interface, NetError> {
    let link = find_link(iface).ok_or_else(|| NetError::NoSuchInterface {
        name: iface.name.clone(),
        mac: iface.hwAddr.clone(),
    })?;
    let handle = connect()?;
    let index = link_index(&handle, &link).await?;
    let set = |message| handle.link().set(message).execute();
    let mut dev = link.clone();
    if !iface.name.is_empty() && iface.name != link {
        set(LinkUnspec::new_with_index(index).down().build())
            .await
            .map_err(netlink(format!("setting {link} down")))?;
        set(LinkUnspec::new_with_index(index)
            .name(iface.name.clone())
            .build())
        .await
        .map_err(netlink(format!("renaming {link} to {}", iface.name)))?;
        dev = iface.name.clone();
    }
    if iface.mtu > 0 {
        set(LinkUnspec::new_with_index(index)
            .mtu(iface.mtu as u32)
            .build())
        .await
        .map_err(netlink(format!("setting the MTU of {dev}")))?;
    }
    let mut current = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(address) = current
        .try_next()
        .await
        .map_err(netlink(format!("listing the addresses of {dev}")))?
    {
        handle
            .address()
            .del(address)
            .execute()
            .await
            .map_err(netlink(format!("flushing the addresses of {dev}")))?;
    }
    for a in &iface.IPAddresses {
        let cidr = if a.mask.is_empty() {
            a.address.clone()
        } else {
            format!("{}/{}", a.address, a.mask)
        };
        let (ip, len) = parse_prefix("interface address", &cidr)?;
        handle
            .address()
            .add(index, ip, len)
            .execute()
            .await
            .map_err(netlink(format!("adding {cidr} to {dev}")))?;
    }
    set(LinkUnspec::new_with_index(index).up().build())
        .await
        .map_err(netlink(format!("setting {dev} up")))?;
    let mut out = iface.clone();
    out.name = dev;
    Ok(out)
}

/// The error of a route the builder refuses (families that do not match).
fn invalid_route<E: std::fmt::Display>(r: &Route) -> impl Fn(E) -> NetError + '_ {
    move |e| NetError::Invalid {
        what: "route",
        value: format!("{} via {:?} dev {:?}", r.dest, r.gateway, r.device),
        why: e.to_string(),
    }
}

/// Adds (replaces) the given routes. Link routes (no gateway) go first so
/// gateways are reachable when their routes are added.
pub async fn update_routes(routes: &[Route]) -> Result<Vec<Route>, NetError> {
    let mut ordered: Vec<&Route> = routes.iter().filter(|r| r.gateway.is_empty()).collect();
    ordered.extend(routes.iter().filter(|r| !r.gateway.is_empty()));
    let handle = connect()?;
    for r in ordered {
        let v6 = r.family.enum_value_or_default() == IPFamily::v6;
        let (dest, len) = if r.dest.is_empty() || r.dest == "default" {
            let any = if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            (any, 0)
        } else {
            parse_prefix("route destination", &r.dest)?
        };
        let invalid = invalid_route(r);
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest, len)
            .map_err(&invalid)?;
        if !r.gateway.is_empty() {
            builder = builder
                .gateway(parse_ip("route gateway", &r.gateway)?)
                .map_err(&invalid)?;
        }
        if !r.source.is_empty() {
            builder = builder
                .pref_source(parse_ip("route source", &r.source)?)
                .map_err(&invalid)?;
        }
        if !r.device.is_empty() {
            builder = builder.output_interface(link_index(&handle, &r.device).await?);
        }
        // As `ip route` does: a route without a gateway is on the link.
        let scope = match r.scope {
            0 if r.gateway.is_empty() => RouteScope::Link,
            0 => RouteScope::Universe,
            s => RouteScope::from(s as u8),
        };
        let message = builder.scope(scope).build();
        handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!(
                "adding the route to {} via {:?} dev {:?}",
                r.dest, r.gateway, r.device
            )))?;
    }
    Ok(routes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_default_to_the_whole_address_and_are_bounded() {
        assert_eq!(
            parse_prefix("x", "10.1.2.3/24").unwrap(),
            ("10.1.2.3".parse().unwrap(), 24)
        );
        assert_eq!(parse_prefix("x", "10.1.2.3").unwrap().1, 32);
        assert_eq!(parse_prefix("x", "fd00::1").unwrap().1, 128);
        assert!(parse_prefix("x", "10.1.2.3/33").is_err());
        assert!(parse_prefix("x", "nonsense/8").is_err());
    }
}
