"""A full disk in a 3-member cluster: one follower's data dir is on a small loop-mounted ext4
that the writers fill, while the leader's and the other follower's disks have room.

What an operator must see: the full member raises NOSPACE through the log, so the whole
cluster refuses writes that take space with etcd's error (the alarm is cluster-wide, as in
etcd); no member stops and the leader keeps its term (a full disk is not a reason to lose
leadership); every member serves every acknowledged write, linearizably; once space is freed
on the full member and the alarm disarmed, writes go on without a restart; and the full
member restarts with everything it acknowledged.

Needs root and a loop device; skips with the reason otherwise.
"""

import sys
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))

import cluster as cl  # noqa: E402
from test_fulldisk import (  # noqa: E402,F401
    BALLAST_BYTES, NOSPACE, VALUE, fill, loopfs, put, put_until_resumed, read_all,
)


def start_with_member_on(fs, size=3, small=2):
    """A Basalt cluster whose member `small` (an index into its members) keeps its data dir on
    `fs`; the others keep theirs on the big filesystem."""
    c = cl.Cluster(kind="basalt", size=size)
    c.members = [c.new_member() for _ in range(size)]
    data = fs.mnt / "data"
    data.mkdir(mode=0o700)
    (c.members[small].dir / "data").symlink_to(data)
    initial = c.initial_cluster(c.members)
    for m in c.members:
        m.start(initial, "new")
    c.wait_ready()
    return c


def test_one_full_follower_stops_the_clusters_writes_not_its_members(loopfs):
    ballast = loopfs.mnt / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * BALLAST_BYTES)
    c = start_with_member_on(loopfs)
    try:
        leader = c.leader()
        if leader is c.members[2]:
            c.move_leader(c.members[0])
            leader = c.leader()
        term = leader.status().header.raft_term

        acked, errors = fill(leader.endpoint)
        assert acked, errors
        dead = [m for m in c.members if not m.alive()]
        assert not dead, f"{dead} stopped on a full disk:\n{c.log_tails(30)}"
        assert any(NOSPACE in e and e.startswith("RESOURCE_EXHAUSTED") for e in errors), errors
        assert all(NOSPACE in e for e in errors), errors
        print(f"acknowledged {len(acked)} puts of 8 KiB before NOSPACE; refusals: {errors}")

        alarms = c.etcdctl("alarm", "list", endpoints=[leader]).stdout
        assert "alarm:NOSPACE" in alarms and format(c.members[2].status().header.member_id, "d") in alarms, alarms
        for m in c.members:
            with pytest.raises(grpc.RpcError) as refused:
                put(m.endpoint, b"fill/refused")
            assert NOSPACE in refused.value.details(), (m, refused.value.details())
            got = read_all(m.endpoint)
            missing = [k for k in acked if got.get(k) != VALUE]
            assert not missing, f"{m}: {len(missing)} acknowledged writes not served, e.g. {missing[:3]}"
        assert c.leader() is leader and leader.status().header.raft_term == term, \
            f"leadership changed while the follower's disk was full:\n{c.log_tails(30)}"

        ballast.unlink()
        put_until_resumed(leader.endpoint, lambda: c.etcdctl("alarm", "disarm", endpoints=[leader]), 30)
        acked.add(b"fill/resumed")

        full = c.members[2]
        full.stop()
        full.start()
        deadline = time.monotonic() + 30
        while True:
            got = read_all(full.endpoint)
            if got.get(b"fill/resumed") == VALUE or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        missing = [k for k in acked if got.get(k) != VALUE]
        assert not missing, f"after its restart the full member lost {len(missing)} writes, e.g. {missing[:3]}"
        assert all(m.alive() for m in c.members), c.log_tails(30)
    finally:
        c.close()
