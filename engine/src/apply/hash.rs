//! etcd's HashKV: a crc32 (Castagnoli) over the key bucket's records up to a revision, computed
//! exactly as etcd 3.5 computes it so that members, and Basalt and etcd, can be compared:
//!
//! hash = crc32c( "key" ‖ for each record in revision order with revision.main <= rev:
//!                revision key bytes ‖ KeyValue bytes )
//!
//! except that a record at or below the compacted revision is left out when a compaction at `rev`
//! would drop it (etcd's `kvindex.Keep(rev)`, applied only when that set is not empty).

use std::collections::{HashMap, HashSet};

use basalt_proto::mvccpb::KeyValue;
use prost::Message;

use crate::mvcc::{KvStore, MvccError, Revision, RevisionBackend, KEY_BUCKET};

/// The answer of HashKV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub current_revision: i64,
    pub compacted_revision: i64,
}

/// HashKV at `rev` (0: the current revision), with etcd's errors for compacted and future
/// revisions.
pub fn hash_kv<B: RevisionBackend>(store: &KvStore<B>, rev: i64) -> Result<KvHash, MvccError> {
    let compacted = store.compacted_revision();
    let current = store.current_revision();
    if rev > 0 && rev <= compacted {
        return Err(MvccError::Compacted);
    }
    if rev > current {
        return Err(MvccError::FutureRevision);
    }
    let rev = if rev <= 0 { current } else { rev };

    // Pass 1: each key's newest record at or below `rev`, to know what Keep(rev) holds.
    let mut newest: HashMap<Vec<u8>, (Revision, bool)> = HashMap::new();
    let mut decode_error = None;
    store
        .backend()
        .scan(Revision::default(), &mut |revision, record| {
            if revision.main > rev {
                return false;
            }
            match KeyValue::decode(record.kv.clone()) {
                Ok(kv) => {
                    newest.insert(kv.key.to_vec(), (revision, record.tombstone));
                    true
                }
                Err(error) => {
                    decode_error = Some(MvccError::Backend(format!(
                        "record at revision {revision} does not decode: {error}"
                    )));
                    false
                }
            }
        })?;
    if let Some(error) = decode_error {
        return Err(error);
    }
    let keep: HashSet<Revision> = newest
        .values()
        .filter(|(_, tombstone)| !tombstone)
        .map(|(revision, _)| *revision)
        .collect();

    // Pass 2: the hash itself.
    let mut hash = crc32c::crc32c(KEY_BUCKET.as_bytes());
    store
        .backend()
        .scan(Revision::default(), &mut |revision, record| {
            if revision.main > rev {
                return false;
            }
            if revision.main <= compacted && !keep.is_empty() && !keep.contains(&revision) {
                return true;
            }
            hash = crc32c::crc32c_append(hash, &revision.to_key(record.tombstone));
            hash = crc32c::crc32c_append(hash, &record.kv);
            true
        })?;
    Ok(KvHash {
        hash,
        current_revision: current,
        compacted_revision: compacted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_proto::etcdserverpb::{CompactionRequest, PutRequest};

    fn put(store: &mut KvStore, key: &str, value: &str) {
        store
            .put(&PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            })
            .unwrap();
    }

    #[test]
    fn an_empty_store_hashes_the_bucket_name_alone_as_etcd_does() {
        // etcd 3.5.1 answers HashKV on a fresh member with 1084519789.
        let store = KvStore::new();
        assert_eq!(hash_kv(&store, 0).unwrap().hash, 1_084_519_789);
    }

    #[test]
    fn the_hash_depends_on_history_up_to_the_revision_only() {
        let mut store = KvStore::new();
        put(&mut store, "a", "1");
        let at_2 = hash_kv(&store, 0).unwrap();
        put(&mut store, "a", "2");
        assert_ne!(hash_kv(&store, 0).unwrap().hash, at_2.hash);
        assert_eq!(
            hash_kv(&store, 2).unwrap(),
            KvHash {
                current_revision: 3,
                ..at_2
            }
        );
        assert_eq!(hash_kv(&store, 4), Err(MvccError::FutureRevision));
        store
            .compact(&CompactionRequest {
                revision: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(hash_kv(&store, 2), Err(MvccError::Compacted));
    }
}
