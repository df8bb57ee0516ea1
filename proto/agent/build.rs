//! Generates the guest agent API (rust-protobuf messages + async ttrpc
//! services) with pure-Rust tooling: ttrpc-codegen parses the .proto files
//! with protobuf-codegen's own parser, so no `protoc` is needed.
//!
//! This lives in its own crate rather than in `crius-proto`'s build script
//! because the agent API uses rust-protobuf/ttrpc, not prost/tonic, and the
//! daemon has no use for either.

use std::path::Path;

const PROTOS: [&str; 4] = ["agent", "health", "oci", "types"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::env::var("OUT_DIR")?;
    let raw = Path::new(&out_dir).join("raw");
    std::fs::create_dir_all(&raw)?;

    let inputs: Vec<String> = PROTOS.iter().map(|p| format!("protos/{p}.proto")).collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={input}");
    }

    ttrpc_codegen::Codegen::new()
        .out_dir(&raw)
        .inputs(&inputs)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;

    // The generated files open with inner attributes and `//!` comments,
    // which `include!` rejects; strip them (lib.rs sets the allows on the
    // wrapping modules instead).
    for entry in std::fs::read_dir(&raw)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let cleaned: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("#![") && !l.trim_start().starts_with("//!"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(
            Path::new(&out_dir).join(path.file_name().unwrap_or_default()),
            cleaned,
        )?;
    }
    Ok(())
}
