//! Publishing lifecycle events ([`crate::events`]) from the pod lifecycle,
//! and the exit watchers that turn the handlers' `Wait` answers into
//! STOPPED events for containers that end on their own.

use std::sync::Arc;

use crius_proto::cri;
use crius_proto::cri::ContainerEventType;
use crius_shim_api::{RuntimeHandler, types};

use super::PodManager;
use super::store::{ContainerRecord, PodRecord, now_nanos};
use crate::events::EventStream;

/// What a pod looked like, for the events published after its record is gone.
pub(super) fn pod_status_of_record(rec: &PodRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: cri::PodSandboxState::SandboxNotready as i32,
        created_at: rec.created_at,
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        runtime_handler: rec.handler.clone(),
        ..Default::default()
    }
}

impl PodManager {
    /// Publishes `kind` for `container_id` (a container, or a pod's own id
    /// for the sandbox's events) of pod `pod_id`, with the pod's status and
    /// its containers' statuses as they are now. `gone_pod` stands in for
    /// the pod status once the pod record is removed.
    pub(super) async fn publish(
        &self,
        container_id: &str,
        pod_id: &str,
        kind: ContainerEventType,
        gone_pod: Option<&PodRecord>,
    ) {
        let guard = self.events.lock(container_id).await;
        if !guard.begin(kind) || !self.events.has_subscribers() {
            return;
        }
        let pod_sandbox_status = match self.pod_sandbox_status(pod_id, false).await {
            Ok(resp) => resp.status,
            Err(_) => gone_pod.map(pod_status_of_record),
        };
        let mut containers_statuses = Vec::new();
        for c in self.store.containers() {
            if c.pod_id != pod_id || !c.handler_created {
                continue;
            }
            if let Ok(resp) = self.container_status(&c.id, false).await
                && let Some(status) = resp.status
            {
                containers_statuses.push(status);
            }
        }
        tracing::debug!(pod_id = %pod_id, container_id = %container_id, event = ?kind, "container event");
        guard.send(cri::ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status,
            containers_statuses,
        });
    }

    /// The events of a pod sandbox itself (its id as the container id).
    pub(super) async fn publish_sandbox(
        &self,
        pod_id: &str,
        kinds: &[ContainerEventType],
        gone_pod: Option<&PodRecord>,
    ) {
        for kind in kinds {
            self.publish(pod_id, pod_id, *kind, gone_pod).await;
        }
    }

    /// A removed container: STOPPED (unless already published) then DELETED.
    pub(super) async fn publish_removed(&self, c: &ContainerRecord) {
        self.publish(
            &c.id,
            &c.pod_id,
            ContainerEventType::ContainerStoppedEvent,
            None,
        )
        .await;
        self.publish(
            &c.id,
            &c.pod_id,
            ContainerEventType::ContainerDeletedEvent,
            None,
        )
        .await;
    }

    /// Waits (in a task of its own) for the main process of `c` to exit and
    /// publishes STOPPED then, unless StopContainer/RemoveContainer did.
    pub(super) fn watch_exit(&self, c: &ContainerRecord, handler: Arc<dyn RuntimeHandler>) {
        if !self.events.watch(&c.id) {
            return;
        }
        let me = self.me.clone();
        let events = self.events.clone();
        let (pod_id, container_id) = (c.pod_id.clone(), c.id.clone());
        let handler_name = handler.name().to_string();
        tokio::spawn(async move {
            let result = handler
                .wait(types::ProcessRef {
                    sandbox_id: pod_id.clone(),
                    container_id: container_id.clone(),
                    exec_id: String::new(),
                })
                .await;
            drop(handler);
            events.unwatch(&container_id);
            match result {
                Ok(exit) => {
                    if exit.reason == "OOMKilled" {
                        crate::metrics::global().oom_kill(&handler_name);
                    }
                    tracing::debug!(pod_id = %pod_id, container_id = %container_id, exit_code = exit.exit_code, "container exited");
                    if let Some(me) = me.upgrade() {
                        me.publish(
                            &container_id,
                            &pod_id,
                            ContainerEventType::ContainerStoppedEvent,
                            None,
                        )
                        .await;
                    }
                }
                // Removed meanwhile, or the handler cannot wait: nothing to report.
                Err(e) => {
                    tracing::debug!(pod_id = %pod_id, container_id = %container_id, error = %e, "exit watch ended")
                }
            }
        });
    }

    /// A GetContainerEvents subscription. Containers already running (after
    /// a daemon restart, nobody watched them yet) get an exit watcher, so
    /// their exits are reported too.
    pub async fn subscribe_events(&self) -> EventStream {
        let stream = self.events.subscribe();
        for pod in self.store.pods() {
            if pod.state == super::PodState::Ready {
                self.events.lock(&pod.id).await.assume_started();
            }
        }
        for c in self.store.containers() {
            if !c.handler_created {
                continue;
            }
            let Some(pod) = self.store.pod(&c.pod_id) else {
                continue;
            };
            let Ok(handler) = self.handler(&pod.id, &pod.handler) else {
                continue;
            };
            let status = self.container_status(&c.id, false).await;
            let running = status
                .ok()
                .and_then(|s| s.status)
                .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32);
            if running {
                self.events.lock(&c.id).await.assume_started();
                self.watch_exit(&c, handler);
            }
        }
        stream
    }

    /// How many GetContainerEvents streams are open.
    pub fn event_subscribers(&self) -> usize {
        self.events.subscribers()
    }
}
