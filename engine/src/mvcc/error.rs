//! The errors a KV request can end in. `Display` is etcd 3.5's exact message
//! where etcd has one, so `net` can put it on the wire untouched.

/// Why a KV request was refused. Every variant leaves the store unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// A request (or a txn compare/op) without a key. gRPC InvalidArgument.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a missing key, or an empty txn op.
    /// gRPC InvalidArgument.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A sort order or target outside the enum; etcd 3.5.1 crashes on an
    /// unknown target, so this follows etcd 3.6's rejection. gRPC InvalidArgument.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// `ignore_value` together with a value. gRPC InvalidArgument.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease. gRPC InvalidArgument.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More compares or ops in one txn level than `Limits::max_txn_ops`.
    /// gRPC InvalidArgument.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// Two writes of one key in a txn (put/put or put/delete). gRPC InvalidArgument.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The proposal would exceed `Limits::max_request_bytes`. gRPC InvalidArgument.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The revision asked for was removed by a compaction. gRPC OutOfRange.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is newer than the store. gRPC OutOfRange.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A put names a lease the lease table does not hold. gRPC NotFound.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// The revision backend failed or holds a record it cannot decode; etcd
    /// has no such error (its backend panics), so gRPC Internal.
    #[error("basalt: mvcc backend: {0}")]
    Backend(String),
    /// The backend's device is full: the tree write was undone and may be tried again once
    /// space returns (what it carried is in the overlay and the WAL). gRPC ResourceExhausted.
    #[error("basalt: mvcc backend: {0}")]
    OutOfSpace(String),
}
