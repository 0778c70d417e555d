"""A write reaches the followers' applied state at once even when nothing follows it, as on
etcd 3.5.1 (CLUSTER_BINARY=etcd runs the same test on it). Basalt's leader holds an append that
carries only a new commit index back for a moment (`COMMIT_HOLD` in
net/src/node/core/cluster.rs), so that the next write's append can carry it instead; when no
write comes, the held append must still go out. Heartbeats here are half a second apart: a
follower that learned the commit only from the next heartbeat would see a lone write ~250 ms
late on average.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402
from cluster import rpc, rpc_grpc  # noqa: E402

HEARTBEAT_MS, ELECTION_MS = 500, 5000
WRITES = 8
# A follower applies a lone write within milliseconds; the median leaves room for a loaded
# machine's stalls, while a write waiting for a heartbeat would put it near 250 ms.
MEDIAN_DELAY_MAX_S = 0.1
SEEN_TIMEOUT_S = 10.0


def seen_at(kv, key: bytes, value: bytes) -> float:
    """Polls a serializable read until it returns `value`; the time it first did."""
    deadline = time.monotonic() + SEEN_TIMEOUT_S
    while True:
        answer = kv.Range(rpc.RangeRequest(key=key, serializable=True), timeout=SEEN_TIMEOUT_S)
        now = time.monotonic()
        if answer.kvs and answer.kvs[0].value == value:
            return now
        assert now < deadline, f"{key!r} never reached the follower"
        time.sleep(0.002)


def test_a_lone_write_reaches_every_follower_without_waiting_for_a_heartbeat():
    with cl.Cluster(heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS) as c:
        leader = c.leader()
        leader_kv = rpc_grpc.KVStub(leader.channel())
        follower_kvs = [rpc_grpc.KVStub(m.channel()) for m in c.live() if m is not leader]
        delays = []
        for i in range(WRITES):
            key, value = b"spread/%d" % i, b"v%d" % i
            leader_kv.Put(rpc.PutRequest(key=key, value=value), timeout=SEEN_TIMEOUT_S)
            answered = time.monotonic()
            delays.append(max(seen_at(kv, key, value) for kv in follower_kvs) - answered)
            # Nothing else is written meanwhile: the next write comes after a heartbeat or so.
            time.sleep(HEARTBEAT_MS / 1000 * 0.7)
        assert statistics.median(delays) < MEDIAN_DELAY_MAX_S, \
            "followers applied lone writes late (s): %s" % ", ".join("%.3f" % d for d in delays)
