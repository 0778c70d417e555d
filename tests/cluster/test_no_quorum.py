"""A member restarted without a quorum (three members, all stopped, one started again alone)
must not answer a linearizable read: it has no leader to confirm its state is current, and etcd
waits for one. The same steps pass on etcd 3.5.1 with CLUSTER_BINARY=etcd.

Serializable reads: etcd 3.5.1 answers them neither. Its gRPC server serves nothing until the
member's attributes, which it publishes through raft at every start, are committed
(ReadyNotify), so on a lone member every call waits out the client's deadline. Basalt refuses
both kinds too: calls wait for a leader, and once the member has been without one for
`--push-off-election-timeouts` it refuses them at once with "etcdserver: no leader".
"""

import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402
from cluster import rpc, rpc_grpc  # noqa: E402

# Longer than a few election timeouts (the lone member campaigns and gets no votes) and short
# enough to keep the run small; the servers' own request timeout (etcd: 5 s + 2 election
# timeouts) may answer first.
READ_TIMEOUT_S = 4.0
# How long the lone member keeps being asked (from right after its restart, past push-off).
WATCH_S = 8.0


def read(m, serializable):
    return rpc_grpc.KVStub(m.channel()).Range(
        rpc.RangeRequest(key=b"k", serializable=serializable), timeout=READ_TIMEOUT_S)


def test_a_member_restarted_without_a_quorum_answers_no_read():
    with cl.Cluster(size=3) as c:
        lone = c.members[0]
        rpc_grpc.KVStub(lone.channel()).Put(rpc.PutRequest(key=b"k", value=b"v"), timeout=10)
        assert read(lone, serializable=False).kvs[0].value == b"v"
        for m in c.members:
            m.stop()
            m.close_channel()
        lone.start()

        deadline = time.monotonic() + WATCH_S
        refusals = {False: set(), True: set()}
        while time.monotonic() < deadline:
            for serializable in (False, True):
                try:
                    answer = read(lone, serializable)
                except grpc.RpcError as e:
                    refusals[serializable].add((e.code().name, e.details()))
                else:
                    raise AssertionError(f"serializable={serializable}: answered {answer}")
        # The client's deadline or the server's own refusal, never an answer.
        for serializable, seen in refusals.items():
            assert seen and seen <= {
                ("DEADLINE_EXCEEDED", "Deadline Exceeded"),
                ("UNAVAILABLE", "etcdserver: no leader"),
                ("UNAVAILABLE", "etcdserver: request timed out"),
            }, (serializable, seen)
