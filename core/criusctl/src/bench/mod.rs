//! `criusctl bench`: pod start latency per handler, on one or more CRI
//! endpoints side by side. Pods are started interleaved across the endpoints
//! (pod 1 on A, pod 1 on B, pod 2 on A, ...) so that load and cache effects
//! of the machine fall on every endpoint alike; then they are torn down in
//! the same order. Each RPC is timed on its own; pod start is
//! RunPodSandbox + CreateContainer + StartContainer. Around the serial
//! phase each endpoint's daemon (RSS, CPU), cgroup (CPU of everything it
//! forks) and helpers (PSS) are read when given; then come the bursts of
//! pods started at once (`--concurrent`) and cold pulls (`--pull-image`).

mod load;
mod probe;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crius_proto::cri;
use serde_json::json;

use crate::runpod::{ensure_image, pod_config};
use crate::{Clients, RunArgs, connect, percentile};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Handlers to compare, side by side (the RuntimeClass handler name every
    /// endpoint knows; containerd's default is `runc`).
    #[arg(long, value_delimiter = ',', default_value = "runc,crun")]
    handlers: Vec<String>,
    /// Pods per handler and endpoint.
    #[arg(long, default_value_t = 10)]
    pods: usize,
    #[arg(long)]
    image: String,
    #[arg(long, default_value = "/var/log/crius/bench")]
    log_root: PathBuf,
    /// A CRI endpoint to measure, `NAME=unix:///path.sock` (repeatable; the
    /// first is the reference of the ratios). Default: `crius=` the socket
    /// given with `-s`.
    #[arg(long = "endpoint", value_name = "NAME=URI")]
    endpoints: Vec<String>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// After the serial pods, start this many pods at once per endpoint
    /// (comma-separated levels, e.g. `10,50`), then remove them all at once.
    #[arg(long, value_delimiter = ',')]
    concurrent: Vec<usize>,
    /// An endpoint's daemon, `NAME=PID` or `NAME=@PIDFILE` (repeatable): its
    /// RSS idle, with the pods up and after, and its CPU per pod lifecycle.
    #[arg(long = "daemon", value_name = "NAME=PID")]
    daemons: Vec<String>,
    /// A cgroup the endpoint's daemon runs in, `NAME=DIR` (repeatable): the
    /// CPU of the daemon and of everything it forks that stays there
    /// (shims, conmon, runc) per pod lifecycle.
    #[arg(long = "cgroup", value_name = "NAME=DIR")]
    cgroups: Vec<String>,
    /// An endpoint's per-pod helper processes by name, `NAME=COMM[,COMM...]`
    /// (repeatable): their PSS per pod while the serial pods are up.
    #[arg(long = "helpers", value_name = "NAME=COMMS")]
    helpers: Vec<String>,
    /// An image to pull cold (removed first) on every endpoint, interleaved.
    #[arg(long)]
    pull_image: Option<String>,
    /// Cold pulls of `--pull-image` per endpoint.
    #[arg(long, default_value_t = 3)]
    pull_runs: usize,
}

/// The RPCs timed, in call order.
const RPCS: [&str; 5] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

/// `NAME=unix:///path` (or `NAME=/path`) → (name, socket path).
fn parse_endpoint(spec: &str) -> Result<(String, PathBuf)> {
    let Some((name, uri)) = spec.split_once('=') else {
        bail!("--endpoint {spec:?}: expected NAME=unix:///path.sock");
    };
    if name.is_empty() {
        bail!("--endpoint {spec:?}: empty name");
    }
    let path = match uri.strip_prefix("unix://") {
        Some(p) => p,
        None if uri.starts_with('/') => uri,
        None => bail!("--endpoint {spec:?}: only unix:// endpoints are supported"),
    };
    if path.is_empty() {
        bail!("--endpoint {spec:?}: empty socket path");
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

struct Target {
    name: String,
    socket: PathBuf,
    clients: Clients,
    daemon: Option<probe::DaemonRef>,
    cgroup: Option<PathBuf>,
    helpers: Vec<String>,
}

/// The host readings around one handler's serial phase on one endpoint.
#[derive(Default)]
struct Host {
    daemon_idle: Option<probe::DaemonSample>,
    daemon_up: Option<probe::DaemonSample>,
    daemon_after: Option<probe::DaemonSample>,
    cgroup_cpu_ms: Option<(f64, f64)>,
    helpers_idle: Option<probe::HelperSample>,
    helpers_up: Option<probe::HelperSample>,
}

impl Host {
    /// CPU ms per pod lifecycle of the daemon process and the children it
    /// reaped (runc, CNI plugins, for crius).
    fn daemon_cpu_per_pod(&self, pods: usize) -> Option<f64> {
        let (a, b) = (self.daemon_idle?, self.daemon_after?);
        Some((b.cpu_ms - a.cpu_ms) / pods.max(1) as f64)
    }

    /// CPU ms per pod lifecycle of the daemon's own threads.
    fn daemon_own_cpu_per_pod(&self, pods: usize) -> Option<f64> {
        let (a, b) = (self.daemon_idle?, self.daemon_after?);
        Some((b.own_cpu_ms - a.own_cpu_ms) / pods.max(1) as f64)
    }

    fn cgroup_cpu_per_pod(&self, pods: usize) -> Option<f64> {
        let (a, b) = self.cgroup_cpu_ms?;
        Some((b - a) / pods.max(1) as f64)
    }

    /// (processes added by the pods, PSS KiB per pod).
    fn helpers_per_pod(&self, pods: usize) -> Option<(usize, f64)> {
        let (idle, up) = (self.helpers_idle?, self.helpers_up?);
        Some((
            up.processes.saturating_sub(idle.processes),
            up.pss_kib.saturating_sub(idle.pss_kib) as f64 / pods.max(1) as f64,
        ))
    }
}

/// Per-endpoint option values, `NAME=VALUE`, for the endpoint `NAME`.
fn named_values<'a>(option: &str, specs: &'a [String]) -> Result<Vec<(&'a str, &'a str)>> {
    specs
        .iter()
        .map(|s| probe::split_named(option, s))
        .collect()
}

/// What one endpoint measured for one handler.
#[derive(Default)]
struct Samples {
    /// Per RPC, in `RPCS` order.
    rpc: [Vec<Duration>; 5],
    pod_start: Vec<Duration>,
    /// Handler-reported `*_ms` split keys (e.g. kata's VM start).
    split: HashMap<String, Vec<f64>>,
    host: Host,
    bursts: Vec<load::Burst>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stat {
    p50: f64,
    p95: f64,
    max: f64,
}

fn stat(samples: &[Duration]) -> Stat {
    let mut v = samples.to_vec();
    v.sort();
    Stat {
        p50: ms(percentile(&v, 50.0)),
        p95: ms(percentile(&v, 95.0)),
        max: ms(v.last().copied().unwrap_or_default()),
    }
}

fn split_medians(split: &HashMap<String, Vec<f64>>) -> BTreeMap<String, f64> {
    split
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.sort_by(f64::total_cmp);
            (k.clone(), v[v.len() / 2])
        })
        .collect()
}

pub(crate) async fn bench(default_socket: PathBuf, args: &BenchArgs) -> Result<()> {
    let specs: Vec<(String, PathBuf)> = if args.endpoints.is_empty() {
        vec![("crius".into(), default_socket)]
    } else {
        args.endpoints
            .iter()
            .map(|s| parse_endpoint(s))
            .collect::<Result<_>>()?
    };
    if args.pods == 0 {
        bail!("--pods must be at least 1");
    }
    let daemons = named_values("daemon", &args.daemons)?;
    let cgroups = named_values("cgroup", &args.cgroups)?;
    let helpers = named_values("helpers", &args.helpers)?;
    for (option, values) in [
        ("daemon", &daemons),
        ("cgroup", &cgroups),
        ("helpers", &helpers),
    ] {
        if let Some((name, _)) = values
            .iter()
            .find(|(n, _)| !specs.iter().any(|(s, _)| s == n))
        {
            bail!("--{option} {name}=...: no endpoint is named {name:?}");
        }
    }
    let lookup = |values: &[(&str, &str)], name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    };
    if args.concurrent.contains(&0) {
        bail!("--concurrent levels must be at least 1");
    }
    let mut targets = Vec::new();
    for (name, socket) in specs {
        if targets.iter().any(|t: &Target| t.name == name) {
            bail!("--endpoint {name:?} given twice");
        }
        let mut clients = connect(&socket).await?;
        ensure_image(&mut clients, &args.image)
            .await
            .with_context(|| format!("endpoint {name}"))?;
        targets.push(Target {
            daemon: lookup(&daemons, &name)
                .map(|v| probe::DaemonRef::parse(&v))
                .transpose()?,
            cgroup: lookup(&cgroups, &name).map(PathBuf::from),
            helpers: lookup(&helpers, &name)
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            name,
            socket,
            clients,
        });
    }
    let mut results: Vec<(String, Vec<Samples>)> = Vec::new();
    for handler in &args.handlers {
        let samples = run_handler(&mut targets, handler, args).await?;
        if !args.json {
            print_table(handler, &targets, &samples, results.is_empty());
        }
        results.push((handler.clone(), samples));
    }
    let pulls = match &args.pull_image {
        Some(image) => Some(pull_all(&mut targets, image, args.pull_runs).await?),
        None => None,
    };
    if args.json {
        let mut out = to_json(&targets, &results);
        if let (Some(image), Some(pulls)) = (&args.pull_image, &pulls) {
            out["pull"] = pulls_json(image, &targets, pulls);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if let (Some(image), Some(pulls)) = (&args.pull_image, &pulls) {
        print_pulls(image, &targets, pulls);
    }
    Ok(())
}

/// `runs` cold pulls of `image` on every endpoint, interleaved.
async fn pull_all(targets: &mut [Target], image: &str, runs: usize) -> Result<Vec<load::Pulls>> {
    let mut pulls: Vec<load::Pulls> = targets.iter().map(|_| load::Pulls::default()).collect();
    for _ in 0..runs.max(1) {
        for (t, target) in targets.iter_mut().enumerate() {
            load::cold_pull(&mut target.clients, image, &mut pulls[t])
                .await
                .with_context(|| format!("endpoint {}", target.name))?;
        }
    }
    Ok(pulls)
}

fn mib_per_s(bytes: u64, took: f64) -> f64 {
    if took > 0.0 {
        bytes as f64 / (1024.0 * 1024.0) / (took / 1000.0)
    } else {
        f64::NAN
    }
}

fn print_pulls(image: &str, targets: &[Target], pulls: &[load::Pulls]) {
    println!(
        "cold pull of {image} ({} pulls per endpoint, interleaved)",
        pulls[0].times.len()
    );
    let reference = stat(&pulls[0].times).p50;
    for (t, p) in targets.iter().zip(pulls) {
        let st = stat(&p.times);
        println!(
            "  {:<12} p50 {:>8.1} ms  p95 {:>8.1} ms  image {:>7.1} MiB (ImageStatus size), {:>7.1} MiB/s  {}",
            t.name,
            st.p50,
            st.p95,
            p.size_bytes as f64 / (1024.0 * 1024.0),
            mib_per_s(p.size_bytes, st.p50),
            if t.name == targets[0].name {
                String::new()
            } else {
                format!(
                    "{}/{} {:.2}",
                    targets[0].name,
                    t.name,
                    ratio(reference, st.p50)
                )
            }
        );
    }
}

fn pulls_json(image: &str, targets: &[Target], pulls: &[load::Pulls]) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = targets
        .iter()
        .zip(pulls)
        .map(|(t, p)| {
            json!({
                "name": t.name,
                "time": stat_json(&p.times),
                "size_bytes": p.size_bytes,
                "mib_per_s_p50": mib_per_s(p.size_bytes, stat(&p.times).p50),
            })
        })
        .collect();
    json!({ "image": image, "endpoints": endpoints })
}

async fn run_handler(
    targets: &mut [Target],
    handler: &str,
    args: &BenchArgs,
) -> Result<Vec<Samples>> {
    let run = RunArgs {
        handler: handler.to_string(),
        name: format!("bench-{handler}"),
        namespace: "bench".into(),
        image: args.image.clone(),
        log_root: args.log_root.clone(),
        cmd: vec!["sleep".into(), "3600".into()],
    };
    let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    let mut pods: Vec<Vec<String>> = targets.iter().map(|_| Vec::new()).collect();
    let mut failure = None;
    for (t, target) in targets.iter().enumerate() {
        let host = &mut samples[t].host;
        host.daemon_idle = target
            .daemon
            .as_ref()
            .map(probe::sample_daemon)
            .transpose()?;
        if let Some(dir) = &target.cgroup {
            let now = probe::cgroup_cpu_ms(dir)?;
            host.cgroup_cpu_ms = Some((now, now));
        }
        if !target.helpers.is_empty() {
            host.helpers_idle = Some(probe::sample_helpers(&target.helpers)?);
        }
    }
    'start: for i in 0..args.pods {
        for (t, target) in targets.iter_mut().enumerate() {
            match start_pod(&mut target.clients, &run, i + 1, &mut samples[t]).await {
                Ok(pod) => pods[t].push(pod),
                Err(e) => {
                    failure = Some(e.context(format!(
                        "endpoint {}, handler {handler}, pod {}",
                        target.name,
                        i + 1
                    )));
                    break 'start;
                }
            }
        }
    }
    if failure.is_none() {
        for (t, target) in targets.iter().enumerate() {
            let host = &mut samples[t].host;
            host.daemon_up = target
                .daemon
                .as_ref()
                .map(probe::sample_daemon)
                .transpose()?;
            if !target.helpers.is_empty() {
                host.helpers_up = Some(probe::sample_helpers(&target.helpers)?);
            }
        }
    }
    // Teardown interleaved too; after a failure, whatever was started is
    // still removed before the error is returned.
    let most = pods.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..most {
        for (t, target) in targets.iter_mut().enumerate() {
            let Some(pod) = pods[t].get(i) else { continue };
            if let Err(e) = stop_pod(&mut target.clients, pod, &mut samples[t]).await {
                failure.get_or_insert(e.context(format!("endpoint {}, pod {pod}", target.name)));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    for (t, target) in targets.iter().enumerate() {
        let host = &mut samples[t].host;
        host.daemon_after = target
            .daemon
            .as_ref()
            .map(probe::sample_daemon)
            .transpose()?;
        if let (Some(dir), Some((before, _))) = (&target.cgroup, host.cgroup_cpu_ms) {
            host.cgroup_cpu_ms = Some((before, probe::cgroup_cpu_ms(dir)?));
        }
    }
    // Bursts one endpoint at a time: side by side they would load each other.
    for &level in &args.concurrent {
        for (t, target) in targets.iter().enumerate() {
            let burst = load::burst(&target.clients, &run, level)
                .await
                .with_context(|| format!("endpoint {}, handler {handler}", target.name))?;
            samples[t].bursts.push(burst);
        }
    }
    Ok(samples)
}

/// Starts one pod with its container, timing each RPC; returns the pod id.
async fn start_pod(
    c: &mut Clients,
    run: &RunArgs,
    index: usize,
    s: &mut Samples,
) -> Result<String> {
    let config = pod_config(run, index);
    // The kubelet creates the pod's log directory before RunPodSandbox; not
    // every runtime does it itself.
    tokio::fs::create_dir_all(&config.log_directory)
        .await
        .with_context(|| format!("creating {}", config.log_directory))?;
    let started = crate::runpod::start_pod(c, run, config).await?;
    for (samples, took) in s.rpc.iter_mut().zip(started.rpc_times) {
        samples.push(took);
    }
    s.pod_start.push(started.rpc_times.iter().sum());
    let pod = started.pod;
    let status = c
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    // Top-level `*_ms` keys, and those the handler reports in the verbose
    // info's `handlerInfo` (kata: VM start, agent ready, container start).
    let nested: Vec<(String, String)> = status
        .info
        .get("info")
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|info| info.get("handlerInfo").and_then(|h| h.as_object()).cloned())
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
        .collect();
    for (k, v) in status.info.into_iter().chain(nested) {
        if let (true, Ok(ms)) = (k.ends_with("_ms"), v.trim().parse::<f64>()) {
            s.split.entry(k).or_default().push(ms);
        }
    }
    Ok(pod)
}

async fn stop_pod(c: &mut Clients, pod: &str, s: &mut Samples) -> Result<()> {
    let began = Instant::now();
    c.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .context("StopPodSandbox")?;
    let t1 = Instant::now();
    c.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .context("RemovePodSandbox")?;
    s.rpc[3].push(t1 - began);
    s.rpc[4].push(began.elapsed() - (t1 - began));
    Ok(())
}

fn print_table(handler: &str, targets: &[Target], samples: &[Samples], header: bool) {
    if targets.len() == 1 {
        // One endpoint: the classic one-line-per-handler table.
        if header {
            println!(
                "{:<10} {:>5} {:>10} {:>10} {:>10}  split (p50)",
                "handler", "pods", "p50 ms", "p95 ms", "max ms"
            );
        }
        let s = &samples[0];
        let st = stat(&s.pod_start);
        let split: Vec<String> = split_medians(&s.split)
            .into_iter()
            .map(|(k, v)| format!("{k}={v:.0}"))
            .collect();
        println!(
            "{:<10} {:>5} {:>10.1} {:>10.1} {:>10.1}  {}",
            handler,
            s.pod_start.len(),
            st.p50,
            st.p95,
            st.max,
            split.join(" ")
        );
        print_host(targets, samples);
        return;
    }
    println!(
        "handler {handler}, {} pods per endpoint, interleaved (ms, p50 / p95)",
        samples[0].pod_start.len()
    );
    let mut head = format!("{:<18}", "");
    for t in targets {
        head.push_str(&format!(" {:>17}", t.name));
    }
    for t in &targets[1..] {
        head.push_str(&format!(
            " {:>17}",
            format!("{}/{}", targets[0].name, t.name)
        ));
    }
    println!("{head}");
    let mut rows: Vec<(&str, Vec<&[Duration]>)> = RPCS
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, samples.iter().map(|s| s.rpc[i].as_slice()).collect()))
        .collect();
    rows.insert(
        3,
        (
            "pod start",
            samples.iter().map(|s| s.pod_start.as_slice()).collect(),
        ),
    );
    for (name, per_target) in rows {
        let stats: Vec<Stat> = per_target.iter().map(|v| stat(v)).collect();
        let mut line = format!("{name:<18}");
        for st in &stats {
            line.push_str(&format!(
                " {:>17}",
                format!("{:.1} / {:.1}", st.p50, st.p95)
            ));
        }
        for st in &stats[1..] {
            line.push_str(&format!(
                " {:>17}",
                format!(
                    "{:.2} / {:.2}",
                    ratio(stats[0].p50, st.p50),
                    ratio(stats[0].p95, st.p95)
                )
            ));
        }
        println!("{line}");
    }
    for (t, s) in targets.iter().zip(samples) {
        let split = split_medians(&s.split);
        if !split.is_empty() {
            let split: Vec<String> = split
                .into_iter()
                .map(|(k, v)| format!("{k}={v:.0}"))
                .collect();
            println!("split (p50) {}: {}", t.name, split.join(" "));
        }
    }
    print_host(targets, samples);
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The host readings and bursts of each endpoint, a line each, and the
/// ratios of the CPU figures to the first endpoint's.
fn print_host(targets: &[Target], samples: &[Samples]) {
    for (t, s) in targets.iter().zip(samples) {
        let pods = s.pod_start.len();
        let h = &s.host;
        let mut parts = Vec::new();
        if let (Some(idle), Some(up), Some(after)) = (h.daemon_idle, h.daemon_up, h.daemon_after) {
            parts.push(format!(
                "daemon RSS {:.1} MiB idle, {:.1} with {pods} pods, {:.1} after",
                mib(idle.rss_kib),
                mib(up.rss_kib),
                mib(after.rss_kib)
            ));
        }
        if let (Some(cpu), Some(own)) = (h.daemon_cpu_per_pod(pods), h.daemon_own_cpu_per_pod(pods))
        {
            parts.push(format!(
                "daemon CPU {cpu:.1} ms/pod ({own:.1} its own, the rest its reaped children)"
            ));
        }
        if let Some(cpu) = h.cgroup_cpu_per_pod(pods) {
            parts.push(format!("cgroup CPU {cpu:.1} ms/pod"));
        }
        if let Some((n, kib)) = h.helpers_per_pod(pods) {
            parts.push(format!("helpers: {n} processes, {kib:.0} KiB PSS per pod"));
        }
        if !parts.is_empty() {
            println!("host {}: {}", t.name, parts.join("; "));
        }
        for b in &s.bursts {
            let st = stat(&b.pod_start);
            println!(
                "{} pods at once on {}: all started in {:.0} ms (pod start p50 {:.1} / p95 {:.1} ms), all removed in {:.0} ms",
                b.pods,
                t.name,
                ms(b.all_started),
                st.p50,
                st.p95,
                ms(b.all_removed)
            );
        }
    }
    let pods = samples[0].pod_start.len();
    let reference = &samples[0].host;
    for (t, s) in targets.iter().zip(samples).skip(1) {
        let mut parts = Vec::new();
        let per = |f: fn(&Host, usize) -> Option<f64>| {
            Some(ratio(f(reference, pods)?, f(&s.host, s.pod_start.len())?))
        };
        if let Some(r) = per(Host::daemon_cpu_per_pod) {
            parts.push(format!("daemon CPU {r:.2}"));
        }
        if let Some(r) = per(Host::daemon_own_cpu_per_pod) {
            parts.push(format!("daemon's own CPU {r:.2}"));
        }
        if let Some(r) = per(Host::cgroup_cpu_per_pod) {
            parts.push(format!("cgroup CPU {r:.2}"));
        }
        for (a, b) in samples[0].bursts.iter().zip(&s.bursts) {
            parts.push(format!(
                "{} at once {:.2}",
                a.pods,
                ratio(ms(a.all_started), ms(b.all_started))
            ));
        }
        if !parts.is_empty() {
            println!("{}/{}: {}", targets[0].name, t.name, parts.join("; "));
        }
    }
}

fn host_json(s: &Samples) -> serde_json::Value {
    let pods = s.pod_start.len();
    let h = &s.host;
    let rss = |d: Option<probe::DaemonSample>| d.map(|d| d.rss_kib);
    json!({
        "daemon_rss_kib": {
            "idle": rss(h.daemon_idle),
            "with_pods": rss(h.daemon_up),
            "after": rss(h.daemon_after),
        },
        "daemon_cpu_ms_per_pod": h.daemon_cpu_per_pod(pods),
        "daemon_own_cpu_ms_per_pod": h.daemon_own_cpu_per_pod(pods),
        "cgroup_cpu_ms_per_pod": h.cgroup_cpu_per_pod(pods),
        "helpers": h.helpers_per_pod(pods).map(|(n, kib)| json!({
            "processes": n,
            "pss_kib_per_pod": kib,
        })),
    })
}

fn bursts_json(s: &Samples) -> serde_json::Value {
    s.bursts
        .iter()
        .map(|b| {
            json!({
                "pods": b.pods,
                "all_started_ms": ms(b.all_started),
                "pod_start": stat_json(&b.pod_start),
                "all_removed_ms": ms(b.all_removed),
            })
        })
        .collect()
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn stat_json(samples: &[Duration]) -> serde_json::Value {
    let st = stat(samples);
    json!({ "p50_ms": st.p50, "p95_ms": st.p95, "max_ms": st.max, "count": samples.len() })
}

fn to_json(targets: &[Target], results: &[(String, Vec<Samples>)]) -> serde_json::Value {
    let handlers: Vec<serde_json::Value> = results
        .iter()
        .map(|(handler, samples)| {
            let endpoints: Vec<serde_json::Value> = targets
                .iter()
                .zip(samples)
                .map(|(t, s)| {
                    let rpc: serde_json::Map<String, serde_json::Value> = RPCS
                        .iter()
                        .enumerate()
                        .map(|(i, name)| (name.to_string(), stat_json(&s.rpc[i])))
                        .collect();
                    json!({
                        "name": t.name,
                        "endpoint": format!("unix://{}", t.socket.display()),
                        "pod_start": stat_json(&s.pod_start),
                        "rpc": rpc,
                        "split_p50_ms": split_medians(&s.split),
                        "host": host_json(s),
                        "concurrent": bursts_json(s),
                    })
                })
                .collect();
            let reference = stat(&samples[0].pod_start);
            let ratios: serde_json::Map<String, serde_json::Value> = targets
                .iter()
                .zip(samples)
                .skip(1)
                .map(|(t, s)| {
                    let st = stat(&s.pod_start);
                    (
                        format!("{}/{}", targets[0].name, t.name),
                        json!({
                            "pod_start_p50": ratio(reference.p50, st.p50),
                            "pod_start_p95": ratio(reference.p95, st.p95),
                        }),
                    )
                })
                .collect();
            json!({ "handler": handler, "endpoints": endpoints, "ratios": ratios })
        })
        .collect();
    json!({ "handlers": handlers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_name_and_unix_path() {
        let (n, p) = parse_endpoint("containerd=unix:///run/containerd/c.sock").unwrap();
        assert_eq!(
            (n.as_str(), p),
            ("containerd", PathBuf::from("/run/containerd/c.sock"))
        );
        let (_, p) = parse_endpoint("crius=/run/crius/crius.sock").unwrap();
        assert_eq!(p, PathBuf::from("/run/crius/crius.sock"));
        assert!(parse_endpoint("nameless").is_err());
        assert!(parse_endpoint("=unix:///x").is_err());
        assert!(parse_endpoint("tcp=tcp://127.0.0.1:1").is_err());
        assert!(parse_endpoint("e=unix://").is_err());
    }

    #[test]
    fn ratio_of_a_zero_is_not_a_number() {
        assert_eq!(ratio(50.0, 100.0), 0.5);
        assert!(ratio(1.0, 0.0).is_nan());
    }
}
