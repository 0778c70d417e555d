"""Maintenance on the durable server, with etcdctl 3.5: endpoint status shows real values, HashKV
equals etcd 3.5.1's for the same history, defrag shrinks the file and keeps every key."""

import json
import subprocess

from harness import Server, etcd_bin


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
        for i in range(20):
            etcdctl(basalt.endpoint, "put", f"k{i}", "v")
        got = status(basalt.endpoint)
        assert got["leader"] == got["header"]["member_id"]
        assert got["raftAppliedIndex"] == got["raftIndex"] >= 20
        assert got["header"]["revision"] == 21
        assert got["dbSize"] >= got["dbSizeInUse"] > 0


def test_defrag_shrinks_the_file_and_keeps_every_key():
    with Server("basalt") as basalt:
        value = "x" * 4000
        for i in range(400):
            etcdctl(basalt.endpoint, "put", f"k{i:04d}", value)
        for i in range(0, 400, 2):
            etcdctl(basalt.endpoint, "del", f"k{i:04d}")
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
