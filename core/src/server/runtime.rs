//! CRI RuntimeService.
//!
//! Version, Status and RuntimeConfig answer from the daemon's real state;
//! the pod and container RPCs are thin wrappers over [`PodManager`], whose
//! typed errors become gRPC statuses here ([`pod_status`]). Stats, metrics
//! and events come from the pod manager (`pod::stats`, `pod::metrics`,
//! `crate::events`); the list streams are pages of the list RPCs
//! ([`super::stats::paged`]). UpdateRuntimeConfig records the kubelet's pod
//! CIDR in memory (shown in verbose Status). Checkpoint/restore answer a
//! precise refusal naming what is missing (`pod::checkpoint`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crius_proto::cri;
use crius_proto::cri::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::handlers::HandlerRegistry;
use crate::pod::PodManager;
use crate::server::spans;
use crate::streaming::{AttachSpec, ExecSpec, StreamRequest, StreamingServer};

use super::stats::{LIST_CHUNK, RpcStream, STATS_CHUNK, check_pod_cidr, paged};

/// The CRI API version this daemon speaks.
pub const CRI_API_VERSION: &str = "v1";
/// Name reported in `Version`.
pub const RUNTIME_NAME: &str = "crius";
/// Version of this build of crius.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

use super::errors::detached;
pub use super::errors::pod_status;

/// Shared state behind the RuntimeService RPCs.
pub struct RuntimeServer {
    /// The current handler table and running configuration (a reload
    /// swaps both; see [`crate::handlers`]).
    handlers: Arc<HandlerRegistry>,
    pods: Arc<PodManager>,
    /// Serves Exec/Attach/PortForward URLs; `None` until a stream backend
    /// exists, and then those RPCs validate and answer `Unimplemented`.
    streaming: Option<Arc<StreamingServer>>,
    /// The pod CIDR the kubelet sent in UpdateRuntimeConfig ("" = none yet).
    pod_cidr: Mutex<String>,
}

impl RuntimeServer {
    pub fn new(handlers: Arc<HandlerRegistry>, pods: Arc<PodManager>) -> Self {
        Self {
            handlers,
            pods,
            streaming: None,
            pod_cidr: Mutex::new(String::new()),
        }
    }

    /// Hands out Exec/Attach/PortForward URLs on `streaming`.
    pub fn with_streaming(mut self, streaming: Option<Arc<StreamingServer>>) -> Self {
        self.streaming = streaming;
        self
    }

    /// The full id of a running container, or `NotFound`/`FailedPrecondition`.
    async fn running_container(&self, rpc: &str, container_id: &str) -> Result<String, Status> {
        if container_id.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{rpc}: container_id is required"
            )));
        }
        let status = self
            .pods
            .container_status(container_id, false)
            .await
            .map_err(pod_status)?
            .status
            .ok_or_else(|| Status::internal(format!("{rpc}: container status missing")))?;
        if status.state != cri::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "{rpc}: container {} is not running",
                status.id
            )));
        }
        Ok(status.id)
    }

    /// A URL on the streaming server for an already validated request.
    fn stream_url(&self, rpc: &str, request: StreamRequest) -> Result<String, Status> {
        let Some(streaming) = &self.streaming else {
            return Err(Status::unimplemented(format!(
                "{rpc}: the handler contract does not carry interactive streams yet"
            )));
        };
        streaming
            .url(request)
            .map_err(|e| Status::resource_exhausted(format!("{rpc}: {e}")))
    }

    async fn runtime_condition(&self) -> cri::RuntimeCondition {
        // The runtime is ready when the default handler can serve pods; other
        // handlers' problems are reported per handler in `info` so one broken
        // optional handler does not mark the whole node not ready.
        let ready = match self.handlers.resolve("") {
            Ok(slot) => slot
                .handler()
                .check_ready()
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        condition("RuntimeReady", ready, "RuntimeNotReady")
    }

    fn network_condition(&self) -> cri::RuntimeCondition {
        condition(
            "NetworkReady",
            cni_config_present(&self.handlers.config().cni.conf_dir),
            "NetworkPluginNotReady",
        )
    }
}

fn condition(
    kind: &str,
    result: Result<(), String>,
    failure_reason: &str,
) -> cri::RuntimeCondition {
    match result {
        Ok(()) => cri::RuntimeCondition {
            r#type: kind.to_string(),
            status: true,
            ..Default::default()
        },
        Err(message) => cri::RuntimeCondition {
            r#type: kind.to_string(),
            status: false,
            reason: failure_reason.to_string(),
            message,
        },
    }
}

/// The network is ready once a CNI network configuration exists, as in CRI-O.
fn cni_config_present(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read CNI config dir {}: {e}", dir.display()))?;
    let found = entries.filter_map(Result::ok).any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        [".conflist", ".conf", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
    });
    if found {
        Ok(())
    } else {
        Err(format!(
            "no CNI network configuration found in {}",
            dir.display()
        ))
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeServer {
    type StreamPodSandboxesStream = RpcStream<cri::StreamPodSandboxesResponse>;
    type StreamContainersStream = RpcStream<cri::StreamContainersResponse>;
    type StreamContainerStatsStream = RpcStream<cri::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = RpcStream<cri::StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = RpcStream<cri::ContainerEventResponse>;
    type StreamPodSandboxMetricsStream = RpcStream<cri::StreamPodSandboxMetricsResponse>;

    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".to_string(),
            runtime_name: RUNTIME_NAME.to_string(),
            runtime_version: RUNTIME_VERSION.to_string(),
            runtime_api_version: CRI_API_VERSION.to_string(),
        }))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let conditions = vec![self.runtime_condition().await, self.network_condition()];
        let mut runtime_handlers = Vec::new();
        let mut handler_info = serde_json::Map::new();
        let userns_support = self.pods.userns_support().await;
        // The current table: handlers a reload removed are not offered,
        // though their remaining pods are still served.
        let table = self.handlers.table();
        for (name, handler) in table.iter() {
            let mut features = handler.features();
            // A handler that runs pods in user namespaces can only do so on
            // a node where the core can make them (see PodManager).
            features.user_namespaces &= userns_support.is_ok();
            let handler_features = Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: features.recursive_read_only_mounts,
                user_namespaces: features.user_namespaces,
            });
            // The kubelet reads the default handler as the entry with an empty name.
            if name == table.default_name() {
                runtime_handlers.push(cri::RuntimeHandler {
                    name: String::new(),
                    features: handler_features,
                });
            }
            runtime_handlers.push(cri::RuntimeHandler {
                name: name.to_string(),
                features: handler_features,
            });
            let ready = handler.check_ready().await;
            handler_info.insert(
                name.to_string(),
                serde_json::json!({
                    "ready": ready.is_ok(),
                    "reason": ready.err().map(|e| e.to_string()),
                    "recursive_read_only_mounts": features.recursive_read_only_mounts,
                    "user_namespaces": features.user_namespaces,
                    "user_namespaces_unsupported_because": userns_support.as_ref().err(),
                }),
            );
        }
        let mut info = HashMap::new();
        if request.get_ref().verbose {
            info.insert(
                "handlers".to_string(),
                serde_json::Value::Object(handler_info).to_string(),
            );
            info.insert(
                "config".to_string(),
                serde_json::to_string(&**table.config())
                    .map_err(|e| Status::internal(e.to_string()))?,
            );
            // Handlers a reload removed or replaced that still serve pods.
            info.insert(
                "retiredHandlers".to_string(),
                serde_json::json!(self.handlers.retired()).to_string(),
            );
            let pod_cidr = self
                .pod_cidr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            info.insert(
                "runtimeConfig".to_string(),
                serde_json::json!({ "podCIDR": pod_cidr }).to_string(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            // SupplementalGroupsPolicy Strict: only the groups the pod
            // names, none merged from the image's /etc/group.
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
                // A pod's user namespace owns its network namespace, so
                // host-network pods cannot have one.
                user_namespaces_host_network: false,
                mount_options: false,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: match self.pods.cgroup_driver() {
                    crate::config::CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs as i32,
                    crate::config::CgroupDriver::Systemd => cri::CgroupDriver::Systemd as i32,
                },
            }),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let pods = self.pods.clone();
        spans::record_handler(&request.get_ref().runtime_handler);
        let pod_sandbox_id =
            detached(async move { pods.run_pod_sandbox(request.into_inner()).await }).await?;
        spans::record_ids(&pod_sandbox_id, "");
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        spans::record_ids(&request.get_ref().pod_sandbox_id, "");
        let pods = self.pods.clone();
        detached(async move {
            pods.stop_pod_sandbox(&request.get_ref().pod_sandbox_id)
                .await
        })
        .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        spans::record_ids(&request.get_ref().pod_sandbox_id, "");
        let pods = self.pods.clone();
        detached(async move {
            pods.remove_pod_sandbox(&request.get_ref().pod_sandbox_id)
                .await
        })
        .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        let resp = self
            .pods
            .pod_sandbox_status(&req.pod_sandbox_id, req.verbose)
            .await
            .map_err(pod_status)?;
        Ok(Response::new(resp))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let items = self
            .pods
            .list_pod_sandbox(request.into_inner().filter)
            .await;
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let items = self
            .pods
            .list_pod_sandbox(request.into_inner().filter)
            .await;
        Ok(Response::new(paged(items, LIST_CHUNK, |pod_sandboxes| {
            cri::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        spans::record_ids(&request.get_ref().pod_sandbox_id, "");
        let pods = self.pods.clone();
        let container_id =
            detached(async move { pods.create_container(request.into_inner()).await }).await?;
        spans::record_ids("", &container_id);
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        spans::record_ids("", &request.get_ref().container_id);
        let pods = self.pods.clone();
        detached(async move { pods.start_container(&request.get_ref().container_id).await })
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = request.into_inner();
        spans::record_ids("", &req.container_id);
        let pods = self.pods.clone();
        detached(async move { pods.stop_container(&req.container_id, req.timeout).await }).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        spans::record_ids("", &request.get_ref().container_id);
        let pods = self.pods.clone();
        detached(async move { pods.remove_container(&request.get_ref().container_id).await })
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let containers = self.pods.list_containers(request.into_inner().filter).await;
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn stream_containers(
        &self,
        request: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let containers = self.pods.list_containers(request.into_inner().filter).await;
        Ok(Response::new(paged(containers, LIST_CHUNK, |containers| {
            cri::StreamContainersResponse { containers }
        })))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        let resp = self
            .pods
            .container_status(&req.container_id, req.verbose)
            .await
            .map_err(pod_status)?;
        Ok(Response::new(resp))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        detached(async move {
            pods.update_container_resources(&req.container_id, req.linux)
                .await
        })
        .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.pods
            .reopen_container_log(&request.get_ref().container_id)
            .await
            .map_err(pod_status)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let resp = self
            .pods
            .exec_sync(request.into_inner())
            .await
            .map_err(pod_status)?;
        Ok(Response::new(resp))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = request.into_inner();
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(Status::invalid_argument("Exec: cmd is required"));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument(
                "Exec: at least one of stdin, stdout and stderr is required",
            ));
        }
        let container_id = self.running_container("Exec", &req.container_id).await?;
        let url = self.stream_url(
            "Exec",
            StreamRequest::Exec(ExecSpec {
                container_id,
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                // A terminal carries stderr on stdout.
                stderr: req.stderr && !req.tty,
            }),
        )?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = request.into_inner();
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument(
                "Attach: at least one of stdin, stdout and stderr is required",
            ));
        }
        let container_id = self.running_container("Attach", &req.container_id).await?;
        self.pods
            .check_attach_stdin(&container_id, req.stdin)
            .map_err(pod_status)?;
        let url = self.stream_url(
            "Attach",
            StreamRequest::Attach(AttachSpec {
                container_id,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr && !req.tty,
            }),
        )?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = request.into_inner();
        let mut ports = Vec::with_capacity(req.port.len());
        for port in &req.port {
            match u16::try_from(*port) {
                Ok(port) if port > 0 => ports.push(port),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "PortForward: port {port} is outside 1-65535"
                    )));
                }
            }
        }
        if req.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument(
                "PortForward: pod_sandbox_id is required",
            ));
        }
        let status = self
            .pods
            .pod_sandbox_status(&req.pod_sandbox_id, false)
            .await
            .map_err(pod_status)?
            .status
            .ok_or_else(|| Status::internal("PortForward: pod sandbox status missing"))?;
        if status.state != cri::PodSandboxState::SandboxReady as i32 {
            return Err(Status::failed_precondition(format!(
                "PortForward: pod sandbox {} is not ready",
                status.id
            )));
        }
        let url = self.stream_url(
            "PortForward",
            StreamRequest::PortForward {
                pod_id: status.id,
                ports,
            },
        )?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let stats = self
            .pods
            .container_stats(&request.get_ref().container_id)
            .await
            .map_err(pod_status)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let stats = self
            .pods
            .list_container_stats(request.into_inner().filter)
            .await;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn stream_container_stats(
        &self,
        request: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let stats = self
            .pods
            .list_container_stats(request.into_inner().filter)
            .await;
        Ok(Response::new(paged(
            stats,
            STATS_CHUNK,
            |container_stats| cri::StreamContainerStatsResponse { container_stats },
        )))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let stats = self
            .pods
            .pod_sandbox_stats(&request.get_ref().pod_sandbox_id)
            .await
            .map_err(pod_status)?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let stats = self
            .pods
            .list_pod_sandbox_stats(request.into_inner().filter)
            .await;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let stats = self
            .pods
            .list_pod_sandbox_stats(request.into_inner().filter)
            .await;
        Ok(Response::new(paged(
            stats,
            STATS_CHUNK,
            |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        check_pod_cidr(&cidr)?;
        let mut current = self.pod_cidr.lock().unwrap_or_else(|e| e.into_inner());
        if *current != cidr {
            tracing::info!(pod_cidr = %cidr, previous = %current, "UpdateRuntimeConfig: pod CIDR recorded");
            *current = cidr;
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn checkpoint_container(
        &self,
        request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        self.pods
            .checkpoint_container(request.into_inner())
            .await
            .map_err(pod_status)
            .map(|never| match never {})
    }

    async fn checkpoint_pod(
        &self,
        request: Request<cri::CheckpointPodRequest>,
    ) -> Result<Response<cri::CheckpointPodResponse>, Status> {
        self.pods
            .checkpoint_pod(request.into_inner())
            .await
            .map_err(pod_status)
            .map(|never| match never {})
    }

    async fn restore_pod(
        &self,
        request: Request<cri::RestorePodRequest>,
    ) -> Result<Response<cri::RestorePodResponse>, Status> {
        self.pods
            .restore_pod_from_checkpoint(request.into_inner())
            .await
            .map_err(pod_status)
            .map(|never| match never {})
    }

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let stream = self.pods.subscribe_events().await;
        tracing::debug!(
            subscribers = self.pods.event_subscribers(),
            "GetContainerEvents subscriber"
        );
        Ok(Response::new(stream))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::pod::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: self.pods.list_pod_sandbox_metrics().await,
        }))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let metrics = self.pods.list_pod_sandbox_metrics().await;
        Ok(Response::new(paged(
            metrics,
            STATS_CHUNK,
            |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let pods = self.pods.clone();
        detached(async move {
            pods.update_pod_sandbox_resources(request.into_inner())
                .await
        })
        .await?;
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }
}
