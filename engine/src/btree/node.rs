//! The writer's in-memory copies of the nodes it changes. A write transaction copies each page
//! it touches into a [`Node`] (freeing the page for later reuse), edits nodes in memory, and at
//! commit `spill`s every changed node into fresh pages, splitting and merging as it goes.

use std::ops::{Bound, Range};
use std::sync::Arc;

use super::alloc::{Allocator, Freed};
use super::page::{
    self, branch_entry_bytes, leaf_entry_bytes, leaf_entry_sizes, overflow_pages, Kind, PageRef,
    StoredValue, HEADER_BYTES,
};
use super::read::{Cursor, Pages};
use super::Error;

pub(crate) enum Child {
    Clean(u64),
    Dirty(Box<Node>),
}

pub(crate) enum Value {
    Bytes(Vec<u8>),
    /// An inline value still inside the copy of the page it was read from: copying a page once
    /// is much cheaper than one allocation per value.
    InPage {
        page: Arc<[u8]>,
        at: u16,
        len: u16,
    },
    Overflow {
        page: u64,
        len_bytes: u64,
    },
}

enum Body {
    Leaf(Vec<Value>),
    /// `children[i]` holds keys in `[keys[i], keys[i + 1])`; `keys[0]` is not consulted.
    Branch(Vec<Child>),
}

pub(crate) struct Node {
    keys: Vec<Vec<u8>>,
    body: Body,
    /// Encoded size estimate (exact for leaves, an upper bound for branches).
    bytes: usize,
    /// Every insert so far landed after the last key: pack pages full when spilling, which
    /// keeps append-only buckets (MVCC revisions) near 100% fill instead of 50%.
    appended_only: bool,
    /// Lost entries in this transaction: a candidate for merging with a neighbour.
    shrunk: bool,
}

/// A node split in two: the right half and the lowest key it may hold.
type Split = (Vec<u8>, Box<Node>);

/// What tree edits need besides the tree: clean pages to copy and a list of pages they free.
pub(crate) struct Ctx<'a> {
    pub(crate) pages: Pages<'a>,
    pub(crate) freed: &'a mut Vec<Freed>,
}

/// What spilling needs: pages to allocate and buffers to write at commit.
pub(crate) struct Out<'a> {
    pub(crate) alloc: &'a mut Allocator,
    pub(crate) writes: Vec<(u64, Vec<u8>)>,
    pub(crate) txn_id: u64,
}

/// In-memory nodes are split once they exceed this many pages, bounding insert cost for big
/// transactions; spill then cuts them to exact page boundaries.
const NODE_PAGES_MAX: usize = 4;

pub(crate) fn inline_value_bytes_max(page_size: usize) -> usize {
    page_size / 4
}

pub(crate) fn key_bytes_max(page_size: usize) -> usize {
    page_size / 4
}

impl Value {
    /// The bytes of a value held in memory (not in an overflow run).
    fn in_memory(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            Value::InPage { page, at, len } => {
                Some(&page[*at as usize..*at as usize + *len as usize])
            }
            Value::Overflow { .. } => None,
        }
    }
}

fn value_entry_bytes(value: &Value, page_size: usize) -> usize {
    match value.in_memory() {
        Some(b) if b.len() <= inline_value_bytes_max(page_size) => b.len(),
        _ => 8,
    }
}

fn child_index(keys: &[Vec<u8>], key: &[u8]) -> usize {
    keys[1..].partition_point(|k| k.as_slice() <= key)
}

impl Node {
    fn empty_leaf() -> Node {
        Node {
            keys: Vec::new(),
            body: Body::Leaf(Vec::new()),
            bytes: HEADER_BYTES,
            appended_only: true,
            shrunk: false,
        }
    }

    fn branch(keys: Vec<Vec<u8>>, children: Vec<Child>) -> Node {
        debug_assert_eq!(keys.len(), children.len());
        let bytes = HEADER_BYTES
            + keys
                .iter()
                .map(|k| branch_entry_bytes(k.len()))
                .sum::<usize>();
        Node {
            keys,
            body: Body::Branch(children),
            bytes,
            appended_only: false,
            shrunk: false,
        }
    }

    fn decode(page: &PageRef<'_>) -> Result<Node, Error> {
        let n = page.count();
        if n == 0 {
            return Err(page.corrupt(6, "empty page inside a tree"));
        }
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            keys.push(page.key(i)?.to_vec());
        }
        let (body, bytes) = match page.kind() {
            Kind::Leaf => {
                let mut values = Vec::with_capacity(n);
                let mut bytes = HEADER_BYTES;
                let mut copy: Option<Arc<[u8]>> = None;
                for (i, key) in keys.iter().enumerate() {
                    let value = match page.value(i)? {
                        StoredValue::Inline(b) => {
                            let copy = copy.get_or_insert_with(|| Arc::from(page.bytes));
                            let at = b.as_ptr() as usize - page.bytes.as_ptr() as usize;
                            Value::InPage {
                                page: copy.clone(),
                                at: at as u16,
                                len: b.len() as u16,
                            }
                        }
                        StoredValue::Overflow { page, len_bytes } => {
                            Value::Overflow { page, len_bytes }
                        }
                    };
                    bytes +=
                        leaf_entry_bytes(key.len(), value_entry_bytes(&value, page.bytes.len()));
                    values.push(value);
                }
                (Body::Leaf(values), bytes)
            }
            _ => {
                let mut children = Vec::with_capacity(n);
                for i in 0..n {
                    children.push(Child::Clean(page.child(i)?));
                }
                let bytes = HEADER_BYTES
                    + keys
                        .iter()
                        .map(|k| branch_entry_bytes(k.len()))
                        .sum::<usize>();
                (Body::Branch(children), bytes)
            }
        };
        Ok(Node {
            keys,
            body,
            bytes,
            appended_only: true,
            shrunk: false,
        })
    }

    fn recount_bytes(&mut self, page_size: usize) {
        self.bytes = HEADER_BYTES
            + match &self.body {
                Body::Leaf(values) => self
                    .keys
                    .iter()
                    .zip(values)
                    .map(|(k, v)| leaf_entry_bytes(k.len(), value_entry_bytes(v, page_size)))
                    .sum::<usize>(),
                Body::Branch(_) => self.keys.iter().map(|k| branch_entry_bytes(k.len())).sum(),
            };
    }

    /// Splits an oversized in-memory node in two; returns the right half and its lower key.
    fn split_if_large(&mut self, page_size: usize) -> Option<Split> {
        if self.bytes <= NODE_PAGES_MAX * page_size || self.keys.len() < 2 {
            return None;
        }
        let mid = self.keys.len() / 2;
        let keys = self.keys.split_off(mid);
        let body = match &mut self.body {
            Body::Leaf(values) => Body::Leaf(values.split_off(mid)),
            Body::Branch(children) => Body::Branch(children.split_off(mid)),
        };
        let separator = keys[0].clone();
        let mut right = Node {
            keys,
            body,
            bytes: 0,
            appended_only: self.appended_only,
            shrunk: false,
        };
        right.recount_bytes(page_size);
        self.recount_bytes(page_size);
        Some((separator, Box::new(right)))
    }
}

impl Ctx<'_> {
    fn page_size(&self) -> usize {
        self.pages.page_size
    }

    /// Turns a clean child into an in-memory copy; the page it came from is freed by this
    /// transaction. Always checks the crc: corruption must never be copied into new pages.
    fn make_dirty<'c>(&mut self, child: &'c mut Child) -> Result<&'c mut Node, Error> {
        if let Child::Clean(id) = *child {
            let page = self.pages.node(id)?;
            if !page::checksum_ok(page.bytes) {
                return Err(page.corrupt(0, page::checksum_failure(page.bytes)));
            }
            let node = Node::decode(&page)?;
            self.freed.push(Freed {
                page: id,
                written_by: page.txn_id(),
            });
            *child = Child::Dirty(Box::new(node));
        }
        match child {
            Child::Dirty(node) => Ok(node),
            Child::Clean(_) => unreachable!("made dirty above"),
        }
    }

    fn free_value(&mut self, value: &Value) -> Result<(), Error> {
        if let Value::Overflow { page, len_bytes } = *value {
            let run = self.pages.overflow_run(page, len_bytes)?;
            let written_by = run.txn_id();
            for id in page..page + overflow_pages(len_bytes, self.page_size()) {
                self.freed.push(Freed {
                    page: id,
                    written_by,
                });
            }
        }
        Ok(())
    }

    /// Frees a whole subtree without copying it; returns how many entries it held.
    fn free_subtree(&mut self, child: Child) -> Result<u64, Error> {
        match child {
            Child::Clean(id) => {
                let page = self.pages.node(id)?;
                if !page::checksum_ok(page.bytes) {
                    return Err(page.corrupt(0, page::checksum_failure(page.bytes)));
                }
                let mut entries = 0;
                for i in 0..page.count() {
                    if page.kind() == Kind::Leaf {
                        if let StoredValue::Overflow { page, len_bytes } = page.value(i)? {
                            self.free_value(&Value::Overflow { page, len_bytes })?;
                        }
                        entries += 1;
                    } else {
                        entries += self.free_subtree(Child::Clean(page.child(i)?))?;
                    }
                }
                self.freed.push(Freed {
                    page: id,
                    written_by: page.txn_id(),
                });
                Ok(entries)
            }
            Child::Dirty(node) => match node.body {
                Body::Leaf(values) => {
                    for value in &values {
                        self.free_value(value)?;
                    }
                    Ok(values.len() as u64)
                }
                Body::Branch(children) => children.into_iter().map(|c| self.free_subtree(c)).sum(),
            },
        }
    }
}

/// A range of keys by its two bounds.
pub(crate) struct KeyRange<'k> {
    pub(crate) start: Bound<&'k [u8]>,
    pub(crate) end: Bound<&'k [u8]>,
}

impl KeyRange<'_> {
    fn after_start(&self, key: &[u8]) -> bool {
        match self.start {
            Bound::Unbounded => true,
            Bound::Included(s) => key >= s,
            Bound::Excluded(s) => key > s,
        }
    }
    fn before_end(&self, key: &[u8]) -> bool {
        match self.end {
            Bound::Unbounded => true,
            Bound::Included(e) => key <= e,
            Bound::Excluded(e) => key < e,
        }
    }
    pub(crate) fn is_empty(&self) -> bool {
        match (self.start, self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => {
                s >= e
            }
            _ => false,
        }
    }
    /// Whether every key of `[lo, hi)` lies in the range (`None` = unbounded).
    fn covers(&self, lo: Option<&[u8]>, hi: Option<&[u8]>) -> bool {
        let start_ok = match (self.start, lo) {
            (Bound::Unbounded, _) => true,
            (_, None) => false,
            (Bound::Included(s), Some(l)) => s <= l,
            (Bound::Excluded(s), Some(l)) => s < l,
        };
        let end_ok = match (self.end, hi) {
            (Bound::Unbounded, _) => true,
            (_, None) => false,
            (Bound::Included(e) | Bound::Excluded(e), Some(h)) => h <= e,
        };
        start_ok && end_ok
    }
    /// Whether some key of `[lo, hi)` may lie in the range.
    fn overlaps(&self, lo: Option<&[u8]>, hi: Option<&[u8]>) -> bool {
        let ends_before = match (self.end, lo) {
            (Bound::Included(e), Some(l)) => e < l,
            (Bound::Excluded(e), Some(l)) => e <= l,
            _ => false,
        };
        let starts_after = match (self.start, hi) {
            (Bound::Included(s) | Bound::Excluded(s), Some(h)) => s >= h,
            _ => false,
        };
        !ends_before && !starts_after
    }
}

/// Inserts or replaces; the root grows a level when it splits.
pub(crate) fn insert(
    ctx: &mut Ctx<'_>,
    root: &mut Option<Child>,
    key: &[u8],
    value: Vec<u8>,
) -> Result<(), Error> {
    let child = root.get_or_insert_with(|| Child::Dirty(Box::new(Node::empty_leaf())));
    if let Some((separator, right)) = insert_into(ctx, child, key, value)? {
        let left = std::mem::replace(child, Child::Clean(0));
        *child = Child::Dirty(Box::new(Node::branch(
            vec![Vec::new(), separator],
            vec![left, Child::Dirty(right)],
        )));
    }
    Ok(())
}

fn insert_into(
    ctx: &mut Ctx<'_>,
    child: &mut Child,
    key: &[u8],
    value: Vec<u8>,
) -> Result<Option<Split>, Error> {
    let page_size = ctx.page_size();
    let node = ctx.make_dirty(child)?;
    let Node {
        keys,
        body,
        bytes,
        appended_only,
        ..
    } = node;
    match body {
        Body::Leaf(values) => match keys.binary_search_by(|k| k.as_slice().cmp(key)) {
            Ok(i) => {
                let old = std::mem::replace(&mut values[i], Value::Bytes(value));
                *bytes = *bytes + value_entry_bytes(&values[i], page_size)
                    - value_entry_bytes(&old, page_size);
                ctx.free_value(&old)?;
            }
            Err(i) => {
                *appended_only &= i == keys.len();
                let value = Value::Bytes(value);
                *bytes += leaf_entry_bytes(key.len(), value_entry_bytes(&value, page_size));
                keys.insert(i, key.to_vec());
                values.insert(i, value);
            }
        },
        Body::Branch(children) => {
            let i = child_index(keys, key);
            if let Some((separator, right)) = insert_into(ctx, &mut children[i], key, value)? {
                *bytes += branch_entry_bytes(separator.len());
                keys.insert(i + 1, separator);
                children.insert(i + 1, Child::Dirty(right));
            }
        }
    }
    let node = match child {
        Child::Dirty(node) => node,
        Child::Clean(_) => unreachable!("made dirty above"),
    };
    Ok(node.split_if_large(page_size))
}

/// Removes `key`, which the caller has checked is present.
pub(crate) fn remove(ctx: &mut Ctx<'_>, root: &mut Option<Child>, key: &[u8]) -> Result<(), Error> {
    let child = root.as_mut().expect("caller checked the key exists");
    if remove_from(ctx, child, key)? {
        *root = None;
    }
    Ok(())
}

/// Returns whether the node became empty.
fn remove_from(ctx: &mut Ctx<'_>, child: &mut Child, key: &[u8]) -> Result<bool, Error> {
    let page_size = ctx.page_size();
    let node = ctx.make_dirty(child)?;
    node.shrunk = true;
    let Node {
        keys, body, bytes, ..
    } = node;
    match body {
        Body::Leaf(values) => {
            let i = keys
                .binary_search_by(|k| k.as_slice().cmp(key))
                .expect("caller checked the key exists");
            let old = values.remove(i);
            let old_key = keys.remove(i);
            *bytes -= leaf_entry_bytes(old_key.len(), value_entry_bytes(&old, page_size));
            ctx.free_value(&old)?;
        }
        Body::Branch(children) => {
            let i = child_index(keys, key);
            if remove_from(ctx, &mut children[i], key)? {
                children.remove(i);
                let old_key = keys.remove(i);
                *bytes -= branch_entry_bytes(old_key.len());
            }
        }
    }
    Ok(keys.is_empty())
}

/// Removes every key in `range`; whole subtrees inside it are freed without being copied.
pub(crate) fn remove_range(
    ctx: &mut Ctx<'_>,
    root: &mut Option<Child>,
    range: &KeyRange<'_>,
) -> Result<u64, Error> {
    let Some(child) = root.as_mut() else {
        return Ok(0);
    };
    if range.is_empty() {
        return Ok(0);
    }
    let (removed, emptied) = remove_range_from(ctx, child, None, None, range)?;
    if emptied {
        let child = root.take().expect("checked above");
        ctx.free_subtree(child)?;
    }
    Ok(removed)
}

/// Returns (entries removed, subtree now empty). An emptied subtree is left for the caller to
/// free or drop.
fn remove_range_from(
    ctx: &mut Ctx<'_>,
    child: &mut Child,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
    range: &KeyRange<'_>,
) -> Result<(u64, bool), Error> {
    if range.covers(lo, hi) {
        let whole = std::mem::replace(child, Child::Dirty(Box::new(Node::empty_leaf())));
        return Ok((ctx.free_subtree(whole)?, true));
    }
    let page_size = ctx.page_size();
    let node = ctx.make_dirty(child)?;
    let Node {
        keys, body, shrunk, ..
    } = node;
    let mut removed = 0;
    match body {
        Body::Leaf(values) => {
            let start = keys.partition_point(|k| !range.after_start(k));
            let end = keys.partition_point(|k| range.before_end(k)).max(start);
            for value in values.drain(start..end) {
                ctx.free_value(&value)?;
            }
            keys.drain(start..end);
            removed = (end - start) as u64;
        }
        Body::Branch(children) => {
            let mut keep = vec![true; children.len()];
            for (i, child) in children.iter_mut().enumerate() {
                let child_lo = if i == 0 { lo } else { Some(keys[i].as_slice()) };
                let child_hi = keys.get(i + 1).map(Vec::as_slice).or(hi);
                if range.overlaps(child_lo, child_hi) {
                    let (n, emptied) = remove_range_from(ctx, child, child_lo, child_hi, range)?;
                    removed += n;
                    keep[i] = !emptied;
                }
            }
            let mut flags = keep.iter();
            children.retain(|_| *flags.next().expect("one flag per child"));
            let mut flags = keep.iter();
            keys.retain(|_| *flags.next().expect("one flag per key"));
        }
    }
    *shrunk |= removed > 0;
    node.recount_bytes(page_size);
    Ok((removed, node.keys.is_empty()))
}

/// Lays out `sizes` (entry bytes) into pages of `usable` bytes: full pages when packing an
/// append-only node, otherwise evenly filled ones.
pub(crate) fn group(sizes: &[usize], usable: usize, left_pack: bool) -> Vec<Range<usize>> {
    let total: usize = sizes.iter().sum();
    let target = if left_pack || total <= usable {
        usable
    } else {
        total.div_ceil(total.div_ceil(usable))
    };
    let mut groups = Vec::with_capacity(total / usable + 1);
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        assert!(
            size <= usable,
            "one entry of {size} bytes cannot fill a page of {usable}"
        );
        if i > start && (bytes + size > usable || bytes >= target) {
            groups.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    groups.push(start..sizes.len());
    groups
}

/// Merges children that lost entries and fell under a quarter page into a neighbour (spill
/// splits the result again if it is too big).
fn rebalance(
    ctx: &mut Ctx<'_>,
    keys: &mut Vec<Vec<u8>>,
    children: &mut Vec<Child>,
) -> Result<(), Error> {
    let page_size = ctx.page_size();
    let mut i = 0;
    while i < children.len() && children.len() > 1 {
        let small = matches!(&children[i], Child::Dirty(n) if n.shrunk && n.bytes < page_size / 4);
        if !small {
            i += 1;
            continue;
        }
        let left = if i + 1 < children.len() { i } else { i - 1 };
        ctx.make_dirty(&mut children[left])?;
        ctx.make_dirty(&mut children[left + 1])?;
        let Child::Dirty(mut right) = children.remove(left + 1) else {
            unreachable!("made dirty above")
        };
        let separator = keys.remove(left + 1);
        let Child::Dirty(into) = &mut children[left] else {
            unreachable!("made dirty above")
        };
        match (&mut into.body, right.body) {
            (Body::Leaf(a), Body::Leaf(b)) => a.extend(b),
            (Body::Branch(a), Body::Branch(b)) => {
                right.keys[0] = separator;
                a.extend(b);
            }
            _ => {
                return Err(Error::corrupt(
                    0,
                    page_size,
                    0,
                    "siblings at different depths",
                ))
            }
        }
        into.keys.append(&mut right.keys);
        into.appended_only = false;
        into.shrunk = false;
        into.recount_bytes(page_size);
        i = left + 1;
    }
    Ok(())
}

/// Writes `node` (and every changed node below it) into new pages; returns each page with
/// the lowest key it may hold.
pub(crate) fn spill(
    ctx: &mut Ctx<'_>,
    out: &mut Out<'_>,
    node: Node,
) -> Result<Vec<(Vec<u8>, u64)>, Error> {
    let page_size = ctx.page_size();
    let usable = page_size - HEADER_BYTES;
    let Node {
        mut keys,
        body,
        appended_only,
        ..
    } = node;
    let mut parts = Vec::new();
    match body {
        Body::Leaf(values) => {
            let mut stored = Vec::with_capacity(values.len());
            for value in &values {
                stored.push(match (value, value.in_memory()) {
                    (_, Some(b)) if b.len() <= inline_value_bytes_max(page_size) => {
                        StoredValue::Inline(b)
                    }
                    (_, Some(b)) => StoredValue::Overflow {
                        page: write_overflow(out, page_size, b),
                        len_bytes: b.len() as u64,
                    },
                    (Value::Overflow { page, len_bytes }, None) => StoredValue::Overflow {
                        page: *page,
                        len_bytes: *len_bytes,
                    },
                    (_, None) => unreachable!("only overflow values live outside memory"),
                });
            }
            let sizes = leaf_entry_sizes(&keys, &stored);
            for range in group(&sizes, usable, appended_only) {
                let entries = range.clone().map(|i| (keys[i].as_slice(), stored[i]));
                let id = out.alloc.alloc(1);
                out.writes
                    .push((id, page::encode_leaf(page_size, out.txn_id, entries)));
                parts.push((keys[range.start].clone(), id));
            }
        }
        Body::Branch(mut children) => {
            rebalance(ctx, &mut keys, &mut children)?;
            let mut entries: Vec<(Vec<u8>, u64)> = Vec::with_capacity(children.len());
            for (key, child) in keys.into_iter().zip(children) {
                match child {
                    Child::Clean(id) => entries.push((key, id)),
                    Child::Dirty(node) => {
                        let mut child_parts = spill(ctx, out, *node)?.into_iter();
                        let (_, first) =
                            child_parts.next().expect("spill yields at least one page");
                        entries.push((key, first));
                        entries.extend(child_parts);
                    }
                }
            }
            let sizes: Vec<usize> = entries
                .iter()
                .map(|(k, _)| branch_entry_bytes(k.len()))
                .collect();
            for range in group(&sizes, usable, false) {
                let id = out.alloc.alloc(1);
                let page = page::encode_branch(
                    page_size,
                    out.txn_id,
                    entries[range.clone()]
                        .iter()
                        .map(|(k, c)| (k.as_slice(), *c)),
                );
                out.writes.push((id, page));
                parts.push((entries[range.start].0.clone(), id));
            }
        }
    }
    Ok(parts)
}

fn write_overflow(out: &mut Out<'_>, page_size: usize, value: &[u8]) -> u64 {
    let id = out
        .alloc
        .alloc(overflow_pages(value.len() as u64, page_size));
    out.writes
        .push((id, page::encode_overflow(page_size, out.txn_id, value)));
    id
}

/// Spills a bucket's root; returns its new root page (0 = empty bucket).
pub(crate) fn spill_root(
    ctx: &mut Ctx<'_>,
    out: &mut Out<'_>,
    root: Option<Child>,
) -> Result<u64, Error> {
    let Some(mut child) = root else { return Ok(0) };
    if let Child::Dirty(node) = &mut child {
        if let Body::Branch(children) = &mut node.body {
            rebalance(ctx, &mut node.keys, children)?;
        }
    }
    // A root branch with a single child is a wasted level.
    let node = loop {
        match child {
            Child::Clean(id) => return Ok(id),
            Child::Dirty(node) if node.keys.is_empty() => return Ok(0),
            Child::Dirty(mut node) => {
                let only_child = match &mut node.body {
                    Body::Branch(children) if children.len() == 1 => children.pop(),
                    _ => None,
                };
                match only_child {
                    Some(only) => child = only,
                    None => break node,
                }
            }
        }
    };
    let mut parts = spill(ctx, out, *node)?;
    while parts.len() > 1 {
        let (mut keys, children): (Vec<_>, Vec<_>) = parts
            .into_iter()
            .map(|(k, id)| (k, Child::Clean(id)))
            .unzip();
        keys[0].clear();
        parts = spill(ctx, out, Node::branch(keys, children))?;
    }
    Ok(parts[0].1)
}

/// Looks `key` up in a tree whose upper part may be in memory.
pub(crate) fn get<'a>(
    pages: Pages<'a>,
    root: &'a Option<Child>,
    key: &[u8],
) -> Result<Option<&'a [u8]>, Error> {
    let Some(mut child) = root.as_ref() else {
        return Ok(None);
    };
    loop {
        let node = match child {
            Child::Clean(id) => return pages.get(*id, key),
            Child::Dirty(node) => node,
        };
        match &node.body {
            Body::Leaf(values) => {
                let Ok(i) = node.keys.binary_search_by(|k| k.as_slice().cmp(key)) else {
                    return Ok(None);
                };
                return match &values[i] {
                    Value::Bytes(_) | Value::InPage { .. } => Ok(values[i].in_memory()),
                    Value::Overflow { page, len_bytes } => pages
                        .value(StoredValue::Overflow {
                            page: *page,
                            len_bytes: *len_bytes,
                        })
                        .map(Some),
                };
            }
            Body::Branch(children) => child = &children[child_index(&node.keys, key)],
        }
    }
}

/// An owned key and value.
pub type OwnedEntry = (Vec<u8>, Vec<u8>);

/// Which way to search from a key.
#[derive(Clone, Copy)]
pub(crate) enum Dir {
    /// First key >= (or > when `strict`) the bound; `None` bound = the very first key.
    Forward { strict: bool },
    /// Last key <= (or < when `strict`) the bound; `None` bound = the very last key.
    Backward { strict: bool },
}

/// The neighbour of `bound` in direction `dir`, in a tree whose upper part may be in memory.
pub(crate) fn seek(
    pages: Pages<'_>,
    child: &Child,
    bound: Option<&[u8]>,
    dir: Dir,
) -> Result<Option<OwnedEntry>, Error> {
    let node = match child {
        Child::Clean(id) => return seek_clean(pages, *id, bound, dir),
        Child::Dirty(node) => node,
    };
    match &node.body {
        Body::Leaf(values) => {
            let hit = |i: usize| -> Result<Option<OwnedEntry>, Error> {
                let value = match &values[i] {
                    Value::Bytes(b) => b.clone(),
                    Value::InPage { .. } => values[i].in_memory().expect("in memory").to_vec(),
                    Value::Overflow { page, len_bytes } => pages
                        .value(StoredValue::Overflow {
                            page: *page,
                            len_bytes: *len_bytes,
                        })?
                        .to_vec(),
                };
                Ok(Some((node.keys[i].clone(), value)))
            };
            let n = node.keys.len();
            let i = match (dir, bound) {
                (Dir::Forward { .. }, None) => 0,
                (Dir::Backward { .. }, None) => n.wrapping_sub(1),
                (Dir::Forward { strict }, Some(b)) => node
                    .keys
                    .partition_point(|k| k.as_slice() < b || (strict && k.as_slice() == b)),
                (Dir::Backward { strict }, Some(b)) => node
                    .keys
                    .partition_point(|k| k.as_slice() < b || (!strict && k.as_slice() == b))
                    .wrapping_sub(1),
            };
            if i < n {
                hit(i)
            } else {
                Ok(None)
            }
        }
        Body::Branch(children) => {
            let start = bound.map_or(
                match dir {
                    Dir::Forward { .. } => 0,
                    Dir::Backward { .. } => children.len() - 1,
                },
                |b| child_index(&node.keys, b),
            );
            // The child that would hold the bound first, then whole neighbours in order.
            if let Some(found) = seek(pages, &children[start], bound, dir)? {
                return Ok(Some(found));
            }
            let rest: Box<dyn Iterator<Item = usize>> = match dir {
                Dir::Forward { .. } => Box::new(start + 1..children.len()),
                Dir::Backward { .. } => Box::new((0..start).rev()),
            };
            for i in rest {
                if let Some(found) = seek(pages, &children[i], None, dir)? {
                    return Ok(Some(found));
                }
            }
            Ok(None)
        }
    }
}

fn seek_clean(
    pages: Pages<'_>,
    root: u64,
    bound: Option<&[u8]>,
    dir: Dir,
) -> Result<Option<OwnedEntry>, Error> {
    let mut cursor = Cursor::over(pages, root);
    let entry = match (dir, bound) {
        (Dir::Forward { .. }, None) => cursor.first()?,
        (Dir::Backward { .. }, None) => cursor.last()?,
        (Dir::Forward { strict }, Some(b)) => match cursor.seek(b)? {
            Some((k, _)) if strict && k == b => cursor.next()?,
            other => other,
        },
        (Dir::Backward { strict }, Some(b)) => match cursor.seek(b)? {
            Some((k, v)) if !strict && k == b => Some((k, v)),
            Some(_) => cursor.prev()?,
            None => cursor.last()?,
        },
    };
    Ok(entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
}
