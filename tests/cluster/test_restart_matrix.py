"""What a member does when started on each kind of data dir with each kind of flags, compared
with etcd 3.5.1's outcome: the same matrix runs on basalt and on etcd.

etcd's rule: when the data dir holds a member, the member restarts from it and
`--initial-cluster-state`, `--initial-cluster` and `--initial-cluster-token` are ignored. So
every dir that holds a member gives the same outcome whatever the flags; only a fresh dir
follows them.

Rows (the dir), each started with {new, existing} x {the flags it was made with, changed flags}:
- fresh: no data dir;
- bootstrapped: made by `new` and killed with -9 before its first checkpoint (the crash that
  left members unable to start again);
- restored: made by `snapshot restore` with the same name, URLs and token as the fresh row;
- joined: made by `member add` + `existing` against a running one-member cluster;
- removed: the joined member's dir after `member remove`.

"Changed flags" are another cluster token and an `--initial-cluster` naming one more member
that never runs: on a fresh dir `new` then waits for a quorum it never gets and `existing` finds
no cluster to join; on any other dir they change nothing.

Every restart of a dir that holds a member comes after a kill -9 (data written just before),
and the data written before every kill must be there when it serves again.
"""

import shutil
import sys
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402
from cluster import rpc, rpc_grpc  # noqa: E402

# A member that neither serves nor exits within this long after start is taken to wait forever
# (for a quorum it cannot get).
SERVE_WITHIN_S = 8.0
PREFIX = b"matrix/"
FLAG_CASES = [(state, flags) for flags in ("same", "changed") for state in ("new", "existing")]

SERVES = "serves"
SERVES_AS_BEFORE = "serves as the same member with its data"
WAITS = "waits without serving"
EXITS_OK = "exits 0"
EXITS_FAILED = "exits non-zero"

EXPECTED = {
    "fresh": {("new", "same"): SERVES, ("new", "changed"): WAITS,
              ("existing", "same"): EXITS_FAILED, ("existing", "changed"): EXITS_FAILED},
    "bootstrapped": SERVES_AS_BEFORE,
    "restored": SERVES_AS_BEFORE,
    "joined": SERVES_AS_BEFORE,
    # The rest of the cluster tells a removed member so; it stops as etcd does after its removal.
    "removed": EXITS_OK,
}


def expected(row: str, case) -> str:
    outcome = EXPECTED[row]
    return outcome[case] if isinstance(outcome, dict) else outcome


class Row:
    """One data dir and the outcomes of starting a member on it with each flag case."""

    def __init__(self, name: str, member: cl.Member):
        self.name, self.m = name, member
        self.identity = None  # (member id, cluster id) the dir was made with
        self.keys = {}  # every key written through this member and acknowledged
        self.outcomes = {}

    def launch(self, state: str, flags: str) -> None:
        m = self.m
        initial, token = m.initial_cluster, None
        if flags == "changed":
            initial += f",ghost=http://127.0.0.1:{cl.unused_port()}"
            token = f"{m.cluster.token}-changed"
        m.close_channel()
        m.start(initial, state, token=token, wait_listening=False)

    def outcome(self) -> str:
        """Watches the member just launched until it serves (answers a linearizable read),
        exits or runs out of time."""
        m = self.m
        deadline = time.monotonic() + SERVE_WITHIN_S
        while time.monotonic() < deadline:
            code = m.process.poll()
            if code is not None:
                return EXITS_OK if code == 0 else EXITS_FAILED
            status = m.status()
            read = status and self._read()
            if read is not None:
                return self._serving(status, read)
            time.sleep(0.1)
        return WAITS

    def _read(self):
        """Every key under PREFIX by a linearizable read, or None while the member cannot
        answer one (no leader yet)."""
        kv = rpc_grpc.KVStub(self.m.channel())
        try:
            resp = kv.Range(rpc.RangeRequest(key=PREFIX, range_end=cl_prefix_end(PREFIX)), timeout=2)
        except grpc.RpcError:
            return None
        return {item.key: item.value for item in resp.kvs}

    def _serving(self, status, found) -> str:
        identity = (status.header.member_id, status.header.cluster_id)
        if self.identity is None:
            self.identity = identity
            return SERVES
        if identity != self.identity:
            return f"serves as another member {identity[0]:x} of cluster {identity[1]:x}"
        lost = sorted(k for k, v in self.keys.items() if found.get(k) != v)
        if lost:
            return f"serves without acknowledged keys {lost}"
        return SERVES_AS_BEFORE

    def put(self) -> None:
        key = PREFIX + f"{self.name}/{len(self.keys)}".encode()
        value = f"v{len(self.keys)}".encode()
        rpc_grpc.KVStub(self.m.channel()).Put(rpc.PutRequest(key=key, value=value), timeout=10)
        self.keys[key] = value

    def run_case(self, state: str, flags: str) -> str:
        """Starts on the dir with one flag case; a member that serves takes a write and is
        killed with -9 (the next case starts after that crash)."""
        self.launch(state, flags)
        outcome = self.outcome()
        if outcome in (SERVES, SERVES_AS_BEFORE):
            self.put()
        self.m.kill()
        self.outcomes[(state, flags)] = outcome
        return outcome


def cl_prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def make_dir(row: Row, state: str = "new") -> None:
    """The member's first start on a fresh dir (its flags become "same"), one write, kill -9."""
    assert row.run_case(state, "same") == SERVES, row.m.log_tail()


def snapshot_restore(kind: str, snapshot: Path, m: cl.Member) -> None:
    data_dir = m.dir / "data"
    flags = ["--name", m.name, "--initial-cluster", m.initial_cluster,
             "--initial-cluster-token", m.cluster.token,
             "--initial-advertise-peer-urls", m.peer_url, "--data-dir", str(data_dir)]
    if kind == "etcd":
        command = [cl.harness.etcd_bin("etcdutl"), "snapshot", "restore", str(snapshot), *flags]
    else:
        command = [cl.harness.basalt_bin(), "snapshot", "restore", str(snapshot), *flags]
    result = cl.run(command, check=False)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"


def single_member_rows(c: cl.Cluster):
    """fresh, bootstrapped and restored: one member at the same addresses and token."""
    m = c.new_member()
    c.members.append(m)
    m.initial_cluster = c.initial_cluster([m])
    data_dir = m.dir / "data"

    fresh = Row("fresh", m)
    snapshot = c.dir / "snapshot.db"
    for state, flags in FLAG_CASES:
        shutil.rmtree(data_dir, ignore_errors=True)
        fresh.launch(state, flags)
        outcome = fresh.outcome()
        if outcome == SERVES and (state, flags) == ("new", "same"):
            fresh.put()
            c.etcdctl("snapshot", "save", str(snapshot), endpoints=[m])
        m.kill()
        fresh.outcomes[(state, flags)] = outcome
    yield fresh

    bootstrapped = Row("bootstrapped", m)
    shutil.rmtree(data_dir, ignore_errors=True)
    make_dir(bootstrapped)
    for state, flags in reversed(FLAG_CASES):  # `existing` first: the crash loop's restart
        bootstrapped.run_case(state, flags)
    yield bootstrapped

    restored = Row("restored", m)
    shutil.rmtree(data_dir, ignore_errors=True)
    snapshot_restore(c.kind, snapshot, m)
    restored.identity, restored.keys = fresh.identity, dict(fresh.keys)
    for state, flags in reversed(FLAG_CASES):
        restored.run_case(state, flags)
    yield restored


def joined_rows(c: cl.Cluster):
    """joined and removed: a member added to a running one-member cluster."""
    c.start()
    joiner = c.member_add()
    joined = Row("joined", joiner)
    status = joiner.status()
    joined.identity = (status.header.member_id, status.header.cluster_id)
    joined.put()
    joiner.kill()
    for state, flags in FLAG_CASES:
        joined.run_case(state, flags)
    yield joined

    joiner.start(joiner.initial_cluster, "existing")
    c.wait_ready()
    c.etcdctl_membership("member", "remove", f"{joiner.id:x}")
    c.members.remove(joiner)
    joiner.process.wait(timeout=30)  # a removed member stops by itself
    removed = Row("removed", joiner)
    try:
        for state, flags in FLAG_CASES:
            removed.run_case(state, flags)
    finally:
        joiner.kill()
        joiner.close_channel()
    yield removed


def check(kind: str, rows) -> None:
    problems = []
    for row in rows:
        for case in FLAG_CASES:
            want, got = expected(row.name, case), row.outcomes.get(case)
            if got != want:
                problems.append(f"{row.name} dir, {case[0]} with {case[1]} flags: {got} (etcd: {want})")
                problems.append(row.m.log_tail(6))
    assert not problems, f"{kind}:\n" + "\n".join(problems)


@pytest.mark.parametrize("kind", ["basalt", "etcd"])
def test_a_member_starts_on_every_kind_of_data_dir_as_etcd_does(kind):
    rows = []
    single = cl.Cluster(kind=kind, size=1, heartbeat_ms=50, election_ms=500)
    try:
        rows += single_member_rows(single)
    finally:
        single.close()
    founder = cl.Cluster(kind=kind, size=1, heartbeat_ms=50, election_ms=500)
    try:
        rows += joined_rows(founder)
    finally:
        founder.close()
    check(kind, rows)


def test_a_dir_left_by_the_joined_marker_bug_starts_again():
    """Older Basalt wrote member/basalt-joined on a restart with `existing` and checkpointed a
    founder's members only with its first entries applied, so a member killed early held a log
    its tree did not start: every start panicked. Such a dir (here: the tree file gone, the
    marker written) restarts from its bootstrap flags; with other flags it says why it cannot."""
    c = cl.Cluster(kind="basalt", size=1, heartbeat_ms=50, election_ms=500)
    try:
        m = c.new_member()
        c.members.append(m)
        m.initial_cluster = c.initial_cluster([m])
        row = Row("repaired", m)
        make_dir(row)
        member_dir = m.dir / "data" / "member"
        (member_dir / "snap" / "db").unlink()
        (member_dir / "basalt-joined").write_text(f"{row.identity[0]:x} {row.identity[1]:x}\n")

        assert row.run_case("existing", "changed") == EXITS_FAILED
        assert "start it once with the --initial-cluster and --initial-cluster-token" in m.log_tail(3)
        assert str(member_dir / "snap" / "db") in m.log_tail(3), "the error names the file"

        assert row.run_case("existing", "same") == SERVES_AS_BEFORE, m.log_tail()
        assert "repairing" in m.log_path.read_text()
        assert not (member_dir / "basalt-joined").exists()
        assert row.run_case("new", "changed") == SERVES_AS_BEFORE, m.log_tail()
    finally:
        c.close()
