//! Behaviour of the public surface, one rule per test, on a small in-memory cluster whose
//! message delivery the test controls step by step.

mod common;

use basalt_raft::{
    ConfChange, ConfChangeKind, Config, MemStorage, Message, MessageType, NodeId, ProgressState,
    ProposalError, RawNode, ReadOnlyOption, Role, Storage,
};
use common::Cluster;

fn no_tweak(_: &mut Config) {}

#[test]
fn a_campaign_elects_one_leader_and_every_member_applies_its_proposals() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    let index = c.node(1).propose(b"x".to_vec()).unwrap();
    c.settle();
    for id in [1, 2, 3] {
        assert_eq!(c.applied[&id], vec![b"x".to_vec()], "node {id}");
        assert!(c.nodes[&id].status().applied >= index);
    }
}

#[test]
fn a_follower_refuses_proposals_and_names_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    assert_eq!(
        c.node(2).propose(vec![1]),
        Err(ProposalError::NotLeader {
            leader_hint: Some(1)
        })
    );
}

#[test]
fn only_pre_vote_keeps_a_partitioned_node_from_raising_its_term() {
    for (pre_vote, term_grows) in [(true, false), (false, true)] {
        let mut c = Cluster::new(&[1, 2, 3], &[], |cfg| cfg.pre_vote = pre_vote);
        c.elect(1);
        let before = c.term(3);
        c.isolate(3);
        c.tick(50);
        assert_eq!(c.term(3) > before, term_grows, "pre_vote {pre_vote}");
    }
}

#[test]
fn check_quorum_makes_a_leader_cut_off_from_its_quorum_step_down() {
    for (check_quorum, steps_down) in [(true, true), (false, false)] {
        let mut c = Cluster::new(&[1, 2, 3], &[], |cfg| {
            cfg.check_quorum = check_quorum;
            cfg.pre_vote = true;
        });
        c.elect(1);
        c.isolate(1);
        c.tick(25);
        assert_eq!(
            c.nodes[&1].status().soft_state.role != Role::Leader,
            steps_down,
            "check_quorum {check_quorum}"
        );
    }
}

#[test]
fn the_leader_sends_appends_before_its_write_but_counts_itself_only_once_persisted() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    c.blocked.insert((1, 3));
    let index = c.node(1).propose(b"p".to_vec()).unwrap();
    let rd = c.node(1).ready();
    assert!(
        rd.messages
            .iter()
            .any(|m| m.kind == MessageType::App && m.to == 2 && !m.entries.is_empty()),
        "appends leave before persistence"
    );
    assert!(rd.persisted_messages.is_empty());
    // Node 2 persists and acknowledges while the leader's own write is still in flight.
    for m in rd.messages.iter().filter(|m| m.to == 2).cloned() {
        c.node(2).step(m);
    }
    let rd2 = c.node(2).ready();
    assert!(
        rd2.messages.is_empty(),
        "a follower's acknowledgement waits for its write"
    );
    c.handle(2, rd2);
    let acks: Vec<Message> = c.queue.drain(..).filter(|m| m.to == 1).collect();
    for m in acks {
        c.node(1).step(m);
    }
    assert!(
        c.nodes[&1].status().hard_state.commit < index,
        "one follower of three is not a quorum without the leader's own write"
    );
    c.handle(1, rd);
    assert_eq!(
        c.nodes[&1].status().hard_state.commit,
        index,
        "the leader's persisted write completes the quorum"
    );
}

#[test]
fn vote_requests_wait_for_the_candidate_to_persist_its_term_and_vote() {
    let mut c = Cluster::new(&[1, 2, 3], &[], |cfg| cfg.pre_vote = false);
    c.node(1).campaign();
    let rd = c.node(1).ready();
    assert!(rd.messages.is_empty());
    assert_eq!(
        rd.persisted_messages
            .iter()
            .filter(|m| m.kind == MessageType::Vote)
            .count(),
        2
    );
    assert!(rd.must_sync && rd.hard_state.is_some_and(|hs| hs.vote == 1));
}

#[test]
fn pipelining_sends_new_entries_without_waiting_for_acks_up_to_the_window() {
    let window = 3;
    let mut c = Cluster::new(&[1, 2, 3], &[], |cfg| cfg.inflight_msgs_max = window);
    c.elect(1);
    assert_eq!(
        c.nodes[&1].status().progress[&2].state,
        ProgressState::Replicate
    );
    let mut appends_to_2 = 0;
    for i in 0..10u8 {
        c.node(1).propose(vec![i]).unwrap();
        let rd = c.node(1).ready();
        appends_to_2 += rd
            .messages
            .iter()
            .filter(|m| m.kind == MessageType::App && m.to == 2)
            .count();
        c.handle(1, rd);
        c.queue.clear(); // no acknowledgement ever arrives
    }
    assert_eq!(appends_to_2, window);
}

#[test]
fn proposals_between_readies_go_out_in_one_append_per_follower() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    for i in 0..20u8 {
        c.node(1).propose(vec![i]).unwrap();
    }
    let rd = c.node(1).ready();
    let appends: Vec<&Message> = rd
        .messages
        .iter()
        .filter(|m| m.kind == MessageType::App)
        .collect();
    assert_eq!(appends.len(), 2);
    assert!(appends.iter().all(|m| m.entries.len() == 20));
}

#[test]
fn a_lagging_follower_catches_up_in_one_rejection() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    c.isolate(3);
    for i in 0..50u8 {
        c.node(1).propose(vec![i]).unwrap();
        c.settle();
    }
    c.blocked.clear();
    c.tick(1);
    let delivered = c.settle();
    let rejections = delivered
        .iter()
        .filter(|m| m.kind == MessageType::AppResp && m.reject)
        .count();
    assert!(rejections <= 1, "{rejections} rejections");
    assert_eq!(c.applied[&3].len(), 50);
}

#[test]
fn one_heartbeat_round_confirms_every_read_waiting_when_it_starts() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    for i in 0..5u8 {
        c.node(1).read_index(vec![i]).unwrap();
    }
    let rd = c.node(1).ready();
    assert_eq!(
        rd.messages
            .iter()
            .filter(|m| m.kind == MessageType::Heartbeat)
            .count(),
        2,
        "one round for five reads"
    );
    c.handle(1, rd);
    c.settle();
    let commit = c.nodes[&1].status().hard_state.commit;
    let got: Vec<(u64, Vec<u8>)> = c.read_states[&1]
        .iter()
        .map(|r| (r.index, r.request_ctx.clone()))
        .collect();
    assert_eq!(got, (0..5u8).map(|i| (commit, vec![i])).collect::<Vec<_>>());
}

#[test]
fn a_read_on_a_follower_is_confirmed_by_the_leader() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    c.node(2).read_index(b"r".to_vec()).unwrap();
    c.settle();
    assert_eq!(
        c.read_states[&2]
            .iter()
            .map(|r| r.request_ctx.clone())
            .collect::<Vec<_>>(),
        vec![b"r".to_vec()]
    );
}

#[test]
fn an_isolated_leader_cannot_confirm_reads() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    c.isolate(1);
    c.node(1).read_index(b"r".to_vec()).unwrap();
    c.tick(3);
    assert!(c.read_states.get(&1).is_none_or(|r| r.is_empty()));
}

#[test]
fn a_lease_read_needs_no_round_trip_while_the_lease_holds() {
    let mut c = Cluster::new(&[1, 2, 3], &[], |cfg| {
        cfg.read_only = ReadOnlyOption::LeaseBased
    });
    let leader = c.elect_by_timeout();
    c.tick(1); // a heartbeat round confirms the lease
    c.node(leader).read_index(b"r".to_vec()).unwrap();
    let rd = c.node(leader).ready();
    assert!(rd.messages.is_empty() && rd.persisted_messages.is_empty());
    assert_eq!(rd.read_states.len(), 1);
}

#[test]
fn a_restart_claiming_an_applied_index_beyond_commit_is_refused() {
    let storage = MemStorage::new_with_conf_state(basalt_raft::ConfState {
        voters: vec![1],
        ..Default::default()
    });
    let cfg = Config {
        id: 1,
        applied: 5,
        ..Config::default()
    };
    assert!(matches!(
        RawNode::new(cfg, storage),
        Err(basalt_raft::ConfigError::AppliedOutOfRange {
            applied: 5,
            commit: 1
        })
    ));
}

#[test]
fn lease_reads_require_check_quorum() {
    let cfg = Config {
        id: 1,
        read_only: ReadOnlyOption::LeaseBased,
        check_quorum: false,
        ..Config::default()
    };
    assert!(RawNode::new(cfg, MemStorage::new()).is_err());
}

#[test]
fn with_lease_reads_a_restarted_voter_refuses_votes_for_an_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3], &[], |cfg| {
        cfg.read_only = ReadOnlyOption::LeaseBased
    });
    let leader = c.elect_by_timeout();
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (candidate, restarted) = (others[0], others[1]);
    // One follower restarts from its durable state: it may have backed the lease just before.
    let storage = c.nodes[&restarted].storage().clone();
    c.start(restarted, storage);
    c.isolate(leader);
    c.node(candidate).campaign();
    c.settle();
    assert_ne!(
        c.leader(),
        Some(candidate),
        "the restarted node voted inside a lease it may have backed"
    );
    c.tick(80);
    assert!(
        c.leader().is_some_and(|l| l != leader),
        "an election succeeds once the lease has run out"
    );
}

#[test]
fn leadership_transfer_hands_over_and_refuses_proposals_meanwhile() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    c.blocked.insert((1, 2));
    c.node(1).propose(vec![1]).unwrap();
    c.settle();
    c.node(1).transfer_leader(2).unwrap();
    assert!(matches!(
        c.node(1).propose(vec![2]),
        Err(ProposalError::Dropped { .. })
    ));
    c.blocked.clear();
    c.tick(1);
    assert_eq!(c.leader(), Some(2));
}

#[test]
fn a_learner_replicates_but_never_campaigns_and_votes_once_promoted() {
    let mut c = Cluster::new(&[1, 2, 3], &[4], no_tweak);
    c.elect(1);
    c.node(1).propose(b"a".to_vec()).unwrap();
    c.settle();
    assert_eq!(c.applied[&4], vec![b"a".to_vec()]);
    let status = c.nodes[&4].status();
    assert!(status.is_learner);
    c.node(4).campaign();
    c.settle();
    assert_eq!(c.leader(), Some(1));
    c.node(1)
        .propose_conf_change(ConfChange::single(ConfChangeKind::AddVoter, 4))
        .unwrap();
    c.settle();
    assert!(!c.nodes[&4].status().is_learner);
    assert_eq!(c.nodes[&1].status().conf_state.voters, vec![1, 2, 3, 4]);
}

#[test]
fn removing_the_leader_hands_leadership_to_an_up_to_date_voter() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    c.node(1)
        .propose_conf_change(ConfChange::single(ConfChangeKind::RemoveNode, 1))
        .unwrap();
    c.settle();
    let leader = c
        .leader()
        .expect("a successor leads without waiting for a timeout");
    assert_ne!(leader, 1);
    assert_eq!(c.nodes[&leader].status().conf_state.voters.len(), 2);
    c.node(leader).propose(b"after".to_vec()).unwrap();
    c.settle();
    assert_eq!(c.applied[&leader], vec![b"after".to_vec()]);
}

#[test]
fn a_joint_change_swaps_voters_and_leaves_the_joint_configuration_by_itself() {
    let mut c = Cluster::new(&[1, 2, 3], &[4], no_tweak);
    c.elect(1);
    let cc = ConfChange {
        changes: vec![
            basalt_raft::ConfChangeSingle {
                kind: ConfChangeKind::AddVoter,
                node_id: 4,
            },
            basalt_raft::ConfChangeSingle {
                kind: ConfChangeKind::RemoveNode,
                node_id: 3,
            },
        ],
        transition: basalt_raft::ConfChangeTransition::Auto,
        context: Vec::new(),
    };
    c.node(1).propose_conf_change(cc).unwrap();
    c.settle();
    let cs = c.nodes[&1].status().conf_state;
    assert_eq!((cs.voters, cs.voters_outgoing), (vec![1, 2, 4], vec![]));
}

#[test]
fn a_joint_configuration_is_left_even_when_a_transfer_delayed_the_leave() {
    let mut c = Cluster::new(&[1, 2, 3], &[4], no_tweak);
    c.elect(1);
    let swap = ConfChange {
        changes: vec![
            basalt_raft::ConfChangeSingle {
                kind: ConfChangeKind::AddVoter,
                node_id: 4,
            },
            basalt_raft::ConfChangeSingle {
                kind: ConfChangeKind::RemoveNode,
                node_id: 3,
            },
        ],
        transition: basalt_raft::ConfChangeTransition::Auto,
        context: Vec::new(),
    };
    c.node(1).propose_conf_change(swap).unwrap();
    c.isolate(3);
    // A transfer to the cut-off node never completes; meanwhile the leave is refused.
    c.node(1).transfer_leader(3).unwrap();
    c.settle();
    assert!(
        !c.nodes[&1].status().conf_state.voters_outgoing.is_empty(),
        "joint while the transfer runs"
    );
    c.tick(15);
    let cs = c.nodes[&1].status().conf_state;
    assert_eq!((cs.voters, cs.voters_outgoing), (vec![1, 2, 4], vec![]));
}

#[test]
fn only_one_configuration_change_may_be_pending() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    c.node(1)
        .propose_conf_change(ConfChange::single(ConfChangeKind::AddLearner, 4))
        .unwrap();
    let second = c
        .node(1)
        .propose_conf_change(ConfChange::single(ConfChangeKind::AddLearner, 5));
    assert!(matches!(
        second,
        Err(ProposalError::ConfChangeRefused { .. })
    ));
}

#[test]
fn a_new_leader_accepts_a_configuration_change_only_after_committing_in_its_term() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.node(1).campaign();
    // Deliver only until node 1 leads; its empty entry is not yet committed.
    while c.nodes[&1].status().soft_state.role != Role::Leader {
        c.process();
        let m = c.queue.pop_front().expect("election traffic");
        c.node(m.to).step(m);
    }
    let early = c
        .node(1)
        .propose_conf_change(ConfChange::single(ConfChangeKind::AddLearner, 4));
    assert!(matches!(
        early,
        Err(ProposalError::ConfChangeRefused { .. })
    ));
    c.settle();
    assert!(c
        .node(1)
        .propose_conf_change(ConfChange::single(ConfChangeKind::AddLearner, 4))
        .is_ok());
}

#[test]
fn a_follower_behind_the_compacted_log_gets_a_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], &[], no_tweak);
    c.elect(1);
    c.isolate(3);
    for i in 0..10u8 {
        c.node(1).propose(vec![i]).unwrap();
        c.settle();
    }
    let status = c.nodes[&1].status();
    let leader = c.node(1);
    leader
        .storage_mut()
        .create_snapshot(status.applied, status.conf_state, b"state".to_vec())
        .unwrap();
    leader.storage_mut().compact(status.applied).unwrap();
    c.blocked.clear();
    let mut delivered = Vec::new();
    for _ in 0..3 {
        for node in c.nodes.values_mut() {
            node.tick();
        }
        delivered.extend(c.settle());
    }
    assert!(delivered
        .iter()
        .any(|m| m.kind == MessageType::Snap && m.to == 3));
    assert_eq!(c.nodes[&3].storage().snapshot().unwrap().data, b"state");
    assert_eq!(c.nodes[&3].status().applied, status.applied);
}

#[test]
fn the_uncommitted_bytes_bound_drops_proposals() {
    let mut c = Cluster::new(&[1, 2, 3], &[], |cfg| cfg.uncommitted_bytes_max = 100);
    c.elect(1);
    c.isolate(1);
    assert!(c.node(1).propose(vec![0; 60]).is_ok());
    assert!(matches!(
        c.node(1).propose(vec![0; 60]),
        Err(ProposalError::Dropped { .. })
    ));
}
