//! A seeded model check for revision backends: the same random KV requests go
//! to a store over [`super::MemoryBackend`] (the model) and to a store over the
//! backend under test, which is also closed and reopened along the way. Every
//! answer must be equal. The durable B+tree backend runs this in its tests.

use std::fmt;

use basalt_proto::etcdserverpb::{
    compare::{CompareTarget, TargetUnion},
    request_op::Request,
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use bytes::Bytes;

use super::{
    validate_compaction, validate_delete_range, validate_put, validate_range, validate_txn,
    KvStore, Limits, MvccError, RevisionBackend,
};

/// The candidate store is reopened from its backend after this many requests.
const REOPEN_EVERY_REQUESTS: usize = 64;

/// Keys the requests draw from: few, so writes collide and histories grow deep.
const KEY_COUNT: u8 = 8;

/// The first request on which the candidate answered differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub seed: u64,
    pub request_index: usize,
    pub request: String,
    pub model: String,
    pub candidate: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} request #{} {}\n  model:     {}\n  candidate: {}",
            self.seed, self.request_index, self.request, self.model, self.candidate
        )
    }
}

/// Runs `requests` seeded random requests against the model and a store over
/// `backend` (which should start empty); returns the backend on agreement.
pub fn check_backend<B: RevisionBackend>(
    backend: B,
    seed: u64,
    requests: usize,
) -> Result<B, Divergence> {
    let limits = Limits::default();
    let mut model = KvStore::new();
    let divergence = |request_index,
                      request: &dyn fmt::Debug,
                      model: &dyn fmt::Debug,
                      candidate: &dyn fmt::Debug| Divergence {
        seed,
        request_index,
        request: format!("{request:?}"),
        model: format!("{model:?}"),
        candidate: format!("{candidate:?}"),
    };
    let mut candidate =
        KvStore::open(backend).map_err(|error| divergence(0, &"open", &"Ok", &error))?;
    let mut random = SplitMix64(seed);
    for request_index in 0..requests {
        if request_index > 0 && request_index.is_multiple_of(REOPEN_EVERY_REQUESTS) {
            candidate = KvStore::open(candidate.into_backend())
                .map_err(|error| divergence(request_index, &"reopen", &"Ok", &error))?;
        }
        let request = random_request(&mut random, model.current_revision());
        let expected = request.apply(&mut model, &limits);
        let actual = request.apply(&mut candidate, &limits);
        if expected != actual {
            return Err(divergence(request_index, &request, &expected, &actual));
        }
    }
    Ok(candidate.into_backend())
}

#[derive(Debug, Clone)]
enum KvRequest {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

/// An answer in a form two stores' answers can be compared in.
#[derive(Debug, PartialEq)]
enum Answer {
    Range(Result<basalt_proto::etcdserverpb::RangeResponse, MvccError>),
    Put(Result<basalt_proto::etcdserverpb::PutResponse, MvccError>),
    DeleteRange(Result<basalt_proto::etcdserverpb::DeleteRangeResponse, MvccError>),
    Txn(Result<basalt_proto::etcdserverpb::TxnResponse, MvccError>),
    Compact(Result<basalt_proto::etcdserverpb::CompactionResponse, MvccError>),
}

impl KvRequest {
    fn apply<B: RevisionBackend>(&self, store: &mut KvStore<B>, limits: &Limits) -> Answer {
        match self {
            KvRequest::Range(req) => {
                Answer::Range(validate_range(req, limits).and_then(|()| store.range(req)))
            }
            KvRequest::Put(req) => {
                Answer::Put(validate_put(req, limits).and_then(|()| store.put(req)))
            }
            KvRequest::DeleteRange(req) => Answer::DeleteRange(
                validate_delete_range(req, limits).and_then(|()| store.delete_range(req)),
            ),
            KvRequest::Txn(req) => {
                Answer::Txn(validate_txn(req, limits).and_then(|()| store.txn(req)))
            }
            KvRequest::Compact(req) => {
                Answer::Compact(validate_compaction(req, limits).and_then(|()| store.compact(req)))
            }
        }
    }
}

/// Sebastiano Vigna's SplitMix64: a tiny seeded generator, enough for test input.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A revision in `-1..=current + 1`: old, current, future and "newest" (0 or less).
    fn revision(&mut self, current: i64) -> i64 {
        self.below(current as u64 + 3) as i64 - 1
    }

    fn key(&mut self) -> Bytes {
        Bytes::from(vec![b'a' + self.below(u64::from(KEY_COUNT)) as u8])
    }

    fn range_end(&mut self) -> Bytes {
        match self.below(4) {
            0 | 1 => Bytes::new(),
            2 => Bytes::from_static(b"\0"),
            _ => self.key(),
        }
    }

    fn value(&mut self) -> Bytes {
        Bytes::from(vec![b'0' + self.below(3) as u8; self.below(3) as usize])
    }
}

fn random_range(random: &mut SplitMix64, current: i64) -> RangeRequest {
    RangeRequest {
        key: random.key(),
        range_end: random.range_end(),
        limit: random.below(4) as i64,
        revision: if random.chance(30) {
            random.revision(current)
        } else {
            0
        },
        sort_order: random.below(3) as i32,
        sort_target: random.below(5) as i32,
        keys_only: random.chance(10),
        count_only: random.chance(10),
        min_mod_revision: if random.chance(10) {
            random.revision(current)
        } else {
            0
        },
        max_create_revision: if random.chance(10) {
            random.revision(current)
        } else {
            0
        },
        ..Default::default()
    }
}

fn random_put(random: &mut SplitMix64) -> PutRequest {
    PutRequest {
        key: random.key(),
        value: random.value(),
        prev_kv: random.chance(30),
        ..Default::default()
    }
}

fn random_delete(random: &mut SplitMix64) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: random.key(),
        range_end: random.range_end(),
        prev_kv: random.chance(30),
    }
}

fn random_txn(random: &mut SplitMix64, current: i64, depth: u32) -> TxnRequest {
    let compare = (0..random.below(3))
        .map(|_| {
            let (target, operand) = match random.below(3) {
                0 => (CompareTarget::Value, TargetUnion::Value(random.value())),
                1 => (
                    CompareTarget::Version,
                    TargetUnion::Version(random.below(3) as i64),
                ),
                _ => (
                    CompareTarget::Mod,
                    TargetUnion::ModRevision(random.revision(current)),
                ),
            };
            Compare {
                // EQUAL, GREATER, LESS or NOT_EQUAL.
                result: random.below(4) as i32,
                target: target as i32,
                key: random.key(),
                range_end: random.range_end(),
                target_union: Some(operand),
            }
        })
        .collect();
    let branch = |random: &mut SplitMix64| -> Vec<RequestOp> {
        (0..random.below(4))
            .map(|_| RequestOp {
                request: Some(match random.below(4) {
                    0 => Request::RequestRange(random_range(random, current)),
                    1 => Request::RequestPut(random_put(random)),
                    2 if depth < 2 => Request::RequestTxn(random_txn(random, current, depth + 1)),
                    _ => Request::RequestDeleteRange(random_delete(random)),
                }),
            })
            .collect()
    };
    let success = branch(random);
    let failure = branch(random);
    TxnRequest {
        compare,
        success,
        failure,
    }
}

fn random_request(random: &mut SplitMix64, current: i64) -> KvRequest {
    match random.below(20) {
        0..=4 => KvRequest::Range(random_range(random, current)),
        5..=10 => KvRequest::Put(random_put(random)),
        11..=13 => KvRequest::DeleteRange(random_delete(random)),
        14..=18 => KvRequest::Txn(random_txn(random, current, 0)),
        _ => KvRequest::Compact(CompactionRequest {
            revision: random.revision(current),
            physical: random.chance(50),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{MemoryBackend, MetaKey, Revision, RevisionRecord};

    /// A backend that forgets every 50th record it is given.
    struct ForgetfulBackend {
        inner: MemoryBackend,
        puts: u64,
    }

    impl RevisionBackend for ForgetfulBackend {
        fn put(&mut self, revision: Revision, record: RevisionRecord) -> Result<(), MvccError> {
            self.puts += 1;
            if self.puts.is_multiple_of(50) {
                return Ok(());
            }
            self.inner.put(revision, record)
        }
        fn get(&self, revision: Revision) -> Result<Option<RevisionRecord>, MvccError> {
            self.inner.get(revision)
        }
        fn delete(&mut self, revision: Revision) -> Result<(), MvccError> {
            self.inner.delete(revision)
        }
        fn scan(
            &self,
            from: Revision,
            visit: &mut dyn FnMut(Revision, &RevisionRecord) -> bool,
        ) -> Result<(), MvccError> {
            self.inner.scan(from, visit)
        }
        fn put_meta(&mut self, key: MetaKey, value: i64) -> Result<(), MvccError> {
            self.inner.put_meta(key, value)
        }
        fn get_meta(&self, key: MetaKey) -> Result<Option<i64>, MvccError> {
            self.inner.get_meta(key)
        }
    }

    #[test]
    fn a_backend_that_loses_records_is_caught() {
        let backend = ForgetfulBackend {
            inner: MemoryBackend::new(),
            puts: 0,
        };
        assert!(check_backend(backend, 1, 600).is_err());
    }

    #[test]
    fn the_model_agrees_with_itself_across_reopens() {
        for seed in 0..8 {
            let result = check_backend(MemoryBackend::new(), seed, 600);
            assert!(result.is_ok(), "{}", result.unwrap_err());
        }
    }
}
