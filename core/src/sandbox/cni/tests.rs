use std::collections::HashMap;
use std::process::Command as Proc;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::sandbox::netns::{self, NetNs};
use crate::sandbox::testutil::{random_byte, random_suffix, require_root, require_tools};

/// Records invocations; answers from a script keyed by (type, command).
#[derive(Debug, Default)]
struct FakeExec {
    calls: Mutex<Vec<Invocation>>,
    fail: HashMap<(String, Command), (u32, String)>,
}

impl FakeExec {
    fn failing(plugin: &str, command: Command) -> Self {
        let mut f = FakeExec::default();
        f.fail.insert(
            (plugin.to_string(), command),
            (7, format!("{plugin} broke")),
        );
        f
    }
    fn calls(&self) -> Vec<Invocation> {
        self.calls.lock().expect("calls lock").clone()
    }
}

/// The plugin types of `calls`, in call order.
fn plugin_types(calls: &[Invocation]) -> Vec<&str> {
    calls.iter().map(|c| c.plugin_type.as_str()).collect()
}

#[async_trait]
impl PluginExec for FakeExec {
    async fn exec(&self, inv: &Invocation) -> Result<Vec<u8>, CniError> {
        self.calls.lock().expect("calls lock").push(inv.clone());
        if let Some((code, msg)) = self.fail.get(&(inv.plugin_type.clone(), inv.command)) {
            let out =
                serde_json::to_vec(&json!({"code": code, "msg": msg, "details": "d"})).unwrap();
            return Err(
                parse_plugin_error(&inv.network, &inv.plugin_type, inv.command, &out).unwrap(),
            );
        }
        if inv.command != Command::Add {
            return Ok(Vec::new());
        }
        // Each plugin appends an interface so chaining is visible.
        let mut result = inv.stdin.get("prevResult").cloned().unwrap_or_else(
            || json!({"cniVersion": inv.stdin["cniVersion"], "interfaces": [], "ips": []}),
        );
        let ifaces = result["interfaces"].as_array_mut().unwrap();
        ifaces.push(json!({"name": inv.plugin_type, "sandbox": if inv.plugin_type == "bridge" { inv.netns.clone() } else { String::new() }}));
        if inv.plugin_type == "bridge" {
            let idx = ifaces.len() - 1;
            result["ips"] =
                json!([{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": idx}]);
        }
        Ok(serde_json::to_vec(&result).unwrap())
    }
}

fn three_plugin_net(exec: Arc<FakeExec>) -> CniNetwork {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "testnet",
        "plugins": [
            {"type": "bridge", "bridge": "br0", "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "tuning", "runtimeConfig": {"mac": "x"}}
        ]
    });
    CniNetwork::from_value(
        conf,
        true,
        Path::new("t.conflist"),
        &[PathBuf::from("/a"), PathBuf::from("/b")],
    )
    .unwrap()
    .with_exec(exec)
}

fn request() -> CniRequest {
    let mut r = CniRequest::new("sb1", "/run/crius/netns/sb1");
    r.pod_namespace = "default".into();
    r.pod_name = "web".into();
    r.pod_uid = "u-1".into();
    r.port_mappings = vec![PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }];
    r
}

#[tokio::test]
async fn add_chains_prev_result_and_injects_capabilities() {
    let exec = Arc::new(FakeExec::default());
    let net = three_plugin_net(exec.clone());
    let result = net.add(&request()).await.unwrap();
    let calls = exec.calls();
    assert_eq!(plugin_types(&calls), ["bridge", "portmap", "tuning"]);
    assert!(calls.iter().all(|c| c.command == Command::Add));
    // Environment.
    let c0 = &calls[0];
    assert_eq!(c0.container_id, "sb1");
    assert_eq!(c0.ifname, "eth0");
    assert_eq!(c0.netns, "/run/crius/netns/sb1");
    assert_eq!(c0.path, [PathBuf::from("/a"), PathBuf::from("/b")]);
    assert_eq!(
        c0.args,
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u-1"
    );
    // name/cniVersion injected, no prevResult for the first plugin.
    assert_eq!(c0.stdin["name"], "testnet");
    assert_eq!(c0.stdin["cniVersion"], "1.0.0");
    assert!(c0.stdin.get("prevResult").is_none());
    assert!(
        c0.stdin.get("runtimeConfig").is_none(),
        "bridge has no portMappings capability"
    );
    // portmap gets the mappings and the bridge result.
    assert_eq!(
        calls[1].stdin["runtimeConfig"]["portMappings"],
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    );
    assert_eq!(
        calls[1].stdin["prevResult"]["interfaces"][0]["name"],
        "bridge"
    );
    // tuning keeps its own runtimeConfig untouched and sees portmap's result.
    assert_eq!(calls[2].stdin["runtimeConfig"], json!({"mac": "x"}));
    assert_eq!(
        calls[2].stdin["prevResult"]["interfaces"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Final result = last plugin's.
    assert_eq!(result.interfaces.len(), 3);
    assert_eq!(
        result.pod_ips(),
        vec!["10.1.2.3".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(result.ips[0].gateway, Some("10.1.2.1".parse().unwrap()));
}

#[tokio::test]
async fn add_failure_rolls_back_in_reverse_and_names_plugin() {
    let exec = Arc::new(FakeExec::failing("portmap", Command::Add));
    let net = three_plugin_net(exec.clone());
    let err = net.add(&request()).await.unwrap_err();
    match &err {
        CniError::Plugin {
            plugin,
            command,
            code,
            msg,
            network,
            ..
        } => {
            assert_eq!(
                (
                    plugin.as_str(),
                    *command,
                    *code,
                    msg.as_str(),
                    network.as_str()
                ),
                ("portmap", Command::Add, 7, "portmap broke", "testnet")
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        err.to_string().contains("portmap") && err.to_string().contains("portmap broke"),
        "{err}"
    );
    let calls: Vec<_> = exec
        .calls()
        .iter()
        .map(|c| (c.plugin_type.clone(), c.command))
        .collect();
    assert_eq!(
        calls,
        [
            ("bridge".to_string(), Command::Add),
            ("portmap".to_string(), Command::Add),
            ("portmap".to_string(), Command::Del),
            ("bridge".to_string(), Command::Del),
        ]
    );
    // The rollback passes what was attached so far.
    assert_eq!(
        exec.calls()[3].stdin["prevResult"]["interfaces"][0]["name"],
        "bridge"
    );
}

#[tokio::test]
async fn del_runs_reverse_with_prev_result_and_continues_past_failures() {
    let exec = Arc::new(FakeExec::failing("tuning", Command::Del));
    let net = three_plugin_net(exec.clone());
    let prev = CniResult::from_json(br#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.3/24"}]}"#)
        .unwrap();
    // The netns path does not exist: CNI_NETNS must be empty.
    let err = net.del(&request(), Some(&prev)).await.unwrap_err();
    assert!(
        matches!(err, CniError::Plugin { ref plugin, command: Command::Del, .. } if plugin == "tuning")
    );
    let calls = exec.calls();
    assert_eq!(plugin_types(&calls), ["tuning", "portmap", "bridge"]);
    assert!(
        calls
            .iter()
            .all(|c| c.command == Command::Del && c.netns.is_empty())
    );
    assert!(
        calls
            .iter()
            .all(|c| c.stdin["prevResult"]["ips"][0]["address"] == "10.1.2.3/24")
    );
    // Without a previous result no prevResult key is sent.
    let exec = Arc::new(FakeExec::default());
    three_plugin_net(exec.clone())
        .del(&request(), None)
        .await
        .unwrap();
    assert!(
        exec.calls()
            .iter()
            .all(|c| c.stdin.get("prevResult").is_none())
    );
}

#[tokio::test]
async fn check_skips_listed_types_and_respects_version() {
    let exec = Arc::new(FakeExec::default());
    let net = three_plugin_net(exec.clone());
    let prev = net.add(&request()).await.unwrap();
    let n = exec.calls().len();
    let outcome = net.check(&request(), &prev).await.unwrap();
    assert_eq!(
        outcome,
        CheckOutcome::Checked {
            skipped: vec!["portmap".into()]
        }
    );
    let checked: Vec<_> = exec.calls()[n..]
        .iter()
        .map(|c| (c.plugin_type.clone(), c.command))
        .collect();
    assert_eq!(
        checked,
        [
            ("bridge".into(), Command::Check),
            ("tuning".into(), Command::Check)
        ]
    );
    assert!(
        exec.calls()[n..]
            .iter()
            .all(|c| c.stdin["prevResult"] == *prev.raw())
    );

    // With an empty skip list a failing CHECK surfaces.
    let exec = Arc::new(FakeExec::failing("portmap", Command::Check));
    let net = three_plugin_net(exec.clone()).with_check_skip(Vec::<String>::new());
    assert!(matches!(
        net.check(&request(), &prev).await,
        Err(CniError::Plugin { .. })
    ));

    for conf in [
        json!({"cniVersion": "0.3.1", "name": "n", "plugins": [{"type": "bridge"}]}),
        json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": true, "plugins": [{"type": "bridge"}]}),
    ] {
        let exec = Arc::new(FakeExec::default());
        let net = CniNetwork::from_value(conf, true, Path::new("x"), &[])
            .unwrap()
            .with_exec(exec.clone());
        assert!(matches!(
            net.check(&request(), &prev).await.unwrap(),
            CheckOutcome::NotSupported { .. }
        ));
        assert!(exec.calls().is_empty());
    }
}

#[test]
fn config_validation() {
    let bad = [
        json!({"name": "n", "plugins": [{"type": "bridge"}]}),
        json!({"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "bridge"}]}),
        json!({"cniVersion": "1.0.0", "name": "../etc", "plugins": [{"type": "bridge"}]}),
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]}),
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]}),
        json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": "yes", "plugins": [{"type": "b"}]}),
    ];
    for conf in bad {
        let r = CniNetwork::from_value(conf.clone(), true, Path::new("x"), &[]);
        assert!(
            matches!(r, Err(CniError::InvalidConfig { .. })),
            "{conf} accepted"
        );
    }
}

#[test]
fn request_validation() {
    let mut r = request();
    r.container_id = "a/b".into();
    assert!(r.validate().is_err());
    let mut r = request();
    r.pod_name = "x;K8S_POD_UID=evil".into();
    assert!(r.validate().is_err());
    let mut r = request();
    r.ifname = "a-very-long-ifname".into();
    assert!(r.validate().is_err());
    assert!(request().validate().is_ok());
}

#[test]
fn finds_first_config_lexically_and_wraps_single_conf() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        find_config(dir.path()),
        Err(CniError::NoConfig { .. })
    ));
    assert!(matches!(
        find_config(&dir.path().join("missing")),
        Err(CniError::NoConfig { .. })
    ));
    std::fs::write(dir.path().join("README"), "x").unwrap();
    std::fs::write(
        dir.path().join("20-b.conflist"),
        r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("10-a.conf"),
        r#"{"cniVersion":"0.4.0","name":"a","type":"ptp","ipMasq":true}"#,
    )
    .unwrap();
    let conf = CniConfig {
        conf_dir: dir.path().to_path_buf(),
        bin_dirs: vec![PathBuf::from("/x")],
    };
    let net = CniNetwork::load(&conf).unwrap();
    assert_eq!(net.name(), "a");
    assert_eq!(net.cni_version(), "0.4.0");
    assert_eq!(net.plugin_types(), ["ptp"]);
    assert_eq!(net.to_conflist()["plugins"][0]["ipMasq"], true);
    std::fs::remove_file(dir.path().join("10-a.conf")).unwrap();
    let net = CniNetwork::load(&conf).unwrap();
    assert_eq!(net.plugin_types(), ["bridge", "portmap"]);
    // A broken first file is reported, not skipped silently.
    std::fs::write(dir.path().join("00-broken.conflist"), "{").unwrap();
    assert!(matches!(
        CniNetwork::load(&conf),
        Err(CniError::ParseConfig { .. })
    ));
}

#[test]
fn shipped_config_loads() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cni/10-crius-bridge.conflist");
    let net = CniNetwork::from_file(&path, &[]).unwrap();
    assert_eq!(net.name(), "crius");
    assert_eq!(net.cni_version(), "1.0.0");
    assert_eq!(net.plugin_types(), ["bridge", "portmap"]);
    let list = net.to_conflist();
    assert_eq!(list["plugins"][0]["bridge"], "crius0");
    assert_eq!(
        list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.88.0.0/16"
    );
    assert_eq!(list["plugins"][1]["capabilities"]["portMappings"], true);
}

#[test]
fn result_parsing() {
    let r = CniResult::from_json(
        br#"{"cniVersion":"1.0.0",
            "interfaces":[{"name":"br0","mac":"aa"},{"name":"veth1"},{"name":"eth0","sandbox":"/ns"}],
            "ips":[{"address":"10.0.0.1/24","interface":0},{"address":"10.0.0.5/24","gateway":"10.0.0.1","interface":2},
                   {"address":"fd00::5/64","interface":2}],
            "routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"}],
            "dns":{"nameservers":["10.0.0.1"],"search":["svc"]},
            "extra":{"kept":true}}"#,
    )
    .unwrap();
    assert_eq!(
        r.pod_ips(),
        vec![
            "10.0.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
    assert_eq!(r.dns.nameservers, ["10.0.0.1"]);
    // What the handler contract carries: only the pod-side interface.
    let net = r.pod_network();
    assert_eq!(net.interfaces.len(), 1);
    assert_eq!(net.interfaces[0].name, "eth0");
    assert_eq!(net.interfaces[0].addresses, ["10.0.0.5/24", "fd00::5/64"]);
    assert_eq!(net.interfaces[0].gateways, ["10.0.0.1"]);
    assert_eq!(net.routes[0].destination, "0.0.0.0/0");
    assert_eq!(net.routes[0].gateway, "10.0.0.1");
    assert_eq!(
        (net.dns_servers, net.dns_searches),
        (vec!["10.0.0.1".to_string()], vec!["svc".to_string()])
    );
    // Round trip keeps unmodelled fields (they matter as prevResult).
    let back: CniResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back.raw()["extra"]["kept"], true);
    assert_eq!(back, r);

    for bad in [
        &br#"[]"#[..],
        br#"{"ips":[{"address":"10.0.0.5"}]}"#,
        br#"{"ips":[{"address":"10.0.0.5/33"}]}"#,
        br#"{"interfaces":[],"ips":[{"address":"10.0.0.5/24","interface":0}]}"#,
    ] {
        assert!(
            CniResult::from_json(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn plugin_error_parsing() {
    let e = parse_plugin_error(
        "n",
        "bridge",
        Command::Add,
        br#"{"code":11,"msg":"failed to do x","details":"why"}"#,
    )
    .unwrap();
    assert_eq!(
        e.to_string(),
        "CNI plugin \"bridge\" of network \"n\" failed on ADD: failed to do x (code 11): why"
    );
    assert!(parse_plugin_error("n", "bridge", Command::Add, b"panic: oops").is_none());
}

#[tokio::test]
async fn attachment_record_roundtrip_and_teardown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sb1/cni.json");
    let exec = Arc::new(FakeExec::default());
    let net = three_plugin_net(exec.clone());
    let result = net.add_recorded(&request(), &path).await.unwrap();
    let att = Attachment::load(&path).unwrap().unwrap();
    assert_eq!(att.result, result);
    assert_eq!(att.request, request());
    assert_eq!(
        CniNetwork::from_attachment(&att, &[])
            .unwrap()
            .plugin_types(),
        ["bridge", "portmap", "tuning"]
    );

    let exec2 = Arc::new(FakeExec::default());
    assert!(
        Attachment::teardown(&path, &[], Some(exec2.clone()))
            .await
            .unwrap()
    );
    let calls = exec2.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|c| c.command == Command::Del && c.stdin["prevResult"] == *result.raw())
    );
    assert!(!path.exists());
    assert!(
        !Attachment::teardown(&path, &[], Some(exec2.clone()))
            .await
            .unwrap()
    );

    // A failed record write detaches again.
    std::fs::write(dir.path().join("file"), "").unwrap();
    let exec3 = Arc::new(FakeExec::default());
    let net = three_plugin_net(exec3.clone());
    assert!(
        net.add_recorded(&request(), &dir.path().join("file/sub/cni.json"))
            .await
            .is_err()
    );
    assert_eq!(
        exec3
            .calls()
            .iter()
            .filter(|c| c.command == Command::Del)
            .count(),
        3
    );
}

/// An executable shell script `dir/name` running `body`.
fn write_script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn process_exec_reports_missing_plugin_and_timeout() {
    let dir = tempfile::tempdir().unwrap();
    write_script(dir.path(), "slow", "sleep 5\n");
    write_script(
        dir.path(),
        "errplug",
        "cat >/dev/null\necho '{\"code\":100,\"msg\":\"nope\"}'\nexit 1\n",
    );
    write_script(
        dir.path(),
        "echo",
        "printf '{\"cmd\":\"%s\",\"stdin\":' \"$CNI_COMMAND\"\ncat\nprintf '}'\n",
    );

    let exec = ProcessExec {
        timeout: Duration::from_millis(300),
    };
    let mut inv = Invocation {
        network: "n".into(),
        plugin_type: "absent".into(),
        command: Command::Add,
        container_id: "c".into(),
        netns: String::new(),
        ifname: "eth0".into(),
        args: String::new(),
        path: vec![dir.path().to_path_buf()],
        stdin: json!({"a": 1}),
    };
    assert!(matches!(
        exec.exec(&inv).await,
        Err(CniError::PluginNotFound { .. })
    ));
    inv.plugin_type = "slow".into();
    let t = Instant::now();
    assert!(matches!(
        exec.exec(&inv).await,
        Err(CniError::Timeout { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(3));
    inv.plugin_type = "errplug".into();
    assert!(matches!(
        exec.exec(&inv).await,
        Err(CniError::Plugin { code: 100, .. })
    ));
    inv.plugin_type = "echo".into();
    let out: Value = serde_json::from_slice(&exec.exec(&inv).await.unwrap()).unwrap();
    assert_eq!(out, json!({"cmd": "ADD", "stdin": {"a": 1}}));
}

// ---- with the real plugins (root) ----

const PLUGINS: &str = "/usr/lib/cni";

/// Deletes the test bridge and namespaces however the test ends.
struct Cleanup {
    bridge: String,
    netns: Vec<PathBuf>,
    /// NetNs::create made this a mount point; unmount so it can be deleted.
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.netns {
            let _ = netns::remove_path(p);
        }
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = Proc::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// A uniquely named network on its own test bridge, with the namespaces
/// made for it; all deleted however the test ends.
struct RealNet {
    sfx: String,
    name: String,
    bridge: String,
    subnet: String,
    // Declared before `nsdir`: it unmounts the directory before that is
    // deleted.
    cleanup: Cleanup,
    nsdir: tempfile::TempDir,
}

impl RealNet {
    /// On subnet 10.254.`octet`.0/24; each test draws `octet` from a range
    /// of its own so that tests running at once do not collide.
    fn new(octet: u8) -> Self {
        let sfx = random_suffix();
        let (name, bridge) = (format!("crius-test-{sfx}"), format!("crt{sfx}"));
        let nsdir = tempfile::tempdir().unwrap();
        let cleanup = Cleanup {
            bridge: bridge.clone(),
            netns: Vec::new(),
            dir: nsdir.path().to_path_buf(),
        };
        Self {
            sfx,
            name,
            bridge,
            subnet: format!("10.254.{octet}.0/24"),
            cleanup,
            nsdir,
        }
    }

    fn network(&self, extra: Vec<Value>) -> CniNetwork {
        real_network(&self.name, &self.bridge, &self.subnet, extra)
    }

    /// A new namespace `name`, removed at the end.
    fn netns(&mut self, name: &str) -> NetNs {
        let ns = NetNs::create(self.nsdir.path(), name).unwrap();
        self.cleanup.netns.push(ns.path().to_path_buf());
        ns
    }

    /// host-local's allocation directory for this network.
    fn allocations(&self) -> String {
        format!("/var/lib/cni/networks/{}", self.name)
    }
}

fn real_network(name: &str, bridge: &str, subnet: &str, extra: Vec<Value>) -> CniNetwork {
    let mut plugins = vec![json!({
        "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}
    })];
    plugins.extend(extra);
    let conf = json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("10-test.conflist");
    std::fs::write(&path, serde_json::to_vec(&conf).unwrap()).unwrap();
    let cfg = CniConfig {
        conf_dir: dir.path().to_path_buf(),
        bin_dirs: vec![PathBuf::from(PLUGINS)],
    };
    CniNetwork::load(&cfg).unwrap()
}

fn addrs_in(ns: &Path) -> String {
    let out = Proc::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-o", "addr"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn nat_rules() -> String {
    let out = Proc::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn real_prereqs() -> bool {
    require_root()
        && require_tools(&[
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local",
            "/usr/lib/cni/portmap",
            "/usr/bin/nsenter",
            "/usr/sbin/ip",
            "/usr/sbin/iptables-save",
        ])
}

#[tokio::test]
async fn real_bridge_add_check_del() {
    if !real_prereqs() {
        return;
    }
    let octet = random_byte() % 85; // disjoint from the other real tests
    let mut real = RealNet::new(octet);
    let (sfx, subnet) = (real.sfx.clone(), real.subnet.clone());
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true});
    let net = real.network(vec![portmap]);

    let ns = real.netns("a");
    ns.bring_up_loopback().unwrap();
    let id = format!("crius{sfx}a");
    let mut req = CniRequest::new(&id, ns.path());
    req.pod_namespace = "default".into();
    req.pod_name = "a".into();
    req.pod_uid = "uid-a".into();
    req.port_mappings = vec![PortMapping {
        host_port: 40000 + octet as u16,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: "127.0.0.1".into(),
    }];

    let record = real.nsdir.path().join("records/a.json");
    let result = net.add_recorded(&req, &record).await.unwrap();
    let ips = result.pod_ips();
    assert_eq!(ips.len(), 1, "{result:?}");
    let IpAddr::V4(v4) = ips[0] else {
        panic!("not v4: {ips:?}")
    };
    assert_eq!(&v4.octets()[..3], &[10, 254, octet], "{v4} not in {subnet}");
    let inside = addrs_in(ns.path());
    assert!(
        inside.contains("eth0") && inside.contains(&format!("{v4}/24")),
        "{inside}"
    );
    assert!(inside.contains("127.0.0.1/8"), "loopback not up: {inside}");
    let alloc = PathBuf::from(real.allocations()).join(v4.to_string());
    assert!(alloc.exists(), "host-local allocation {alloc:?} missing");

    // portmap got the mapping from runtimeConfig.
    let hostport = format!("--dport {}", 40000 + octet as u16);
    assert!(
        nat_rules().contains(&hostport),
        "no DNAT rule for {hostport}"
    );

    // CHECK passes (portmap skipped per the default rule).
    assert_eq!(
        net.check(&req, &result).await.unwrap(),
        CheckOutcome::Checked {
            skipped: vec!["portmap".into()]
        }
    );

    // DEL from the record (as after a restart) releases the IP; DEL again is fine.
    assert!(
        Attachment::teardown(&record, &[PathBuf::from(PLUGINS)], None)
            .await
            .unwrap()
    );
    assert!(!alloc.exists(), "allocation not released");
    assert!(!addrs_in(ns.path()).contains("eth0"), "veth not removed");
    assert!(!nat_rules().contains(&hostport), "DNAT rule left after DEL");
    net.del(&req, Some(&result)).await.unwrap();
    net.del(&req, None).await.unwrap();

    // ADD again, remove the namespace, then DEL: still releases the IP.
    let result = net.add(&req).await.unwrap();
    let v4b = result.pod_ips()[0];
    let alloc = PathBuf::from(real.allocations()).join(v4b.to_string());
    assert!(alloc.exists());
    ns.remove().unwrap();
    net.del(&req, Some(&result)).await.unwrap();
    assert!(
        !alloc.exists(),
        "allocation not released after netns removal"
    );
    // And the stale-path case: the pin file exists but is not a namespace.
    std::fs::write(&req.netns, "").unwrap();
    net.del(&req, Some(&result)).await.unwrap();
    std::fs::remove_file(&req.netns).unwrap();
    let _ = std::fs::remove_dir_all(real.allocations());
}

#[tokio::test]
async fn real_rollback_when_second_plugin_fails() {
    if !real_prereqs() {
        return;
    }
    let mut real = RealNet::new(85 + random_byte() % 85);
    let net = real.network(vec![json!({"type": "no-such-plugin-crius"})]);
    let ns = real.netns("r");
    let req = CniRequest::new(format!("crius{}r", real.sfx), ns.path());

    let err = net.add(&req).await.unwrap_err();
    assert!(
        matches!(err, CniError::PluginNotFound { ref plugin, .. } if plugin == "no-such-plugin-crius"),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-plugin-crius"));
    // The bridge's allocation and veth are gone again.
    let allocs: Vec<_> = std::fs::read_dir(real.allocations())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(allocs.is_empty(), "leaked allocations {allocs:?}");
    assert!(!addrs_in(ns.path()).contains("eth0"), "veth leaked");
    let _ = std::fs::remove_dir_all(real.allocations());
}

#[tokio::test]
async fn real_two_pods_on_one_bridge_ping() {
    if !real_prereqs() || !require_tools(&["/usr/bin/busybox"]) {
        return;
    }
    let mut real = RealNet::new(170 + random_byte() % 85);
    let net = real.network(vec![]);
    let mut pods = Vec::new();
    for p in ["p1", "p2"] {
        let ns = real.netns(p);
        let req = CniRequest::new(format!("crius{}{p}", real.sfx), ns.path());
        let res = net.add(&req).await.unwrap();
        pods.push((ns, req, res));
    }
    let target = pods[1].2.pod_ips()[0];
    // Only addresses on the local test bridge are pinged.
    assert!(matches!(target, IpAddr::V4(a) if a.octets()[..2] == [10, 254]));
    let out = Proc::new("nsenter")
        .arg(format!("--net={}", pods[0].0.path().display()))
        .args(["busybox", "ping", "-c", "1", "-W", "2", &target.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (ns, req, res) in pods {
        net.del(&req, Some(&res)).await.unwrap();
        ns.remove().unwrap();
    }
    let _ = std::fs::remove_dir_all(real.allocations());
}
