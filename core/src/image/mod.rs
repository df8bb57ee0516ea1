//! Image service: registry pulls, content-addressed blob store, unpacked layer
//! store and image metadata.

pub mod layer;
