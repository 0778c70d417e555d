//! Quorum arithmetic: majority configurations and joint (two-majority) configurations. Pure
//! functions over sets of ids; knows nothing about messages or logs.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Pending,
    Lost,
    Won,
}

/// A set of voters deciding by simple majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    pub voters: BTreeSet<NodeId>,
}

impl MajorityConfig {
    /// The largest index acknowledged by a majority. An empty configuration agrees to anything
    /// (u64::MAX), so that a joint configuration with an empty half behaves like the other half.
    pub fn committed_index(&self, acked: impl Fn(NodeId) -> u64) -> u64 {
        if self.voters.is_empty() {
            return u64::MAX;
        }
        let mut indices: Vec<u64> = self.voters.iter().map(|&id| acked(id)).collect();
        indices.sort_unstable_by(|a, b| b.cmp(a));
        indices[self.voters.len() / 2]
    }

    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut granted, mut missing) = (0, 0);
        for id in &self.voters {
            match votes.get(id) {
                Some(true) => granted += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let quorum = self.voters.len() / 2 + 1;
        if granted >= quorum {
            VoteResult::Won
        } else if granted + missing >= quorum {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// The configuration during a membership change: decisions need a majority of both halves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    pub incoming: MajorityConfig,
    /// Empty unless a joint change is in progress.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    pub fn is_joint(&self) -> bool {
        !self.outgoing.voters.is_empty()
    }

    pub fn ids(&self) -> BTreeSet<NodeId> {
        self.incoming
            .voters
            .union(&self.outgoing.voters)
            .copied()
            .collect()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.incoming.voters.contains(&id) || self.outgoing.voters.contains(&id)
    }

    pub fn committed_index(&self, acked: impl Fn(NodeId) -> u64) -> u64 {
        self.incoming
            .committed_index(&acked)
            .min(self.outgoing.committed_index(&acked))
    }

    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        match (
            self.incoming.vote_result(votes),
            self.outgoing.vote_result(votes),
        ) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn committed_index_is_the_largest_index_held_by_a_majority(acked in proptest::collection::vec(0u64..20, 1..8)) {
            let ids: Vec<NodeId> = (1..=acked.len() as u64).collect();
            let cfg = MajorityConfig { voters: ids.iter().copied().collect() };
            let got = cfg.committed_index(|id| acked[(id - 1) as usize]);
            // Brute force: the largest index that more than half of the voters have reached.
            let want = (0..20u64).filter(|&i| acked.iter().filter(|&&a| a >= i).count() * 2 > acked.len()).max().unwrap();
            prop_assert_eq!(got, want);
        }
    }

    fn majority(ids: &[NodeId]) -> MajorityConfig {
        MajorityConfig {
            voters: ids.iter().copied().collect(),
        }
    }

    #[test]
    fn committed_index_is_the_highest_index_a_majority_holds() {
        // (voters, acked index per voter in order) -> committed
        let cases: [(&[NodeId], &[u64], u64); 6] = [
            (&[], &[], u64::MAX),
            (&[1], &[7], 7),
            (&[1, 2], &[7, 5], 5),
            (&[1, 2, 3], &[7, 5, 0], 5),
            (&[1, 2, 3, 4], &[9, 7, 5, 0], 5),
            (&[1, 2, 3, 4, 5], &[9, 7, 5, 3, 0], 5),
        ];
        for (ids, acked, want) in cases {
            let cfg = majority(ids);
            let got = cfg.committed_index(|id| acked[ids.iter().position(|&x| x == id).unwrap()]);
            assert_eq!(got, want, "voters {ids:?} acked {acked:?}");
        }
    }

    #[test]
    fn a_joint_configuration_commits_only_what_both_halves_hold() {
        let joint = JointConfig {
            incoming: majority(&[1, 2, 3]),
            outgoing: majority(&[3, 4, 5]),
        };
        let acked = |id: NodeId| [0, 9, 9, 4, 4, 0][id as usize];
        assert_eq!(joint.committed_index(acked), 4);
    }

    #[test]
    fn vote_results() {
        let votes = |pairs: &[(NodeId, bool)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        let three = majority(&[1, 2, 3]);
        let cases = [
            (vec![], VoteResult::Pending),
            (vec![(1, true)], VoteResult::Pending),
            (vec![(1, true), (2, true)], VoteResult::Won),
            (vec![(1, true), (2, false)], VoteResult::Pending),
            (vec![(1, false), (2, false)], VoteResult::Lost),
        ];
        for (v, want) in cases {
            assert_eq!(three.vote_result(&votes(&v)), want, "{v:?}");
        }
        let joint = JointConfig {
            incoming: majority(&[1, 2, 3]),
            outgoing: majority(&[1, 4, 5]),
        };
        assert_eq!(
            joint.vote_result(&votes(&[(1, true), (2, true)])),
            VoteResult::Pending
        );
        assert_eq!(
            joint.vote_result(&votes(&[(1, true), (2, true), (4, true)])),
            VoteResult::Won
        );
        assert_eq!(
            joint.vote_result(&votes(&[(1, true), (2, true), (4, false), (5, false)])),
            VoteResult::Lost
        );
    }
}
