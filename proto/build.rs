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
        .compile_fds(descriptors.clone())?;

    // With the `json` feature (criusctl's crictl-style config files and
    // `-o json|yaml`), the CRI messages also get serde impls in the protobuf
    // JSON mapping. Field names stay the proto names (`log_directory`, as
    // crictl's files spell them); reading accepts the lowerCamelCase names too
    // and, like crictl, skips fields it does not know (files written for a
    // newer CRI still load).
    if std::env::var_os("CARGO_FEATURE_JSON").is_some() {
        use prost::Message;
        pbjson_build::Builder::new()
            .register_descriptors(&descriptors.encode_to_vec())?
            .preserve_proto_field_names()
            .ignore_unknown_fields()
            // Unset fields are printed with their default values (a ready
            // pod's `state` is `SANDBOX_READY`, the enum's zero), so what
            // scripts read is always there.
            .emit_fields()
            .build(&[".runtime.v1"])?;
    }

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
