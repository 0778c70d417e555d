"""The health endpoints in each state a member can be in: leader, follower, NOSPACE raised,
cut off from the others, and left without a quorum.

`/health` answers are etcd 3.5.1's: CLUSTER_BINARY=etcd runs the same steps on etcd and
checks the same table (etcd 3.5.1 has no `/livez` and `/readyz`, so those rows are checked on
basalt only; their checks are those of etcd 3.5's later releases, see net/src/health.rs).
"""

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402
from cluster import rpc, rpc_grpc  # noqa: E402

OK = (200, '{"health":"true","reason":""}')
# /livez and /readyz answer as the probes of etcd 3.5's later releases: a plain "ok".
PROBE_OK = (200, "ok\n")
# Longer than the request timeout (7 s), which bounds every check.
HTTP_TIMEOUT_S = 15
# How long a member cut off may take to notice it has no leader, and to push its clients off.
NOTICE_TIMEOUT_S = 15


def failed(reason):
    return (503, f'{{"health":"false","reason":"{reason}"}}\n')


def get(m, path):
    try:
        with urllib.request.urlopen(f"http://{m.endpoint}{path}", timeout=HTTP_TIMEOUT_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def check(m, table, state):
    """Each (path, answer) of `table`; rows for /livez, /readyz and ?verbose only on basalt."""
    for path, want in table:
        if cl.cluster_binary() == "etcd" and (not path.startswith("/health") or "verbose" in path):
            continue
        got = get(m, path)
        if callable(want):
            assert want(got), f"{state} {path}: {got}"
        else:
            assert got == want, f"{state} {path}"


def wait_for(m, path, answer):
    deadline = time.monotonic() + NOTICE_TIMEOUT_S
    while get(m, path) != answer:
        assert time.monotonic() < deadline, f"{m} {path} never answered {answer}"
        time.sleep(0.2)


def range_error(status_body):
    status, body = status_body
    return status == 503 and body.startswith('{"health":"false","reason":"RANGE ERROR:')


HEALTHY = [
    ("/health", OK),
    ("/health?serializable=true", OK),
    ("/livez", PROBE_OK),
    ("/readyz", PROBE_OK),
    ("/readyz?verbose", (200, "[+]alarms ok\n[+]linearizable_read ok\nreadyz check passed\n")),
]
NOSPACE = [
    ("/health", failed("ALARM NOSPACE")),
    ("/health?exclude=NOSPACE", OK),
    ("/livez", PROBE_OK),
    ("/readyz", failed("ALARM NOSPACE")),
]
LEADERLESS = [
    ("/health", failed("RAFT NO LEADER")),
    ("/health?serializable=true", failed("RAFT NO LEADER")),
    ("/livez?serializable=true", PROBE_OK),
    ("/readyz", range_error),
    ("/health?verbose", lambda got: got[0] == 503 and got[1].startswith(
        "[+]alarms ok\n[-]leader failed: RAFT NO LEADER\n[-]linearizable_read failed: RANGE ERROR:")
        and got[1].endswith("health check failed\n")),
]


def alarm(member, action):
    rpc_grpc.MaintenanceStub(member.channel()).Alarm(
        rpc.AlarmRequest(action=action, memberID=member.id, alarm=rpc.NOSPACE), timeout=10)


def test_health_endpoints_in_each_state():
    if cl.netns_available():
        pytest.skip(cl.netns_available())
    with cl.Cluster(size=3, netns=True) as c:
        leader = c.leader()
        follower = next(m for m in c.members if m is not leader)
        check(leader, HEALTHY, "leader")
        check(follower, HEALTHY, "follower")

        leader.status()
        # A follower applies an alarm change when it hears the commit, after the leader
        # answered the call: wait for it to arrive before checking every endpoint.
        alarm(leader, rpc.AlarmRequest.ACTIVATE)
        wait_for(follower, "/health", failed("ALARM NOSPACE"))
        check(follower, NOSPACE, "NOSPACE")
        alarm(leader, rpc.AlarmRequest.DEACTIVATE)
        wait_for(follower, "/health", OK)
        check(follower, HEALTHY, "NOSPACE disarmed")

        c.isolate(follower)
        wait_for(follower, "/health", failed("RAFT NO LEADER"))
        check(follower, LEADERLESS, "cut off")
        c.heal()
        wait_for(follower, "/health", OK)

        others = [m for m in c.members if m is not follower]
        for m in others:
            m.stop()
        wait_for(follower, "/health", failed("RAFT NO LEADER"))
        check(follower, LEADERLESS, "no quorum")
