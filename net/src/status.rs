//! gRPC status codes and the one table that turns Basalt's typed errors into the exact
//! (code, message) pairs etcd 3.5 puts on the wire (etcd's `api/v3rpc/rpctypes/error.go`).
//!
//! Every rejection a client can see passes through here, so a client that matches on etcd's
//! error text (clientv3 does: `rpctypes.Error`) behaves the same against Basalt.

use basalt_engine::auth::AuthError;
use basalt_engine::mvcc::MvccError;
use std::fmt;

/// The gRPC status codes (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code for a `grpc-status` value; values outside the table are UNKNOWN, as the gRPC
    /// spec asks of clients.
    pub fn from_wire(value: u32) -> Code {
        Code::ALL
            .get(value as usize)
            .copied()
            .unwrap_or(Code::Unknown)
    }

    pub fn as_wire(self) -> u8 {
        self as u8
    }

    /// The code's name as grpc-go spells it (`codes.Code.String()`), the `grpc_code` label of
    /// etcd's gRPC metrics.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        }
    }
}

/// A gRPC status: what ends every call, successful or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn ok() -> Self {
        Self::new(Code::Ok, "")
    }

    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// etcd's `ErrGRPCNoLeader`: a `hasleader` call on a member that knows no leader.
    pub fn no_leader() -> Self {
        Self::new(Code::Unavailable, "etcdserver: no leader")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code = {:?} desc = {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// etcd's code for each storage error. The message is the error's Display, which the engine
/// keeps equal to etcd's text (`etcdserver: ...`) wherever etcd has one.
fn mvcc_code(err: &MvccError) -> Code {
    match err {
        MvccError::EmptyKey
        | MvccError::KeyNotFound
        | MvccError::InvalidSortOption
        | MvccError::ValueProvided
        | MvccError::LeaseProvided
        | MvccError::TooManyOps
        | MvccError::DuplicateKey
        | MvccError::RequestTooLarge => Code::InvalidArgument,
        MvccError::Compacted | MvccError::FutureRevision => Code::OutOfRange,
        MvccError::LeaseNotFound => Code::NotFound,
        MvccError::Backend(_) => Code::Internal,
        MvccError::OutOfSpace(_) => Code::ResourceExhausted,
    }
}

impl From<MvccError> for Status {
    fn from(err: MvccError) -> Self {
        Status::new(mvcc_code(&err), err.to_string())
    }
}

/// etcd's code for each auth error (`rpctypes/error.go`).
fn auth_code(err: &AuthError) -> Code {
    match err {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::PermissionNotGiven
        | AuthError::InvalidAuthMgmt
        | AuthError::AuthOldRevision => Code::InvalidArgument,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        AuthError::NoPasswordUser => Code::Unknown,
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        Status::new(auth_code(&err), err.to_string())
    }
}

/// Percent-encodes a `grpc-message` value: bytes outside printable ASCII, and '%' itself,
/// become `%XX` (gRPC over HTTP/2 spec), so any UTF-8 message survives an HTTP/2 header.
pub(crate) fn percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
    out
}

/// Reverses [`percent_encode`]; a malformed escape is kept literally, as grpc-go does.
pub(crate) fn percent_decode(encoded: &[u8]) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        let escaped = match encoded.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(encoded[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_round_trips_through_percent_encoding() {
        for message in [
            "",
            "etcdserver: key is not provided",
            "100% done",
            "ключ: ünïcode",
            "line\nbreak\ttab",
        ] {
            let encoded = percent_encode(message);
            assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            assert_eq!(percent_decode(encoded.as_bytes()), message);
        }
    }

    #[test]
    fn malformed_percent_escape_is_kept_literally() {
        assert_eq!(percent_decode(b"50%z and %4"), "50%z and %4");
    }

    #[test]
    fn mvcc_errors_carry_etcds_code_and_message() {
        let cases = [
            (
                MvccError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                MvccError::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                MvccError::ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                MvccError::LeaseProvided,
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                MvccError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                MvccError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                MvccError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                MvccError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                MvccError::FutureRevision,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                MvccError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
        ];
        for (err, code, message) in cases {
            assert_eq!(Status::from(err), Status::new(code, message));
        }
    }

    #[test]
    fn wire_codes_round_trip_and_unknown_values_map_to_unknown() {
        for code in Code::ALL {
            assert_eq!(Code::from_wire(u32::from(code.as_wire())), code);
        }
        assert_eq!(Code::from_wire(17), Code::Unknown);
    }
}
