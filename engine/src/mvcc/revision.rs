//! A revision: `main` counts write transactions, `sub` counts changes inside one.

use std::fmt;

/// One change's position in history. Ordered by `main`, then `sub`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The store revision the change was written at; every change of one txn shares it.
    pub main: i64,
    /// The change's position inside its txn, from 0.
    pub sub: i64,
}

/// Bytes of an encoded revision without the tombstone mark.
pub const REVISION_BYTES: usize = 17;

/// The byte that follows an encoded revision whose record is a tombstone.
const TOMBSTONE_MARK: u8 = b't';

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Encodes the revision as a backend key whose byte order is revision
    /// order, the layout etcd uses in its `key` bucket:
    ///
    /// ```text
    /// byte  0        8    9        17   18 (tombstones only)
    ///       +--------+----+--------+----+
    ///       | main   | _  | sub    | t  |
    ///       | u64 BE |0x5f| u64 BE |0x74|
    ///       +--------+----+--------+----+
    /// ```
    ///
    /// Both halves are non-negative in practice, so big-endian two's complement
    /// sorts like the numbers.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        debug_assert!(self.main >= 0 && self.sub >= 0, "negative revision {self}");
        let mut key = Vec::with_capacity(REVISION_BYTES + 1);
        key.extend_from_slice(&self.main.to_be_bytes());
        key.push(b'_');
        key.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            key.push(TOMBSTONE_MARK);
        }
        key
    }

    /// Decodes [`Revision::to_key`]'s output: the revision and its tombstone mark,
    /// or `None` for bytes that are not an encoded revision.
    pub fn from_key(key: &[u8]) -> Option<(Revision, bool)> {
        let tombstone = match key.len() {
            REVISION_BYTES => false,
            len if len == REVISION_BYTES + 1 && key[REVISION_BYTES] == TOMBSTONE_MARK => true,
            _ => return None,
        };
        if key[8] != b'_' {
            return None;
        }
        let main = i64::from_be_bytes(key[0..8].try_into().ok()?);
        let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
        Some((Revision { main, sub }, tombstone))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_encoding_round_trips_and_sorts_like_revisions() {
        let revisions = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(300, 7),
        ];
        for pair in revisions.windows(2) {
            assert!(pair[0].to_key(false) < pair[1].to_key(false));
            assert!(pair[0].to_key(true) < pair[1].to_key(false));
        }
        for revision in revisions {
            for tombstone in [false, true] {
                let key = revision.to_key(tombstone);
                assert_eq!(Revision::from_key(&key), Some((revision, tombstone)));
            }
        }
    }

    #[test]
    fn malformed_keys_do_not_decode() {
        let good = Revision::new(5, 1).to_key(false);
        let mut bad_separator = good.clone();
        bad_separator[8] = b'x';
        let mut bad_mark = good.clone();
        bad_mark.push(b'x');
        for key in [&good[..16], &bad_separator[..], &bad_mark[..], &[][..]] {
            assert_eq!(Revision::from_key(key), None);
        }
    }
}
