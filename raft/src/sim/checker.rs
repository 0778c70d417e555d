//! Safety invariants checked while the simulation runs: election safety, log matching, leader
//! completeness and state machine safety. Each check is incremental, so it can run after every
//! event without rescanning logs.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::message::{Entry, NodeId};

fn entry_hash(entry: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    entry.hash(&mut h);
    h.finish()
}

fn chain_hash(prev: u64, entry: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    (prev, entry_hash(entry)).hash(&mut h);
    h.finish()
}

/// A node's persisted log as chain hashes: `chain[i]` summarizes entries `..=i`.
#[derive(Clone, Debug, Default)]
pub struct LogChain {
    chain: BTreeMap<u64, u64>,
}

#[derive(Default)]
pub struct SafetyChecker {
    leaders_by_term: BTreeMap<u64, NodeId>,
    /// Applied entries by index: (term, entry hash). Applied means committed.
    applied: BTreeMap<u64, (u64, u64)>,
    /// (index, term) -> chain hash, over every log that ever persisted that entry.
    chains: HashMap<(u64, u64), u64>,
}

/// Chain value of the bootstrap snapshot every founder starts from (index 1, term 1), and of
/// the empty log a joining node starts with (index 0, term 0).
const BOOTSTRAP_CHAIN: u64 = 1;
const EMPTY_CHAIN: u64 = 0;

impl SafetyChecker {
    pub fn new() -> SafetyChecker {
        let mut checker = SafetyChecker::default();
        checker.chains.insert((1, 1), BOOTSTRAP_CHAIN);
        checker.chains.insert((0, 0), EMPTY_CHAIN);
        checker
    }

    pub fn founder_chain() -> LogChain {
        LogChain {
            chain: BTreeMap::from([(1, BOOTSTRAP_CHAIN)]),
        }
    }

    pub fn joiner_chain() -> LogChain {
        LogChain {
            chain: BTreeMap::from([(0, EMPTY_CHAIN)]),
        }
    }

    /// Election safety: at most one leader per term. Returns whether this leader is new.
    pub fn observe_leader(&mut self, id: NodeId, term: u64) -> Result<bool, String> {
        match self.leaders_by_term.get(&term) {
            Some(&first) if first != id => Err(format!(
                "election safety: nodes {first} and {id} are both leader in term {term}"
            )),
            Some(_) => Ok(false),
            None => {
                self.leaders_by_term.insert(term, id);
                Ok(true)
            }
        }
    }

    /// Log matching: two logs holding an entry with the same index and term hold identical
    /// prefixes up to it.
    pub fn observe_persisted(
        &mut self,
        id: NodeId,
        log: &mut LogChain,
        entries: &[Entry],
    ) -> Result<(), String> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        log.chain.split_off(&first.index);
        let mut prev = *log.chain.get(&(first.index - 1)).ok_or_else(|| {
            format!(
                "node {id} persisted {} with no entry before it",
                first.index
            )
        })?;
        for entry in entries {
            let chain = chain_hash(prev, entry);
            let known = *self
                .chains
                .entry((entry.index, entry.term))
                .or_insert(chain);
            if known != chain {
                return Err(format!(
                    "log matching: node {id} holds ({}, {}) with a different prefix or payload",
                    entry.index, entry.term
                ));
            }
            log.chain.insert(entry.index, chain);
            prev = chain;
        }
        Ok(())
    }

    /// A snapshot replaced the node's log: it now starts at (`index`, `term`).
    pub fn observe_snapshot(
        &mut self,
        id: NodeId,
        log: &mut LogChain,
        index: u64,
        term: u64,
    ) -> Result<(), String> {
        let chain = *self.chains.get(&(index, term)).ok_or_else(|| {
            format!("node {id} installed a snapshot at ({index}, {term}) that no log ever held")
        })?;
        log.chain = BTreeMap::from([(index, chain)]);
        Ok(())
    }

    /// State machine safety: every node applies the same entry at each index. Also catches a
    /// committed entry that was lost and replaced.
    pub fn observe_applied(&mut self, id: NodeId, entry: &Entry) -> Result<(), String> {
        let this = (entry.term, entry_hash(entry));
        let known = *self.applied.entry(entry.index).or_insert(this);
        if known != this {
            return Err(format!("state machine safety: node {id} applied (term {}) at {} where (term {}) was applied before", entry.term, entry.index, known.0));
        }
        Ok(())
    }

    /// Leader completeness: a new leader holds every entry applied anywhere so far (checked when
    /// it is first seen; a deposed leader that has not noticed yet is not expected to).
    /// `term_at` answers the leader's log term at an index, or None if compacted.
    pub fn check_leader_completeness(
        &self,
        id: NodeId,
        term: u64,
        term_at: impl Fn(u64) -> Result<u64, crate::error::StorageError>,
    ) -> Result<(), String> {
        let Some((&index, &(want_term, _))) = self.applied.last_key_value() else {
            return Ok(());
        };
        match term_at(index) {
            Ok(t) if t == want_term => Ok(()),
            Err(crate::error::StorageError::Compacted) => Ok(()),
            other => Err(format!("leader completeness: leader {id} of term {term} has {other:?} at committed index {index}, want term {want_term}")),
        }
    }

    pub fn max_applied_index(&self) -> u64 {
        self.applied.last_key_value().map_or(0, |(&i, _)| i)
    }
}
