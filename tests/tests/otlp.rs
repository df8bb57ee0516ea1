//! `otlp_endpoint`: the daemon exports one span per CRI request over
//! OTLP/HTTP, with the request's `rpc`, `pod_id`, `container_id` and
//! `handler`, received here by a collector built on the OpenTelemetry
//! project's own protobuf bindings (Python `opentelemetry-proto`, installed
//! by scripts/setup), not by code of ours.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius_tests::pods::{PodEnv, PodEnvOptions};
use serde_json::Value;

/// Accepts `POST /v1/traces`, decodes ExportTraceServiceRequest and prints
/// a JSON line per span: its name, string attributes and service name.
const COLLECTOR: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

def value(v):
    kind = v.WhichOneof("value")
    return str(getattr(v, kind)) if kind else ""

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            service = {a.key: value(a.value) for a in rs.resource.attributes}.get("service.name", "")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {a.key: value(a.value) for a in span.attributes}
                    print(json.dumps({"path": self.path, "name": span.name, "service": service, "attrs": attrs}), flush=True)
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

struct Collector {
    child: Child,
    port: u16,
}

impl Collector {
    fn start() -> Collector {
        let mut child = Command::new("python3")
            .args(["-c", COLLECTOR])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first.trim().parse().unwrap_or_else(|_| {
            panic!(
                "the collector did not start (pip install opentelemetry-proto; scripts/setup does): {first:?}"
            )
        });
        Collector { child, port }
    }

    /// The spans received, after stopping the collector.
    fn spans(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out);
        let _ = self.child.wait();
        out.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line per span"))
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_of_cri_requests_reach_an_otlp_collector_with_their_pod_and_container() {
    let collector = Collector::start();
    let yaml = format!(
        "otlp_endpoint: http://127.0.0.1:{}/v1/traces\n",
        collector.port
    );
    let Some(mut env) = PodEnv::start(
        "runc",
        PodEnvOptions {
            extra_yaml: &yaml,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let pod_config = env.pod_config("traced");
    let pod = env.run_pod(&pod_config).await.expect("RunPodSandbox");
    let ctr = env
        .create_and_start(
            &pod,
            &pod_config,
            env.container_config("traced", &["sleep", "60"]),
        )
        .await;
    env.stop_and_remove_pod(&pod).await;
    // SIGTERM: the daemon sends what it has not sent yet before it exits.
    let started = Instant::now();
    env.daemon.terminate();
    assert!(started.elapsed() < Duration::from_secs(20));
    let spans = collector.spans();
    let find = |rpc: &str| {
        spans
            .iter()
            .find(|s| s["attrs"]["rpc"] == rpc)
            .unwrap_or_else(|| panic!("no {rpc} span among {spans:#?}"))
    };
    let run = find("RunPodSandbox");
    assert_eq!(run["path"], "/v1/traces");
    assert_eq!(run["service"], "crius");
    assert_eq!(run["name"], "cri");
    assert_eq!(run["attrs"]["pod_id"], pod.as_str(), "{run}");
    assert_eq!(run["attrs"]["handler"], "runc", "{run}");
    let create = find("CreateContainer");
    assert_eq!(create["attrs"]["pod_id"], pod.as_str(), "{create}");
    assert_eq!(create["attrs"]["container_id"], ctr.as_str(), "{create}");
    assert_eq!(
        find("StartContainer")["attrs"]["container_id"],
        ctr.as_str()
    );
    assert_eq!(find("RemovePodSandbox")["attrs"]["pod_id"], pod.as_str());
}
