//! Image service: registry pulls, content-addressed blob store, unpacked layer
//! store and image metadata.
//!
//! Storage under `config.root`:
//! - `blobs/sha256/<hex>`: verified manifests, configs and layer blobs;
//! - `layers/sha256/<diffid-hex>/`: unpacked layers (overlayfs lower dirs),
//!   shared by every image that has them;
//! - `images/<config-hex>.json`: image records (the image id is the config
//!   digest);
//! - `tmp/`: in-flight downloads and extractions, renamed into place.

mod error;
pub mod layer;
mod limits;
mod manager;
pub mod progress;
mod record;
mod reference;
mod registry;
mod settings;
mod store;
pub mod trust;
mod verify;

pub use error::ImageError;
pub use layer::LayerError;
pub use manager::{FsUsage, ImageManager, ImageUsage};
pub use record::{ContainerDefaults, ImageConfig, ImageRecord, LayerRecord, RootFs, user_of};
pub use reference::{ImageName, split_registry_host};
pub use registry::{Credentials, Endpoint};
