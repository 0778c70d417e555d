//! Page allocation and the reuse rule for freed pages.
//!
//! A page freed by transaction `X` (reachable in snapshot `X-1`, not in `X`) may be rewritten
//! only when both hold:
//! - every open reader's snapshot id is `>= X` (no reader can reach it), and
//! - the newest durable meta cannot reach it: either `X <= durable txn`, or the page was written
//!   after the durable txn (`written_by > durable txn`), so no durable meta ever pointed at it.

use std::collections::{BTreeSet, VecDeque};

/// A page leaving the tree, with what decides when it may come back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Freed {
    pub(crate) page: u64,
    pub(crate) written_by: u64,
}

/// Longest stretch of the free pool scanned for a contiguous run before the allocator gives up
/// and extends the file instead; bounds the cost of placing one large value.
const RUN_SCAN_PAGES_MAX: usize = 1 << 16;

pub(crate) struct Allocator {
    pool: BTreeSet<u64>,
    /// Freed pages still reachable by some reader, in `freed_by` order.
    pending: VecDeque<(u64, Freed)>,
    /// Freed pages no reader reaches but the durable meta still does: (freed_by, page).
    blocked: Vec<(u64, Freed)>,
    /// Pages at or above this id have never been handed out since the last open/defragment.
    pub(crate) next_page: u64,
}

impl Allocator {
    pub(crate) fn new(free: impl IntoIterator<Item = u64>, next_page: u64) -> Allocator {
        let pool: BTreeSet<u64> = free.into_iter().collect();
        debug_assert!(pool.iter().all(|&p| p >= 2 && p < next_page));
        Allocator {
            pool,
            pending: VecDeque::new(),
            blocked: Vec::new(),
            next_page,
        }
    }

    pub(crate) fn free(&mut self, freed_by: u64, freed: Freed) {
        debug_assert!(self.pending.back().is_none_or(|(x, _)| *x <= freed_by));
        debug_assert!(
            freed.page >= 2 && freed.page < self.next_page,
            "freeing page {} outside the file",
            freed.page
        );
        self.pending.push_back((freed_by, freed));
    }

    /// Hands back to the pool what no reader (oldest open snapshot id, `u64::MAX` if none) and
    /// no durable meta can reach.
    pub(crate) fn reclaim(&mut self, oldest_reader_txn: u64, durable_txn: u64) {
        while let Some(&(freed_by, freed)) = self.pending.front() {
            if freed_by > oldest_reader_txn {
                break;
            }
            self.pending.pop_front();
            if freed_by <= durable_txn || freed.written_by > durable_txn {
                self.pool.insert(freed.page);
            } else {
                self.blocked.push((freed_by, freed));
            }
        }
        self.release_blocked(durable_txn);
    }

    fn release_blocked(&mut self, durable_txn: u64) {
        let pool = &mut self.pool;
        self.blocked.retain(|&(freed_by, freed)| {
            let durable_unreachable = freed_by <= durable_txn;
            if durable_unreachable {
                pool.insert(freed.page);
            }
            !durable_unreachable
        });
    }

    /// Pages nobody reaches at all, e.g. the previous durable freelist once a newer meta is
    /// durable.
    pub(crate) fn release_now(&mut self, pages: impl IntoIterator<Item = u64>) {
        self.pool.extend(pages);
    }

    /// First page of `pages` contiguous free pages.
    pub(crate) fn alloc(&mut self, pages: u64) -> u64 {
        assert!(pages >= 1);
        if pages == 1 {
            if let Some(page) = self.pool.pop_first() {
                return page;
            }
        } else if let Some(start) = self.find_run(pages) {
            for page in start..start + pages {
                self.pool.remove(&page);
            }
            return start;
        }
        let page = self.next_page;
        self.next_page += pages;
        page
    }

    fn find_run(&self, pages: u64) -> Option<u64> {
        let (mut start, mut len) = (0, 0);
        for &page in self.pool.iter().take(RUN_SCAN_PAGES_MAX) {
            if len > 0 && page == start + len {
                len += 1;
            } else {
                (start, len) = (page, 1);
            }
            if len == pages {
                return Some(start);
            }
        }
        None
    }

    /// Every page not reachable from the newest committed tree: what a meta written now must
    /// list as free, since after a restart no reader exists.
    pub(crate) fn all_unreachable(&self) -> Vec<u64> {
        let mut pages: Vec<u64> = self.pool.iter().copied().collect();
        pages.extend(self.pending.iter().map(|(_, f)| f.page));
        pages.extend(self.blocked.iter().map(|(_, f)| f.page));
        pages
    }

    /// Takes one page from the reusable pool, if any, for the freelist itself.
    pub(crate) fn take_pooled(&mut self) -> Option<u64> {
        self.pool.pop_first()
    }

    pub(crate) fn pooled_pages(&self) -> usize {
        self.pool.len()
    }
    pub(crate) fn waiting_pages(&self) -> usize {
        self.pending.len() + self.blocked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freed(page: u64, written_by: u64) -> Freed {
        Freed { page, written_by }
    }

    #[test]
    fn page_freed_after_durable_meta_waits_for_a_checkpoint_unless_never_durable() {
        let mut a = Allocator::new([], 10);
        a.free(5, freed(2, 3)); // written before durable txn 4: durable meta reaches it
        a.free(5, freed(3, 5)); // written after durable txn 4: no meta ever saw it
        a.reclaim(u64::MAX, 4);
        assert_eq!(a.alloc(1), 3);
        assert_eq!(
            a.alloc(1),
            10,
            "page 2 must wait for a durable meta past txn 5"
        );
        a.reclaim(u64::MAX, 5);
        assert_eq!(a.alloc(1), 2);
    }

    #[test]
    fn page_stays_pending_while_an_older_reader_is_open() {
        let mut a = Allocator::new([], 10);
        a.free(7, freed(4, 1));
        a.reclaim(6, 100);
        assert_eq!(a.alloc(1), 10);
        a.reclaim(7, 100);
        assert_eq!(a.alloc(1), 4);
    }

    #[test]
    fn runs_come_from_contiguous_free_pages_or_the_file_end() {
        let mut a = Allocator::new([2, 3, 5, 6, 7], 10);
        assert_eq!(a.alloc(3), 5);
        assert_eq!(a.alloc(3), 10);
        assert_eq!(a.next_page, 13);
        assert_eq!(a.alloc(2), 2);
    }
}
