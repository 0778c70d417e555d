//! ReadIndex bookkeeping on the leader. Every heartbeat broadcast is a numbered *round*; a read
//! waits for the next round to start and is confirmed when a quorum has answered that round
//! (or a later one). All reads waiting when a round starts share it, so one heartbeat round
//! confirms any number of reads. The same round numbers give the lease: a quorum that answered
//! a round sent at tick T will refuse to elect anyone else until T + election timeout.

use std::collections::{BTreeMap, VecDeque};

use crate::message::NodeId;

/// How far back the leader remembers when each round was sent (for the lease).
const ROUNDS_REMEMBERED_MAX: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// Every read is confirmed by a heartbeat round (always linearizable).
    #[default]
    Safe,
    /// Reads are served from the leader's lease when it is valid, without a round trip.
    /// Requires check-quorum and tick rates that agree across nodes.
    LeaseBased,
}

#[derive(Clone, Debug)]
pub(crate) struct ReadRequest {
    pub ctx: Vec<u8>,
    /// Who asked: the leader itself or a follower that forwarded the request.
    pub from: NodeId,
    /// The round that confirms this read; 0 until a round starts.
    pub round: u64,
    /// The leader's commit index when the round started.
    pub index: u64,
}

pub(crate) struct ReadOnly {
    /// Waiting reads in arrival order: those with a round form a prefix.
    requests: VecDeque<ReadRequest>,
    pub requests_max: usize,
    /// Highest round started by this leader.
    pub round_started: u64,
    /// Highest round a quorum has answered.
    pub round_confirmed: u64,
    /// Highest round each follower answered.
    acked: BTreeMap<NodeId, u64>,
    /// (round, tick it was sent), recent rounds only.
    sent_at_tick: VecDeque<(u64, u64)>,
    /// Tick at which the last confirmed round was sent, if remembered.
    pub confirmed_sent_tick: Option<u64>,
}

impl ReadOnly {
    pub fn new(requests_max: usize) -> ReadOnly {
        ReadOnly {
            requests: VecDeque::new(),
            requests_max,
            round_started: 0,
            round_confirmed: 0,
            acked: BTreeMap::new(),
            sent_at_tick: VecDeque::new(),
            confirmed_sent_tick: None,
        }
    }

    /// Forgets everything (a new term or a new role). Waiting reads are dropped: their callers
    /// time out and retry, as they would after a lost message.
    pub fn reset(&mut self) {
        *self = ReadOnly::new(self.requests_max);
    }

    /// Queues a read; false if the queue is full.
    pub fn add(&mut self, ctx: Vec<u8>, from: NodeId) -> bool {
        if self.requests.len() >= self.requests_max {
            return false;
        }
        self.requests.push_back(ReadRequest {
            ctx,
            from,
            round: 0,
            index: 0,
        });
        true
    }

    pub fn has_unassigned(&self) -> bool {
        self.requests.back().is_some_and(|r| r.round == 0)
    }

    pub fn round_in_flight(&self) -> bool {
        self.round_started > self.round_confirmed
    }

    /// Starts a round sent at `tick`. With `reads_commit`, every waiting read joins it with
    /// that commit index as its read index.
    pub fn start_round(&mut self, tick: u64, reads_commit: Option<u64>) -> u64 {
        self.round_started += 1;
        let round = self.round_started;
        if let Some(commit) = reads_commit {
            for req in self.requests.iter_mut().rev().take_while(|r| r.round == 0) {
                req.round = round;
                req.index = commit;
            }
        }
        if self.sent_at_tick.len() == ROUNDS_REMEMBERED_MAX {
            self.sent_at_tick.pop_front();
        }
        self.sent_at_tick.push_back((round, tick));
        round
    }

    pub fn record_ack(&mut self, from: NodeId, round: u64) {
        if round <= self.round_started {
            let acked = self.acked.entry(from).or_insert(0);
            *acked = (*acked).max(round);
        }
    }

    pub fn acked(&self, id: NodeId) -> u64 {
        self.acked.get(&id).copied().unwrap_or(0)
    }

    /// A quorum answered `round`: returns the reads it confirms.
    pub fn confirm(&mut self, round: u64) -> Vec<ReadRequest> {
        if round <= self.round_confirmed {
            return Vec::new();
        }
        assert!(
            round <= self.round_started,
            "round {round} confirmed before it started ({})",
            self.round_started
        );
        self.round_confirmed = round;
        self.confirmed_sent_tick = self
            .sent_at_tick
            .iter()
            .find(|(r, _)| *r == round)
            .map(|&(_, tick)| tick);
        let released = self
            .requests
            .iter()
            .take_while(|r| r.round != 0 && r.round <= round)
            .count();
        self.requests.drain(..released).collect()
    }
}

pub(crate) fn encode_round(round: u64) -> Vec<u8> {
    round.to_le_bytes().to_vec()
}

pub(crate) fn decode_round(ctx: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(ctx.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_waiting_when_a_round_starts_share_it_and_later_reads_wait_for_the_next() {
        let mut ro = ReadOnly::new(8);
        assert!(ro.add(b"a".to_vec(), 1));
        assert!(ro.add(b"b".to_vec(), 2));
        let round = ro.start_round(0, Some(10));
        assert!(ro.add(b"c".to_vec(), 1));
        let released = ro.confirm(round);
        assert_eq!(
            released
                .iter()
                .map(|r| (r.ctx.clone(), r.index))
                .collect::<Vec<_>>(),
            vec![(b"a".to_vec(), 10), (b"b".to_vec(), 10)]
        );
        assert!(ro.has_unassigned());
        let next = ro.start_round(1, Some(12));
        assert_eq!(ro.confirm(next).len(), 1);
    }

    #[test]
    fn the_read_queue_is_bounded() {
        let mut ro = ReadOnly::new(1);
        assert!(ro.add(vec![1], 1));
        assert!(!ro.add(vec![2], 1));
    }
}
