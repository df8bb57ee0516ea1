//! The span of each CRI request: made by the server for every call (the
//! RPC's name), with `pod_id`, `container_id` and `handler` filled in by
//! the method once it knows them, so the log lines and the exported spans
//! of one request carry the same fields everywhere.

use tracing::Span;

/// The span a CRI request runs in (`path` is the gRPC path,
/// `/runtime.v1.RuntimeService/RunPodSandbox`).
pub fn request_span(path: &str) -> Span {
    let rpc = path.rsplit('/').next().unwrap_or(path);
    tracing::info_span!(
        "cri",
        rpc,
        pod_id = tracing::field::Empty,
        container_id = tracing::field::Empty,
        handler = tracing::field::Empty,
    )
}

/// Records the ids a request names (empty ones are left unset).
pub fn record_ids(pod_id: &str, container_id: &str) {
    let span = Span::current();
    if !pod_id.is_empty() {
        span.record("pod_id", pod_id);
    }
    if !container_id.is_empty() {
        span.record("container_id", container_id);
    }
}

/// Records the runtime handler a pod runs on.
pub fn record_handler(handler: &str) {
    if !handler.is_empty() {
        Span::current().record("handler", handler);
    }
}
