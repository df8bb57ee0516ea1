//! The daemon's Prometheus metrics and their HTTP endpoint
//! (`metrics_address` in the config; off when unset).
//!
//! - `crius_cri_requests_total{service,method,code}` and
//!   `crius_cri_request_duration_seconds{service,method}`: every CRI call,
//!   counted by a tower layer on the gRPC server ([`RpcMetricsLayer`]); the
//!   code is the gRPC status (`OK` when the answer carries none in its
//!   headers: tonic sends errors as trailers-only responses, with the status
//!   in the headers). Unknown paths are counted as method `unknown`, so a
//!   client cannot grow the label set.
//! - `crius_pods{handler,state}`, `crius_containers{handler,state}`: taken
//!   from the pod manager at every scrape.
//! - `crius_pod_start_duration_seconds{handler,phase}`: RunPodSandbox, in
//!   total and its CNI and handler phases (which overlap for a handler that
//!   starts without the network).
//! - `crius_image_pulls_total{result}`, `crius_image_pull_duration_seconds`,
//!   `crius_image_pulled_size_bytes_total` (the sizes of the images pulled,
//!   not the bytes transferred: a pull of a present image transfers none).
//! - `crius_container_oom_kills_total{handler}`: exits reported OOMKilled.
//! - `crius_restore_duration_seconds`: restoring pods at the last start.
//! - `crius_pod_overhead_rss_bytes{handler,pod_id,process}`: resident
//!   memory of the host processes a VM-kind pod costs (QEMU, its VM shim,
//!   vhost-device-vsock), found by the pod id in their command lines at
//!   every scrape.
//!
//! The endpoint answers `GET /metrics` in the OpenMetrics text format
//! (which Prometheus scrapes) and 404 for anything else.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crius_proto::cri;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::HandlerKind;
use crate::pod::PodManager;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcCodeLabels {
    service: String,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    handler: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverheadLabels {
    handler: String,
    pod_id: String,
    process: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    handler: String,
    phase: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to about 65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcCodeLabels, Counter>,
    request_duration: Histograms<RpcLabels>,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    pod_start: Histograms<PhaseLabels>,
    pulls: Family<ResultLabels, Counter>,
    pull_duration: Histogram,
    pulled_bytes: Counter,
    oom_kills: Family<HandlerLabels, Counter>,
    restore_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    overhead: Family<OverheadLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RpcCodeLabels, Counter>::default();
        let request_duration: Histograms<RpcLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let pods = Family::<StateLabels, Gauge>::default();
        let containers = Family::<StateLabels, Gauge>::default();
        let pod_start: Histograms<PhaseLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "crius_cri_requests",
            "CRI requests by service, method and gRPC status code",
            requests.clone(),
        );
        registry.register(
            "crius_cri_request_duration_seconds",
            "CRI request latency until the answer's headers",
            request_duration.clone(),
        );
        registry.register(
            "crius_pods",
            "Pod sandboxes by runtime handler and state",
            pods.clone(),
        );
        registry.register(
            "crius_containers",
            "Containers by runtime handler and state",
            containers.clone(),
        );
        registry.register(
            "crius_pod_start_duration_seconds",
            "RunPodSandbox latency by handler: total, and its cni and handler phases",
            pod_start.clone(),
        );
        let pulls = Family::<ResultLabels, Counter>::default();
        let pull_duration = latency_histogram();
        let pulled_bytes = Counter::default();
        let oom_kills = Family::<HandlerLabels, Counter>::default();
        let restore_duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let overhead = Family::<OverheadLabels, Gauge>::default();
        registry.register(
            "crius_image_pulls",
            "PullImage calls by result (ok, error)",
            pulls.clone(),
        );
        registry.register(
            "crius_image_pull_duration_seconds",
            "PullImage latency",
            pull_duration.clone(),
        );
        registry.register(
            "crius_image_pulled_size_bytes",
            "Sizes of the images pulled (not bytes transferred)",
            pulled_bytes.clone(),
        );
        registry.register(
            "crius_container_oom_kills",
            "Container exits reported as OOMKilled",
            oom_kills.clone(),
        );
        registry.register(
            "crius_restore_duration_seconds",
            "How long restoring pods took at the daemon's last start",
            restore_duration.clone(),
        );
        registry.register(
            "crius_pod_overhead_rss_bytes",
            "Resident memory of the host processes of a VM pod (qemu, shim, vsock)",
            overhead.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            pods,
            containers,
            pod_start,
            pulls,
            pull_duration,
            pulled_bytes,
            oom_kills,
            restore_duration,
            overhead,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The daemon's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

const SERVICES: [&str; 2] = ["runtime.v1.RuntimeService", "runtime.v1.ImageService"];

/// `(service, method)` of a gRPC path, with unknown ones folded.
fn rpc_of(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let known = SERVICES.contains(&service)
        && !method.is_empty()
        && method.len() <= 64
        && method.bytes().all(|b| b.is_ascii_alphanumeric());
    if known {
        (service.to_string(), method.to_string())
    } else {
        ("unknown".to_string(), "unknown".to_string())
    }
}

fn code_name(code: tonic::Code) -> String {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
    .to_string()
}

impl Metrics {
    fn observe_rpc(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        let (service, method) = rpc_of(path);
        self.requests
            .get_or_create(&RpcCodeLabels {
                service: service.clone(),
                method: method.clone(),
                code: code_name(code),
            })
            .inc();
        self.request_duration
            .get_or_create(&RpcLabels { service, method })
            .observe(elapsed.as_secs_f64());
    }

    /// Records how long a phase of starting a pod of `handler` took.
    pub fn pod_start(&self, handler: &str, phase: &str, elapsed: Duration) {
        self.pod_start
            .get_or_create(&PhaseLabels {
                handler: handler.to_string(),
                phase: phase.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a PullImage call: its result, latency and the image's size.
    pub fn image_pull(&self, ok: bool, elapsed: Duration, size: u64) {
        let result = if ok { "ok" } else { "error" };
        self.pulls
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.pull_duration.observe(elapsed.as_secs_f64());
        self.pulled_bytes.inc_by(size);
    }

    /// Records a container exit reported as OOMKilled.
    pub fn oom_kill(&self, handler: &str) {
        self.oom_kills
            .get_or_create(&HandlerLabels {
                handler: handler.to_string(),
            })
            .inc();
    }

    /// Records how long restoring pods took.
    pub fn restore_took(&self, elapsed: Duration) {
        self.restore_duration.set(elapsed.as_secs_f64());
    }

    /// Sets the pod and container gauges from `pods` as they are now.
    async fn refresh(&self, pods: &PodManager) {
        let sandboxes = pods.list_pod_sandbox(None).await;
        let mut handler_of = std::collections::HashMap::new();
        self.pods.clear();
        for p in &sandboxes {
            handler_of.insert(p.id.clone(), p.runtime_handler.clone());
            let state = match cri::PodSandboxState::try_from(p.state) {
                Ok(cri::PodSandboxState::SandboxReady) => "ready",
                _ => "notready",
            };
            self.pods
                .get_or_create(&StateLabels {
                    handler: p.runtime_handler.clone(),
                    state: state.into(),
                })
                .inc();
        }
        self.containers.clear();
        for c in pods.list_containers(None).await {
            let state = match cri::ContainerState::try_from(c.state) {
                Ok(cri::ContainerState::ContainerCreated) => "created",
                Ok(cri::ContainerState::ContainerRunning) => "running",
                Ok(cri::ContainerState::ContainerExited) => "exited",
                _ => "unknown",
            };
            self.containers
                .get_or_create(&StateLabels {
                    handler: handler_of
                        .get(&c.pod_sandbox_id)
                        .cloned()
                        .unwrap_or_default(),
                    state: state.into(),
                })
                .inc();
        }
        let vm_pods: Vec<(String, String)> = sandboxes
            .iter()
            .filter(|p| pods.handler_kind(&p.runtime_handler) == Some(HandlerKind::Vm))
            .map(|p| (p.id.clone(), p.runtime_handler.clone()))
            .collect();
        let rss = tokio::task::spawn_blocking(move || overhead_rss(&vm_pods))
            .await
            .unwrap_or_default();
        self.overhead.clear();
        for ((pod_id, handler, process), bytes) in rss {
            self.overhead
                .get_or_create(&OverheadLabels {
                    handler,
                    pod_id,
                    process,
                })
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// The registry in the OpenMetrics text format.
    fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The host processes of VM pods: `(pod id, handler, process kind)` → RSS
/// bytes, matched by the first 16 characters of the pod id (what the VM
/// shim puts in its own, QEMU's and the vsock helper's command lines).
fn overhead_rss(
    vm_pods: &[(String, String)],
) -> std::collections::BTreeMap<(String, String, String), u64> {
    let mut out = std::collections::BTreeMap::new();
    if vm_pods.is_empty() {
        return out;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let kind = if cmdline.contains("qemu-system") {
            "qemu"
        } else if cmdline.contains("crius-kata-shim") {
            "shim"
        } else if cmdline.contains("vhost-device-vsock") {
            "vsock"
        } else {
            continue;
        };
        let Some((pod_id, handler)) = vm_pods
            .iter()
            .find(|(id, _)| cmdline.contains(&id[..id.len().min(16)]))
        else {
            continue;
        };
        let rss_kb = std::fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        *out.entry((pod_id.clone(), handler.clone(), kind.to_string()))
            .or_insert(0) += rss_kb * 1024;
    }
    out
}

/// Counts and times every CRI request (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

/// The service of [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<hyper::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<hyper::Request<B>, Response = hyper::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let started = Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unknown,
            };
            global().observe_rpc(&path, code, started.elapsed());
            result
        })
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    pods: Arc<PodManager>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let response = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
        let metrics = global();
        metrics.refresh(&pods).await;
        hyper::Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(metrics.encode())))
    } else {
        hyper::Response::builder()
            .status(hyper::StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found: GET /metrics\n")))
    };
    Ok(response.unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new()))))
}

/// Binds `address` and serves the endpoint in the background; returns the
/// bound address.
pub async fn serve(address: SocketAddr, pods: Arc<PodManager>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let pods = pods.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, pods.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                // A scrape is small: a connection that stalls is dropped.
                match tokio::time::timeout(Duration::from_secs(60), conn).await {
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
                    Err(_) => tracing::debug!("metrics connection timed out"),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_paths_and_codes_become_bounded_labels() {
        assert_eq!(
            rpc_of("/runtime.v1.RuntimeService/RunPodSandbox"),
            (
                "runtime.v1.RuntimeService".to_string(),
                "RunPodSandbox".to_string()
            )
        );
        assert_eq!(rpc_of("/evil/x").0, "unknown");
        assert_eq!(rpc_of("/runtime.v1.RuntimeService/a-b").1, "unknown");
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
    }

    #[test]
    fn encoded_families_carry_their_labels() {
        let m = Metrics::default();
        m.observe_rpc(
            "/runtime.v1.RuntimeService/Version",
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        m.pod_start("runc", "total", Duration::from_millis(300));
        let text = m.encode();
        assert!(
            text.contains(
                "crius_cri_requests_total{service=\"runtime.v1.RuntimeService\",method=\"Version\",code=\"OK\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE crius_cri_request_duration_seconds histogram"));
        assert!(text.contains(
            "crius_pod_start_duration_seconds_count{handler=\"runc\",phase=\"total\"} 1"
        ));
        assert!(text.ends_with("# EOF\n"));
    }
}
