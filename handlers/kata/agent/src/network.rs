//! Guest network configuration (UpdateInterface / UpdateRoutes) with
//! busybox `ip`.

use crius_agent_proto::types::{IPFamily, Interface, Route};

use crate::reaper::Reaper;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no interface with name {name:?} or MAC {mac:?}")]
    NoSuchInterface { name: String, mac: String },
    #[error("ip {args}: {output}")]
    Ip { args: String, output: String },
}

async fn ip(reaper: &Reaper, args: &[&str]) -> Result<(), NetError> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(args);
    let (code, output) = crate::reaper::output(reaper, cmd)
        .await
        .map_err(|e| NetError::Ip {
            args: args.join(" "),
            output: e.to_string(),
        })?;
    if code != 0 {
        return Err(NetError::Ip {
            args: args.join(" "),
            output: output.trim().to_string(),
        });
    }
    Ok(())
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

/// Applies name, MTU and addresses, and brings the link up.
pub async fn update_interface(reaper: &Reaper, iface: &Interface) -> Result<Interface, NetError> {
    let link = find_link(iface).ok_or_else(|| NetError::NoSuchInterface {
        name: iface.name.clone(),
        mac: iface.hwAddr.clone(),
    })?;
    let mut dev = link.clone();
    if !iface.name.is_empty() && iface.name != link {
        ip(reaper, &["link", "set", "dev", &link, "down"]).await?;
        ip(reaper, &["link", "set", "dev", &link, "name", &iface.name]).await?;
        dev = iface.name.clone();
    }
    if iface.mtu > 0 {
        ip(
            reaper,
            &["link", "set", "dev", &dev, "mtu", &iface.mtu.to_string()],
        )
        .await?;
    }
    ip(reaper, &["addr", "flush", "dev", &dev]).await?;
    for a in &iface.IPAddresses {
        let cidr = if a.mask.is_empty() {
            a.address.clone()
        } else {
            format!("{}/{}", a.address, a.mask)
        };
        let fam = if a.family.enum_value_or_default() == IPFamily::v6 {
            "-6"
        } else {
            "-4"
        };
        ip(reaper, &[fam, "addr", "add", &cidr, "dev", &dev]).await?;
    }
    ip(reaper, &["link", "set", "dev", &dev, "up"]).await?;
    let mut out = iface.clone();
    out.name = dev;
    Ok(out)
}

/// Adds (replaces) the given routes. Link routes (no gateway) go first so
/// gateways are reachable when their routes are added.
pub async fn update_routes(reaper: &Reaper, routes: &[Route]) -> Result<Vec<Route>, NetError> {
    let mut ordered: Vec<&Route> = routes.iter().filter(|r| r.gateway.is_empty()).collect();
    ordered.extend(routes.iter().filter(|r| !r.gateway.is_empty()));
    for r in ordered {
        let fam = if r.family.enum_value_or_default() == IPFamily::v6 {
            "-6"
        } else {
            "-4"
        };
        let dest = if r.dest.is_empty() {
            "default"
        } else {
            r.dest.as_str()
        };
        let mut args = vec![fam, "route", "replace", dest];
        if !r.gateway.is_empty() {
            args.extend(["via", r.gateway.as_str()]);
        }
        if !r.device.is_empty() {
            args.extend(["dev", r.device.as_str()]);
        }
        if !r.source.is_empty() {
            args.extend(["src", r.source.as_str()]);
        }
        let scope;
        if r.scope != 0 {
            scope = r.scope.to_string();
            args.extend(["scope", scope.as_str()]);
        }
        ip(reaper, &args).await?;
    }
    Ok(routes.to_vec())
}
