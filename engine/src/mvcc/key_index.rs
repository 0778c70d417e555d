//! The in-memory key index: for every key, the revisions that wrote it,
//! grouped into generations (a generation runs from a create to the
//! tombstone that deletes the key).
//!
//! Semantics follow etcd 3.5's `keyIndex`/`treeIndex` exactly, including how
//! compaction keeps the newest revision at or below the compaction point and
//! drops generations that ended before it.

use std::collections::{HashSet, VecDeque};

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
    /// A key never written; the index itself starts a key from [`KeyState::single`].
    #[cfg(test)]
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

/// A revision in 8 bytes, ordered as revisions are: `main` in the high 48 bits, `sub` in the
/// low 16. A revision that does not fit (a txn of more than 65,535 changes, a store past
/// revision 2^48) stays in a [`KeyState::Full`].
fn pack(revision: Revision) -> Option<u64> {
    let main = u64::try_from(revision.main)
        .ok()
        .filter(|&main| main < 1 << 48)?;
    let sub = u16::try_from(revision.sub).ok()?;
    Some(main << 16 | u64::from(sub))
}

fn unpack(packed: u64) -> Revision {
    Revision::new((packed >> 16) as i64, (packed & 0xffff) as i64)
}

/// One key's history in the index. Most keys are written once, or compacted down to one
/// revision: they take 24 bytes and no allocation of their own. Every other state is a
/// [`KeyIndex`] on the heap. The form is canonical (a history that fits `Single` is never
/// `Full`), so two indexes holding the same histories compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyState {
    /// A live key whose only generation holds one revision: the [`KeyIndex`]
    /// `{ modified, generations: [{ version, created, revisions: [modified] }] }`.
    Single {
        version: u32,
        modified: u64,
        created: u64,
    },
    Full {
        /// `index.is_live()`, kept beside the pointer: counting a block's live keys reads
        /// every state, and should not follow every pointer.
        live: bool,
        index: Box<KeyIndex>,
    },
}

impl KeyState {
    /// A key whose newest record is `modified`, created at `created`, `version` writes old.
    fn single(modified: Revision, created: Revision, version: i64) -> KeyState {
        KeyState::packed(modified, created, version).unwrap_or_else(|| KeyState::Full {
            live: true,
            index: Box::new(KeyIndex {
                modified,
                generations: vec![Generation {
                    version,
                    created,
                    revisions: vec![modified],
                }],
            }),
        })
    }

    /// [`KeyState::Single`], if the revisions and version fit it.
    fn packed(modified: Revision, created: Revision, version: i64) -> Option<KeyState> {
        Some(KeyState::Single {
            version: u32::try_from(version).ok()?,
            modified: pack(modified)?,
            created: pack(created)?,
        })
    }

    /// The canonical form of `index`.
    fn settle(index: Box<KeyIndex>) -> KeyState {
        if let [generation] = index.generations.as_slice() {
            if generation.revisions.as_slice() == [index.modified] {
                if let Some(single) =
                    KeyState::packed(index.modified, generation.created, generation.version)
                {
                    return single;
                }
            }
        }
        KeyState::Full {
            live: index.is_live(),
            index,
        }
    }

    fn is_live(&self) -> bool {
        match self {
            KeyState::Single { .. } => true,
            KeyState::Full { live, .. } => *live,
        }
    }

    fn get(&self, at: i64) -> Option<KeyAt> {
        match *self {
            KeyState::Single {
                version,
                modified,
                created,
            } => {
                let modified = unpack(modified);
                (modified.main <= at).then(|| KeyAt {
                    modified,
                    created: unpack(created),
                    version: i64::from(version),
                })
            }
            KeyState::Full { ref index, .. } => index.get(at),
        }
    }

    fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        match self {
            // One revision, no tombstone: kept when at or below `at`.
            KeyState::Single { modified, .. } => {
                let modified = unpack(*modified);
                if modified.main <= at {
                    keep.insert(modified);
                }
            }
            KeyState::Full { index, .. } => index.keep(at, keep),
        }
    }

    /// Compacts at `at`; false when nothing is left of the key.
    fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) -> bool {
        if let KeyState::Single { .. } = self {
            // A compaction keeps a lone live revision whatever `at` is.
            self.keep(at, keep);
            return true;
        }
        self.update(|index| {
            index.compact(at, keep);
            !index.is_empty()
        })
    }

    /// Changes the key's history through its [`KeyIndex`] form, and settles it again.
    fn update<R>(&mut self, change: impl FnOnce(&mut KeyIndex) -> R) -> R {
        let placeholder = KeyState::Single {
            version: 0,
            modified: 0,
            created: 0,
        };
        let mut index = match std::mem::replace(self, placeholder) {
            KeyState::Single {
                version,
                modified,
                created,
            } => Box::new(KeyIndex {
                modified: unpack(modified),
                generations: vec![Generation {
                    version: i64::from(version),
                    created: unpack(created),
                    revisions: vec![unpack(modified)],
                }],
            }),
            KeyState::Full { index, .. } => index,
        };
        let result = change(&mut index);
        *self = KeyState::settle(index);
        result
    }
}

/// A block holds at most this many keys, and more than one key only while their bytes stay
/// within [`BLOCK_BYTES_MAX`]; a fuller block splits in two. Small enough that an insert's
/// shift inside its block stays a few KiB.
const BLOCK_KEYS_MAX: usize = 128;
const BLOCK_BYTES_MAX: usize = 8 << 10;
/// The smallest growth of a block's arrays.
const BLOCK_GROWTH_MIN: usize = 8;
/// Liveness changes kept for counts at past revisions: a count undoes at most this many, and
/// one before the oldest kept walks the keys instead (a LIST's pages are read at a revision a
/// moment old; etcd walks for every count).
const CHANGES_MAX: usize = 1 << 16;

/// A run of neighbouring keys and their histories. The keys' bytes sit back to back in one
/// allocation, so a key costs its length, 4 bytes of offset and its [`KeyState`]:
///
/// ```text
/// bytes:  | key 0 | key 1 |   key 2   | ...
/// ends:           ^ends[0]^ends[1]    ^ends[2]
/// states: | state 0 | state 1 | state 2 | ...
/// ```
#[derive(Debug, Clone, Default)]
struct Block {
    bytes: Vec<u8>,
    ends: Vec<u32>,
    states: Vec<KeyState>,
    /// How many of `states` are live.
    live: usize,
}

/// Makes room for `additional` more items in `items`, growing by a quarter rather than
/// doubling: a block's arrays are most of the index, and doubling would leave up to half of
/// them empty.
fn reserve<T>(items: &mut Vec<T>, additional: usize) {
    if items.capacity() - items.len() < additional {
        items.reserve_exact(additional.max(items.len() / 4).max(BLOCK_GROWTH_MIN));
    }
}

impl Block {
    fn len(&self) -> usize {
        self.states.len()
    }

    fn start(&self, i: usize) -> usize {
        i.checked_sub(1)
            .map_or(0, |previous| self.ends[previous] as usize)
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.bytes[self.start(i)..self.ends[i] as usize]
    }

    fn last_key(&self) -> &[u8] {
        self.key(self.len() - 1)
    }

    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }

    fn live_below(&self, i: usize) -> usize {
        self.states[..i]
            .iter()
            .filter(|state| state.is_live())
            .count()
    }

    fn insert(&mut self, i: usize, key: &[u8], state: KeyState) {
        let start = self.start(i);
        // A block of more than one key splits past BLOCK_BYTES_MAX, and a key is far smaller
        // than 4 GiB (a request is at most --max-request-bytes).
        u32::try_from(self.bytes.len() + key.len()).expect("a block's keys fit u32 offsets");
        let added = key.len() as u32;
        reserve(&mut self.bytes, key.len());
        self.bytes.splice(start..start, key.iter().copied());
        for end in &mut self.ends[i..] {
            *end += added;
        }
        reserve(&mut self.ends, 1);
        self.ends.insert(i, start as u32 + added);
        if state.is_live() {
            self.live += 1;
        }
        reserve(&mut self.states, 1);
        self.states.insert(i, state);
    }

    fn is_over(&self) -> bool {
        self.len() > BLOCK_KEYS_MAX || (self.len() > 1 && self.bytes.len() > BLOCK_BYTES_MAX)
    }

    /// Splits at the middle of the keys' bytes: the keys from there on move to a new block.
    fn split(&mut self) -> Block {
        let half = (self.bytes.len() / 2) as u32;
        let at = self
            .ends
            .partition_point(|&end| end <= half)
            .clamp(1, self.len() - 1);
        let byte_at = self.start(at);
        let upper = Block {
            bytes: self.bytes[byte_at..].to_vec(),
            ends: self.ends[at..]
                .iter()
                .map(|&end| end - byte_at as u32)
                .collect(),
            states: self.states.split_off(at),
            live: 0,
        };
        let upper = Block {
            live: upper.live_below(upper.len()),
            ..upper
        };
        self.bytes.truncate(byte_at);
        self.ends.truncate(at);
        self.live -= upper.live;
        // After an ascending load (the usual one) no key lands in a lower half again.
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.states.shrink_to_fit();
        upper
    }

    /// Keeps the keys whose state `keep` leaves non-empty, in order.
    fn retain(&mut self, mut keep: impl FnMut(&mut KeyState) -> bool) {
        let (mut write, mut byte_write, mut start) = (0, 0, 0);
        for read in 0..self.len() {
            let end = self.ends[read] as usize;
            if keep(&mut self.states[read]) {
                if write != read {
                    self.bytes.copy_within(start..end, byte_write);
                    self.states.swap(write, read);
                }
                byte_write += end - start;
                self.ends[write] = byte_write as u32;
                write += 1;
            }
            start = end;
        }
        self.bytes.truncate(byte_write);
        self.ends.truncate(write);
        self.states.truncate(write);
        self.live = self.live_below(write);
        if self.states.capacity() > 2 * write {
            self.bytes.shrink_to_fit();
            self.ends.shrink_to_fit();
            self.states.shrink_to_fit();
        }
    }
}

/// The first 8 bytes of `key`, zero-padded, as a big-endian number: keys whose prefixes differ
/// are ordered as their prefixes are; equal prefixes say nothing.
fn key_prefix(key: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    let n = key.len().min(8);
    prefix[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(prefix)
}

/// All keys' histories, ordered by key, and what counts a range without walking it.
///
/// The keys lie in sorted [`Block`]s; a key is found by a binary search over the blocks'
/// first keys, then one inside its block. A Fenwick tree over the blocks' live keys tells how
/// many live keys lie below any key in O(log n), so a range's count is two such ranks and a
/// page of a paginated LIST is answered without walking the rest of the range.
#[derive(Debug, Clone, Default)]
pub struct TreeIndex {
    /// Never an empty block.
    blocks: Vec<Block>,
    /// Each block's first key's [`key_prefix`]: the search for a key's block reads this array
    /// and only follows a block's pointer on a tie. A restart meets keys in revision order, no
    /// key order, and a probe per block allocation was most of its time.
    firsts: Vec<u64>,
    /// Fenwick tree (1-based) over `blocks[i].live`; stale while replaying.
    live_sizes: Vec<usize>,
    /// Keys live at the newest revision.
    live: usize,
    /// Keys that came to life (true) or died (false), by main revision, oldest first: a count
    /// at a past revision undoes those after it.
    changes: VecDeque<(i64, Box<[u8]>, bool)>,
    /// `changes` holds every change after this revision.
    changes_floor: i64,
    /// A restart is replaying records: the counts are built once at its end.
    replaying: bool,
}

/// Equal when they hold the same histories and counts, however the blocks fell.
impl PartialEq for TreeIndex {
    fn eq(&self, other: &Self) -> bool {
        self.live == other.live
            && self.changes == other.changes
            && self.changes_floor == other.changes_floor
            && self.replaying == other.replaying
            && self.entries().eq(other.entries())
    }
}

impl Eq for TreeIndex {}

impl TreeIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> impl Iterator<Item = (&[u8], &KeyState)> {
        self.blocks
            .iter()
            .flat_map(|block| (0..block.len()).map(move |i| (block.key(i), &block.states[i])))
    }

    /// Where `key` is, or would be inserted: its block, and its place there.
    fn locate(&self, key: &[u8]) -> (usize, Result<usize, usize>) {
        let Some(last) = self.blocks.last() else {
            return (0, Err(0));
        };
        // Appends in key order are common (a new resource's objects): past the last key is the end.
        if last.last_key() < key {
            return (self.blocks.len() - 1, Err(last.len()));
        }
        // The last block whose first key is not above `key` (the first block for a key below all).
        let prefix = key_prefix(key);
        let (mut low, mut high) = (0, self.blocks.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let first_not_above = match self.firsts[mid].cmp(&prefix) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => self.blocks[mid].key(0) <= key,
            };
            if first_not_above {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        let b = low.saturating_sub(1);
        (b, self.blocks[b].search(key))
    }

    /// Adds a key that is not indexed at `i` of block `b`, as [`TreeIndex::locate`] placed it.
    fn insert(&mut self, b: usize, i: usize, key: &[u8], state: KeyState) {
        let live = state.is_live();
        if live {
            self.live += 1;
        }
        if self.blocks.is_empty() {
            self.blocks.push(Block::default());
            self.firsts.push(0);
        }
        if i == 0 {
            self.firsts[b] = key_prefix(key);
        }
        let block = &mut self.blocks[b];
        block.insert(i, key, state);
        if block.is_over() {
            let upper = block.split();
            self.firsts.insert(b + 1, key_prefix(upper.key(0)));
            self.blocks.insert(b + 1, upper);
            self.rebuild_counts();
        } else if live {
            self.count(b, true);
        }
    }

    fn set_live(&mut self, b: usize, alive: bool) {
        if alive {
            self.blocks[b].live += 1;
            self.live += 1;
        } else {
            self.blocks[b].live -= 1;
            self.live -= 1;
        }
        self.count(b, alive);
    }

    /// Counts a key of block `b` coming to life or dying in the Fenwick tree.
    fn count(&mut self, b: usize, alive: bool) {
        if self.replaying {
            return;
        }
        let mut i = b + 1;
        while i < self.live_sizes.len() {
            if alive {
                self.live_sizes[i] += 1;
            } else {
                self.live_sizes[i] -= 1;
            }
            i += i & i.wrapping_neg();
        }
    }

    fn rebuild_counts(&mut self) {
        if self.replaying {
            return;
        }
        let n = self.blocks.len();
        self.live_sizes.clear();
        self.live_sizes.resize(n + 1, 0);
        for (b, block) in self.blocks.iter().enumerate() {
            let i = b + 1;
            self.live_sizes[i] += block.live;
            let parent = i + (i & i.wrapping_neg());
            if parent <= n {
                self.live_sizes[parent] += self.live_sizes[i];
            }
        }
    }

    pub fn put(&mut self, key: &[u8], revision: Revision) {
        match self.locate(key) {
            (b, Ok(i)) => self.put_at(b, i, key, revision),
            (b, Err(i)) => {
                self.insert(b, i, key, KeyState::single(revision, revision, 1));
                self.changed(key, revision, true);
            }
        }
    }

    /// Records the key's deletion; `false` if the key is not live.
    pub fn tombstone(&mut self, key: &[u8], revision: Revision) -> bool {
        match self.locate(key) {
            (b, Ok(i)) => self.tombstone_at(b, i, key, revision),
            _ => false,
        }
    }

    /// A put of `key`, found at `i` of block `b`.
    fn put_at(&mut self, b: usize, i: usize, key: &[u8], revision: Revision) {
        let state = &mut self.blocks[b].states[i];
        let was_live = state.is_live();
        state.update(|index| index.put(revision));
        if !was_live {
            self.set_live(b, true);
            self.changed(key, revision, true);
        }
    }

    /// A tombstone of `key`, found at `i` of block `b`; `false` if the key is not live.
    fn tombstone_at(&mut self, b: usize, i: usize, key: &[u8], revision: Revision) -> bool {
        let state = &mut self.blocks[b].states[i];
        if !state.is_live() {
            return false;
        }
        let ended = state.update(|index| index.tombstone(revision));
        debug_assert!(ended, "a live key's tombstone ends its generation");
        self.set_live(b, false);
        self.changed(key, revision, false);
        true
    }

    /// Starts a replay of a store's records (a restart): the counts are left alone until
    /// [`TreeIndex::end_replay`] builds them in one pass.
    pub fn begin_replay(&mut self) {
        self.replaying = true;
    }

    /// Ends a replay whose newest record was at `revision`: counts at it and later come from
    /// the index, older ones walk the keys.
    pub fn end_replay(&mut self, revision: i64) {
        self.replaying = false;
        self.rebuild_counts();
        self.changes.clear();
        self.changes_floor = revision;
    }

    fn changed(&mut self, key: &[u8], revision: Revision, alive: bool) {
        if self.replaying {
            return;
        }
        self.changes.push_back((revision.main, key.into(), alive));
        if self.changes.len() > CHANGES_MAX {
            if let Some((dropped, _, _)) = self.changes.pop_front() {
                self.changes_floor = self.changes_floor.max(dropped);
            }
        }
    }

    /// How many keys live at the newest revision are below `key`.
    fn rank(&self, key: &[u8]) -> usize {
        let (b, found) = self.locate(key);
        let Some(block) = self.blocks.get(b) else {
            return 0;
        };
        let mut below = block.live_below(found.unwrap_or_else(|i| i));
        let mut i = b;
        while i > 0 {
            below += self.live_sizes[i];
            i &= i - 1;
        }
        below
    }

    /// How many keys of `range` are live at the newest revision.
    fn count_newest(&self, range: KeyRange<'_>) -> usize {
        match range {
            KeyRange::Single(key) => match self.locate(key) {
                (b, Ok(i)) => usize::from(self.blocks[b].states[i].is_live()),
                _ => 0,
            },
            KeyRange::From(key) => self.live - self.rank(key),
            KeyRange::Between(key, end) if key >= end => 0,
            KeyRange::Between(key, end) => self.rank(end) - self.rank(key),
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
        let mut count = self.count_newest(range) as i64;
        for (_, key, alive) in self.changes.range(since..) {
            if range.contains(key) {
                count += if *alive { -1 } else { 1 };
            }
        }
        Some(count)
    }

    /// Rebuilds one record a restart read (records come oldest first), as etcd's restore
    /// does: the first record met of a key seeds it, its creation and version taken from the
    /// record itself because compaction may have removed the earlier revisions; later ones put
    /// or delete it. A tombstone of a key not met yet has nothing left to end.
    pub fn restore(
        &mut self,
        key: &[u8],
        revision: Revision,
        tombstone: bool,
        created: Revision,
        version: i64,
    ) {
        match self.locate(key) {
            (b, Ok(i)) if tombstone => {
                self.tombstone_at(b, i, key, revision);
            }
            (b, Ok(i)) => self.put_at(b, i, key, revision),
            (_, Err(_)) if tombstone => {}
            (b, Err(i)) => {
                self.insert(b, i, key, KeyState::single(revision, created, version));
                self.changed(key, revision, true);
            }
        }
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        match self.locate(key) {
            (b, Ok(i)) => self.blocks[b].states[i].get(at),
            _ => None,
        }
    }

    /// Calls `visit` on each key of `range` live at `at`, in key order, until it returns false.
    pub fn visit_live(
        &self,
        range: KeyRange<'_>,
        at: i64,
        mut visit: impl FnMut(&[u8], KeyAt) -> bool,
    ) {
        let (from, end) = match range {
            KeyRange::Single(key) => {
                if let Some(found) = self.get(key, at) {
                    visit(key, found);
                }
                return;
            }
            KeyRange::From(key) => (key, None),
            KeyRange::Between(key, end) if key >= end => return,
            KeyRange::Between(key, end) => (key, Some(end)),
        };
        let (first_block, found) = self.locate(from);
        let mut i = found.unwrap_or_else(|i| i);
        for block in self.blocks.iter().skip(first_block) {
            for (offset, state) in block.states[i..].iter().enumerate() {
                let key = block.key(i + offset);
                if end.is_some_and(|end| key >= end) {
                    return;
                }
                if let Some(found) = state.get(at) {
                    if !visit(key, found) {
                        return;
                    }
                }
            }
            i = 0;
        }
    }

    /// The revisions at or below `at` a compaction at `at` would keep; the
    /// index is not changed.
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for (_, state) in self.entries() {
            state.keep(at, &mut keep);
        }
        keep
    }

    /// Applies a compaction at `at` and returns the revisions at or below `at`
    /// that reads still need; every other revision at or below `at` may be
    /// deleted from the backend.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for block in &mut self.blocks {
            block.retain(|state| state.compact(at, &mut keep));
        }
        self.blocks.retain(|block| block.len() > 0);
        self.firsts = self
            .blocks
            .iter()
            .map(|block| key_prefix(block.key(0)))
            .collect();
        self.live = self.blocks.iter().map(|block| block.live).sum();
        self.rebuild_counts();
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
    use bytes::Bytes;
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
            seen.insert(Bytes::copy_from_slice(key), found);
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

    /// Bytes the index's blocks hold room for, per key: offsets, states and key bytes.
    fn room_per_key(index: &TreeIndex) -> f64 {
        let room: usize = index
            .blocks
            .iter()
            .map(|block| {
                block.bytes.capacity()
                    + block.ends.capacity() * size_of::<u32>()
                    + block.states.capacity() * size_of::<KeyState>()
            })
            .sum();
        room as f64 / index.entries().count() as f64
    }

    #[test]
    fn a_key_written_once_costs_its_bytes_an_offset_and_a_state() {
        assert_eq!(size_of::<KeyState>(), 24);
        let keys = 100_000;
        // 16-byte keys, as the scale checks load them; the least a key can cost is 16 + 4 + 24.
        let key = |k: usize| format!("k{k:015}");
        let mut ascending = TreeIndex::new();
        for k in 0..keys {
            ascending.put(key(k).as_bytes(), rev(k as i64 + 2));
        }
        assert!(
            room_per_key(&ascending) < 45.0,
            "{}",
            room_per_key(&ascending)
        );
        let mut random = TreeIndex::new();
        for k in 0..keys {
            random.put(key(k * 7919 % keys).as_bytes(), rev(k as i64 + 2));
        }
        assert!(room_per_key(&random) < 60.0, "{}", room_per_key(&random));
        // An update moves a key's history to the heap; compaction brings it back.
        for k in 0..keys {
            random.put(key(k).as_bytes(), rev((keys + k) as i64 + 2));
        }
        let full = |index: &TreeIndex| {
            index
                .entries()
                .filter(|(_, state)| matches!(state, KeyState::Full { .. }))
                .count()
        };
        assert_eq!(full(&random), keys);
        random.compact(2 * keys as i64 + 1);
        assert_eq!(full(&random), 0);
    }

    /// One step of [`the_blocks_answer_like_one_key_index_per_key`]'s history.
    #[derive(Debug, Clone)]
    enum Step {
        Put(u16),
        Delete(u16),
        /// A txn deleting a run of keys: each change gets its own sub-revision, from 0 or from
        /// past what a packed revision holds.
        DeleteRun(u16, u16, bool),
        Compact,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                6 => (0u16..2000).prop_map(Step::Put),
                2 => (0u16..2000).prop_map(Step::Delete),
                1 => (0u16..2000, 1u16..200, prop::bool::weighted(0.2))
                    .prop_map(|(k, n, far)| Step::DeleteRun(k, n, far)),
                1 => Just(Step::Compact),
            ],
            0..3000,
        )
    }

    /// Keys of varying length, so blocks split on their bytes as well as their count; half of
    /// them share their first 8 bytes, so the search over blocks' first keys meets ties.
    fn step_key(k: u16) -> Vec<u8> {
        let mut key = if k % 2 == 0 {
            format!("/registry/k{k:05}").into_bytes()
        } else {
            format!("k{k:05}").into_bytes()
        };
        key.resize(key.len() + usize::from(k % 7) * 30, b'.');
        key
    }

    proptest! {
        /// The blocks against the plainest layout: one [`KeyIndex`] per key in a BTreeMap.
        #[test]
        fn the_blocks_answer_like_one_key_index_per_key(
            steps in steps(),
            probes in prop::collection::vec((0u16..2100, 0u16..2100), 1..30),
        ) {
            let mut index = TreeIndex::new();
            let mut model: BTreeMap<Vec<u8>, KeyIndex> = BTreeMap::new();
            let mut main = 1i64;
            let mut compacted = 0;
            for step in steps {
                match step {
                    Step::Put(k) => {
                        main += 1;
                        let key = step_key(k);
                        index.put(&key, rev(main));
                        model.entry(key).or_insert_with(KeyIndex::new).put(rev(main));
                    }
                    Step::Delete(k) => {
                        main += 1;
                        let key = step_key(k);
                        let ended = model.get_mut(&key).is_some_and(|i| i.tombstone(rev(main)));
                        prop_assert_eq!(index.tombstone(&key, rev(main)), ended);
                    }
                    Step::DeleteRun(k, n, far) => {
                        main += 1;
                        let mut sub = if far { 65_500 } else { 0 };
                        for k in k..k.saturating_add(n) {
                            let key = step_key(k);
                            let ended = model.get_mut(&key).is_some_and(|i| i.tombstone(Revision::new(main, sub)));
                            prop_assert_eq!(index.tombstone(&key, Revision::new(main, sub)), ended);
                            sub += i64::from(ended);
                        }
                    }
                    Step::Compact => {
                        compacted = (compacted + main) / 2;
                        let mut keep = HashSet::new();
                        model.retain(|_, i| {
                            i.compact(compacted, &mut keep);
                            !i.is_empty()
                        });
                        prop_assert_eq!(index.compact(compacted), keep);
                    }
                }
            }
            prop_assert!(index.entries().map(|(key, _)| key).eq(model.keys().map(Vec::as_slice)));
            let firsts: Vec<u64> = index.blocks.iter().map(|block| key_prefix(block.key(0))).collect();
            prop_assert_eq!(&index.firsts, &firsts);
            for (key, state) in index.entries() {
                prop_assert_eq!(state, &KeyState::settle(Box::new(model[key].clone())));
            }
            let live: BTreeMap<&[u8], bool> =
                model.iter().map(|(key, i)| (key.as_slice(), i.is_live())).collect();
            for (a, b) in probes {
                let at = compacted + i64::from(a) % (main - compacted + 1);
                let (a, b) = (step_key(a), step_key(b));
                let mut keep = HashSet::new();
                model.values().for_each(|i| i.keep(at, &mut keep));
                prop_assert_eq!(index.keep(at), keep);
                prop_assert_eq!(index.get(&a, at), model.get(&a).and_then(|i| i.get(at)));
                let mut seen = Vec::new();
                index.visit_live(KeyRange::Between(&a, &b), at, |key, found| {
                    seen.push((key.to_vec(), found));
                    seen.len() < 50
                });
                let expected: Vec<(Vec<u8>, KeyAt)> = if a < b {
                    model
                        .range(a.clone()..b.clone())
                        .filter_map(|(key, i)| Some((key.clone(), i.get(at)?)))
                        .take(50)
                        .collect()
                } else {
                    Vec::new()
                };
                prop_assert_eq!(seen, expected);
                let count = |range: KeyRange<'_>| {
                    live.iter().filter(|(key, live)| **live && range.contains(key)).count()
                };
                for range in [KeyRange::Between(&a, &b), KeyRange::From(&a), KeyRange::Single(&a)] {
                    prop_assert_eq!(index.count_newest(range), count(range), "{:?}", range);
                }
            }
        }
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
        assert!(replayed.entries().eq(built.entries()));
        assert_eq!(replayed.live_sizes, built.live_sizes);
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
    fn a_restored_key_too_big_to_pack_reads_the_same() {
        let mut index = TreeIndex::new();
        let far = Revision::new(1 << 50, 3);
        let big_sub = Revision::new(9, 70_000);
        index.restore(b"a", far, false, rev(2), 1 << 40);
        index.restore(b"b", big_sub, false, big_sub, 1);
        index.restore(b"c", rev(9), false, rev(4), 2);
        let found = |key: &[u8], at| index.get(key, at);
        let a = KeyAt {
            modified: far,
            created: rev(2),
            version: 1 << 40,
        };
        assert_eq!(found(b"a", far.main), Some(a));
        assert_eq!(found(b"a", far.main - 1), None);
        let b = KeyAt {
            modified: big_sub,
            created: big_sub,
            version: 1,
        };
        assert_eq!(found(b"b", 9), Some(b));
        let c = KeyAt {
            modified: rev(9),
            created: rev(4),
            version: 2,
        };
        assert_eq!(found(b"c", 9), Some(c));
        let kinds: Vec<bool> = index
            .entries()
            .map(|(_, state)| matches!(state, KeyState::Single { .. }))
            .collect();
        assert_eq!(kinds, [false, false, true]);
        assert_eq!(index.count_live(KeyRange::From(b"a"), far.main), Some(3));
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
        assert!(index.entries().any(|(indexed, _)| indexed == key));
        assert!(index.compact(3).is_empty());
        assert_eq!(index.entries().count(), 0);
    }

    #[test]
    fn the_index_does_not_keep_the_buffer_a_key_came_in() {
        let request = Bytes::from(vec![b'k'; 4096]);
        let mut index = TreeIndex::new();
        index.put(&request.slice(0..3), rev(2));
        index.restore(&request.slice(0..4), rev(3), false, rev(1), 1);
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
