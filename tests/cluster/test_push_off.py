"""Push-off: a member cut off from the others under a steady write load sends its client
elsewhere, and the client's writes succeed again within two election timeouts plus a reconnect,
with nothing acknowledged lost.

Three members in network namespaces; the client knows all three endpoints but starts on the
member about to be cut off (the leader in one case, a follower in the other); the clients keep
reaching every member (cluster.py cuts member-to-member links only). The client is
`FailoverClient` below, not python-etcd3 (which does not fail over between endpoints): one
channel per endpoint, and on any failed call it moves to the next endpoint, as clientv3's
balancer leaves a connection that went away or answered Unavailable. Its writes are puts of
fresh keys, so a put retried after an unknown outcome changes nothing.

CLUSTER_BINARY=etcd runs the same scenario on etcd 3.5.1 (no goal asserted, only measured);
PUSH_OFF_RESULTS=<file> appends each run's numbers as a JSON line (perf/RESULTS.md's
push-off section comes from there).
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402
from cluster import rpc, rpc_grpc  # noqa: E402

ELECTION_MS = 1000
# Longer than the server's request timeout (5 s + 2 election timeouts), so what the client
# sees is the server's doing, not its own deadline.
CALL_TIMEOUT_S = 10.0
# A failed call is followed by this pause before the next endpoint is tried.
RETRY_PAUSE_S = 0.02
# Load before the cut, and how long the client may take to recover before the run gives up.
WARMUP_S = 2.0
RECOVERY_CAP_S = 30.0
# The goal: two election timeouts, plus this for noticing, reconnecting and one write.
RECONNECT_ALLOWANCE_S = 1.0


class FailoverClient(threading.Thread):
    """Writes `w/<n>` back to back through one endpoint at a time; moves to the next on error."""

    def __init__(self, endpoints, first: int):
        super().__init__(daemon=True)
        self.channels = [grpc.insecure_channel(e) for e in endpoints]
        self.current = first
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}  # key -> value
        self.log = []  # (invoked, returned, endpoint index, error or None)
        self.sequence = 0

    def run(self):
        while not self.stop.is_set():
            self.sequence += 1
            key, value = f"w/{self.sequence:08d}".encode(), f"v{self.sequence}".encode()
            while not self.stop.is_set():
                member = self.current
                invoked = time.monotonic()
                try:
                    rpc_grpc.KVStub(self.channels[member]).Put(
                        rpc.PutRequest(key=key, value=value), timeout=CALL_TIMEOUT_S)
                    error = None
                except grpc.RpcError as e:
                    error = f"{e.code().name}: {e.details()}"
                with self.lock:
                    self.log.append((invoked, time.monotonic(), member, error))
                if error is None:
                    self.acked[key] = value
                    break
                self.current = (member + 1) % len(self.channels)
                time.sleep(RETRY_PAUSE_S)

    def close(self):
        self.stop.set()
        self.join(CALL_TIMEOUT_S + 5)
        for c in self.channels:
            c.close()


def run_scenario(cut_leader: bool):
    with cl.Cluster(size=3, netns=True, election_ms=ELECTION_MS) as c:
        leader = c.leader()
        victim = leader if cut_leader else next(m for m in c.members if m is not leader)
        client = FailoverClient([m.endpoint for m in c.members], c.members.index(victim))
        client.start()
        time.sleep(WARMUP_S)
        assert any(e is None for _, _, _, e in client.log), "no write succeeded before the cut"
        c.isolate(victim)
        cut_at = time.monotonic()  # the rules are in force once isolate returns
        deadline = cut_at + RECOVERY_CAP_S
        recovered_at = None
        while time.monotonic() < deadline and recovered_at is None:
            time.sleep(0.05)
            with client.lock:
                recovered_at = next((ret for inv, ret, _, e in client.log if inv > cut_at and e is None), None)
        time.sleep(0.5)  # a little load on the new member
        c.heal()
        time.sleep(1.0)
        client.close()
        errors = {}
        for inv, _, _, e in client.log:
            if inv >= cut_at - CALL_TIMEOUT_S and e is not None:
                kind = e.split(" (")[0][:120]
                errors[kind] = errors.get(kind, 0) + 1
        c.wait_ready()
        reader = next(m for m in c.members if m is not victim)
        got = rpc_grpc.KVStub(reader.channel()).Range(
            rpc.RangeRequest(key=b"w/", range_end=b"w0"), timeout=CALL_TIMEOUT_S)
        stored = {kv.key: kv.value for kv in got.kvs}
        lost = [k for k, v in client.acked.items() if stored.get(k) != v]
        result = {
            "server": c.kind,
            "cut": "leader" if cut_leader else "follower",
            "election_ms": ELECTION_MS,
            "recovery_s": None if recovered_at is None else round(recovered_at - cut_at, 2),
            "acked": len(client.acked),
            "lost": len(lost),
            "errors": errors,
        }
        print(json.dumps(result))
        if os.environ.get("PUSH_OFF_RESULTS"):
            with open(os.environ["PUSH_OFF_RESULTS"], "a") as f:
                f.write(json.dumps(result) + "\n")
        return result


@pytest.mark.parametrize("cut_leader", [True, False], ids=["leader-cut-off", "follower-cut-off"])
def test_a_client_of_a_member_cut_off_writes_again_within_two_election_timeouts(cut_leader):
    if cl.netns_available():
        pytest.skip(cl.netns_available())
    result = run_scenario(cut_leader)
    assert result["lost"] == 0, result
    if cl.cluster_binary() == "basalt":
        goal_s = 2 * ELECTION_MS / 1000 + RECONNECT_ALLOWANCE_S
        assert result["recovery_s"] is not None and result["recovery_s"] <= goal_s, result
