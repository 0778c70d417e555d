//! The leader's view of the cluster: the active configuration and one `Progress` per member.
//! Also tallies votes during an election.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::{ConfState, NodeId};
use crate::progress::{Inflights, Progress};
use crate::quorum::{JointConfig, MajorityConfig, VoteResult};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerConfig {
    pub voters: JointConfig,
    pub learners: BTreeSet<NodeId>,
    /// Voters of the outgoing half that become learners when the joint configuration is left
    /// (a node cannot be a voter and a learner at once, so the demotion waits).
    pub learners_next: BTreeSet<NodeId>,
    /// Leave the joint configuration automatically once it is applied.
    pub auto_leave: bool,
}

impl TrackerConfig {
    pub fn from_conf_state(cs: &ConfState) -> TrackerConfig {
        let set = |ids: &[NodeId]| ids.iter().copied().collect::<BTreeSet<_>>();
        let cfg = TrackerConfig {
            voters: JointConfig {
                incoming: MajorityConfig {
                    voters: set(&cs.voters),
                },
                outgoing: MajorityConfig {
                    voters: set(&cs.voters_outgoing),
                },
            },
            learners: set(&cs.learners),
            learners_next: set(&cs.learners_next),
            auto_leave: cs.auto_leave,
        };
        cfg.assert_valid();
        cfg
    }

    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            voters_outgoing: self.voters.outgoing.voters.iter().copied().collect(),
            learners_next: self.learners_next.iter().copied().collect(),
            auto_leave: self.auto_leave,
        }
    }

    /// Every id the configuration mentions.
    pub fn ids(&self) -> BTreeSet<NodeId> {
        let mut ids = self.voters.ids();
        ids.extend(&self.learners);
        ids.extend(&self.learners_next);
        ids
    }

    pub fn assert_valid(&self) {
        for id in &self.learners {
            assert!(
                !self.voters.contains(*id),
                "node {id} is both learner and voter: {self:?}"
            );
        }
        for id in &self.learners_next {
            assert!(
                self.voters.outgoing.voters.contains(id),
                "learner-next {id} is not an outgoing voter: {self:?}"
            );
            assert!(
                !self.voters.incoming.voters.contains(id),
                "learner-next {id} is an incoming voter: {self:?}"
            );
        }
        assert!(
            self.voters.is_joint() || (self.learners_next.is_empty() && !self.auto_leave),
            "non-joint config with joint state: {self:?}"
        );
    }
}

pub type ProgressMap = BTreeMap<NodeId, Progress>;

pub struct ProgressTracker {
    pub config: TrackerConfig,
    pub progress: ProgressMap,
    pub votes: BTreeMap<NodeId, bool>,
    pub inflight_count_max: usize,
    pub inflight_bytes_max: u64,
}

impl ProgressTracker {
    pub fn new(inflight_count_max: usize, inflight_bytes_max: u64) -> ProgressTracker {
        ProgressTracker {
            config: TrackerConfig::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            inflight_count_max,
            inflight_bytes_max,
        }
    }

    pub fn new_progress(&self, next: u64, is_learner: bool) -> Progress {
        let mut pr = Progress::new(
            next,
            Inflights::new(self.inflight_count_max, self.inflight_bytes_max),
        );
        pr.is_learner = is_learner;
        // A new member gets the benefit of the doubt until the next check-quorum round.
        pr.recent_active = true;
        pr
    }

    /// Replaces configuration and progress wholesale (restart, snapshot restore).
    pub fn restore(&mut self, cs: &ConfState, next: u64) {
        self.config = TrackerConfig::from_conf_state(cs);
        self.progress.clear();
        for id in self.config.ids() {
            let is_learner =
                self.config.learners.contains(&id) || self.config.learners_next.contains(&id);
            let pr = self.new_progress(next, is_learner);
            self.progress.insert(id, pr);
        }
    }

    /// The index a quorum of voters has acknowledged.
    pub fn committed(&self) -> u64 {
        self.config
            .voters
            .committed_index(|id| self.progress.get(&id).map_or(0, |pr| pr.matched))
    }

    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    pub fn record_vote(&mut self, id: NodeId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    pub fn tally_votes(&self) -> VoteResult {
        self.config.voters.vote_result(&self.votes)
    }

    /// Whether a quorum was heard from since the last check (the leader itself counts).
    pub fn quorum_active(&self, self_id: NodeId) -> bool {
        let votes: BTreeMap<NodeId, bool> = self
            .progress
            .iter()
            .filter(|(id, pr)| !pr.is_learner || **id == self_id)
            .map(|(&id, pr)| (id, id == self_id || pr.recent_active))
            .collect();
        self.config.voters.vote_result(&votes) == VoteResult::Won
    }
}
