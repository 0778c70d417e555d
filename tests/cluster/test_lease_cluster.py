"""Leases across members, as etcd 3.5.1 behaves (CLUSTER_BINARY=etcd runs the same test on it):
a lease the leader granted is known on a follower the moment the grant is answered. etcd's
followers forward LeaseKeepAlive and LeaseTimeToLive to the leader; a Basalt follower answers
them from its own lessor, so before it calls a lease missing it must catch up with what the
leader committed. The leader answers a grant before its followers hear the commit, so without
that a follower asked at once says TTL 0 (keep-alive) or -1 (time-to-live). Packets between
members are held back (20 ms each way) so the follower always hears the commit after the
client heard the answer.
"""

import queue
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402
from cluster import rpc, rpc_grpc  # noqa: E402

GRANTS = 10
MEMBER_DELAY_MS = 20


def test_a_follower_knows_a_lease_as_soon_as_the_leader_answered_its_grant():
    why = cl.delay_available()
    if why:
        pytest.skip(why)
    with cl.Cluster(netns=True, election_ms=2000) as c:
        leader = c.leader()
        c.set_delay(MEMBER_DELAY_MS)
        follower = next(m for m in c.members if m is not leader)
        granting = rpc_grpc.LeaseStub(leader.channel())
        asking = rpc_grpc.LeaseStub(follower.channel())
        requests = queue.Queue()
        keep_alive = asking.LeaseKeepAlive(iter(requests.get, None), timeout=60)
        try:
            for i in range(GRANTS):
                lease = granting.LeaseGrant(rpc.LeaseGrantRequest(TTL=60), timeout=10)
                if i % 2:
                    requests.put(rpc.LeaseKeepAliveRequest(ID=lease.ID))
                    answer = next(keep_alive)
                    assert (answer.ID, answer.TTL) == (lease.ID, 60), f"grant {i}: {answer}"
                else:
                    answer = asking.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease.ID), timeout=10)
                    assert answer.grantedTTL == 60 and answer.TTL > 0, f"grant {i}: {answer}"
            # A lease that never existed is still reported missing, after the catch-up.
            requests.put(rpc.LeaseKeepAliveRequest(ID=lease.ID + 1))
            assert next(keep_alive).TTL == 0
            missing = asking.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=lease.ID + 1), timeout=10)
            assert missing.TTL == -1
        finally:
            requests.put(None)
