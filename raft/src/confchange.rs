//! Turns a `ConfChange` into a new configuration and progress map, or refuses it. Works on
//! copies: the caller switches to the result only if every step succeeded, so a refused change
//! leaves nothing half-applied.

use crate::error::ConfChangeError;
use crate::message::{ConfChange, ConfChangeKind, ConfChangeSingle, NodeId};
use crate::tracker::{ProgressMap, ProgressTracker, TrackerConfig};

/// Computes the configuration after `cc`. `last_index` seeds new members' progress.
pub fn apply(
    tracker: &ProgressTracker,
    cc: &ConfChange,
    last_index: u64,
) -> Result<(TrackerConfig, ProgressMap), ConfChangeError> {
    let mut cfg = tracker.config.clone();
    let mut prs = tracker.progress.clone();
    if cc.is_leave_joint() {
        leave_joint(&mut cfg, &mut prs)?;
    } else if let Some(auto_leave) = cc.enters_joint() {
        enter_joint(
            tracker,
            &mut cfg,
            &mut prs,
            auto_leave,
            &cc.changes,
            last_index,
        )?;
    } else {
        simple(tracker, &mut cfg, &mut prs, &cc.changes, last_index)?;
    }
    cfg.assert_valid();
    for id in cfg.ids() {
        assert!(
            prs.contains_key(&id),
            "configuration member {id} has no progress"
        );
    }
    assert_eq!(
        prs.len(),
        cfg.ids().len(),
        "progress for a non-member: {cfg:?}"
    );
    Ok((cfg, prs))
}

fn simple(
    tracker: &ProgressTracker,
    cfg: &mut TrackerConfig,
    prs: &mut ProgressMap,
    changes: &[ConfChangeSingle],
    last_index: u64,
) -> Result<(), ConfChangeError> {
    if cfg.voters.is_joint() {
        return Err(ConfChangeError::AlreadyJoint);
    }
    apply_changes(tracker, cfg, prs, changes, last_index)?;
    let before = &tracker.config.voters.incoming.voters;
    let after = &cfg.voters.incoming.voters;
    let altered = before.symmetric_difference(after).count();
    if altered > 1 {
        return Err(ConfChangeError::TooManyVoterChanges(altered));
    }
    Ok(())
}

fn enter_joint(
    tracker: &ProgressTracker,
    cfg: &mut TrackerConfig,
    prs: &mut ProgressMap,
    auto_leave: bool,
    changes: &[ConfChangeSingle],
    last_index: u64,
) -> Result<(), ConfChangeError> {
    if cfg.voters.is_joint() {
        return Err(ConfChangeError::AlreadyJoint);
    }
    if cfg.voters.incoming.voters.is_empty() {
        // A joint configuration with an empty outgoing half would not be joint at all.
        return Err(ConfChangeError::NoVoters);
    }
    cfg.voters.outgoing = cfg.voters.incoming.clone();
    apply_changes(tracker, cfg, prs, changes, last_index)?;
    cfg.auto_leave = auto_leave;
    Ok(())
}

fn leave_joint(cfg: &mut TrackerConfig, prs: &mut ProgressMap) -> Result<(), ConfChangeError> {
    if !cfg.voters.is_joint() {
        return Err(ConfChangeError::NotJoint);
    }
    for id in std::mem::take(&mut cfg.learners_next) {
        cfg.learners.insert(id);
        prs.get_mut(&id)
            .expect("learner-next has progress")
            .is_learner = true;
    }
    let outgoing = std::mem::take(&mut cfg.voters.outgoing.voters);
    for id in outgoing {
        if !cfg.voters.incoming.voters.contains(&id) && !cfg.learners.contains(&id) {
            prs.remove(&id);
        }
    }
    cfg.auto_leave = false;
    Ok(())
}

fn apply_changes(
    tracker: &ProgressTracker,
    cfg: &mut TrackerConfig,
    prs: &mut ProgressMap,
    changes: &[ConfChangeSingle],
    last_index: u64,
) -> Result<(), ConfChangeError> {
    for change in changes {
        if change.node_id == 0 {
            return Err(ConfChangeError::ZeroNodeId);
        }
        match change.kind {
            ConfChangeKind::AddVoter => make_voter(tracker, cfg, prs, change.node_id, last_index),
            ConfChangeKind::AddLearner => {
                make_learner(tracker, cfg, prs, change.node_id, last_index)
            }
            ConfChangeKind::RemoveNode => remove(cfg, prs, change.node_id),
        }
    }
    if cfg.voters.incoming.voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    Ok(())
}

fn ensure_progress(
    tracker: &ProgressTracker,
    prs: &mut ProgressMap,
    id: NodeId,
    is_learner: bool,
    last_index: u64,
) {
    // A new member starts probing at the leader's last index, like etcd: the first append
    // tells us how far behind it is.
    prs.entry(id)
        .or_insert_with(|| tracker.new_progress(last_index.max(1), is_learner))
        .is_learner = is_learner;
}

fn make_voter(
    tracker: &ProgressTracker,
    cfg: &mut TrackerConfig,
    prs: &mut ProgressMap,
    id: NodeId,
    last_index: u64,
) {
    ensure_progress(tracker, prs, id, false, last_index);
    cfg.learners.remove(&id);
    cfg.learners_next.remove(&id);
    cfg.voters.incoming.voters.insert(id);
}

fn make_learner(
    tracker: &ProgressTracker,
    cfg: &mut TrackerConfig,
    prs: &mut ProgressMap,
    id: NodeId,
    last_index: u64,
) {
    if cfg.learners.contains(&id) {
        return;
    }
    ensure_progress(tracker, prs, id, true, last_index);
    cfg.voters.incoming.voters.remove(&id);
    if cfg.voters.outgoing.voters.contains(&id) {
        // Still a voter in the outgoing half: becomes a learner when the joint config is left.
        cfg.learners_next.insert(id);
        prs.get_mut(&id).expect("just ensured").is_learner = false;
    } else {
        cfg.learners.insert(id);
    }
}

fn remove(cfg: &mut TrackerConfig, prs: &mut ProgressMap, id: NodeId) {
    cfg.voters.incoming.voters.remove(&id);
    cfg.learners.remove(&id);
    cfg.learners_next.remove(&id);
    // An outgoing voter still counts until the joint configuration is left.
    if !cfg.voters.outgoing.voters.contains(&id) {
        prs.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ConfChangeTransition, ConfState};

    fn tracker(voters: &[NodeId], learners: &[NodeId]) -> ProgressTracker {
        let mut t = ProgressTracker::new(4, 0);
        t.restore(
            &ConfState {
                voters: voters.to_vec(),
                learners: learners.to_vec(),
                ..ConfState::default()
            },
            1,
        );
        t
    }

    fn change(pairs: &[(ConfChangeKind, NodeId)], transition: ConfChangeTransition) -> ConfChange {
        ConfChange {
            changes: pairs
                .iter()
                .map(|&(kind, node_id)| ConfChangeSingle { kind, node_id })
                .collect(),
            transition,
            context: Vec::new(),
        }
    }

    use ConfChangeKind::*;
    use ConfChangeTransition::*;

    #[test]
    fn simple_changes_alter_at_most_one_voter() {
        // (voters, learners, change) -> Ok(voters, learners) or Err
        type Case = (
            &'static [NodeId],
            &'static [NodeId],
            Vec<(ConfChangeKind, NodeId)>,
            Result<(Vec<NodeId>, Vec<NodeId>), ConfChangeError>,
        );
        let cases: Vec<Case> = vec![
            (
                &[1, 2, 3],
                &[],
                vec![(AddVoter, 4)],
                Ok((vec![1, 2, 3, 4], vec![])),
            ),
            (
                &[1, 2, 3],
                &[],
                vec![(RemoveNode, 1)],
                Ok((vec![2, 3], vec![])),
            ),
            (
                &[1, 2, 3],
                &[],
                vec![(AddLearner, 4)],
                Ok((vec![1, 2, 3], vec![4])),
            ),
            (
                &[1, 2, 3],
                &[4],
                vec![(AddVoter, 4)],
                Ok((vec![1, 2, 3, 4], vec![])),
            ),
            (
                &[1, 2, 3],
                &[],
                vec![(AddLearner, 3)],
                Ok((vec![1, 2], vec![3])),
            ),
            (
                &[1],
                &[],
                vec![(RemoveNode, 1)],
                Err(ConfChangeError::NoVoters),
            ),
            (
                &[1, 2, 3],
                &[],
                vec![(AddVoter, 0)],
                Err(ConfChangeError::ZeroNodeId),
            ),
        ];
        for (voters, learners, changes, want) in cases {
            let t = tracker(voters, learners);
            let got = apply(&t, &change(&changes, Auto), 5).map(|(cfg, _)| {
                (
                    cfg.voters.incoming.voters.into_iter().collect::<Vec<_>>(),
                    cfg.learners.into_iter().collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, want, "{voters:?}/{learners:?} {changes:?}");
        }
        // Two voter changes in one simple step are refused even when spelled out explicitly.
        let mut t = tracker(&[1, 2, 3], &[]);
        let (cfg, prs) = apply(&t, &change(&[(AddLearner, 4)], Auto), 5).unwrap();
        t.config = cfg;
        t.progress = prs;
        let mut cfg = t.config.clone();
        let mut prs = t.progress.clone();
        assert_eq!(
            simple(
                &t,
                &mut cfg,
                &mut prs,
                &change(&[(AddVoter, 4), (RemoveNode, 1)], Auto).changes,
                5
            ),
            Err(ConfChangeError::TooManyVoterChanges(2))
        );
    }

    #[test]
    fn joint_change_swaps_voters_and_demotes_through_learners_next() {
        let t = tracker(&[1, 2, 3], &[]);
        let (cfg, prs) = apply(&t, &change(&[(AddVoter, 4), (AddLearner, 3)], Auto), 5).unwrap();
        assert!(cfg.voters.is_joint() && cfg.auto_leave);
        assert_eq!(
            cfg.learners_next.iter().copied().collect::<Vec<_>>(),
            vec![3]
        );
        let joint = ProgressTracker {
            config: cfg,
            progress: prs,
            ..ProgressTracker::new(4, 0)
        };
        assert_eq!(
            apply(&joint, &change(&[(AddVoter, 5)], Auto), 5).unwrap_err(),
            ConfChangeError::AlreadyJoint
        );
        let (left, prs) = apply(&joint, &ConfChange::leave_joint(), 5).unwrap();
        assert!(!left.voters.is_joint());
        assert_eq!(
            left.voters
                .incoming
                .voters
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert_eq!(left.learners.iter().copied().collect::<Vec<_>>(), vec![3]);
        assert!(prs[&3].is_learner);
        assert_eq!(
            apply(&t, &ConfChange::leave_joint(), 5).unwrap_err(),
            ConfChangeError::NotJoint
        );
    }

    #[test]
    fn a_removed_outgoing_voter_keeps_progress_until_the_joint_config_is_left() {
        let t = tracker(&[1, 2, 3], &[]);
        let (cfg, prs) = apply(&t, &change(&[(RemoveNode, 1)], JointExplicit), 5).unwrap();
        assert!(prs.contains_key(&1) && !cfg.auto_leave);
        let joint = ProgressTracker {
            config: cfg,
            progress: prs,
            ..ProgressTracker::new(4, 0)
        };
        let (_, prs) = apply(&joint, &ConfChange::leave_joint(), 5).unwrap();
        assert!(!prs.contains_key(&1));
    }
}
