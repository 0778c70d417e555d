//! Basalt's network edge: etcd's v3 gRPC API over h2 on glommio, one executor per core.
//!
//! - [`server`]: executors, SO_REUSEPORT listeners, HTTP/2 vs HTTP/1.1 on accept, streams.
//! - [`service`]: which gRPC path runs what; validation before execution; response headers.
//! - [`kv`]: the [`KvService`] seam; [`LocalKv`] is the in-memory model.
//! - [`node`]: the durable member: the raft core (raft, WAL, applier, B+tree writer) and
//!   [`node::RaftKv`], the [`KvService`] the binary serves.
//! - `lease`: the Lease service (grant/revoke through the log, keep-alive stream).
//! - `lock`, `election`: v3lock and v3election on leases and txns (`concurrency`).
//! - [`watch`]: the Watch service's streams over the store's watch hub.
//! - [`auth`]: the Auth service, who a call is, and the permission checks made before a
//!   request runs.
//! - [`peer`]: the peer transport: raft messages, snapshots and forwarded proposals between
//!   members, and the membership query joiners ask.
//! - [`status`]: gRPC status codes and the one table from Basalt's errors to etcd's.
//! - [`metrics`]: the `/metrics` registry under etcd's metric names.
//! - `gateway`: etcd's JSON gateway (`/v3/...` over HTTP), an in-process caller of the
//!   services.
//! - [`client`]: a small gRPC client on the same stack, for benches and tests.
//! - [`tls`]: rustls configs, the acceptor and connector (client port and peers), reload.
//!
//! This crate owns sockets and wire formats. It must never hold KV state or decide KV
//! semantics: every request goes through [`KvService`], and every error it shows a client is
//! etcd's, mapped in [`status`].

pub mod auth;
pub mod client;
mod concurrency;
mod config;
mod election;
mod gateway;
mod grpc;
mod health;
mod http1;
mod io;
pub mod kv;
mod leader_check;
mod lease;
mod lock;
pub mod metrics;
mod mux;
pub mod node;
pub mod peer;
mod server;
mod service;
pub mod status;
pub mod tls;
pub mod watch;

pub use config::{
    parse_client_url, url_host, url_is_https, NetError, ServerConfig, GRPC_OVERHEAD_BYTES,
};
pub use kv::{KvService, LocalKv, StoreStatus};
pub use leader_check::NO_LEADER_CHECKS_MAX;
pub use server::{run, spawn, spawn_hosting, spawn_with, HostedTask, ServerHandle};
pub use service::{ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};
pub use status::{Code, Status};
