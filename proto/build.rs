//! Compiles the wire contracts with pure-Rust tooling (`protox`), so building
//! crius needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cri = "cri/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={cri}");
    let descriptors = protox::compile([cri], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // AuthConfig carries registry secrets; its Debug is written by hand so
        // secrets never reach logs.
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_fds(descriptors)?;
    Ok(())
}
