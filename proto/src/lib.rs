//! etcd v3 wire types: our own .proto files (in `proto/`) written to etcd
//! 3.5's wire format, compiled by prost, plus [`METHODS`], the table of every
//! gRPC method they declare.
//!
//! This crate owns message shapes only. It must never hold behaviour: no I/O,
//! no validation, no defaults beyond protobuf's. A field number here is the
//! wire format every etcd client speaks, so it never changes.
//!
//! prost renames etcd's Go-style names into Rust case, which surprises at
//! first: `HashKVRequest` is [`etcdserverpb::HashKvRequest`], `TTL`/`ID` are
//! `ttl`/`id`, `peerURLs` is `peer_ur_ls`, `memberID` is `member_id`. Enum
//! fields are `i32` on the struct; the generated getter (e.g.
//! `RangeRequest::sort_order()`) maps unknown values to the default variant.

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// Basalt's own log entry format (not on etcd's client wire): what a committed
/// raft entry asks the applier to do.
pub mod basaltpb {
    include!(concat!(env!("OUT_DIR"), "/basaltpb.rs"));
}

/// One gRPC method declared by the .proto files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The HTTP/2 `:path` a client sends, e.g. `/etcdserverpb.KV/Range`.
    pub path: &'static str,
    /// Fully qualified service name, e.g. `etcdserverpb.KV`.
    pub service: &'static str,
    /// Method name, e.g. `Range`.
    pub method: &'static str,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

include!(concat!(env!("OUT_DIR"), "/methods.rs"));

/// Every file above compiled into one `google.protobuf.FileDescriptorSet`: the schema at run
/// time, for code that maps messages by their descriptors (the JSON gateway).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// Finds a method by its HTTP/2 `:path`; `None` for a path no service declares.
pub fn method_by_path(path: &str) -> Option<&'static MethodInfo> {
    METHODS
        .binary_search_by(|info| info.path.cmp(path))
        .ok()
        .map(|index| &METHODS[index])
}
