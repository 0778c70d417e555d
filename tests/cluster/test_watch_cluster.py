"""Watch on a cluster member, as etcd 3.5.1 behaves (CLUSTER_BINARY=etcd runs the same tests on
it): a watch opened with `hasleader` metadata (clientv3's WithRequireLeader) ends with
Unavailable "etcdserver: no leader" once its member has lost the leader for a few election
timeouts (as does a `hasleader` LeaseKeepAlive stream), while a plain watch stays open; and a follower's watch survives the snapshot that
catches the follower up after a partition: it delivers every event after its start, or, when
the snapshot's compaction passed its next revision, the compacted answer; it never hangs.
"""

import queue
import sys
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "differential"))

import cluster as cl  # noqa: E402
from cluster import rpc, rpc_grpc  # noqa: E402
from kv_diff import prefix_end  # noqa: E402
from watch_diff import WatchStream  # noqa: E402

HEARTBEAT_MS, ELECTION_MS = 50, 500
# Generous bounds for a loaded 2-core machine; a hang is what they catch, not slowness.
ANSWER_TIMEOUT_S = 30.0
NO_LEADER_TIMEOUT_S = 40 * ELECTION_MS / 1000
HAS_LEADER = (("hasleader", "true"),)
NO_LEADER = ("error", "UNAVAILABLE", "etcdserver: no leader")
# etcd's leader keeps this many entries behind its snapshot for slow followers
# (SnapshotCatchUpEntries, fixed in 3.5); basalt keeps none.
ETCD_CATCH_UP_ENTRIES = 5000
SNAPSHOT_COUNT = 100
PUTS_IN_FLIGHT_MAX = 64


def next_answer(stream: WatchStream, timeout_s: float = ANSWER_TIMEOUT_S):
    try:
        return stream.responses.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"no answer within {timeout_s}s") from None


def open_watch(member, key: bytes, start_revision: int = 0, metadata=None) -> WatchStream:
    stream = WatchStream(member.channel(), metadata=metadata)
    stream.create(key=key, range_end=prefix_end(key), start_revision=start_revision)
    created = next_answer(stream)
    assert not isinstance(created, tuple) and created.created, created
    return stream


def wait_until(what: str, check, timeout_s: float = ANSWER_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def status(member):
    """Maintenance.Status, or an empty one while the member does not answer."""
    return member.status() or rpc.StatusResponse()


def followers(c, leader):
    return [m for m in c.members if m is not leader]


def put_many(member, count: int, prefix: bytes, first: int = 0) -> int:
    """Puts of `prefix`+i for i in first..first+count through `member`, PUTS_IN_FLIGHT_MAX at a
    time; the revision of the last."""
    kv = rpc_grpc.KVStub(member.channel())
    in_flight, revision = [], 0
    for i in range(first, first + count):
        request = rpc.PutRequest(key=prefix + b"%05d" % i, value=b"v")
        in_flight.append(kv.Put.future(request, timeout=60))
        if len(in_flight) >= PUTS_IN_FLIGHT_MAX or i == first + count - 1:
            revision = max([revision] + [f.result().header.revision for f in in_flight])
            in_flight.clear()
    return revision


def test_a_hasleader_watch_ends_with_no_leader_once_its_member_loses_the_leader():
    with cl.Cluster(heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS) as c:
        leader = c.leader()
        follower = followers(c, leader)[0]
        held = open_watch(follower, b"k", metadata=HAS_LEADER)
        plain = open_watch(follower, b"k")
        lease = rpc_grpc.LeaseStub(leader.channel()).LeaseGrant(rpc.LeaseGrantRequest(TTL=60), timeout=10)
        keep_alive_requests = queue.Queue()
        keep_alive = rpc_grpc.LeaseStub(follower.channel()).LeaseKeepAlive(
            iter(keep_alive_requests.get, None), metadata=HAS_LEADER,
            timeout=ANSWER_TIMEOUT_S + NO_LEADER_TIMEOUT_S)
        keep_alive_requests.put(rpc.LeaseKeepAliveRequest(ID=lease.ID))
        assert next(keep_alive).TTL > 0
        # With a leader, the stream stays open however many election timeouts pass.
        time.sleep(4 * ELECTION_MS / 1000)
        assert held.responses.empty() and plain.responses.empty()

        for m in followers(c, follower):
            m.kill()
        assert next_answer(held, NO_LEADER_TIMEOUT_S) == NO_LEADER
        # A hasleader LeaseKeepAlive stream is cancelled the same way.
        with pytest.raises(grpc.RpcError) as ended:
            next(keep_alive)
        assert ("error", ended.value.code().name, ended.value.details()) == NO_LEADER
        keep_alive_requests.put(None)
        assert plain.responses.empty(), "a watch without hasleader stays open"
        refused = WatchStream(follower.channel(), metadata=HAS_LEADER)
        refused.create(key=b"k")
        assert next_answer(refused) == NO_LEADER, "a new hasleader watch is refused at once"
        for stream in (held, plain, refused):
            stream.close()


@pytest.mark.parametrize("compact", [False, True], ids=["caught_up", "compacted"])
def test_a_followers_watch_survives_the_snapshot_that_catches_it_up(compact):
    if cl.netns_available():
        pytest.skip(cl.netns_available())
    flags = ["--snapshot-count", str(SNAPSHOT_COUNT)]
    with cl.Cluster(netns=True, heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS,
                    extra_flags=flags) as c:
        leader = c.leader()
        follower = followers(c, leader)[0]
        start = put_many(leader, 1, b"before/")
        c.wait_converged()
        stream = open_watch(follower, b"w/")

        c.isolate(follower)
        # The cut drops packets but keeps connections: the leader goes on sending entries to
        # the follower until its window of messages in flight is full, and what the kernel
        # buffered (hundreds of entries) arrives after the heal. Past those, and past what
        # etcd's leader keeps for slow followers, only a snapshot can catch the follower up.
        count = ETCD_CATCH_UP_ENTRIES + 10 * SNAPSHOT_COUNT
        wait_until("the cut holds: the follower lost its leader", lambda: status(follower).leader == 0)
        last = put_many(leader, count, b"w/")
        assert last == start + count
        if compact:
            kv = rpc_grpc.KVStub(leader.channel())
            kv.Compact(rpc.CompactionRequest(revision=last), timeout=10)
        c.heal()
        wait_until("the follower catches up", lambda: status(follower).header.revision >= last)
        installed = "applying snapshot" if c.kind == "etcd" else "installed a snapshot"
        log = follower.log_path.read_text(errors="replace")
        assert installed in log, "the follower was caught up by a snapshot"

        revisions = []
        while len(revisions) < count:
            answer = next_answer(stream)
            assert not isinstance(answer, tuple), answer
            if answer.canceled:
                break
            revisions += [event.kv.mod_revision for event in answer.events]
        if compact:
            assert answer.canceled and answer.compact_revision == last, answer
            # What came before the answer came from the follower's own log, in order.
            assert revisions == list(range(start + 1, start + 1 + len(revisions)))
        else:
            assert revisions == list(range(start + 1, last + 1))
        stream.close()
