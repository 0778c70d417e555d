"""Maintenance on the durable server, with etcdctl 3.5: endpoint status shows real values, HashKV
equals etcd 3.5.1's for the same history, defrag shrinks the file and keeps every key."""

import base64
import json
import shutil
import subprocess

import grpc
from etcd3.etcdrpc import rpc_pb2 as rpc
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc

from harness import Server, basalt_bin as harness_basalt, etcd_bin


def etcdctl(endpoint, *args):
    result = subprocess.run(
        [etcd_bin("etcdctl"), "--endpoints", endpoint, "--command-timeout=30s", *args],
        capture_output=True, text=True, env={"ETCDCTL_API": "3"}, timeout=60,
    )
    assert result.returncode == 0, f"etcdctl {args}: {result.stderr}"
    return result.stdout


def status(endpoint):
    return json.loads(etcdctl(endpoint, "endpoint", "status", "-w", "json"))[0]["Status"]


# A history with overwrites, deletes and a compaction, so HashKV's Keep(rev) rule matters.
HISTORY = [
    ["put", "a", "1"], ["put", "b", "1"], ["put", "a", "2"], ["del", "b"], ["put", "c", "1"],
    ["put", "b", "2"], ["compaction", "4"], ["put", "a", "3"], ["put", "d", "1"], ["del", "c"],
]


def test_hashkv_equals_etcds_for_the_same_history_at_every_revision():
    with Server("basalt") as basalt, Server("etcd") as etcd:
        for args in HISTORY:
            for server in (basalt, etcd):
                etcdctl(server.endpoint, *args)
        for revision in [0, 5, 8, 10]:
            hashes = [
                json.loads(etcdctl(s.endpoint, "endpoint", "hashkv", "--rev", str(revision), "-w", "json"))[0]["HashKV"]
                for s in (basalt, etcd)
            ]
            for h in hashes:
                h["header"].pop("cluster_id"), h["header"].pop("member_id"), h["header"].pop("raft_term")
            assert hashes[0] == hashes[1], f"rev {revision}: basalt {hashes[0]} etcd {hashes[1]}"


def test_endpoint_status_reports_the_leader_indexes_and_db_size():
    with Server("basalt") as basalt:
        with grpc.insecure_channel(basalt.endpoint) as channel:
            kv = rpc_grpc.KVStub(channel)
            for i in range(20):
                kv.Put(rpc.PutRequest(key=f"k{i}".encode(), value=b"v"), timeout=10)
        got = status(basalt.endpoint)
        assert got["leader"] == got["header"]["member_id"]
        assert got["raftAppliedIndex"] == got["raftIndex"] >= 20
        assert got["header"]["revision"] == 21
        assert got["dbSize"] >= got["dbSizeInUse"] > 0


def test_defrag_shrinks_the_file_and_keeps_every_key():
    with Server("basalt") as basalt:
        # Bulk writes through one gRPC channel: an etcdctl process per put would dominate.
        with grpc.insecure_channel(basalt.endpoint) as channel:
            kv = rpc_grpc.KVStub(channel)
            for i in range(400):
                kv.Put(rpc.PutRequest(key=f"k{i:04d}".encode(), value=b"x" * 4000), timeout=10)
            for i in range(0, 400, 2):
                kv.DeleteRange(rpc.DeleteRangeRequest(key=f"k{i:04d}".encode()), timeout=10)
        revision = status(basalt.endpoint)["header"]["revision"]
        etcdctl(basalt.endpoint, "compaction", str(revision))
        db = basalt.dir / "data" / "member" / "snap" / "db"
        before = db.stat().st_size
        etcdctl(basalt.endpoint, "defrag")
        after = db.stat().st_size
        assert after < before, f"defrag left the file at {after} bytes (was {before})"
        keys = etcdctl(basalt.endpoint, "get", "k", "--prefix", "--keys-only").split()
        assert keys == [f"k{i:04d}" for i in range(1, 400, 2)]
        got = status(basalt.endpoint)
        assert got["dbSize"] == after


def test_snapshot_save_status_and_restore_round_trip_every_key():
    with Server("basalt") as basalt, Server("basalt") as restored:
        with grpc.insecure_channel(basalt.endpoint) as channel:
            kv = rpc_grpc.KVStub(channel)
            for i in range(50):
                kv.Put(rpc.PutRequest(key=f"k{i:02d}".encode(), value=f"v{i}".encode()), timeout=10)
        snapshot = basalt.dir / "snap.db"
        out = etcdctl(basalt.endpoint, "snapshot", "save", str(snapshot))
        assert "Snapshot saved" in out
        status_out = subprocess.run(
            [harness_basalt(), "snapshot", "status", str(snapshot), "-w", "json"],
            capture_output=True, text=True, check=True,
        ).stdout
        assert json.loads(status_out)["revision"] == 51

        restored.stop()
        shutil.rmtree(restored.dir / "data")
        subprocess.run(
            [harness_basalt(), "snapshot", "restore", str(snapshot), "--data-dir", str(restored.dir / "data")],
            check=True, capture_output=True,
        )
        restored.start()
        got = json.loads(etcdctl(restored.endpoint, "get", "k", "--prefix", "-w", "json"))
        assert [kv["value"] for kv in got["kvs"]] == [
            base64.b64encode(f"v{i}".encode()).decode() for i in range(50)
        ]
        assert got["header"]["revision"] == 51
        put = json.loads(etcdctl(restored.endpoint, "put", "after", "x", "-w", "json"))
        assert put["header"]["revision"] == 52, "revisions continue from the snapshot"


def test_a_damaged_snapshot_is_refused_by_restore():
    with Server("basalt") as basalt:
        etcdctl(basalt.endpoint, "put", "k", "v")
        snapshot = basalt.dir / "snap.db"
        etcdctl(basalt.endpoint, "snapshot", "save", str(snapshot))
        data = bytearray(snapshot.read_bytes())
        data[100] ^= 0xFF
        snapshot.write_bytes(bytes(data))
        result = subprocess.run(
            [harness_basalt(), "snapshot", "restore", str(snapshot), "--data-dir", str(basalt.dir / "r")],
            capture_output=True, text=True,
        )
        assert result.returncode != 0
        assert "does not match" in result.stderr


def etcdctl_result(endpoint, *args):
    return subprocess.run(
        [etcd_bin("etcdctl"), "--endpoints", endpoint, "--command-timeout=30s", *args],
        capture_output=True, text=True, env={"ETCDCTL_API": "3"}, timeout=60,
    )


def test_quota_raises_nospace_and_compact_defrag_disarm_recover_as_etcds_docs_say():
    quota_bytes = 2 * 1024 * 1024
    with Server("basalt", ["--quota-backend-bytes", str(quota_bytes)]) as basalt:
        value = "v" * 100_000
        for i in range(200):
            result = etcdctl_result(basalt.endpoint, "put", "key", value)
            if result.returncode != 0:
                break
        else:
            raise AssertionError("the quota never refused a put")
        assert "etcdserver: mvcc: database space exceeded" in result.stderr
        assert "alarm:NOSPACE" in etcdctl(basalt.endpoint, "alarm", "list")
        assert any("alarm:NOSPACE" in e for e in status(basalt.endpoint)["errors"])
        # Reads and deletes still work while the alarm is raised.
        etcdctl(basalt.endpoint, "get", "key", "--keys-only")
        revision = status(basalt.endpoint)["header"]["revision"]
        etcdctl(basalt.endpoint, "compact", str(revision))
        etcdctl(basalt.endpoint, "defrag")
        refused = etcdctl_result(basalt.endpoint, "put", "key", "small")
        assert "database space exceeded" in refused.stderr, "the alarm holds until disarmed"
        # etcd 3.5.1 refuses a lease grant under NOSPACE too (its capped applier).
        refused = etcdctl_result(basalt.endpoint, "lease", "grant", "60")
        assert "database space exceeded" in refused.stderr, refused
        etcdctl(basalt.endpoint, "alarm", "disarm")
        assert etcdctl(basalt.endpoint, "alarm", "list").strip() == ""
        etcdctl(basalt.endpoint, "put", "key", "small")
