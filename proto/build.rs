//! Compiles the wire contracts with pure-Rust tooling (`protox`), so building
//! crius needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cri = "cri/runtime/v1/api.proto";
    let handler = "handler/v1/handler.proto";
    println!("cargo:rerun-if-changed={cri}");
    println!("cargo:rerun-if-changed={handler}");

    let descriptors = protox::compile([cri], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // AuthConfig carries registry secrets; its Debug is written by hand so
        // secrets never reach logs.
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_fds(descriptors)?;

    // The handler contract reuses CRI messages; they resolve to the `cri`
    // module generated above instead of being generated twice.
    let descriptors = protox::compile([handler], ["."])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .extern_path(".runtime.v1", "crate::cri")
        .compile_fds(descriptors)?;
    Ok(())
}
