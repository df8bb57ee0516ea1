//! The systemd cgroup driver's side of systemd: pod slices as transient
//! units, over systemd's own D-Bus socket.
//!
//! With `cgroup_driver: systemd` every pod lives in a slice (kubelet's
//! `kubepods-…-pod<uid>.slice`, or `crius-pod<id>.slice` for a pod that names
//! none) and every container in a scope of that slice, which the OCI
//! runtime creates (`--systemd-cgroup`). The daemon starts a slice that does
//! not exist yet, with the pod's limits as unit properties, and stops the
//! slices it started when their pod is removed; a slice kubelet made stays
//! kubelet's.
//!
//! The connection goes to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else
//! `/run/dbus/system_bus_socket`), where systemd is
//! `org.freedesktop.systemd1` and where crun's `--systemd-cgroup` goes too.
//! Not to systemd's peer-to-peer `/run/systemd/private`: systemd signs its
//! replies there with its well-known name, which zbus 5 rejects as a
//! sender (zbus issue #1497). One connection per operation: cheap on a
//! unix socket, and it survives a bus or systemd restart without
//! reconnection logic.

use std::time::Duration;

use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::cgroup::{CgroupMode, Resources};

/// The system bus when `DBUS_SYSTEM_BUS_ADDRESS` does not name one.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// The unix socket of the system bus this process would use.
pub fn system_bus_socket() -> String {
    std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .ok()
        .and_then(|a| {
            a.strip_prefix("unix:path=")
                .map(|p| p.split(',').next().unwrap_or(p).to_string())
        })
        .unwrap_or_else(|| SYSTEM_BUS_SOCKET.to_string())
}

const DESTINATION: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";

/// How long a slice may take to become active or go away.
const UNIT_WAIT: Duration = Duration::from_secs(10);
const UNIT_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(
        "cannot reach systemd on the system bus (the systemd cgroup driver needs systemd as \
         the init of this PID namespace and its D-Bus system bus): {0}"
    )]
    Connect(String),
    #[error("systemd {method} {unit}: {message}")]
    Call {
        method: &'static str,
        unit: String,
        message: String,
    },
    #[error("systemd unit {unit} is {state} {waited:?} after {action} (expected {want})")]
    State {
        unit: String,
        action: &'static str,
        state: String,
        want: &'static str,
        waited: Duration,
    },
}

pub type SystemdResult<T> = Result<T, SystemdError>;

/// A D-Bus unit property (`a(sv)` entry).
pub type Property = (&'static str, OwnedValue);

fn property(name: &'static str, value: impl Into<Value<'static>>) -> Property {
    let value: Value<'static> = value.into();
    // Plain values (strings, numbers, booleans) never hold file descriptors,
    // the only thing that cannot be owned.
    (
        name,
        value
            .try_into()
            .expect("a plain value converts to an owned one"),
    )
}

/// Unit properties for a pod slice's limits, in the names systemd takes for
/// the host's cgroup version (v1 `CPUShares`/`MemoryLimit`, v2
/// `CPUWeight`/`MemoryMax`). cpusets are not among them: systemd does not
/// manage the v1 cpuset hierarchy, the caller writes those.
pub fn slice_properties(description: &str, mode: CgroupMode, r: &Resources) -> Vec<Property> {
    let mut props = vec![
        property("Description", description.to_string()),
        // Accounting makes systemd create the slice in the v1 hierarchies
        // of the controllers (and enable them on v2), so stats can be read.
        property("CPUAccounting", true),
        property("MemoryAccounting", true),
        property("TasksAccounting", true),
    ];
    if let Some(shares) = r.cpu_shares {
        props.push(match mode {
            CgroupMode::V1 => property("CPUShares", shares),
            CgroupMode::V2 => property("CPUWeight", super::cgroup::shares_to_weight(shares)),
        });
    }
    if let Some(quota) = r.cpu_quota.filter(|q| *q > 0) {
        let period = r.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
        // systemd takes the quota as CPU time per second of wall time.
        props.push(property(
            "CPUQuotaPerSecUSec",
            (quota as u64).saturating_mul(1_000_000) / period,
        ));
        props.push(property("CPUQuotaPeriodUSec", period));
    }
    if let Some(limit) = r.memory_limit.filter(|m| *m > 0) {
        props.push(match mode {
            CgroupMode::V1 => property("MemoryLimit", limit as u64),
            CgroupMode::V2 => property("MemoryMax", limit as u64),
        });
    }
    if let Some(pids) = r.pids_limit.filter(|p| *p > 0) {
        props.push(property("TasksMax", pids as u64));
    }
    props
}

/// A connection to systemd.
pub struct Systemd {
    conn: zbus::Connection,
}

impl Systemd {
    pub async fn connect() -> SystemdResult<Systemd> {
        let connect =
            |e: zbus::Error| SystemdError::Connect(format!("{}: {e}", system_bus_socket()));
        let conn = zbus::connection::Builder::system()
            .map_err(connect)?
            .build()
            .await
            .map_err(connect)?;
        Ok(Systemd { conn })
    }

    async fn call<B>(
        &self,
        path: &str,
        interface: &str,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> SystemdResult<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.conn
            .call_method(Some(DESTINATION), path, Some(interface), method, body)
            .await
            .map_err(|e| SystemdError::Call {
                method,
                unit: unit.to_string(),
                message: e.to_string(),
            })
    }

    /// [`Self::call`], with the D-Bus error `expected` (such as systemd's
    /// `NoSuchUnit`) answered as `None` instead of an error.
    async fn call_unless<B>(
        &self,
        expected: &str,
        path: &str,
        interface: &str,
        method: &'static str,
        unit: &str,
        body: &B,
    ) -> SystemdResult<Option<zbus::Message>>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        match self.call(path, interface, method, unit, body).await {
            Ok(reply) => Ok(Some(reply)),
            Err(SystemdError::Call { message, .. }) if message.contains(expected) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A string property of the object at `path`, or `None` when the
    /// object is gone.
    async fn string_property(
        &self,
        path: &str,
        interface: &str,
        property: &str,
        unit: &str,
    ) -> SystemdResult<Option<String>> {
        let Some(reply) = self
            .call_unless(
                "UnknownObject",
                path,
                "org.freedesktop.DBus.Properties",
                "Get",
                unit,
                &(interface, property),
            )
            .await?
        else {
            return Ok(None);
        };
        let value: OwnedValue = decode(&reply, "Get", unit)?;
        String::try_from(value)
            .map(Some)
            .map_err(|e| bad_reply("Get", unit, e))
    }

    /// systemd's version string (`crius check`).
    pub async fn version(&self) -> SystemdResult<String> {
        self.string_property(MANAGER_PATH, MANAGER, "Version", "manager")
            .await?
            .ok_or_else(|| bad_reply("Get", "manager", "no manager object"))
    }

    /// The unit's `ActiveState`, or `None` when systemd has no such unit
    /// loaded.
    pub async fn active_state(&self, unit: &str) -> SystemdResult<Option<String>> {
        let Some(reply) = self
            .call_unless(
                "NoSuchUnit",
                MANAGER_PATH,
                MANAGER,
                "GetUnit",
                unit,
                &(unit,),
            )
            .await?
        else {
            return Ok(None);
        };
        let path: OwnedObjectPath = decode(&reply, "GetUnit", unit)?;
        // `None` also when the unit was unloaded between the two calls.
        self.string_property(path.as_str(), UNIT, "ActiveState", unit)
            .await
    }

    /// Starts the transient slice `name` with `properties` and waits until
    /// it is active. Returns false (and changes nothing) when the unit
    /// exists already (kubelet made it).
    pub async fn start_slice(&self, name: &str, properties: Vec<Property>) -> SystemdResult<bool> {
        let aux: Vec<(&str, Vec<Property>)> = Vec::new();
        let started = self
            .call_unless(
                "UnitExists",
                MANAGER_PATH,
                MANAGER,
                "StartTransientUnit",
                name,
                &(name, "fail", properties, aux),
            )
            .await?;
        if started.is_none() {
            return Ok(false);
        }
        self.wait_for(name, "starting", "active", |s| s == Some("active"))
            .await?;
        Ok(true)
    }

    /// Stops `name` and waits until systemd has let go of it (its cgroups
    /// are removed by then). A unit that does not exist is fine.
    pub async fn stop_unit(&self, name: &str) -> SystemdResult<()> {
        let stopping = self
            .call_unless(
                "NoSuchUnit",
                MANAGER_PATH,
                MANAGER,
                "StopUnit",
                name,
                &(name, "replace"),
            )
            .await?;
        if stopping.is_none() {
            return Ok(());
        }
        self.wait_for(name, "stopping", "inactive or unloaded", |s| {
            matches!(s, None | Some("inactive") | Some("failed"))
        })
        .await
    }

    async fn wait_for(
        &self,
        unit: &str,
        action: &'static str,
        want: &'static str,
        done: impl Fn(Option<&str>) -> bool,
    ) -> SystemdResult<()> {
        let start = tokio::time::Instant::now();
        loop {
            let state = self.active_state(unit).await?;
            if done(state.as_deref()) {
                return Ok(());
            }
            if start.elapsed() > UNIT_WAIT || state.as_deref() == Some("failed") {
                return Err(SystemdError::State {
                    unit: unit.to_string(),
                    action,
                    state: state.unwrap_or_else(|| "not loaded".into()),
                    want,
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(UNIT_POLL).await;
        }
    }
}

/// The reply's body as `T`.
fn decode<T>(reply: &zbus::Message, method: &'static str, unit: &str) -> SystemdResult<T>
where
    T: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
{
    reply
        .body()
        .deserialize()
        .map_err(|e| bad_reply(method, unit, e))
}

fn bad_reply(method: &'static str, unit: &str, e: impl std::fmt::Display) -> SystemdError {
    SystemdError::Call {
        method,
        unit: unit.to_string(),
        message: format!("unexpected reply: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(props: &[Property]) -> Vec<&str> {
        props.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn limits_become_the_properties_of_the_hosts_cgroup_version() {
        let r = Resources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
            ..Default::default()
        };
        let v1 = slice_properties("pod", CgroupMode::V1, &r);
        assert_eq!(
            names(&v1),
            [
                "Description",
                "CPUAccounting",
                "MemoryAccounting",
                "TasksAccounting",
                "CPUShares",
                "CPUQuotaPerSecUSec",
                "CPUQuotaPeriodUSec",
                "MemoryLimit",
                "TasksMax"
            ]
        );
        let quota = v1.iter().find(|(n, _)| *n == "CPUQuotaPerSecUSec").unwrap();
        assert_eq!(u64::try_from(&quota.1).unwrap(), 500_000);
        let v2 = slice_properties("pod", CgroupMode::V2, &r);
        assert!(names(&v2).contains(&"CPUWeight") && names(&v2).contains(&"MemoryMax"));
        let none = slice_properties("pod", CgroupMode::V2, &Resources::default());
        assert_eq!(none.len(), 4);
    }
}
