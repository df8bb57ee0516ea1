//! `pods`, `ps` and `images` with crictl's flags and columns: ids cut to 13
//! characters unless `--no-trunc`, `-q` for full ids only, `-o json|yaml`
//! for the CRI list response itself.

use std::collections::HashMap;

use anyhow::{Result, bail};
use crius_proto::cri;

use crate::output::{Format, Table, ago, id, size};

/// Filters and layout shared by the list verbs.
#[derive(clap::Args, Clone, Debug)]
pub struct ListArgs {
    /// Only print ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show ids whole.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Only items whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// Only items with this label (`key=value`, repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only the item with this id (or id prefix).
    #[arg(long)]
    pub id: Option<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

impl ListArgs {
    fn label_selector(&self) -> HashMap<String, String> {
        self.labels.iter().cloned().collect()
    }

    fn keeps(&self, item_id: &str, name: &str) -> bool {
        self.id
            .as_ref()
            .is_none_or(|p| item_id.starts_with(p.as_str()))
            && self.name.as_ref().is_none_or(|n| name.contains(n.as_str()))
    }
}

pub fn pod_state_name(state: i32) -> &'static str {
    match cri::PodSandboxState::try_from(state) {
        Ok(cri::PodSandboxState::SandboxReady) => "Ready",
        _ => "NotReady",
    }
}

pub fn container_state_name(state: i32) -> &'static str {
    match cri::ContainerState::try_from(state) {
        Ok(cri::ContainerState::ContainerCreated) => "Created",
        Ok(cri::ContainerState::ContainerRunning) => "Running",
        Ok(cri::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

/// `--state` of `pods`: ready or notready.
pub fn pod_state_filter(state: &str) -> Result<cri::PodSandboxStateValue> {
    let state = match state.to_ascii_lowercase().as_str() {
        "ready" | "sandbox_ready" => cri::PodSandboxState::SandboxReady,
        "notready" | "sandbox_notready" => cri::PodSandboxState::SandboxNotready,
        other => bail!("--state {other:?}: ready or notready"),
    };
    Ok(cri::PodSandboxStateValue {
        state: state as i32,
    })
}

/// `--state` of `ps`: created, running, exited or unknown.
pub fn container_state_filter(state: &str) -> Result<cri::ContainerStateValue> {
    let state = match state.to_ascii_lowercase().as_str() {
        "created" | "container_created" => cri::ContainerState::ContainerCreated,
        "running" | "container_running" => cri::ContainerState::ContainerRunning,
        "exited" | "container_exited" => cri::ContainerState::ContainerExited,
        "unknown" | "container_unknown" => cri::ContainerState::ContainerUnknown,
        other => bail!("--state {other:?}: created, running, exited or unknown"),
    };
    Ok(cri::ContainerStateValue {
        state: state as i32,
    })
}

pub fn pods_request(args: &ListArgs, state: Option<&str>) -> Result<cri::ListPodSandboxRequest> {
    Ok(cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            id: String::new(),
            state: state.map(pod_state_filter).transpose()?,
            label_selector: args.label_selector(),
        }),
    })
}

/// The pods `args` keep, newest first (as crictl lists them).
pub fn pods(
    args: &ListArgs,
    namespace: Option<&str>,
    mut r: cri::ListPodSandboxResponse,
) -> cri::ListPodSandboxResponse {
    r.items.retain(|p| {
        let m = p.metadata.clone().unwrap_or_default();
        args.keeps(&p.id, &m.name) && namespace.is_none_or(|ns| m.namespace == ns)
    });
    r.items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    r
}

pub fn print_pods(args: &ListArgs, r: &cri::ListPodSandboxResponse) -> Result<()> {
    if args.quiet {
        r.items.iter().for_each(|p| println!("{}", p.id));
        return Ok(());
    }
    crate::output::print(args.output, r, || {
        let mut t = Table::new(&[
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME",
        ]);
        for p in &r.items {
            let m = p.metadata.clone().unwrap_or_default();
            t.row(vec![
                id(&p.id, args.no_trunc),
                ago(p.created_at),
                pod_state_name(p.state).into(),
                m.name,
                m.namespace,
                m.attempt.to_string(),
                if p.runtime_handler.is_empty() {
                    "(default)".into()
                } else {
                    p.runtime_handler.clone()
                },
            ]);
        }
        t.print();
    })
}

pub fn containers_request(
    args: &ListArgs,
    all: bool,
    state: Option<&str>,
    pod: Option<&str>,
) -> Result<cri::ListContainersRequest> {
    let state = match state {
        Some(s) => Some(container_state_filter(s)?),
        // crictl lists running containers unless -a.
        None if !all => Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        None => None,
    };
    Ok(cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            id: String::new(),
            state,
            pod_sandbox_id: pod.unwrap_or_default().to_string(),
            label_selector: args.label_selector(),
        }),
    })
}

pub fn containers(
    args: &ListArgs,
    mut r: cri::ListContainersResponse,
) -> cri::ListContainersResponse {
    r.containers
        .retain(|c| args.keeps(&c.id, &c.metadata.clone().unwrap_or_default().name));
    r.containers
        .sort_by_key(|c| std::cmp::Reverse(c.created_at));
    r
}

/// `pod_names`: pod id → pod name, for the POD column.
pub fn print_containers(
    args: &ListArgs,
    r: &cri::ListContainersResponse,
    pod_names: &HashMap<String, String>,
) -> Result<()> {
    if args.quiet {
        r.containers.iter().for_each(|c| println!("{}", c.id));
        return Ok(());
    }
    crate::output::print(args.output, r, || {
        let mut t = Table::new(&[
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "POD ID",
            "POD",
        ]);
        for c in &r.containers {
            let m = c.metadata.clone().unwrap_or_default();
            let image = c.image.clone().unwrap_or_default().image;
            t.row(vec![
                id(&c.id, args.no_trunc),
                id(
                    image.strip_prefix("sha256:").unwrap_or(&image),
                    args.no_trunc,
                ),
                ago(c.created_at),
                container_state_name(c.state).into(),
                m.name,
                m.attempt.to_string(),
                id(&c.pod_sandbox_id, args.no_trunc),
                pod_names
                    .get(&c.pod_sandbox_id)
                    .cloned()
                    .unwrap_or_default(),
            ]);
        }
        t.print();
    })
}

/// `repo:tag` split at the last colon after the last slash.
fn repo_and_tag(reference: &str) -> (&str, &str) {
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[name_start..].rfind(':') {
        Some(i) => reference.split_at(name_start + i + 1),
        None => (reference, "<none>"),
    }
}

pub fn print_images(args: &ListArgs, mut r: cri::ListImagesResponse) -> Result<()> {
    r.images.retain(|i| {
        args.id.as_ref().is_none_or(|p| {
            let bare = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
            i.id.starts_with(p.as_str()) || bare.starts_with(p.as_str())
        }) && args
            .name
            .as_ref()
            .is_none_or(|n| i.repo_tags.iter().any(|t| t.contains(n.as_str())))
    });
    if args.quiet {
        r.images.iter().for_each(|i| println!("{}", i.id));
        return Ok(());
    }
    crate::output::print(args.output, &r, || {
        let mut t = Table::new(&["IMAGE", "TAG", "IMAGE ID", "SIZE"]);
        for i in &r.images {
            let bare = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
            let tags = if i.repo_tags.is_empty() {
                vec!["<none>:<none>".to_string()]
            } else {
                i.repo_tags.clone()
            };
            for tag in tags {
                let (repo, tag) = repo_and_tag(&tag);
                t.row(vec![
                    repo.trim_end_matches(':').to_string(),
                    tag.to_string(),
                    id(bare, args.no_trunc),
                    size(i.size),
                ]);
            }
        }
        t.print();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_repository_and_tag() {
        assert_eq!(
            repo_and_tag("127.0.0.1:5000/busybox:latest"),
            ("127.0.0.1:5000/busybox:", "latest")
        );
        assert_eq!(
            repo_and_tag("127.0.0.1:5000/busybox"),
            ("127.0.0.1:5000/busybox", "<none>")
        );
    }

    #[test]
    fn ps_lists_running_containers_unless_all() {
        let args = ListArgs {
            quiet: false,
            no_trunc: false,
            output: Format::Table,
            name: None,
            labels: vec![("app".into(), "web".into())],
            id: None,
        };
        let running = containers_request(&args, false, None, Some("pod1")).unwrap();
        let filter = running.filter.unwrap();
        assert_eq!(
            filter.state.unwrap().state,
            cri::ContainerState::ContainerRunning as i32
        );
        assert_eq!(filter.pod_sandbox_id, "pod1");
        assert_eq!(filter.label_selector["app"], "web");
        let all = containers_request(&args, true, None, None).unwrap();
        assert!(all.filter.unwrap().state.is_none());
        assert!(containers_request(&args, true, Some("sleeping"), None).is_err());
    }
}
