use basalt_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use futures_lite::future::block_on;
use std::time::Instant;

use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("basalt-node-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path, snapshot_count: u64) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        snapshot_count,
        max_wals: 1,
        ..NodeConfig::default()
    }
}

fn put(kv: &RaftKv, key: &str, value: &str) -> PutResponse {
    block_on(kv.put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }))
    .unwrap()
}

fn everything(serializable: bool) -> RangeRequest {
    RangeRequest {
        key: vec![0].into(),
        range_end: vec![0].into(),
        serializable,
        ..Default::default()
    }
}

#[test]
fn acknowledged_writes_and_revisions_survive_a_restart_and_snapshots() {
    let dir = temp_dir("restart");
    // A small snapshot count makes the run cross several snapshots and WAL purges.
    for (round, snapshot_count) in [(0u32, 7u64), (1, 7), (2, 100_000)] {
        let node = Node::start(config(&dir, snapshot_count)).unwrap();
        let kv = node.kv();
        let before = block_on(kv.range(everything(false))).unwrap();
        assert_eq!(before.kvs.len(), (round as usize * 20).min(20));
        let mut revision = before.header.unwrap().revision;
        for i in 0..50 {
            let resp = put(&kv, &format!("key{}", i % 20), &format!("{round}-{i}"));
            let next = resp.header.unwrap().revision;
            assert_eq!(next, revision + 1, "revisions never go backwards");
            revision = next;
        }
        for serializable in [false, true] {
            let after = block_on(kv.range(everything(serializable))).unwrap();
            assert_eq!(after.kvs.len(), 20);
            assert_eq!(after.header.unwrap().revision, revision);
        }
        node.stop().unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn apply_errors_reach_the_caller_with_etcds_status() {
    let dir = temp_dir("errors");
    let node = Node::start(config(&dir, 100_000)).unwrap();
    let kv = node.kv();
    put(&kv, "a", "1");
    let future = block_on(kv.compact(CompactionRequest {
        revision: 99,
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(
        future.message,
        "etcdserver: mvcc: required revision is a future revision"
    );
    node.stop().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A free loopback port (bound and released; a race with other binders is harmless here).
fn free_peer_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn member_config(dir: &std::path::Path, founder: &Member, founders: &[Member]) -> NodeConfig {
    NodeConfig {
        member_id: founder.id,
        cluster_id: 77,
        name: founder.name.clone(),
        listen_peer_urls: founder.peer_ur_ls.clone(),
        initial_members: founders.to_vec(),
        // Slow enough that a loaded test machine does not call elections by itself.
        heartbeat_interval_ms: 50,
        election_timeout_ms: 1000,
        ..config(dir, 100_000)
    }
}

/// Polls `check` until it holds; the bound only keeps a broken build from hanging forever.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn value_at(kv: &RaftKv, key: &str, serializable: bool) -> Option<String> {
    let resp = block_on(kv.range(RangeRequest {
        key: key.as_bytes().to_vec().into(),
        serializable,
        ..Default::default()
    }))
    .ok()?;
    resp.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// A put retried while the member knows no leader yet (elections settle at their own pace).
fn put_when_led(kv: &RaftKv, key: &str, value: &str) {
    eventually("a put is accepted", || {
        block_on(kv.put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        }))
        .is_ok()
    });
}

fn leader_of(kvs: &[RaftKv]) -> Option<u64> {
    kvs.iter()
        .map(|kv| kv.published.leader_id.load(Ordering::Relaxed))
        .find(|&id| id != 0)
}

#[test]
fn a_three_member_cluster_replicates_forwards_changes_members_and_survives_its_leader() {
    let dir = temp_dir("cluster");
    let founders: Vec<Member> = (1..=3)
        .map(|i| Member {
            id: i,
            name: format!("m{i}"),
            peer_ur_ls: vec![free_peer_url()],
            ..Member::default()
        })
        .collect();
    let mut nodes: Vec<Option<Node>> = founders
        .iter()
        .map(|m| Some(Node::start(member_config(&dir.join(&m.name), m, &founders)).unwrap()))
        .collect();
    let kvs: Vec<RaftKv> = nodes.iter().map(|n| n.as_ref().unwrap().kv()).collect();
    eventually("every member knows the leader", || {
        let leader = leader_of(&kvs);
        leader.is_some()
            && kvs
                .iter()
                .all(|kv| Some(kv.published.leader_id.load(Ordering::Relaxed)) == leader)
    });

    // Every member takes writes (followers forward them) and serves linearizable reads.
    for (i, kv) in kvs.iter().enumerate() {
        put_when_led(kv, &format!("k{i}"), "v");
    }
    for kv in &kvs {
        for i in 0..3 {
            let key = format!("k{i}");
            eventually("a linearizable read sees every write", || {
                value_at(kv, &key, false).as_deref() == Some("v")
            });
        }
    }

    // The leader goes; the other two elect one of themselves and keep every write.
    let leader = leader_of(&kvs).unwrap();
    let leader_at = (leader - 1) as usize;
    nodes[leader_at].take().unwrap().stop().unwrap();
    let survivors: Vec<RaftKv> = (0..3)
        .filter(|&i| i != leader_at)
        .map(|i| kvs[i].clone())
        .collect();
    eventually("a new leader", || {
        leader_of(&survivors).is_some_and(|id| id != leader)
            && survivors
                .iter()
                .all(|kv| kv.published.leader_id.load(Ordering::Relaxed) != leader)
    });
    put_when_led(&survivors[0], "after", "failover");
    eventually("the other survivor reads the write", || {
        value_at(&survivors[1], "after", false).as_deref() == Some("failover")
    });

    // A learner joins by snapshot, is promoted, and is removed again.
    let restarted = &founders[leader_at];
    nodes[leader_at] = Some(
        Node::start(member_config(
            &dir.join(&restarted.name),
            restarted,
            &founders,
        ))
        .unwrap(),
    );
    let learner_url = free_peer_url();
    // Retried: right after a failover the leader may not have committed in its term yet.
    let mut added = None;
    eventually("the learner is added", || {
        let add = MembershipChange::Add {
            peer_urls: vec![learner_url.clone()],
            is_learner: true,
        };
        added = block_on(survivors[0].change_members(add)).ok();
        added.is_some()
    });
    let (learner, members) = added.expect("added");
    assert!(learner.is_learner);
    assert_eq!(members.len(), 4);
    let joiner = Node::start(NodeConfig {
        join_existing: true,
        ..member_config(
            &dir.join("learner"),
            &Member {
                name: "learner".into(),
                ..learner.clone()
            },
            &members,
        )
    })
    .unwrap();
    let joiner_kv = joiner.kv();
    eventually("the learner catches up", || {
        value_at(&joiner_kv, "after", true).as_deref() == Some("failover")
    });
    eventually("the learner is promoted", || {
        block_on(survivors[0].change_members(MembershipChange::Promote { id: learner.id })).is_ok()
    });
    eventually("the member is removed", || {
        let remove = MembershipChange::Remove { id: learner.id };
        block_on(survivors[1].change_members(remove)).is_ok_and(|(_, members)| members.len() == 3)
    });
    eventually("the removed member stops", || joiner.has_stopped());
    let _ = joiner.stop();
    for node in nodes.into_iter().flatten() {
        node.stop().unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Rewrites the value of the newest record in a stopped member's key bucket, keeping its
/// revision: a tree that no log entry could have made (what etcd's tests do to a bbolt file).
fn corrupt_newest_value(data_dir: &std::path::Path) {
    use basalt_engine::btree;
    use prost::Message as _;
    let db = btree::open(datadir::db_path(data_dir), btree::Options::default()).unwrap();
    let mut txn = db.begin_write().unwrap();
    {
        let mut keys = txn.bucket(basalt_engine::mvcc::KEY_BUCKET).unwrap();
        let (revision, record) = keys.cursor().last().unwrap().expect("a key was written");
        let mut kv = basalt_proto::mvccpb::KeyValue::decode(record.as_slice()).unwrap();
        kv.value = b"not what was written".to_vec().into();
        keys.insert(&revision, &kv.encode_to_vec()).unwrap();
    }
    txn.commit().unwrap();
    db.checkpoint(db.durable_applied_index().unwrap()).unwrap();
}

fn alarms(kv: &RaftKv) -> Vec<basalt_proto::etcdserverpb::AlarmMember> {
    let list = basalt_proto::etcdserverpb::AlarmRequest::default();
    block_on(kv.alarm(list)).map_or_else(|_| Vec::new(), |resp| resp.alarms)
}

#[test]
fn the_leader_asks_every_member_for_its_hash_over_tls_peers_and_raises_corrupt_on_a_mismatch() {
    use basalt_proto::etcdserverpb::{AlarmMember, AlarmType};
    let dir = temp_dir("corrupt");
    // Peers speak TLS (as with --peer-auto-tls): the check must dial them as the transport does.
    let fixtures = dir.join("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    let peer_tls = crate::tls::self_signed(&fixtures, &["127.0.0.1".to_string()], 1).unwrap();
    let founders: Vec<Member> = (1..=3)
        .map(|i| Member {
            id: i,
            name: format!("m{i}"),
            peer_ur_ls: vec![free_peer_url().replace("http://", "https://")],
            ..Member::default()
        })
        .collect();
    let start = |member: &Member| {
        Node::start(NodeConfig {
            peer_tls: Some(peer_tls.clone()),
            corrupt_check_interval: Some(std::time::Duration::from_millis(300)),
            ..member_config(&dir.join(&member.name), member, &founders)
        })
        .unwrap()
    };
    let mut nodes: Vec<Option<Node>> = founders.iter().map(|m| Some(start(m))).collect();
    let kvs: Vec<RaftKv> = nodes.iter().map(|n| n.as_ref().unwrap().kv()).collect();
    put_when_led(&kvs[0], "k", "v");
    for kv in &kvs {
        eventually("every member applies the write", || {
            value_at(kv, "k", true).as_deref() == Some("v")
        });
    }
    // Several checks of equal members raise nothing.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(alarms(&kvs[0]), Vec::new());

    let leader = leader_of(&kvs).unwrap();
    let follower = founders.iter().find(|m| m.id != leader).unwrap();
    let at = (follower.id - 1) as usize;
    nodes[at].take().unwrap().stop().unwrap();
    corrupt_newest_value(&dir.join(&follower.name));
    nodes[at] = Some(start(follower));
    let restarted = nodes[at].as_ref().unwrap().kv();
    assert_eq!(
        value_at(&restarted, "k", true).as_deref(),
        Some("not what was written")
    );
    let corrupt = AlarmMember {
        member_id: follower.id,
        alarm: AlarmType::Corrupt as i32,
    };
    eventually("the leader raises CORRUPT for the altered member", || {
        alarms(&kvs[(leader - 1) as usize]) == [corrupt]
    });
    for node in nodes.into_iter().flatten() {
        node.stop().unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Ranges read on other threads (as client cores read the shared applied state) while the raft
/// core rewrites every key in one Txn per round, compacts, defragments and checkpoints: each
/// answer is one revision's whole view (every key from the same Txn), a linearizable one never
/// older than the newest Txn acknowledged before it began, and the only error is etcd's
/// compacted one (a compaction passed the read's revision between two of its slices).
#[test]
fn ranges_on_other_threads_see_whole_revisions_while_the_writer_compacts_and_defragments() {
    use basalt_proto::etcdserverpb::{request_op, RequestOp, TxnRequest};
    use std::sync::atomic::AtomicI64;

    const KEYS: usize = 2000;
    const ROUNDS: i64 = 40;
    let dir = temp_dir("shared-reads");
    // A small snapshot count adds raft snapshots and WAL purges to the writer's work.
    let node = Node::start(NodeConfig {
        limits: Limits {
            max_txn_ops: KEYS,
            max_request_bytes: 4 << 20,
        },
        ..config(&dir, 50)
    })
    .unwrap();
    let kv = node.kv();
    let acknowledged = Arc::new(AtomicI64::new(-1));
    let value = |round: i64| format!("{round:04}{}", "v".repeat(96));
    let write_round = |round: i64| {
        let success = (0..KEYS)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("k{i:05}").into_bytes().into(),
                    value: value(round).into_bytes().into(),
                    ..Default::default()
                })),
            })
            .collect();
        block_on(kv.txn(TxnRequest {
            success,
            ..Default::default()
        }))
        .unwrap()
        .header
        .unwrap()
        .revision
    };
    write_round(0);
    acknowledged.store(0, Ordering::SeqCst);
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = [false, true]
        .into_iter()
        .map(|serializable| {
            let kv = node.kv();
            let done = done.clone();
            let acknowledged = acknowledged.clone();
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .spawn(move || async move {
                    let (mut answers, mut compacted) = (0, 0);
                    while !done.load(Ordering::SeqCst) {
                        let newest_before = acknowledged.load(Ordering::SeqCst);
                        let mut req = everything(serializable);
                        req.key = b"k".to_vec().into();
                        req.range_end = b"l".to_vec().into();
                        match kv.range(req).await {
                            Ok(resp) => {
                                assert_eq!(resp.kvs.len(), KEYS);
                                let first = &resp.kvs[0];
                                assert!(resp.kvs.iter().all(|kv| kv.value == first.value
                                    && kv.mod_revision == first.mod_revision));
                                let round: i64 =
                                    String::from_utf8_lossy(&first.value[..4]).parse().unwrap();
                                if !serializable {
                                    assert!(round >= newest_before, "{round} < {newest_before}");
                                }
                                answers += 1;
                            }
                            Err(status) => {
                                assert_eq!(
                                    status.message,
                                    "etcdserver: mvcc: required revision has been compacted"
                                );
                                compacted += 1;
                            }
                        }
                    }
                    (answers, compacted)
                })
                .unwrap()
        })
        .collect();
    let mut previous = 0;
    for round in 1..=ROUNDS {
        let revision = write_round(round);
        acknowledged.store(round, Ordering::SeqCst);
        if round % 5 == 0 {
            block_on(kv.compact(CompactionRequest {
                revision: previous,
                ..Default::default()
            }))
            .unwrap();
        }
        if round % 13 == 0 {
            block_on(kv.defragment()).unwrap();
        }
        previous = revision;
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        let (answers, _compacted) = reader.join().unwrap();
        assert!(answers > 0, "a reader got no whole answer");
    }
    node.stop().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
