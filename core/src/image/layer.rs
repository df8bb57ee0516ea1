//! Safe unpacking of OCI layer tarballs into overlayfs lower directories.
