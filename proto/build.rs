//! Compiles `proto/` with protox (pure Rust, no system protoc) into prost
//! types, and writes `methods.rs`: the table of every gRPC method the files
//! declare, so the server knows each method's path and streaming shape without
//! a hand-kept list that could drift from the .proto files. The compiled
//! descriptor set is also left in OUT_DIR for `tests/descriptors.rs`.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Every file we compile; imports resolve against the `proto/` root.
const PROTO_FILES: [&str; 6] = [
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3electionpb/v3election.proto",
    "v3lockpb/v3lock.proto",
    "basalt/internal.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include_dir = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed={}", include_dir.display());

    let fds = protox::compile(PROTO_FILES, [&include_dir])?;
    let methods_rs = methods_table(&fds)?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("methods.rs"), methods_rs)?;
    // Kept for the test that compares our schema with the one compiled into etcd.
    std::fs::write(
        out_dir.join("file_descriptor_set.bin"),
        protox::prost::Message::encode_to_vec(&fds),
    )?;

    prost_build::Config::new()
        // Values and keys are handed between layers without copying.
        .bytes(["."])
        .compile_fds(fds)?;
    Ok(())
}

/// Renders `METHODS`, sorted by path so lookups can binary search.
fn methods_table(
    fds: &protox::prost_reflect::prost_types::FileDescriptorSet,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    for file in &fds.file {
        let package = file.package();
        for service in &file.service {
            let service_name = format!("{package}.{}", service.name());
            for method in &service.method {
                rows.push((
                    format!("/{service_name}/{}", method.name()),
                    service_name.clone(),
                    method.name().to_owned(),
                    method.client_streaming(),
                    method.server_streaming(),
                ));
            }
        }
    }
    rows.sort();
    let mut out = String::from("pub static METHODS: &[MethodInfo] = &[\n");
    for (path, service, method, client_streaming, server_streaming) in rows {
        writeln!(
            out,
            "    MethodInfo {{ path: {path:?}, service: {service:?}, method: {method:?}, \
             client_streaming: {client_streaming}, server_streaming: {server_streaming} }},"
        )?;
    }
    out.push_str("];\n");
    Ok(out)
}
