use basalt_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use futures_lite::future::block_on;

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
