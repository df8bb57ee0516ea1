//! Every call into a handler is bounded, whatever the handler is.
//!
//! A handler is code the daemon does not control: a plugin library running
//! inside the daemon, a shim process, an OCI runtime that hangs on a stuck
//! mount. [`DeadlineHandler`] wraps each registered handler and gives each
//! call a limit from the handler's config (`call_timeout_seconds`,
//! `run_sandbox_timeout_seconds`; a stop adds its grace period, an ExecSync
//! its own timeout, `Wait` has none). A call that passes its limit answers
//! `DeadlineExceeded` at once and keeps running in the background: a
//! library call cannot be interrupted (it holds a blocking thread until the
//! plugin returns), and a late answer must still be consumed.
//!
//! While a call that passed its limit is still outstanding the handler is
//! *unhealthy*: `CheckReady` (so `Status`) reports it not ready, naming the
//! stuck call, and new pods are refused with `NotReady` instead of piling
//! more stuck calls onto it. Everything else still goes through, so pods
//! already on the handler can be stopped and removed. The handler is healthy
//! again when the stuck calls have returned.
//!
//! `CheckReady` itself is bounded and its answer reused for a few seconds,
//! so a kubelet polling `Status` never waits long on a slow handler.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crius_shim_api::types::{
    AttachRequest, Capabilities, ContainerRef, ContainerStatsResponse, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, ExecRequest, ExecResponse, ExecSyncRequest,
    ExecSyncResponse, KillProcessRequest, PortForwardRequest, ProcessRef, ResizePtyRequest,
    RestoreSandboxRequest, RestoreSandboxResponse, RunSandboxRequest, RunSandboxResponse,
    SandboxRef, SandboxStatsResponse, SandboxStatusResponse, StopContainerRequest,
    UpdateContainerResourcesRequest, UpdateSandboxResourcesRequest, WaitResponse,
};
use crius_shim_api::{ErrorKind, HandlerError, HandlerFeatures, HandlerResult, RuntimeHandler};

/// Default limit of one handler call (`call_timeout_seconds`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `CheckReady` may take before the handler is reported not ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a `CheckReady` answer is reused.
pub const READY_CACHE: Duration = Duration::from_secs(5);

/// The limits of one handler's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Every call but the ones below.
    pub call: Duration,
    /// `RunSandbox` (a VM handler boots in it).
    pub run_sandbox: Duration,
    /// `CheckReady`.
    pub ready: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            call: DEFAULT_CALL_TIMEOUT,
            run_sandbox: DEFAULT_CALL_TIMEOUT,
            ready: READY_TIMEOUT,
        }
    }
}

/// Calls that passed their limit and have not returned yet.
#[derive(Default)]
struct Stuck {
    next_id: AtomicU64,
    calls: Mutex<BTreeMap<u64, (&'static str, Duration, Instant)>>,
}

impl Stuck {
    fn add(&self, method: &'static str, limit: Duration) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.calls).insert(id, (method, limit, Instant::now()));
        id
    }

    fn remove(&self, id: u64) {
        lock(&self.calls).remove(&id);
    }

    /// Why the handler is unhealthy, if it is.
    fn reason(&self) -> Option<String> {
        let calls = lock(&self.calls);
        let (method, limit, since) = calls.values().min_by_key(|(_, _, since)| *since)?;
        Some(format!(
            "unhealthy: {} call(s) did not answer within their timeout \
             and are still outstanding (the oldest: {method}, timed out after {}s, {}s ago)",
            calls.len(),
            limit.as_secs(),
            since.elapsed().as_secs()
        ))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered handler with bounded calls (see the module docs).
pub struct DeadlineHandler {
    inner: Arc<dyn RuntimeHandler>,
    limits: CallLimits,
    stuck: Arc<Stuck>,
    ready: tokio::sync::Mutex<Option<(Instant, HandlerResult<()>)>>,
}

/// Aborts a spawned call whose caller went away before it answered or
/// timed out, so that dropping a request still cancels it.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

impl DeadlineHandler {
    pub fn new(inner: Arc<dyn RuntimeHandler>, limits: CallLimits) -> Self {
        Self {
            inner,
            limits,
            stuck: Arc::default(),
            ready: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs `call` on the inner handler within `limit`.
    async fn bounded<T, F, Fut>(
        &self,
        method: &'static str,
        limit: Duration,
        call: F,
    ) -> HandlerResult<T>
    where
        F: FnOnce(Arc<dyn RuntimeHandler>) -> Fut,
        Fut: Future<Output = HandlerResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        let mut task = tokio::spawn(call(self.inner.clone()));
        let mut guard = AbortOnDrop(Some(task.abort_handle()));
        match tokio::time::timeout(limit, &mut task).await {
            Ok(joined) => {
                guard.0 = None;
                joined.unwrap_or_else(|e| {
                    Err(HandlerError::internal(format!(
                        "handler {}: {method} failed: {e}",
                        self.inner.name()
                    )))
                })
            }
            Err(_) => {
                // Keep the call: its answer is drained and its end makes the
                // handler healthy again.
                guard.0 = None;
                let id = self.stuck.add(method, limit);
                let stuck = self.stuck.clone();
                let name = self.inner.name().to_string();
                tokio::spawn(async move {
                    let _ = task.await;
                    stuck.remove(id);
                    tracing::info!(handler = %name, "a timed-out {method} call returned at last");
                });
                tracing::warn!(
                    handler = self.inner.name(),
                    "{method} did not answer within {}s; the handler is unhealthy until it does",
                    limit.as_secs()
                );
                Err(HandlerError {
                    kind: ErrorKind::DeadlineExceeded,
                    message: format!(
                        "handler {}: {method} did not answer within {}s",
                        self.inner.name(),
                        limit.as_secs()
                    ),
                })
            }
        }
    }

    fn call_limit(&self) -> Duration {
        self.limits.call
    }
}

/// `base` plus a request's own timeout in seconds (≤ 0: none of its own).
fn plus_seconds(base: Duration, seconds: i64) -> Duration {
    base + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

#[async_trait]
impl RuntimeHandler for DeadlineHandler {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn features(&self) -> HandlerFeatures {
        self.inner.features()
    }

    async fn check_ready(&self) -> HandlerResult<()> {
        if let Some(reason) = self.stuck.reason() {
            return Err(HandlerError::not_ready(self.inner.name(), &reason));
        }
        // One probe at a time; concurrent Status calls share its answer.
        let mut cached = self.ready.lock().await;
        if let Some((at, answer)) = cached.as_ref()
            && at.elapsed() < READY_CACHE
        {
            return answer.clone();
        }
        let inner = self.inner.clone();
        let answer = match tokio::time::timeout(self.limits.ready, inner.check_ready()).await {
            Ok(answer) => answer,
            Err(_) => Err(HandlerError::not_ready(
                self.inner.name(),
                format!(
                    "CheckReady did not answer within {}s",
                    self.limits.ready.as_secs()
                ),
            )),
        };
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn run_sandbox(&self, req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
        if let Some(reason) = self.stuck.reason() {
            return Err(HandlerError::not_ready(self.inner.name(), &reason));
        }
        self.bounded("RunSandbox", self.limits.run_sandbox, |h| async move {
            h.run_sandbox(req).await
        })
        .await
    }

    async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.bounded("StopSandbox", self.call_limit(), |h| async move {
            h.stop_sandbox(req).await
        })
        .await
    }

    async fn remove_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
        self.bounded("RemoveSandbox", self.call_limit(), |h| async move {
            h.remove_sandbox(req).await
        })
        .await
    }

    async fn sandbox_status(&self, req: SandboxRef) -> HandlerResult<SandboxStatusResponse> {
        self.bounded("SandboxStatus", self.call_limit(), |h| async move {
            h.sandbox_status(req).await
        })
        .await
    }

    async fn restore_sandbox(
        &self,
        req: RestoreSandboxRequest,
    ) -> HandlerResult<RestoreSandboxResponse> {
        // Restoring may respawn a shim and reconnect to a VM: as long as a
        // new pod may take.
        self.bounded("RestoreSandbox", self.limits.run_sandbox, |h| async move {
            h.restore_sandbox(req).await
        })
        .await
    }

    async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> HandlerResult<CreateContainerResponse> {
        self.bounded("CreateContainer", self.call_limit(), |h| async move {
            h.create_container(req).await
        })
        .await
    }

    async fn start_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.bounded("StartContainer", self.call_limit(), |h| async move {
            h.start_container(req).await
        })
        .await
    }

    async fn stop_container(&self, req: StopContainerRequest) -> HandlerResult<()> {
        let limit = plus_seconds(self.call_limit(), req.timeout_seconds);
        self.bounded("StopContainer", limit, |h| async move {
            h.stop_container(req).await
        })
        .await
    }

    async fn remove_container(&self, req: ContainerRef) -> HandlerResult<()> {
        self.bounded("RemoveContainer", self.call_limit(), |h| async move {
            h.remove_container(req).await
        })
        .await
    }

    async fn container_status(&self, req: ContainerRef) -> HandlerResult<ContainerStatusResponse> {
        self.bounded("ContainerStatus", self.call_limit(), |h| async move {
            h.container_status(req).await
        })
        .await
    }

    async fn exec_sync(&self, req: ExecSyncRequest) -> HandlerResult<ExecSyncResponse> {
        if req.timeout_seconds <= 0 {
            // No timeout of its own: the command may run as long as it does
            // (a kubelet always sets one for probes).
            return self.inner.exec_sync(req).await;
        }
        let limit = plus_seconds(self.call_limit(), req.timeout_seconds);
        self.bounded("ExecSync", limit, |h| async move { h.exec_sync(req).await })
            .await
    }

    async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> HandlerResult<()> {
        self.bounded(
            "UpdateContainerResources",
            self.call_limit(),
            |h| async move { h.update_container_resources(req).await },
        )
        .await
    }

    async fn reopen_container_log(&self, req: ContainerRef) -> HandlerResult<()> {
        self.bounded("ReopenContainerLog", self.call_limit(), |h| async move {
            h.reopen_container_log(req).await
        })
        .await
    }

    async fn container_stats(&self, req: ContainerRef) -> HandlerResult<ContainerStatsResponse> {
        self.bounded("ContainerStats", self.call_limit(), |h| async move {
            h.container_stats(req).await
        })
        .await
    }

    async fn exec(&self, req: ExecRequest) -> HandlerResult<ExecResponse> {
        self.bounded(
            "Exec",
            self.call_limit(),
            |h| async move { h.exec(req).await },
        )
        .await
    }

    async fn attach(&self, req: AttachRequest) -> HandlerResult<()> {
        self.bounded("Attach", self.call_limit(), |h| async move {
            h.attach(req).await
        })
        .await
    }

    async fn resize_pty(&self, req: ResizePtyRequest) -> HandlerResult<()> {
        self.bounded("ResizePty", self.call_limit(), |h| async move {
            h.resize_pty(req).await
        })
        .await
    }

    async fn kill_process(&self, req: KillProcessRequest) -> HandlerResult<()> {
        self.bounded("KillProcess", self.call_limit(), |h| async move {
            h.kill_process(req).await
        })
        .await
    }

    /// Unbounded by contract: it answers when the process exits. The core
    /// cancels it by dropping the call.
    async fn wait(&self, req: ProcessRef) -> HandlerResult<WaitResponse> {
        self.inner.wait(req).await
    }

    async fn port_forward(&self, req: PortForwardRequest) -> HandlerResult<()> {
        self.bounded("PortForward", self.call_limit(), |h| async move {
            h.port_forward(req).await
        })
        .await
    }

    async fn sandbox_stats(&self, req: SandboxRef) -> HandlerResult<SandboxStatsResponse> {
        self.bounded("SandboxStats", self.call_limit(), |h| async move {
            h.sandbox_stats(req).await
        })
        .await
    }

    async fn update_sandbox_resources(
        &self,
        req: UpdateSandboxResourcesRequest,
    ) -> HandlerResult<()> {
        self.bounded(
            "UpdateSandboxResources",
            self.call_limit(),
            |h| async move { h.update_sandbox_resources(req).await },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// StartContainer hangs until released; everything else answers.
    struct Hangs {
        release: tokio::sync::Notify,
        ready_calls: AtomicU64,
        slow_ready: AtomicBool,
    }

    #[async_trait]
    impl RuntimeHandler for Hangs {
        fn name(&self) -> &str {
            "hangs"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn check_ready(&self) -> HandlerResult<()> {
            self.ready_calls.fetch_add(1, Ordering::SeqCst);
            if self.slow_ready.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
        async fn run_sandbox(&self, _req: RunSandboxRequest) -> HandlerResult<RunSandboxResponse> {
            Ok(RunSandboxResponse::default())
        }
        async fn start_container(&self, _req: ContainerRef) -> HandlerResult<()> {
            self.release.notified().await;
            Ok(())
        }
        async fn stop_sandbox(&self, _req: SandboxRef) -> HandlerResult<()> {
            Ok(())
        }
    }

    fn hangs() -> Arc<Hangs> {
        Arc::new(Hangs {
            release: tokio::sync::Notify::new(),
            ready_calls: AtomicU64::new(0),
            slow_ready: AtomicBool::new(false),
        })
    }

    fn limits(call_ms: u64) -> CallLimits {
        CallLimits {
            call: Duration::from_millis(call_ms),
            run_sandbox: Duration::from_millis(call_ms),
            ready: Duration::from_millis(call_ms),
        }
    }

    #[tokio::test]
    async fn a_stuck_call_times_out_and_marks_the_handler_unhealthy_until_it_returns() {
        let inner = hangs();
        let handler = DeadlineHandler::new(inner.clone(), limits(100));
        handler.check_ready().await.expect("ready at first");

        let err = handler
            .start_container(ContainerRef::default())
            .await
            .expect_err("StartContainer hangs");
        assert_eq!(err.kind, ErrorKind::DeadlineExceeded, "{err}");
        assert!(
            err.message.contains("StartContainer did not answer within"),
            "{err}"
        );

        // Not ready, naming the stuck call; new pods refused; teardown works.
        let err = handler.check_ready().await.expect_err("unhealthy");
        assert_eq!(err.kind, ErrorKind::NotReady);
        assert!(err.message.contains("oldest: StartContainer"), "{err}");
        let err = handler
            .run_sandbox(RunSandboxRequest::default())
            .await
            .expect_err("no new pods");
        assert_eq!(err.kind, ErrorKind::NotReady, "{err}");
        handler
            .stop_sandbox(SandboxRef::default())
            .await
            .expect("teardown still goes through");

        // The stuck call returns: healthy again.
        inner.release.notify_one();
        for _ in 0..100 {
            if handler.stuck.reason().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handler
            .run_sandbox(RunSandboxRequest::default())
            .await
            .expect("healthy after the stuck call returned");
    }

    #[tokio::test]
    async fn readiness_is_bounded_and_cached() {
        let inner = hangs();
        inner.slow_ready.store(true, Ordering::SeqCst);
        let handler = DeadlineHandler::new(inner.clone(), limits(50));
        let started = Instant::now();
        let err = handler.check_ready().await.expect_err("slow probe");
        assert!(err.message.contains("CheckReady did not answer"), "{err}");
        // The answer is reused: no second probe, no second wait.
        handler.check_ready().await.expect_err("cached");
        assert_eq!(inner.ready_calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_dropped_caller_cancels_its_call() {
        let inner = hangs();
        let handler = DeadlineHandler::new(inner.clone(), limits(60_000));
        let call = handler.start_container(ContainerRef::default());
        let _ = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(
            handler.stuck.reason().is_none(),
            "a cancelled call is not a stuck one"
        );
        // The spawned call was aborted: its clone of the handler is dropped.
        for _ in 0..100 {
            if Arc::strong_count(&inner) == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the cancelled call still holds the handler");
    }
}
