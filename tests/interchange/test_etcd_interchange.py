"""etcd data interchange with the real etcd 3.5.1 and etcdutl: a seeded random history (puts,
deletes, txns, a compaction, leases, auth) is written to one server, snapshotted and restored
into the other kind; then the same reads, HashKV at several revisions, the leases, auth and a
watch from an old revision must answer the same on both. Bad snapshot files are refused with a
message naming the file and what was wrong, and leave no data dir behind."""

import hashlib
import json
import shutil

import grpc
import pytest
from etcd3.etcdrpc import rpc_pb2 as rpc
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc

from harness import Server, basalt_bin, etcd_bin
from interchange.history import RPC_TIMEOUT_S, observe, restore_flags, run, snapshot_save, write_history

@pytest.mark.parametrize("source,target", [("etcd", "basalt"), ("basalt", "etcd")])
def test_a_random_history_moves_between_etcd_and_basalt(source, target):
    with Server(source) as origin, Server(target) as restored:
        compacted = write_history(origin.endpoint, seed=len(source))
        snapshot = origin.dir / "snapshot.db"
        snapshot_save(origin, snapshot)
        # Both tools read the file and agree on what is in it.
        etcdutl = run(etcd_bin("etcdutl"), "snapshot", "status", str(snapshot), "-w", "json").stdout
        ours = run(basalt_bin(), "snapshot", "status", str(snapshot), "-w", "json").stdout
        assert json.loads(ours) == json.loads(etcdutl)
        restored.stop()
        shutil.rmtree(restored.dir / "data", ignore_errors=True)
        if target == "etcd":
            run(etcd_bin("etcdutl"), "snapshot", "restore", str(snapshot), *restore_flags(restored))
        else:
            run(basalt_bin(), "snapshot", "restore", str(snapshot), *restore_flags(restored))
        restored.start()
        assert observe(restored.endpoint, compacted) == observe(origin.endpoint, compacted)


def etcd_snapshot(tmp_path):
    """A small snapshot saved from etcd 3.5.1 (no auth), and its bytes."""
    with Server("etcd") as etcd:
        with grpc.insecure_channel(etcd.endpoint) as channel:
            kv = rpc_grpc.KVStub(channel)
            for i in range(300):
                kv.Put(rpc.PutRequest(key=b"k%03d" % i, value=b"v" * 100), timeout=RPC_TIMEOUT_S)
        path = tmp_path / "etcd.db"
        run(etcd_bin("etcdctl"), "--endpoints", etcd.endpoint, "snapshot", "save", str(path))
    return path, path.read_bytes()


def with_trailer(tree: bytes) -> bytes:
    return tree + hashlib.sha256(tree).digest()


def test_bad_snapshot_files_are_refused_by_name_and_leave_no_data_dir(tmp_path):
    path, good = etcd_snapshot(tmp_path)
    tree = good[:-32]
    page = 4096
    root_page = int.from_bytes(tree[16 + 16:16 + 24], "little")
    damaged_leaf = bytearray(tree)
    damaged_leaf[root_page * page + 8] = 0x40  # the root's flags: neither branch nor leaf
    renamed = tree.replace(b"members_removed", b"members_REMOVED")
    cases = {
        "truncated": (good[: len(good) // 2], "truncated"),
        "wrong sha256": (tree + bytes(32), "does not match etcd's trailer"),
        "corrupt page": (with_trailer(bytes(damaged_leaf)), f"page {root_page}: page flags 0x40"),
        "v2 store": (b'{"Root":{"Path":"/","CreatedIndex":0}}', "an etcd v2 store"),
        "unknown bucket": (with_trailer(renamed), 'bucket "members_REMOVED" is not one of etcd\'s buckets'),
        "not a snapshot": (b"hello" * 1000, "not a snapshot"),
    }
    for name, (content, want) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '-')}.db"
        bad.write_bytes(content)
        target = tmp_path / f"restore-{name.replace(' ', '-')}"
        result = run(basalt_bin(), "snapshot", "restore", str(bad), "--data-dir", str(target), check=False)
        assert result.returncode != 0, name
        assert str(bad) in result.stderr and want in result.stderr, f"{name}: {result.stderr}"
        assert not target.exists(), f"{name}: restore left {list(target.rglob('*'))}"
    # A bare member/snap/db has no trailer: refused as etcdutl refuses it, read with the flag.
    bare = tmp_path / "bare.db"
    bare.write_bytes(tree)
    result = run(basalt_bin(), "snapshot", "restore", str(bare), "--data-dir", str(tmp_path / "bare"), check=False)
    assert "snapshot missing hash but --skip-hash-check=false" in result.stderr
    run(basalt_bin(), "snapshot", "restore", str(bare), "--data-dir", str(tmp_path / "bare"), "--skip-hash-check")
    status = run(basalt_bin(), "snapshot", "status", str(path), "-w", "json").stdout
    assert '"revision":301' in status
