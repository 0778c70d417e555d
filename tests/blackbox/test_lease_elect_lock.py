"""etcdctl lease, elect and lock against Basalt.

Lease commands are differential against a real etcd 3.5.1 (lease ids differ by design and are
masked by order of appearance; remaining TTLs are compared to the second they may tick by).
`elect` and `lock` are etcd's client-side recipes on KV, Lease and Watch: two candidates and two
contenders must take turns exactly as on etcd."""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from harness import Server, etcd_bin  # noqa: E402
from test_etcdctl import normalize, run  # noqa: E402

LEASE_ID = re.compile(r"\b[0-9a-f]{16}\b")
REMAINING = re.compile(r"remaining\((\d+)s\)")
# etcd lists a lease's keys from a Go map, so their order changes from run to run.
ATTACHED = re.compile(r"attached keys\(\[([^\]]*)\]\)")


def mask_lease_ids(text, seen):
    def replace(match):
        return "L%d" % seen.setdefault(match.group(0), len(seen))

    return LEASE_ID.sub(replace, text)


def lease_session(kind):
    with Server(kind) as server:
        etcdctl = etcd_bin("etcdctl")
        seen = {}
        transcript = []

        def step(*args):
            """Runs one command; an argument "L<n>" or "--lease=L<n>" names the n-th lease seen."""
            by_index = {index: lease for lease, index in seen.items()}
            args = [re.sub(r"\bL(\d+)\b", lambda m: by_index.get(int(m.group(1)), m.group(0)), a) for a in args]
            code, out, err = run(etcdctl, server.endpoint, *args)
            # A 60 s lease may show 59 s or 60 s left, depending on the second it is read in.
            out = REMAINING.sub(lambda m: "remaining(~)" if int(m.group(1)) >= 58 else m.group(0), out)
            out = ATTACHED.sub(lambda m: "attached keys([%s])" % " ".join(sorted(m.group(1).split())), out)
            out, err = (mask_lease_ids(normalize(text), seen) for text in (out, err))
            transcript.append((args[:2], code, out, err))

        step("lease", "grant", "60")
        step("lease", "grant", "1")
        step("put", "k1", "v", "--lease=L0")
        step("put", "k2", "v", "--lease=L0")
        step("lease", "timetolive", "L0", "--keys")
        step("lease", "timetolive", "L1")
        step("lease", "list")
        step("lease", "keep-alive", "--once", "L0")
        step("lease", "revoke", "L0")
        step("get", "k", "--prefix")
        step("lease", "timetolive", "L0")
        step("lease", "revoke", "L0")
        step("put", "k3", "v", "--lease=L0")
        step("lease", "grant", "9000000001")
        return transcript


def test_etcdctl_lease_commands_answer_as_on_etcd():
    expected = lease_session("etcd")
    got = lease_session("basalt")
    assert got == expected


def test_an_expired_lease_deletes_its_keys():
    with Server("basalt") as server:
        etcdctl = etcd_bin("etcdctl")
        code, out, _ = run(etcdctl, server.endpoint, "lease", "grant", "2")
        lease = out.split()[1]
        assert run(etcdctl, server.endpoint, "put", "e", "v", "--lease=" + lease)[0] == 0
        deadline = time.monotonic() + 10
        while run(etcdctl, server.endpoint, "get", "e")[1] and time.monotonic() < deadline:
            time.sleep(0.25)
        assert run(etcdctl, server.endpoint, "get", "e")[1] == ""
        assert "already expired" in run(etcdctl, server.endpoint, "lease", "timetolive", lease)[1]


def spawn(server, *args):
    return subprocess.Popen(
        [etcd_bin("etcdctl"), "--endpoints", server.endpoint, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"ETCDCTL_API": "3"},
    )


def test_two_lock_contenders_take_turns():
    with Server("basalt") as server:
        log = os.path.join(server.dir, "lock.log")
        hold = f"echo first-in >> {log}; sleep 1; echo first-out >> {log}"
        first = spawn(server, "lock", "L", "--", "/bin/sh", "-c", hold)
        time.sleep(0.5)
        second = spawn(server, "lock", "L", "--", "/bin/sh", "-c", f"echo second-in >> {log}")
        for contender in (first, second):
            assert contender.wait(timeout=20) == 0, contender.stderr.read()
        with open(log) as f:
            assert f.read().split() == ["first-in", "first-out", "second-in"]


def test_two_election_candidates_lead_in_turn():
    with Server("basalt") as server:
        first = spawn(server, "elect", "E", "one")
        time.sleep(0.7)
        second = spawn(server, "elect", "E", "two")
        time.sleep(0.7)
        leader = run(etcd_bin("etcdctl"), server.endpoint, "get", "E", "--prefix", "--sort-by=CREATE", "--limit=1")[1]
        assert leader.split()[1] == "one"
        first.terminate()  # Resigns: the session's lease is revoked.
        first.wait(timeout=10)
        deadline = time.monotonic() + 10
        out = ""
        while "two" not in out and time.monotonic() < deadline:
            out = run(etcd_bin("etcdctl"), server.endpoint, "get", "E", "--prefix")[1]
            time.sleep(0.2)
        assert out.split()[1] == "two"
        second.terminate()
        second.wait(timeout=10)
        first_out = first.stdout.read()
        second_out = second.stdout.read()
        assert first_out.split()[-1] == "one", first_out
        assert second_out.split()[-1] == "two", second_out
