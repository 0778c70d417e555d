//! Offline verification for `basalt check`: every page's checksum and every structural rule,
//! each problem reported with its page and file offset. Never repairs, never follows a bad page.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use super::db::{read_metas, validate};
use super::file::{PageFile, StdFile};
use super::page::{self, overflow_pages, Kind, StoredValue};
use super::read::{Pages, DEPTH_MAX};
use super::sealed::{self, SealedFile};
use super::Error;
use crate::crypt::SharedKeyring;

/// One thing wrong with the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub page: u64,
    /// Byte offset in the file where the problem was found.
    pub offset: u64,
    pub reason: String,
}

/// What `check` found. The file is sound when `problems` is empty.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub page_size_bytes: usize,
    pub meta_seq: u64,
    pub txn_id: u64,
    pub applied_index: u64,
    pub high_water_pages: u64,
    /// Entries per bucket, in name order.
    pub buckets: Vec<(String, u64)>,
    pub tree_pages: u64,
    pub free_pages: u64,
    /// Pages below the high-water mark that are neither in a tree nor free.
    pub leaked_pages: u64,
    /// For an encrypted file: how many page slots each key id sealed (an id missing here is
    /// not needed to read the file; the header may still list it until a defragmentation).
    pub encrypted: Option<BTreeMap<u32, u64>>,
    pub problems: Vec<Problem>,
}

#[derive(Clone, Copy, PartialEq)]
enum Use {
    Unseen,
    Tree,
    Free,
}

/// Checks the tree file at `path` (which must not be open for writing elsewhere); an encrypted
/// file needs its keys.
pub fn check(
    path: impl AsRef<Path>,
    keyring: Option<&SharedKeyring>,
) -> Result<CheckReport, Error> {
    let file = StdFile(File::open(path)?);
    let mut head = [0u8; 8];
    if file.len_bytes()? >= head.len() as u64 {
        file.read_at(&mut head, 0)?;
    }
    if !sealed::is_sealed(&head) {
        return check_file(&file);
    }
    let Some(keyring) = keyring else {
        return Err(Error::Encrypted {
            ids: sealed::key_ids(&file)?,
        });
    };
    let sealed = SealedFile::open(Box::new(file), keyring.clone())?;
    let mut report = check_file(&sealed)?;
    report.encrypted = Some(sealed.slot_keys());
    let failed = sealed.failed_pages();
    for problem in &mut report.problems {
        if failed.binary_search(&problem.page).is_ok() {
            // Whatever check tripped over, the cause is the slot: named with its file offset.
            problem.offset = sealed.slot_offset(problem.page);
            problem.reason = page::SEALED_PAGE_FAILED_REASON.to_string();
        }
    }
    Ok(report)
}

fn check_file(file: &dyn PageFile) -> Result<CheckReport, Error> {
    let mut report = CheckReport::default();
    let mut candidates = Vec::new();
    for (slot, meta) in read_metas(file, 4096)?.into_iter().enumerate() {
        match meta {
            Ok(meta) => candidates.push((slot as u64, meta)),
            Err(e) => report.problems.push(problem(e)),
        }
    }
    candidates.sort_by_key(|(_, m)| std::cmp::Reverse(m.seq));
    // The meta open would use: the newest whose checkpoint fully reached the disk.
    let mut chosen = None;
    for (slot, meta) in candidates {
        match validate(file, &meta) {
            Ok(chains) => {
                chosen = Some((meta, chains));
                break;
            }
            Err(e) => report.problems.push(Problem {
                page: slot,
                offset: slot * meta.page_size as u64,
                reason: format!(
                    "checkpoint {} rejected, an older one is used: {e}",
                    meta.seq
                ),
            }),
        }
    }
    let Some((meta, (chain, free))) = chosen else {
        return Ok(report);
    };
    report.page_size_bytes = meta.page_size;
    report.meta_seq = meta.seq;
    report.txn_id = meta.txn_id;
    report.applied_index = meta.applied_index;
    report.high_water_pages = meta.high_water_pages;
    let file_bytes = file.len_bytes()?;
    let map = file.map(file_bytes)?;
    let mut walk = Walk {
        pages: Pages {
            map: &map,
            page_size: meta.page_size,
            verify: true,
        },
        uses: vec![Use::Unseen; meta.high_water_pages as usize],
        leaf_depth: None,
        problems: Vec::new(),
    };
    let meta_pages = walk.uses.len().min(2);
    walk.uses[..meta_pages].fill(Use::Tree);
    for (name, root) in &meta.buckets {
        walk.leaf_depth = None;
        let entries = if *root == 0 {
            0
        } else {
            walk.node(*root, None, None, 0)
        };
        report.buckets.push((name.clone(), entries));
    }
    for page in chain {
        walk.claim(
            page,
            1,
            Use::Tree,
            "checkpoint chain page is also used elsewhere",
        );
    }
    for page in free {
        walk.claim(
            page,
            1,
            Use::Free,
            "page listed free is in use or listed twice",
        );
    }
    report.tree_pages = walk.uses.iter().filter(|u| **u == Use::Tree).count() as u64;
    report.free_pages = walk.uses.iter().filter(|u| **u == Use::Free).count() as u64;
    report.leaked_pages = walk.uses.iter().filter(|u| **u == Use::Unseen).count() as u64;
    report.problems.extend(walk.problems);
    Ok(report)
}

fn problem(e: Error) -> Problem {
    match e {
        Error::Corrupt {
            page,
            offset,
            reason,
        } => Problem {
            page,
            offset,
            reason: reason.to_owned(),
        },
        Error::NoValidMeta(inner) => problem(*inner),
        other => Problem {
            page: 0,
            offset: 0,
            reason: other.to_string(),
        },
    }
}

struct Walk<'a> {
    pages: Pages<'a>,
    uses: Vec<Use>,
    leaf_depth: Option<usize>,
    problems: Vec<Problem>,
}

impl Walk<'_> {
    fn report(&mut self, page: u64, offset_in_page: usize, reason: &'static str) {
        self.problems.push(problem(Error::corrupt(
            page,
            self.pages.page_size,
            offset_in_page,
            reason,
        )));
    }

    /// Marks `pages` pages from `first` as used; false (and a problem) if any was already.
    fn claim(&mut self, first: u64, pages: u64, as_use: Use, reason: &'static str) -> bool {
        for page in first..first + pages {
            match self.uses.get_mut(page as usize) {
                Some(u) if *u == Use::Unseen => *u = as_use,
                Some(_) => {
                    self.report(page, 0, reason);
                    return false;
                }
                None => {
                    self.report(page, 0, "page reference beyond the high-water mark");
                    return false;
                }
            }
        }
        true
    }

    /// Checks the subtree at `id` whose keys must lie in `[lo, hi)`; returns its entry count.
    fn node(&mut self, id: u64, lo: Option<&[u8]>, hi: Option<&[u8]>, depth: usize) -> u64 {
        if depth >= DEPTH_MAX {
            self.report(id, 0, "tree deeper than any valid tree");
            return 0;
        }
        let page = match self.pages.node(id) {
            Ok(page) => page,
            Err(e) => {
                self.problems.push(problem(e));
                return 0;
            }
        };
        if !self.claim(id, 1, Use::Tree, "page reachable twice") {
            return 0;
        }
        if page.count() == 0 {
            self.report(id, 6, "empty page inside a tree");
            return 0;
        }
        let mut entries = 0;
        let mut previous: Option<&[u8]> = None;
        for i in 0..page.count() {
            let key = match page.key(i) {
                Ok(key) => key,
                Err(e) => {
                    self.problems.push(problem(e));
                    return entries;
                }
            };
            let is_bound_only = page.kind() == Kind::Branch && i == 0;
            if !is_bound_only {
                let ordered = previous.is_none_or(|p| p < key);
                let inside = lo.is_none_or(|l| key >= l) && hi.is_none_or(|h| key < h);
                if !ordered || !inside {
                    self.report(
                        id,
                        16 + 2 * i,
                        "key out of order or outside its parent's bounds",
                    );
                }
                previous = Some(key);
            }
            match page.kind() {
                Kind::Leaf => {
                    entries += 1;
                    match page.value(i) {
                        Ok(StoredValue::Overflow {
                            page: run,
                            len_bytes,
                        }) => match self.pages.overflow_run(run, len_bytes) {
                            Ok(_) => {
                                let pages = overflow_pages(len_bytes, self.pages.page_size);
                                self.claim(run, pages, Use::Tree, "overflow page reachable twice");
                            }
                            Err(e) => self.problems.push(problem(e)),
                        },
                        Ok(StoredValue::Inline(_)) => {}
                        Err(e) => self.problems.push(problem(e)),
                    }
                }
                _ => {
                    let child_lo = if i == 0 { lo } else { Some(key) };
                    let child_hi = if i + 1 < page.count() {
                        page.key(i + 1).ok()
                    } else {
                        hi
                    };
                    match page.child(i) {
                        Ok(child) => entries += self.node(child, child_lo, child_hi, depth + 1),
                        Err(e) => self.problems.push(problem(e)),
                    }
                }
            }
        }
        if page.kind() == Kind::Leaf {
            match self.leaf_depth {
                None => self.leaf_depth = Some(depth),
                Some(d) if d != depth => self.report(id, 0, "leaves at different depths"),
                Some(_) => {}
            }
        }
        entries
    }
}
