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
