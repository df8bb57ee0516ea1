//! CRI gRPC clients over a unix socket.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use crius_proto::cri::image_service_client::ImageServiceClient;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Both CRI services on one connection. Cheap to clone (the channel is shared).
#[derive(Clone, Debug)]
pub struct CriClients {
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
}

/// Connects to the CRI socket at `socket`. The connection is made eagerly, so
/// an error here means nothing is listening.
pub async fn connect(socket: &Path) -> Result<CriClients> {
    let channel = channel(socket).await?;
    Ok(CriClients {
        runtime: RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(16 * 1024 * 1024),
        image: ImageServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
    })
}

/// A tonic channel whose transport is the unix socket `socket`.
pub async fn channel(socket: &Path) -> Result<Channel> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but unused: every connection goes to the socket.
    Endpoint::try_from("http://crius.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .with_context(|| "connecting to the CRI socket")
}

/// Small wrappers for the image RPCs, so tests read as the behaviour they check.
pub mod images {
    use crius_proto::cri::image_service_client::ImageServiceClient;
    use crius_proto::cri::{
        Image, ImageFilter, ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec, ImageStatusRequest,
        ImageStatusResponse, ListImagesRequest, PullImageRequest, RemoveImageRequest,
    };
    use tonic::Status;
    use tonic::transport::Channel;

    pub type Client = ImageServiceClient<Channel>;

    pub fn spec(image: &str) -> ImageSpec {
        ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }
    }

    /// PullImage; returns the image_ref.
    pub async fn pull(client: &mut Client, image: &str) -> Result<String, Status> {
        let req = PullImageRequest {
            image: Some(spec(image)),
            ..Default::default()
        };
        Ok(client.pull_image(req).await?.into_inner().image_ref)
    }

    pub async fn list(client: &mut Client) -> Result<Vec<Image>, Status> {
        Ok(client
            .list_images(ListImagesRequest::default())
            .await?
            .into_inner()
            .images)
    }

    pub async fn list_filtered(client: &mut Client, image: &str) -> Result<Vec<Image>, Status> {
        let req = ListImagesRequest {
            filter: Some(ImageFilter {
                image: Some(spec(image)),
            }),
        };
        Ok(client.list_images(req).await?.into_inner().images)
    }

    pub async fn status(
        client: &mut Client,
        image: &str,
        verbose: bool,
    ) -> Result<ImageStatusResponse, Status> {
        let req = ImageStatusRequest {
            image: Some(spec(image)),
            verbose,
        };
        Ok(client.image_status(req).await?.into_inner())
    }

    pub async fn remove(client: &mut Client, image: &str) -> Result<(), Status> {
        client
            .remove_image(RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await?;
        Ok(())
    }

    pub async fn fs_info(client: &mut Client) -> Result<ImageFsInfoResponse, Status> {
        Ok(client
            .image_fs_info(ImageFsInfoRequest {})
            .await?
            .into_inner())
    }

    /// The hex of an image id, whether it is reported as `sha256:<hex>` or bare `<hex>`.
    pub fn id_hex(id: &str) -> &str {
        id.trim_start_matches("sha256:")
    }
}

/// Pod and container configs shaped like the kubelet's, so every suite
/// exercises the runtime the way a node does.
pub mod configs {
    use std::path::Path;

    use crius_proto::cri;

    /// The kubelet's namespace choice: `network` (pod or host), pod IPC, a
    /// PID namespace per container.
    pub fn namespaces(network: cri::NamespaceMode) -> cri::NamespaceOption {
        cri::NamespaceOption {
            network: network as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }
    }

    /// A pod `name` in `namespace` with a fresh uid, hostname `name` and its
    /// log directory `<log_root>/<uid>`.
    pub fn pod(
        name: &str,
        namespace: &str,
        log_root: &Path,
        network: cri::NamespaceMode,
    ) -> cri::PodSandboxConfig {
        let uid = crate::unique_token();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: namespace.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_root.join(&uid).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(network)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A container `name` running `command` from `image`, logging to
    /// `<name>/0.log` under the pod's log directory.
    pub fn container(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// The user namespace kubelet asks for with `hostUsers: false`: mode
    /// POD, 65536 ids from container id 0 at `host_id` (uids and gids).
    pub fn pod_userns(host_id: u32) -> cri::UserNamespace {
        let ids = vec![cri::IdMapping {
            host_id,
            container_id: 0,
            length: 65536,
        }];
        cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: ids.clone(),
            gids: ids,
        }
    }

    /// `config` in the user namespace [`pod_userns`] describes.
    pub fn in_pod_userns(mut config: cri::PodSandboxConfig, host_id: u32) -> cri::PodSandboxConfig {
        config
            .linux
            .get_or_insert_default()
            .security_context
            .get_or_insert_default()
            .namespace_options
            .get_or_insert_default()
            .userns_options = Some(pod_userns(host_id));
        config
    }

    /// [`container`] with the kubelet's namespace options in its security
    /// context.
    pub fn container_with_namespaces(
        name: &str,
        image: &str,
        command: &[&str],
        network: cri::NamespaceMode,
    ) -> cri::ContainerConfig {
        let mut config = container(name, image, command);
        config.linux = Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(network)),
                ..Default::default()
            }),
        });
        config
    }
}

/// The features `Status` reports for the handler `name`; panics when it is
/// not listed.
pub fn handler_features(
    status: &crius_proto::cri::StatusResponse,
    name: &str,
) -> crius_proto::cri::RuntimeHandlerFeatures {
    status
        .runtime_handlers
        .iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| {
            panic!(
                "Status does not list handler {name}: {:?}",
                status.runtime_handlers
            )
        })
        .features
        .unwrap_or_default()
}
