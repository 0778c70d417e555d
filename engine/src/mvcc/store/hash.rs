//! HashKV: etcd's checksum of the revision records, which members compare to
//! detect a corrupt or diverged store.

use super::KvStore;
use crate::mvcc::backend::RevisionBackend;
use crate::mvcc::{MvccError, Revision};

/// What etcd's `Maintenance.HashKV` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32C (Castagnoli) of the hashed records.
    pub hash: u32,
    /// The store's revision when hashed; the response header's revision.
    pub current_revision: i64,
    /// The newest compaction's revision, -1 if none.
    pub compact_revision: i64,
}

/// etcd hashes its bucket's name before the records.
const KEY_BUCKET_NAME: &[u8] = b"key";

impl<B: RevisionBackend> KvStore<B> {
    /// etcd 3.5.1's `hashByRev`: CRC-32C over "key" and then, in revision
    /// order, each record's backend key ([`Revision::to_key`]) and KeyValue
    /// bytes, for every revision up to `revision` (0: the current one) except
    /// those at or below the compaction that a compaction at `revision` would
    /// drop. Our records are etcd's byte for byte, so equal stores hash equal.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        if revision > 0 && revision <= self.compacted_revision {
            return Err(MvccError::Compacted);
        }
        if revision > 0 && revision > self.current_revision {
            return Err(MvccError::FutureRevision);
        }
        let at = if revision == 0 {
            self.current_revision
        } else {
            revision
        };
        let keep = self.index.keep(at);
        let upper = Revision::new(at.saturating_add(1), 0);
        let lower = Revision::new(self.compacted_revision.saturating_add(1), 0);
        let mut hash = crc32c::crc32c(KEY_BUCKET_NAME);
        self.backend
            .scan(Revision::default(), &mut |record_revision, record| {
                if record_revision >= upper {
                    return false;
                }
                let compacted_away = record_revision < lower && !keep.is_empty();
                if compacted_away && !keep.contains(&record_revision) {
                    return true;
                }
                hash = crc32c::crc32c_append(hash, &record_revision.to_key(record.tombstone));
                hash = crc32c::crc32c_append(hash, &record.kv);
                true
            })?;
        Ok(KvHash {
            hash,
            current_revision: self.current_revision,
            compact_revision: self.compacted_revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_proto::etcdserverpb::{
        request_op::Request, CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp,
        TxnRequest,
    };
    use bytes::Bytes;

    /// A history run on etcd 3.5.1 with its HashKV answers; see its header.
    const ETCD_HISTORY: &str = include_str!("../testdata/hashkv_etcd_3_5_1.txt");

    fn token(text: &str) -> Bytes {
        if text == "-" {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(text.as_bytes())
        }
    }

    fn op(text: &str) -> Request {
        match text.split(' ').collect::<Vec<_>>()[..] {
            ["put", key, value] => Request::RequestPut(PutRequest {
                key: token(key),
                value: token(value),
                ..Default::default()
            }),
            ["del", key, end] => Request::RequestDeleteRange(DeleteRangeRequest {
                key: token(key),
                range_end: token(end),
                prev_kv: false,
            }),
            _ => panic!("bad op {text:?}"),
        }
    }

    #[test]
    fn hash_kv_matches_etcd() {
        let mut store = KvStore::new();
        let mut hashes_checked = 0;
        for line in ETCD_HISTORY.lines().filter(|line| !line.starts_with('#')) {
            let (verb, rest) = line.split_once(' ').expect("verb and arguments");
            match verb {
                "put" | "del" => match op(line) {
                    Request::RequestPut(put) => drop(store.put(&put).unwrap()),
                    Request::RequestDeleteRange(delete) => {
                        drop(store.delete_range(&delete).unwrap())
                    }
                    _ => unreachable!(),
                },
                "txn" => {
                    let success = rest
                        .split("; ")
                        .map(|text| RequestOp {
                            request: Some(op(text)),
                        })
                        .collect();
                    store
                        .txn(&TxnRequest {
                            compare: Vec::new(),
                            success,
                            failure: Vec::new(),
                        })
                        .unwrap();
                }
                "compact" => {
                    let revision = rest.parse().unwrap();
                    store
                        .compact(&CompactionRequest {
                            revision,
                            physical: true,
                        })
                        .unwrap();
                }
                "hashkv" => {
                    let (revision, expected) = rest.split_once(' ').unwrap();
                    let answer = store.hash_kv(revision.parse().unwrap());
                    let answer = match answer {
                        Ok(found) => format!(
                            "{} {} {}",
                            found.hash, found.current_revision, found.compact_revision
                        ),
                        Err(error) => format!("error {error}"),
                    };
                    assert_eq!(answer, expected, "{line}");
                    hashes_checked += 1;
                }
                _ => panic!("bad line {line:?}"),
            }
        }
        assert!(hashes_checked > 50, "only {hashes_checked} answers checked");
    }
}
