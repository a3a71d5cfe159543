//! Compiles `proto/sluice/v1/*.proto` into Rust with protox (pure Rust, no
//! `protoc`) and tonic-prost-build, and writes the encoded descriptor set for
//! gRPC reflection to `$OUT_DIR/sluice_descriptor.bin`.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    // The .proto files live at the workspace root, the single source of truth.
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let proto_dir = proto_root.join("sluice/v1");

    let mut protos: Vec<PathBuf> = fs::read_dir(&proto_dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    protos.sort();
    if protos.is_empty() {
        return Err(format!("no .proto files in {}", proto_dir.display()).into());
    }

    // compile_fds does neither of these itself.
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut compiler = protox::Compiler::new([&proto_root])?;
    // Source info carries the .proto comments: prost turns them into rustdoc,
    // and reflection clients (grpcurl describe) show them.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(&protos)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("sluice_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Record.key and Record.payload as bytes::Bytes: zero-copy out of the
        // decode buffer.
        .bytes(".")
        .compile_fds(compiler.file_descriptor_set())?;

    Ok(())
}
