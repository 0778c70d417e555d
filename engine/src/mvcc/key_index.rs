//! The in-memory key index: for every key, the revisions that wrote it,
//! grouped into generations (a generation runs from a create to the
//! tombstone that deletes the key).
//!
//! Semantics follow etcd 3.5's `keyIndex`/`treeIndex` exactly, including how
//! compaction keeps the newest revision at or below the compaction point and
//! drops generations that ended before it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;

use bytes::Bytes;

use super::Revision;

/// The keys a request covers, decoded from its `key` and `range_end` the way
/// etcd does: no `range_end` is the one key, a `range_end` of a single zero
/// byte is every key from `key` on, anything else is `[key, range_end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    Single(&'a [u8]),
    From(&'a [u8]),
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    pub fn contains(&self, candidate: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => candidate == key,
            KeyRange::From(key) => candidate >= key,
            KeyRange::Between(key, end) => key <= candidate && candidate < end,
        }
    }
}

/// A key as seen at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision whose record holds the key's value at that point.
    pub modified: Revision,
    /// The revision that created the key's current generation.
    pub created: Revision,
    /// Writes to the key since it was created, counting the creating write.
    pub version: i64,
}

/// One life of a key, from the put that created it to the tombstone (the
/// last revision of every generation but the newest) that deleted it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// Writes in this generation, including any compacted away.
    version: i64,
    created: Revision,
    revisions: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    /// Index of the newest revision for which `keep_walking` is false.
    fn walk_back(&self, keep_walking: impl FnMut(&Revision) -> bool) -> Option<usize> {
        self.revisions.iter().rposition(negate(keep_walking))
    }
}

fn negate<T>(mut f: impl FnMut(&T) -> bool) -> impl FnMut(&T) -> bool {
    move |t| !f(t)
}

/// Every revision of one key. Invariant: at least one generation, and only
/// the last may be empty (a key that is currently deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyIndex {
    modified: Revision,
    generations: Vec<Generation>,
}

impl KeyIndex {
    fn new() -> Self {
        KeyIndex {
            modified: Revision::default(),
            generations: vec![Generation::default()],
        }
    }

    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// Whether the key exists at its newest revision.
    fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.is_empty())
    }

    fn put(&mut self, revision: Revision) {
        assert!(
            revision > self.modified,
            "key index put {revision} is not newer than {}",
            self.modified
        );
        let generation = self
            .generations
            .last_mut()
            .expect("a key index always has a generation");
        if generation.is_empty() {
            generation.created = revision;
        }
        generation.revisions.push(revision);
        generation.version += 1;
        self.modified = revision;
    }

    /// Ends the current generation; `false` if the key is already deleted.
    fn tombstone(&mut self, revision: Revision) -> bool {
        match self.generations.last() {
            Some(generation) if !generation.is_empty() => {}
            _ => return false,
        }
        self.put(revision);
        self.generations.push(Generation::default());
        true
    }

    /// The generation alive at `at`, if the key existed then.
    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (index, generation) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(tomb)) =
                (generation.revisions.first(), generation.revisions.last())
            else {
                continue;
            };
            if index != last && tomb.main <= at {
                return None;
            }
            if first.main <= at {
                return Some(generation);
            }
        }
        None
    }

    fn get(&self, at: i64) -> Option<KeyAt> {
        let generation = self.find_generation(at)?;
        let newest = generation.walk_back(|revision| revision.main > at)?;
        let later_writes = (generation.revisions.len() - newest - 1) as i64;
        Some(KeyAt {
            modified: generation.revisions[newest],
            created: generation.created,
            version: generation.version - later_writes,
        })
    }

    /// etcd's `doCompact`: the first generation a read at `at` or later can
    /// reach, and in it the index of the newest revision at or below `at`.
    fn compaction_point(&self, at: i64) -> (usize, Option<usize>) {
        let mut first_kept = 0;
        while first_kept < self.generations.len() - 1 {
            let generation = &self.generations[first_kept];
            let tomb = generation
                .revisions
                .last()
                .expect("only the last generation is empty");
            if tomb.main > at {
                break;
            }
            first_kept += 1;
        }
        let newest = self.generations[first_kept].walk_back(|revision| revision.main > at);
        (first_kept, newest)
    }

    /// Drops what no read at `at` or later can reach, and adds the revisions
    /// such reads still need (at or below `at`) to `keep`.
    fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        assert!(!self.is_empty(), "compacting an empty key index");
        let (mut first_kept, newest) = self.compaction_point(at);
        let last = self.generations.len() - 1;
        let generation = &mut self.generations[first_kept];
        if let Some(newest) = newest {
            keep.insert(generation.revisions[newest]);
            generation.revisions.drain(..newest);
        }
        // A generation reduced to its tombstone has nothing left to read.
        if generation.revisions.len() == 1 && first_kept != last {
            keep.remove(&generation.revisions[0]);
            first_kept += 1;
        }
        self.generations.drain(..first_kept);
    }

    /// etcd's `keep`: the revision at or below `at` that a compaction at `at`
    /// would keep, computed without compacting. Unlike `compact` it drops only
    /// a tombstone found as that newest revision, as etcd does.
    fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (first_kept, newest) = self.compaction_point(at);
        let generation = &self.generations[first_kept];
        if let Some(newest) = newest {
            let is_tombstone = newest == generation.revisions.len() - 1
                && first_kept != self.generations.len() - 1;
            if !is_tombstone {
                keep.insert(generation.revisions[newest]);
            }
        }
    }
}

/// A copy of `key` that owns exactly its bytes. A key handed in is usually a
/// slice of a whole request or record buffer; keeping that slice in the index
/// would keep the whole buffer (values included) alive for the key's lifetime.
fn owned_key(key: &[u8]) -> Bytes {
    Bytes::copy_from_slice(key)
}

/// A sorted block holds at most this many keys; a fuller block splits in two. Small enough
/// that an insert's shift inside its block stays a few KiB.
const BLOCK_KEYS_MAX: usize = 256;
/// The smallest allocation a block grows to.
const BLOCK_GROWTH_MIN: usize = 8;
/// Liveness changes kept for counts at past revisions: a count undoes at most this many, and
/// one before the oldest kept walks the keys instead (a LIST's pages are read at a revision a
/// moment old; etcd walks for every count).
const CHANGES_MAX: usize = 1 << 16;

/// The keys live at the newest revision, in order, answering how many lie below any key in
/// O(log n): sorted blocks of at most [`BLOCK_KEYS_MAX`] keys, a binary search over the blocks'
/// first keys, and a Fenwick tree over the blocks' sizes. A range's count is two such ranks, so
/// a page of a paginated LIST is answered without walking the rest of the range.
#[derive(Debug, Clone, Default)]
struct RankedKeys {
    blocks: Vec<Vec<Bytes>>,
    /// Each block's first key, side by side: the search for a key's block reads this array,
    /// not every block's own allocation.
    firsts: Vec<Bytes>,
    /// Fenwick tree (1-based) over `blocks[i].len()`.
    sizes: Vec<usize>,
    len: usize,
}

impl RankedKeys {
    /// The block `key` belongs in: the last whose first key is not above it (the first block
    /// for a key below every block).
    fn block_of(&self, key: &[u8]) -> usize {
        self.firsts
            .partition_point(|first| first.as_ref() <= key)
            .saturating_sub(1)
    }

    fn insert(&mut self, key: Bytes) {
        self.len += 1;
        if self.blocks.is_empty() {
            self.firsts.push(key.clone());
            self.blocks.push(vec![key]);
            return self.rebuild();
        }
        let b = self.block_of(&key);
        let block = &mut self.blocks[b];
        let at = block.partition_point(|k| *k < key);
        debug_assert!(block.get(at) != Some(&key), "a live key inserted twice");
        if at == 0 {
            self.firsts[b] = key.clone();
        }
        if block.len() == block.capacity() {
            // Doubling would leave a split block's lower half in an allocation four times its
            // keys (128 keys in room for 512); growth stops at the split point instead.
            let grown = (block.len() * 2).clamp(BLOCK_GROWTH_MIN, BLOCK_KEYS_MAX + 1);
            block.reserve_exact(grown - block.len());
        }
        block.insert(at, key);
        if block.len() > BLOCK_KEYS_MAX {
            // The halves own exactly their keys: after an ascending load (the usual one) no
            // key ever lands in a lower half again.
            let upper = block.split_off(block.len() / 2);
            block.shrink_to_fit();
            self.firsts.insert(b + 1, upper[0].clone());
            self.blocks.insert(b + 1, upper);
            self.rebuild();
        } else {
            self.add(b, true);
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if self.blocks.is_empty() {
            debug_assert!(false, "removing from an empty set");
            return;
        }
        let b = self.block_of(key);
        let block = &mut self.blocks[b];
        let Ok(at) = block.binary_search_by(|k| k.as_ref().cmp(key)) else {
            debug_assert!(false, "removing a key that is not live");
            return;
        };
        block.remove(at);
        self.len -= 1;
        if block.is_empty() {
            self.blocks.remove(b);
            self.firsts.remove(b);
            self.rebuild();
        } else {
            if at == 0 {
                self.firsts[b] = block[0].clone();
            }
            self.add(b, false);
        }
    }

    /// How many keys are below `key`.
    fn rank(&self, key: &[u8]) -> usize {
        if self.blocks.is_empty() {
            return 0;
        }
        let b = self.block_of(key);
        let mut below = self.blocks[b].partition_point(|k| k.as_ref() < key);
        let mut i = b;
        while i > 0 {
            below += self.sizes[i];
            i &= i - 1;
        }
        below
    }

    fn count(&self, range: KeyRange<'_>) -> usize {
        match range {
            KeyRange::Single(key) => {
                let b = self.block_of(key);
                usize::from(
                    self.blocks.get(b).is_some_and(|block| {
                        block.binary_search_by(|k| k.as_ref().cmp(key)).is_ok()
                    }),
                )
            }
            KeyRange::From(key) => self.len - self.rank(key),
            KeyRange::Between(key, end) if key >= end => 0,
            KeyRange::Between(key, end) => self.rank(end) - self.rank(key),
        }
    }

    fn add(&mut self, block: usize, grew: bool) {
        let mut i = block + 1;
        while i < self.sizes.len() {
            if grew {
                self.sizes[i] += 1;
            } else {
                self.sizes[i] -= 1;
            }
            i += i & i.wrapping_neg();
        }
    }

    fn rebuild(&mut self) {
        let n = self.blocks.len();
        self.sizes = vec![0; n + 1];
        for (b, block) in self.blocks.iter().enumerate() {
            let i = b + 1;
            self.sizes[i] += block.len();
            let parent = i + (i & i.wrapping_neg());
            if parent <= n {
                self.sizes[parent] += self.sizes[i];
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.blocks.iter().flatten()
    }

    /// The set of `keys`, given in order, in half-full blocks.
    fn from_sorted(keys: impl Iterator<Item = Bytes>) -> RankedKeys {
        let mut ranked = RankedKeys::default();
        let mut block = Vec::with_capacity(BLOCK_KEYS_MAX / 2);
        for key in keys {
            debug_assert!(block.last().is_none_or(|last| *last < key));
            block.push(key);
            if block.len() == BLOCK_KEYS_MAX / 2 {
                ranked.len += block.len();
                ranked.firsts.push(block[0].clone());
                ranked.blocks.push(std::mem::replace(
                    &mut block,
                    Vec::with_capacity(BLOCK_KEYS_MAX / 2),
                ));
            }
        }
        if !block.is_empty() {
            ranked.len += block.len();
            ranked.firsts.push(block[0].clone());
            ranked.blocks.push(block);
        }
        ranked.rebuild();
        ranked
    }
}

/// Equal when they hold the same keys, however the blocks fell.
impl PartialEq for RankedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for RankedKeys {}

/// All keys' indexes, ordered by key, and what counts a range without walking it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeIndex {
    keys: BTreeMap<Bytes, KeyIndex>,
    live: RankedKeys,
    /// Keys that came to life (true) or died (false), by main revision, oldest first: a count
    /// at a past revision undoes those after it.
    changes: VecDeque<(i64, Bytes, bool)>,
    /// `changes` holds every change after this revision.
    changes_floor: i64,
    /// A restart is replaying records: the live keys are built once at its end.
    replaying: bool,
}

impl TreeIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: &[u8], revision: Revision) {
        match self.keys.get_mut(key) {
            Some(index) => {
                let was_live = index.is_live();
                index.put(revision);
                if !was_live {
                    let stored = self.stored_key(key);
                    self.changed(stored, revision, true);
                }
            }
            None => {
                let mut index = KeyIndex::new();
                index.put(revision);
                let stored = owned_key(key);
                self.keys.insert(stored.clone(), index);
                self.changed(stored, revision, true);
            }
        }
    }

    /// Records the key's deletion; `false` if the key is not live.
    pub fn tombstone(&mut self, key: &[u8], revision: Revision) -> bool {
        let ended = self
            .keys
            .get_mut(key)
            .is_some_and(|index| index.tombstone(revision));
        if ended {
            let stored = self.stored_key(key);
            self.changed(stored, revision, false);
        }
        ended
    }

    /// The index's own copy of `key` (shared, not copied again).
    fn stored_key(&self, key: &[u8]) -> Bytes {
        self.keys
            .get_key_value(key)
            .expect("the key is indexed")
            .0
            .clone()
    }

    /// Starts a replay of a store's records (a restart): the counting side is left alone
    /// until [`TreeIndex::end_replay`] builds it in one pass, instead of a sorted insert per key.
    pub fn begin_replay(&mut self) {
        self.replaying = true;
    }

    /// Ends a replay whose newest record was at `revision`: counts at it and later come from
    /// the index, older ones walk the keys.
    pub fn end_replay(&mut self, revision: i64) {
        self.replaying = false;
        self.live = RankedKeys::from_sorted(
            self.keys
                .iter()
                .filter(|(_, index)| index.is_live())
                .map(|(key, _)| key.clone()),
        );
        self.changes.clear();
        self.changes_floor = revision;
    }

    fn changed(&mut self, key: Bytes, revision: Revision, alive: bool) {
        if self.replaying {
            return;
        }
        if alive {
            self.live.insert(key.clone());
        } else {
            self.live.remove(&key);
        }
        self.changes.push_back((revision.main, key, alive));
        if self.changes.len() > CHANGES_MAX {
            if let Some((dropped, _, _)) = self.changes.pop_front() {
                self.changes_floor = self.changes_floor.max(dropped);
            }
        }
    }

    /// How many keys of `range` are live at `at`, in O(log n) plus the changes since `at`;
    /// None when the changes since `at` are no longer kept, and the keys must be walked.
    pub fn count_live(&self, range: KeyRange<'_>, at: i64) -> Option<i64> {
        if at < self.changes_floor {
            return None;
        }
        let since = self
            .changes
            .partition_point(|(revision, _, _)| *revision <= at);
        let mut count = self.live.count(range) as i64;
        for (_, key, alive) in self.changes.range(since..) {
            if range.contains(key) {
                count += if *alive { -1 } else { 1 };
            }
        }
        Some(count)
    }

    /// Seeds a key from the newest record a restart found for it, as etcd's
    /// restore does: its creation and version come from the record itself,
    /// because compaction may have removed the earlier revisions.
    pub fn restore(&mut self, key: &[u8], created: Revision, modified: Revision, version: i64) {
        let index = KeyIndex {
            modified,
            generations: vec![Generation {
                version,
                created,
                revisions: vec![modified],
            }],
        };
        let stored = owned_key(key);
        let previous = self.keys.insert(stored.clone(), index);
        assert!(previous.is_none(), "restore of a key already indexed");
        self.changed(stored, modified, true);
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.keys.contains_key(key)
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at)
    }

    /// Calls `visit` on each key of `range` live at `at`, in key order, until it returns false.
    pub fn visit_live(
        &self,
        range: KeyRange<'_>,
        at: i64,
        mut visit: impl FnMut(&Bytes, KeyAt) -> bool,
    ) {
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = match range {
            KeyRange::Single(key) => {
                if let Some((key, index)) = self.keys.get_key_value(key) {
                    if let Some(found) = index.get(at) {
                        visit(key, found);
                    }
                }
                return;
            }
            KeyRange::From(key) => (Bound::Included(key), Bound::Unbounded),
            // BTreeMap::range panics on an inverted range; etcd finds nothing.
            KeyRange::Between(key, end) if key > end => return,
            KeyRange::Between(key, end) => (Bound::Included(key), Bound::Excluded(end)),
        };
        for (key, index) in self.keys.range::<[u8], _>(bounds) {
            if let Some(found) = index.get(at) {
                if !visit(key, found) {
                    return;
                }
            }
        }
    }

    /// The revisions at or below `at` a compaction at `at` would keep; the
    /// index is not changed.
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for index in self.keys.values() {
            index.keep(at, &mut keep);
        }
        keep
    }

    /// Applies a compaction at `at` and returns the revisions at or below `at`
    /// that reads still need; every other revision at or below `at` may be
    /// deleted from the backend.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, index| {
            index.compact(at, &mut keep);
            !index.is_empty()
        });
        // No read goes below `at` any more, so no count undoes a change at or before it.
        let done = self
            .changes
            .partition_point(|(revision, _, _)| *revision <= at);
        self.changes.drain(..done);
        self.changes_floor = self.changes_floor.max(at);
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// The key index's history as a reader sees it: for each revision, the
    /// live keys and their (modified, created, version).
    type History = BTreeMap<i64, BTreeMap<Bytes, KeyAt>>;

    /// One write of the model history: put (true) or delete (false) of a key.
    #[derive(Debug, Clone)]
    struct Write {
        key: u8,
        put: bool,
    }

    /// Replays `writes` (one per main revision, from 2) into an index and into
    /// a plain model that stores every revision's full state.
    fn replay(writes: &[Write]) -> (TreeIndex, History) {
        let mut index = TreeIndex::new();
        let mut model: History = BTreeMap::new();
        let mut live: BTreeMap<Bytes, KeyAt> = BTreeMap::new();
        model.insert(1, live.clone());
        for (offset, write) in writes.iter().enumerate() {
            let main = offset as i64 + 2;
            let key = Bytes::from(vec![b'a' + write.key]);
            if write.put {
                index.put(&key, rev(main));
                let entry = live.entry(key).or_insert(KeyAt {
                    modified: rev(main),
                    created: rev(main),
                    version: 0,
                });
                entry.modified = rev(main);
                entry.version += 1;
            } else {
                let was_live = live.remove(&key).is_some();
                assert_eq!(index.tombstone(&key, rev(main)), was_live);
            }
            model.insert(main, live.clone());
        }
        (index, model)
    }

    fn live_at(index: &TreeIndex, at: i64) -> BTreeMap<Bytes, KeyAt> {
        let mut seen = BTreeMap::new();
        index.visit_live(KeyRange::From(b"\0"), at, |key, found| {
            seen.insert(key.clone(), found);
            true
        });
        seen
    }

    fn writes() -> impl Strategy<Value = Vec<Write>> {
        prop::collection::vec(
            (0u8..4, prop::bool::weighted(0.7)).prop_map(|(key, put)| Write { key, put }),
            0..60,
        )
    }

    /// Ranges over the model's keys `a`..`d`, and the count of each in `live`.
    fn counts(live: &BTreeMap<Bytes, KeyAt>) -> Vec<(KeyRange<'static>, i64)> {
        let ranges = [
            KeyRange::From(b"\0"),
            KeyRange::From(b"b"),
            KeyRange::Between(b"b", b"d"),
            KeyRange::Between(b"a", b"c\0"),
            KeyRange::Between(b"c", b"a"),
            KeyRange::Single(b"c"),
        ];
        ranges
            .into_iter()
            .map(|range| {
                let n = live.keys().filter(|k| range.contains(k)).count() as i64;
                (range, n)
            })
            .collect()
    }

    #[test]
    fn ranked_blocks_hold_little_more_room_than_their_keys() {
        let keys = 100_000;
        let room = |ranked: &RankedKeys| ranked.blocks.iter().map(Vec::capacity).sum::<usize>();
        let mut ascending = RankedKeys::default();
        for k in 0..keys {
            ascending.insert(Bytes::from(format!("k{k:08}")));
        }
        // Only the newest block, still growing, has room to spare.
        assert!(room(&ascending) <= keys + BLOCK_KEYS_MAX + 1);
        let mut random = RankedKeys::default();
        for k in 0..keys {
            random.insert(Bytes::from(format!("k{:08}", (k * 7919) % keys)));
        }
        assert!(room(&random) <= keys * 2, "{} slots", room(&random));
    }

    proptest! {
        #[test]
        fn index_answers_every_revision_like_the_model(writes in writes()) {
            let (index, model) = replay(&writes);
            for (at, expected) in &model {
                prop_assert_eq!(&live_at(&index, *at), expected, "at {}", at);
                for (range, n) in counts(expected) {
                    prop_assert_eq!(index.count_live(range, *at), Some(n), "{:?} at {}", range, at);
                }
            }
        }

        #[test]
        fn ranked_keys_count_like_a_sorted_set(
            ops in prop::collection::vec((0u16..1500, prop::bool::weighted(0.7)), 0..4000),
            probes in prop::collection::vec((0u16..1600, 0u16..1600), 1..40),
        ) {
            let key = |k: u16| Bytes::from(format!("k{k:05}"));
            let mut ranked = RankedKeys::default();
            let mut model = std::collections::BTreeSet::new();
            for (k, insert) in ops {
                let k = key(k);
                match (insert, model.contains(&k)) {
                    (true, false) => {
                        ranked.insert(k.clone());
                        model.insert(k);
                    }
                    (false, true) => {
                        ranked.remove(&k);
                        model.remove(&k);
                    }
                    _ => {}
                }
            }
            prop_assert!(ranked.iter().eq(model.iter()));
            for (a, b) in probes {
                let (a, b) = (key(a), key(b));
                prop_assert_eq!(ranked.rank(&a), model.range(..a.clone()).count());
                let between = if a < b { model.range(a.clone()..b.clone()).count() } else { 0 };
                prop_assert_eq!(ranked.count(KeyRange::Between(&a, &b)), between);
                prop_assert_eq!(ranked.count(KeyRange::From(&a)), model.range(a.clone()..).count());
                prop_assert_eq!(ranked.count(KeyRange::Single(&a)), usize::from(model.contains(&a)));
            }
        }

        #[test]
        fn compaction_keeps_every_read_at_or_after_its_revision(
            writes in writes(),
            compact_fraction in 0.0f64..1.0,
        ) {
            let (mut index, model) = replay(&writes);
            let newest = *model.keys().last().unwrap();
            let at = 1 + ((newest - 1) as f64 * compact_fraction) as i64;
            let keep = index.compact(at);
            for (read_at, expected) in model.range(at..) {
                prop_assert_eq!(&live_at(&index, *read_at), expected, "read at {}", read_at);
                for (range, n) in counts(expected) {
                    prop_assert_eq!(index.count_live(range, *read_at), Some(n), "{:?} at {}", range, read_at);
                }
            }
            // Exactly the newest write at or below `at` of every key live at `at` survives.
            let expected_keep: HashSet<Revision> =
                model[&at].values().map(|found| found.modified).collect();
            prop_assert_eq!(keep, expected_keep);
        }

        #[test]
        fn keep_names_what_compaction_keeps_without_compacting(
            writes in writes(),
            compact_fraction in 0.0f64..1.0,
        ) {
            let (mut index, model) = replay(&writes);
            let newest = *model.keys().last().unwrap();
            let at = 1 + ((newest - 1) as f64 * compact_fraction) as i64;
            let before = index.clone();
            let kept = index.keep(at);
            prop_assert_eq!(&index, &before);
            prop_assert_eq!(kept, index.compact(at));
        }

        #[test]
        fn compacting_twice_equals_compacting_once_at_the_later_revision(
            writes in writes(),
            first in 1i64..70,
            second in 1i64..70,
        ) {
            let (first, second) = (first.min(second), first.max(second));
            let (mut twice, _) = replay(&writes);
            let (mut once, _) = replay(&writes);
            twice.compact(first);
            twice.compact(second);
            once.compact(second);
            prop_assert_eq!(twice, once);
        }
    }

    #[test]
    fn a_replayed_index_counts_like_one_built_write_by_write() {
        let writes: Vec<(u16, bool)> = (0..3000u16)
            .map(|i| ((u32::from(i) * 7919 % 1200) as u16, i % 5 != 0))
            .collect();
        let mut built = TreeIndex::new();
        let mut replayed = TreeIndex::new();
        replayed.begin_replay();
        for (offset, &(k, put)) in writes.iter().enumerate() {
            let key = format!("k{k:05}");
            for index in [&mut built, &mut replayed] {
                if put {
                    index.put(key.as_bytes(), rev(offset as i64 + 2));
                } else {
                    index.tombstone(key.as_bytes(), rev(offset as i64 + 2));
                }
            }
        }
        let newest = writes.len() as i64 + 1;
        replayed.end_replay(newest);
        assert_eq!(replayed.live, built.live);
        for range in [
            KeyRange::From(b"k"),
            KeyRange::Between(b"k00100", b"k00900"),
        ] {
            assert_eq!(
                replayed.count_live(range, newest),
                built.count_live(range, newest)
            );
        }
        assert_eq!(replayed.count_live(KeyRange::From(b"k"), newest - 1), None);
    }

    #[test]
    fn a_count_older_than_the_kept_changes_is_left_to_a_walk() {
        let mut index = TreeIndex::new();
        let total = CHANGES_MAX as i64 + 100;
        for main in 2..2 + total {
            index.put(format!("k{main:08}").as_bytes(), rev(main));
        }
        let all = KeyRange::From(b"k");
        let newest = 1 + total;
        assert_eq!(index.count_live(all, newest), Some(total));
        // 50 keys were written after `newest - 50`: the count undoes them.
        assert_eq!(index.count_live(all, newest - 50), Some(total - 50));
        // Revision 10's changes since are more than are kept.
        assert_eq!(index.count_live(all, 10), None);
    }

    #[test]
    fn tombstone_of_a_deleted_or_unknown_key_is_refused() {
        let mut index = TreeIndex::new();
        let key = Bytes::from_static(b"k");
        assert!(!index.tombstone(&key, rev(2)));
        index.put(&key, rev(2));
        assert!(index.tombstone(&key, rev(3)));
        assert!(!index.tombstone(&key, rev(4)));
    }

    #[test]
    fn compaction_removes_a_key_deleted_at_or_before_it() {
        let mut index = TreeIndex::new();
        let key = Bytes::from_static(b"k");
        index.put(&key, rev(2));
        index.tombstone(&key, rev(3));
        assert!(index.compact(2).contains(&rev(2)));
        assert!(index.contains(&key));
        assert!(index.compact(3).is_empty());
        assert!(!index.contains(&key));
    }

    #[test]
    fn the_index_does_not_keep_the_buffer_a_key_came_in() {
        let request = Bytes::from(vec![b'k'; 4096]);
        let mut index = TreeIndex::new();
        index.put(&request.slice(0..3), rev(2));
        index.restore(&request.slice(0..4), rev(1), rev(3), 1);
        assert!(request.is_unique());
    }

    #[test]
    fn inverted_range_is_empty() {
        let mut index = TreeIndex::new();
        index.put(&Bytes::from_static(b"b"), rev(2));
        let mut seen = 0;
        index.visit_live(KeyRange::Between(b"c", b"a"), 2, |_, _| {
            seen += 1;
            true
        });
        assert_eq!(seen, 0);
    }
}
