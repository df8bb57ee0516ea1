//! Container lifecycle events for `GetContainerEvents` (the kubelet's
//! evented PLEG).
//!
//! The pod lifecycle publishes CREATED, STARTED, STOPPED and DELETED events
//! (containers and pod sandboxes alike: a sandbox's events carry its pod
//! id as `container_id`, as the kubelet expects); exits the handlers report
//! through `Wait` give STOPPED for containers that end on their own.
//!
//! Fan-out and drop policy: every subscriber has its own bounded queue of
//! [`SUBSCRIBER_BUFFER`] events (a broadcast ring). Publishing never waits
//! for a subscriber. A subscriber that falls more than that many events
//! behind is disconnected: its stream ends with `ABORTED` naming how many
//! events it missed, instead of silently skipping them (a gap would leave
//! the kubelet's pod cache wrong); the kubelet then relists and subscribes
//! again. Events sent while nobody subscribes are not kept.
//!
//! Order: the events of one container are published in lifecycle order
//! (one async lock per container spans deciding, describing and sending an
//! event), and STOPPED is published once per start, whichever of
//! StopContainer, RemoveContainer or the exit watcher sees the exit first.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crius_proto::cri;
use crius_proto::cri::ContainerEventType;
use futures::Stream;
use tokio::sync::broadcast;

/// Events buffered per subscriber before it is disconnected.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// What a subscriber receives.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, tonic::Status>> + Send>>;

/// The event fan-out, plus what was last published per container.
pub struct EventBus {
    tx: broadcast::Sender<Arc<cri::ContainerEventResponse>>,
    last: Mutex<HashMap<String, ContainerEventType>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Containers whose exit somebody waits for.
    watched: Mutex<HashSet<String>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(SUBSCRIBER_BUFFER)
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.tx.receiver_count())
            .finish_non_exhaustive()
    }
}

/// Held while one event of a container is decided, described and sent.
pub struct EventGuard<'a> {
    bus: &'a EventBus,
    id: String,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl EventGuard<'_> {
    /// Whether `kind` is due for this container now, given what was last
    /// published: STOPPED only after STARTED (so at most once per start),
    /// DELETED once, CREATED and STARTED always. Records it when due.
    pub fn begin(&self, kind: ContainerEventType) -> bool {
        use ContainerEventType::*;
        let mut last = self.bus.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.get(&self.id).copied();
        let due = match kind {
            ContainerCreatedEvent | ContainerStartedEvent => true,
            ContainerStoppedEvent => prev == Some(ContainerStartedEvent),
            ContainerDeletedEvent => prev != Some(ContainerDeletedEvent),
        };
        if due {
            last.insert(self.id.clone(), kind);
        }
        due
    }

    /// Marks a container found running (after a daemon restart) as
    /// started, so its exit gives STOPPED, unless something later was
    /// already published.
    pub fn assume_started(&self) {
        let mut last = self.bus.last.lock().unwrap_or_else(|e| e.into_inner());
        last.entry(self.id.clone())
            .or_insert(ContainerEventType::ContainerStartedEvent);
    }

    /// Publishes `event` to every subscriber (never waits).
    pub fn send(&self, event: cri::ContainerEventResponse) {
        // An error only means nobody is subscribed.
        let _ = self.bus.tx.send(Arc::new(event));
    }
}

impl Drop for EventGuard<'_> {
    fn drop(&mut self) {
        let mut last = self.bus.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.get(&self.id) == Some(&ContainerEventType::ContainerDeletedEvent) {
            last.remove(&self.id);
            drop(last);
            let mut locks = self.bus.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Nobody else holds or waits for it: forget the lock too.
            if locks
                .get(&self.id)
                .is_some_and(|l| Arc::strong_count(l) <= 2)
            {
                locks.remove(&self.id);
            }
        }
    }
}

impl EventBus {
    pub fn new(buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Self {
            tx,
            last: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashSet::new()),
        }
    }

    /// Claims watching the exit of `id`: false when it is watched already.
    pub fn watch(&self, id: &str) -> bool {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
    }

    /// Releases [`EventBus::watch`].
    pub fn unwatch(&self, id: &str) {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Whether anybody listens (describing an event costs handler calls,
    /// skipped when nobody would receive it).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Serializes the events of container `id`.
    pub async fn lock(&self, id: &str) -> EventGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        EventGuard {
            bus: self,
            id: id.to_string(),
            _lock: lock.lock_owned().await,
        }
    }

    /// A new subscriber's stream (see the drop policy in the module docs).
    pub fn subscribe(&self) -> EventStream {
        let rx = self.tx.subscribe();
        Box::pin(futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(event) => Some((Ok((*event).clone()), Some(rx))),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "a container event subscriber fell behind; disconnecting it"
                    );
                    Some((
                        Err(tonic::Status::aborted(format!(
                            "GetContainerEvents: this subscriber fell {missed} events behind \
                             (buffer {SUBSCRIBER_BUFFER}); relist and subscribe again"
                        ))),
                        None,
                    ))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerEventType::*;
    use futures::StreamExt;

    fn event(id: &str, kind: ContainerEventType) -> cri::ContainerEventResponse {
        cri::ContainerEventResponse {
            container_id: id.into(),
            container_event_type: kind as i32,
            ..Default::default()
        }
    }

    async fn publish(bus: &EventBus, id: &str, kind: ContainerEventType) -> bool {
        let guard = bus.lock(id).await;
        let due = guard.begin(kind);
        if due {
            guard.send(event(id, kind));
        }
        due
    }

    #[tokio::test]
    async fn two_subscribers_get_the_lifecycle_in_order_and_stopped_once() {
        let bus = EventBus::new(16);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        assert!(publish(&bus, "c1", ContainerCreatedEvent).await);
        // Not started: no STOPPED.
        assert!(!publish(&bus, "c1", ContainerStoppedEvent).await);
        assert!(publish(&bus, "c1", ContainerStartedEvent).await);
        assert!(publish(&bus, "c1", ContainerStoppedEvent).await);
        // The exit watcher after StopContainer: already published.
        assert!(!publish(&bus, "c1", ContainerStoppedEvent).await);
        assert!(publish(&bus, "c1", ContainerDeletedEvent).await);
        for sub in [&mut a, &mut b] {
            let mut kinds = Vec::new();
            for _ in 0..4 {
                kinds.push(sub.next().await.unwrap().unwrap().container_event_type);
            }
            assert_eq!(
                kinds,
                [
                    ContainerCreatedEvent as i32,
                    ContainerStartedEvent as i32,
                    ContainerStoppedEvent as i32,
                    ContainerDeletedEvent as i32
                ]
            );
        }
        // Forgotten after DELETED.
        assert!(bus.last.lock().unwrap().is_empty());
        assert!(bus.locks.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_disconnected_and_never_blocks_publishing() {
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        for i in 0..10 {
            publish(&bus, &format!("c{i}"), ContainerCreatedEvent).await;
            assert_eq!(
                fast.next().await.unwrap().unwrap().container_id,
                format!("c{i}")
            );
        }
        let err = slow.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
        assert!(err.message().contains("6 events behind"), "{err}");
        assert!(slow.next().await.is_none());
        publish(&bus, "later", ContainerCreatedEvent).await;
        assert_eq!(fast.next().await.unwrap().unwrap().container_id, "later");
    }

    #[tokio::test]
    async fn a_container_found_running_gives_stopped_on_exit() {
        let bus = EventBus::new(4);
        bus.lock("c").await.assume_started();
        assert!(publish(&bus, "c", ContainerStoppedEvent).await);
    }
}
