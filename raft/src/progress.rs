//! What the leader knows about one follower's log, and the window of appends in flight to it.

use std::collections::VecDeque;

/// How the leader is currently replicating to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's match point is unknown: one append at a time until an ack arrives.
    Probe,
    /// The match point is known: appends are pipelined within the in-flight window.
    Replicate,
    /// A snapshot is on its way; nothing else is sent until it is acknowledged or fails.
    Snapshot,
}

/// Appends sent to one follower and not yet acknowledged, bounded in count and bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index of the append, bytes of its entries), oldest first.
    window: VecDeque<(u64, u64)>,
    bytes: u64,
    count_max: usize,
    bytes_max: u64,
}

impl Inflights {
    pub fn new(count_max: usize, bytes_max: u64) -> Inflights {
        assert!(
            count_max > 0,
            "an in-flight window must admit at least one message"
        );
        Inflights {
            window: VecDeque::with_capacity(count_max),
            bytes: 0,
            count_max,
            bytes_max,
        }
    }

    pub fn add(&mut self, last_index: u64, bytes: u64) {
        assert!(!self.full(), "sending into a full in-flight window");
        if let Some(&(prev, _)) = self.window.back() {
            assert!(
                last_index > prev,
                "in-flight indices must increase: {prev} then {last_index}"
            );
        }
        self.window.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// The follower acknowledged everything up to `index`.
    pub fn free_le(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.window.front() {
            if last > index {
                break;
            }
            self.window.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest slot so that one more append can go out: used when a heartbeat
    /// response shows the follower alive but the window stayed full (acks were lost).
    pub fn free_first_one(&mut self) {
        if let Some((_, bytes)) = self.window.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub fn full(&self) -> bool {
        self.window.len() >= self.count_max || (self.bytes_max > 0 && self.bytes >= self.bytes_max)
    }

    pub fn count(&self) -> usize {
        self.window.len()
    }

    pub fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub matched: u64,
    /// Next index to send.
    pub next: u64,
    pub state: ProgressState,
    /// In `Snapshot` state: the index of the snapshot being sent.
    pub pending_snapshot: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// In `Probe` state: an append is out, wait for its answer (or a heartbeat response).
    pub probe_sent: bool,
    pub inflights: Inflights,
    pub is_learner: bool,
}

impl Progress {
    pub fn new(next: u64, inflights: Inflights) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            probe_sent: false,
            inflights,
            is_learner: false,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        // Coming back from a snapshot, resume after it (the follower may have applied it).
        let next = if self.state == ProgressState::Snapshot {
            self.matched.max(self.pending_snapshot) + 1
        } else {
            self.matched + 1
        };
        self.reset_state(ProgressState::Probe);
        self.next = next;
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// The follower acknowledged `index`. Returns whether `matched` moved.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// Pipelining: entries up to `last_sent` are on their way, the next send starts after them.
    pub fn optimistic_update(&mut self, last_sent: u64) {
        self.next = last_sent + 1;
    }

    /// The follower rejected an append at `rejected`; `match_hint` is where its log may match.
    /// Returns false for a stale rejection (one that says nothing new).
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(match_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_bounded_by_count_and_by_bytes() {
        let mut by_count = Inflights::new(2, 0);
        by_count.add(1, 100);
        by_count.add(2, 100);
        assert!(by_count.full());
        by_count.free_le(1);
        assert!(!by_count.full());

        let mut by_bytes = Inflights::new(10, 150);
        by_bytes.add(1, 100);
        assert!(!by_bytes.full());
        by_bytes.add(2, 100);
        assert!(by_bytes.full());
        by_bytes.free_first_one();
        assert!(!by_bytes.full());
    }

    #[test]
    fn decrement_rules() {
        // (state, matched, next, rejected, hint) -> (accepted, next)
        let cases = [
            (ProgressState::Replicate, 5, 10, 5, 0, false, 10), // stale: at or below match
            (ProgressState::Replicate, 5, 10, 9, 0, true, 6),   // back to match + 1
            (ProgressState::Probe, 0, 10, 5, 0, false, 10),     // not the probe we sent
            (ProgressState::Probe, 0, 10, 9, 3, true, 4),       // jump to the hint
            (ProgressState::Probe, 0, 10, 9, 20, true, 9),      // a hint above the probe is ignored
            (ProgressState::Probe, 4, 10, 9, 1, true, 5),       // never below match + 1
        ];
        for (state, matched, next, rejected, hint, want_ok, want_next) in cases {
            let mut pr = Progress::new(next, Inflights::new(4, 0));
            pr.state = state;
            pr.matched = matched;
            assert_eq!(
                pr.maybe_decr_to(rejected, hint),
                want_ok,
                "{state:?} m{matched} n{next} r{rejected} h{hint}"
            );
            assert_eq!(
                pr.next, want_next,
                "{state:?} m{matched} n{next} r{rejected} h{hint}"
            );
        }
    }
}
