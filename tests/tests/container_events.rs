//! GetContainerEvents through the daemon's CRI socket, for the runc and the
//! crun handler: two subscribers each get CREATED, STARTED, STOPPED and
//! DELETED in order, with the pod status and container statuses attached,
//! for a container stopped through the CRI and for one that exits on its
//! own (STOPPED from the handler's exit notification), plus the pod
//! sandbox's own events.

mod stats_env;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crius_proto::cri;
use crius_proto::cri::ContainerEventType as Event;
use stats_env::*;

/// One GetContainerEvents subscription and every event it delivered, by id.
struct Events {
    stream: tonic::Streaming<cri::ContainerEventResponse>,
    got: HashMap<String, Vec<cri::ContainerEventResponse>>,
}

impl Events {
    async fn subscribe(mut rt: Runtime) -> Events {
        let stream = rt
            .get_container_events(cri::GetEventsRequest {})
            .await
            .expect("GetContainerEvents")
            .into_inner();
        Events {
            stream,
            got: HashMap::new(),
        }
    }

    /// Reads until each id has at least its wanted number of events (or
    /// panics after `timeout`); returns the events of every id so far.
    async fn until(
        &mut self,
        wants: &[(&str, usize)],
        timeout: Duration,
    ) -> &HashMap<String, Vec<cri::ContainerEventResponse>> {
        let deadline = tokio::time::Instant::now() + timeout;
        while wants
            .iter()
            .any(|(id, n)| self.got.get(*id).map_or(0, Vec::len) < *n)
        {
            let next = tokio::time::timeout_at(deadline, self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("events missing after {timeout:?}: {:#?}", self.got))
                .expect("event")
                .expect("stream open");
            self.got
                .entry(next.container_id.clone())
                .or_default()
                .push(next);
        }
        &self.got
    }
}

fn kinds(events: &[cri::ContainerEventResponse]) -> Vec<i32> {
    events.iter().map(|e| e.container_event_type).collect()
}

async fn container_events_reach_two_subscribers(handler: &'static str) {
    let Some(env) = setup(handler).await else {
        return;
    };
    let mut rt = env.rt();
    let mut first = Events::subscribe(env.rt()).await;
    let mut second = Events::subscribe(env.rt()).await;

    let pod = env.pod_config("events");
    let pod_id = env.run_pod(&pod).await;
    // One container stopped through the CRI, one that exits on its own.
    let stopped = env
        .create(&pod_id, &pod, "stopped", &["sleep", "1000"])
        .await;
    let exits = env
        .create(&pod_id, &pod, "exits", &["sh", "-c", "sleep 1; exit 3"])
        .await;
    env.start_container(&stopped).await;
    env.start_container(&exits).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: exits.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == cri::ContainerState::ContainerExited as i32 {
            assert_eq!(s.exit_code, 3);
            break;
        }
        assert!(Instant::now() < deadline, "container did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its exit alone (no StopContainer, no RemoveContainer yet) gives STOPPED.
    for events in [&mut first, &mut second] {
        let got = events.until(&[(&exits, 3)], Duration::from_secs(20)).await;
        assert_eq!(
            got[exits.as_str()].last().unwrap().container_event_type,
            Event::ContainerStoppedEvent as i32,
            "{:#?}",
            got[exits.as_str()]
        );
    }
    rt.stop_container(cri::StopContainerRequest {
        container_id: stopped.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    for id in [&stopped, &exits] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("RemoveContainer");
    }

    let order = vec![
        Event::ContainerCreatedEvent as i32,
        Event::ContainerStartedEvent as i32,
        Event::ContainerStoppedEvent as i32,
        Event::ContainerDeletedEvent as i32,
    ];
    for events in [&mut first, &mut second] {
        let got = events
            .until(
                &[(&stopped, 4), (&exits, 4), (&pod_id, 2)],
                Duration::from_secs(30),
            )
            .await;
        for id in [&stopped, &exits] {
            let events = &got[id.as_str()];
            assert_eq!(kinds(events), order, "events of {id}: {events:#?}");
            for e in events {
                let pod_status = e.pod_sandbox_status.as_ref().expect("pod status attached");
                assert_eq!(pod_status.id, pod_id);
                assert_eq!(pod_status.metadata.as_ref().unwrap().name, "events");
                assert!(e.created_at > 0);
            }
            // The container's own status rides along until it is deleted.
            let own = |e: &cri::ContainerEventResponse| {
                e.containers_statuses
                    .iter()
                    .find(|s| &s.id == id)
                    .map(|s| s.state)
            };
            assert_eq!(
                own(&events[1]),
                Some(cri::ContainerState::ContainerRunning as i32),
                "{:#?}",
                events[1]
            );
            assert_eq!(
                own(&events[2]),
                Some(cri::ContainerState::ContainerExited as i32),
                "{:#?}",
                events[2]
            );
            assert_eq!(own(&events[3]), None);
            assert!(
                events
                    .windows(2)
                    .all(|w| w[0].created_at <= w[1].created_at)
            );
        }
        // The pod sandbox's own events (its id as container id).
        assert_eq!(
            kinds(&got[pod_id.as_str()][..2]),
            [
                Event::ContainerCreatedEvent as i32,
                Event::ContainerStartedEvent as i32
            ]
        );
    }
    env.stop_and_remove_pod(&pod_id).await;
    for events in [&mut first, &mut second] {
        let got = events.until(&[(&pod_id, 4)], Duration::from_secs(30)).await;
        assert_eq!(
            kinds(&got[pod_id.as_str()][2..]),
            [
                Event::ContainerStoppedEvent as i32,
                Event::ContainerDeletedEvent as i32
            ]
        );
        assert!(
            got[pod_id.as_str()][3].pod_sandbox_status.is_some(),
            "a deleted pod's event still names it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_reach_two_subscribers_runc() {
    container_events_reach_two_subscribers("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_reach_two_subscribers_crun() {
    container_events_reach_two_subscribers("crun").await;
}

/// After a daemon restart, a subscriber still learns of the exit of a
/// container started before it (the exit watcher is armed when it
/// subscribes), here killed from the host.
async fn exit_after_a_restart_gives_stopped(handler: &'static str) {
    let Some(mut env) = setup(handler).await else {
        return;
    };
    let pod = env.pod_config("restart");
    let pod_id = env.run_pod(&pod).await;
    let id = env
        .create(&pod_id, &pod, "sleeper", &["sleep", "1000"])
        .await;
    env.start_container(&id).await;
    env.daemon.restart().await.expect("daemon restarts");
    let mut events = Events::subscribe(env.rt()).await;

    let resp = env
        .rt()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus after the restart")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    let pid = info["pid"].as_i64().expect("pid") as i32;
    assert!(pid > 0, "{info}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the container's process");

    let got = events.until(&[(&id, 1)], Duration::from_secs(20)).await;
    let stopped = &got[id.as_str()][0];
    assert_eq!(
        stopped.container_event_type,
        Event::ContainerStoppedEvent as i32,
        "{stopped:#?}"
    );
    let own = stopped
        .containers_statuses
        .iter()
        .find(|s| s.id == id)
        .expect("own status");
    assert_eq!(own.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(own.exit_code, 137, "{own:?}");
    env.stop_and_remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_after_a_restart_gives_stopped_runc() {
    exit_after_a_restart_gives_stopped("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_after_a_restart_gives_stopped_crun() {
    exit_after_a_restart_gives_stopped("crun").await;
}
