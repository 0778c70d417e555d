//! The auth buckets' records. Each value is versioned and checksummed:
//!
//! ```text
//! bucket "auth", key "state":
//!   byte 0         1             2                    10             14
//!   +---------+-----------+--------------------+--------------+
//!   | version | enabled   | auth revision      | crc32c u32   |
//!   | 0x01    | 0x00/0x01 | u64 BE             | BE of 0..10  |
//!   +---------+-----------+--------------------+--------------+
//!
//! bucket "authUsers" (key: user name) and "authRoles" (key: role name):
//!   byte 0         1                    n+1
//!   +---------+--------------------+--------------+
//!   | version | authpb.User / Role | crc32c u32   |
//!   | 0x01    | protobuf, n bytes  | BE of 0..n+1 |
//!   +---------+--------------------+--------------+
//! ```
//!
//! A user's `password` field holds its bcrypt hash (empty for a `--no-password` user).

use basalt_proto::authpb::{Role, User};
use prost::Message;

const RECORD_VERSION: u8 = 1;
const STATE_RECORD_BYTES: usize = 14;
const CRC_BYTES: usize = 4;

fn seal(mut record: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&record);
    record.extend_from_slice(&crc.to_be_bytes());
    record
}

/// The body of a sealed record, after checking its version and checksum.
fn open<'a>(what: &str, record: &'a [u8]) -> Result<&'a [u8], String> {
    if record.len() < 1 + CRC_BYTES {
        return Err(format!("{what}: {} bytes", record.len()));
    }
    let (sealed, crc) = record.split_at(record.len() - CRC_BYTES);
    if u32::from_be_bytes(crc.try_into().expect("4 bytes")) != crc32c::crc32c(sealed) {
        return Err(format!("{what}: checksum mismatch"));
    }
    if sealed[0] != RECORD_VERSION {
        return Err(format!("{what}: format version {}", sealed[0]));
    }
    Ok(&sealed[1..])
}

pub fn encode_state(enabled: bool, revision: u64) -> Vec<u8> {
    let mut record = Vec::with_capacity(STATE_RECORD_BYTES);
    record.push(RECORD_VERSION);
    record.push(u8::from(enabled));
    record.extend_from_slice(&revision.to_be_bytes());
    seal(record)
}

pub fn decode_state(record: &[u8]) -> Result<(bool, u64), String> {
    let body = open("auth state", record)?;
    let [enabled, revision @ ..] = body else {
        return Err("auth state: empty".into());
    };
    let revision: [u8; 8] = revision
        .try_into()
        .map_err(|_| format!("auth state: {} bytes", record.len()))?;
    Ok((*enabled == 1, u64::from_be_bytes(revision)))
}

pub fn encode_user(user: &User) -> Vec<u8> {
    let mut record = vec![RECORD_VERSION];
    user.encode(&mut record).expect("a Vec grows as needed");
    seal(record)
}

pub fn decode_user(record: &[u8]) -> Result<User, String> {
    User::decode(open("auth user", record)?).map_err(|e| format!("auth user: {e}"))
}

pub fn encode_role(role: &Role) -> Vec<u8> {
    let mut record = vec![RECORD_VERSION];
    role.encode(&mut record).expect("a Vec grows as needed");
    seal(record)
}

pub fn decode_role(record: &[u8]) -> Result<Role, String> {
    Role::decode(open("auth role", record)?).map_err(|e| format!("auth role: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_refuse_damage() {
        let state = encode_state(true, 7);
        assert_eq!(state.len(), STATE_RECORD_BYTES);
        assert_eq!(decode_state(&state), Ok((true, 7)));
        let user = User {
            name: b"alice".to_vec().into(),
            password: b"$2a$10$hash".to_vec().into(),
            roles: vec!["r".into()],
            options: None,
        };
        let record = encode_user(&user);
        assert_eq!(decode_user(&record), Ok(user));
        for at in 0..record.len() {
            let mut damaged = record.clone();
            damaged[at] ^= 0x40;
            assert!(decode_user(&damaged).is_err(), "flip at {at}");
        }
        let mut other_version = vec![2, 0];
        other_version.extend_from_slice(&7u64.to_be_bytes());
        assert!(decode_state(&seal(other_version))
            .unwrap_err()
            .contains("version 2"));
    }
}
