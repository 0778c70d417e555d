"""etcdctl 3.5's cluster commands answer on Basalt as on etcd 3.5.1: member list/add/promote/remove,
endpoint status/health --cluster, move-leader, and their errors.

One session of commands runs on a fresh 3-member cluster of each server; the outputs are compared
after normalizing what legitimately differs by value: member and cluster ids (named after the
member, e.g. <id:m2>), URLs (named after the member, ports differ), raft terms and indexes, db
sizes and health-check durations, and the order of rows that etcd sorts by member id. Everything
else (texts, columns, flags such as IS LEARNER and IS LEADER, error messages, exit codes) must be
equal. With CLUSTER_BINARY=etcd it compares etcd with etcd, which proves the normalization.
"""

import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402

# Values that differ between two correct runs: masked to "*".
MASKED_COLUMNS = {"DB SIZE", "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX"}
MASKED_KEYS = {"dbSize", "dbSizeInUse", "raftIndex", "raftTerm", "raftAppliedIndex", "raft_term", "took"}
MISSING_ID = "1234"
PROMOTE_TIMEOUT_S = 20.0

# The session: (etcdctl arguments, what to do around it). "{mN}" is member N's id in hex,
# "{mN.peer}" its peer URL. Actions: "membership" retries while etcd's strict reconfiguration
# check says "unhealthy cluster" (members connected under 5 s); "start m4" starts the added
# member with --initial-cluster-state existing; "until promoted" retries while the learner is
# not yet in sync.
SESSION = [
    ("member list -w table", None),
    ("member list -w json", None),
    ("member list", None),
    ("endpoint status --cluster -w table", None),
    ("endpoint status --cluster -w json", None),
    ("endpoint health --cluster", None),
    ("endpoint health --cluster -w json", None),
    ("member add m4 --learner --peer-urls={m4.peer}", "membership"),
    ("member promote {m4}", None),  # not started: not in sync
    ("member add m5 --learner --peer-urls=http://127.0.0.1:1", None),  # one learner at most
    ("member add m6 --peer-urls={m1.peer}", None),  # peer URL taken
    (f"member remove {MISSING_ID}", None),
    ("member promote {m2}", None),  # a voter
    ("member list -w table", None),
    ("member list -w json", "start m4"),
    ("member promote {m4}", "until promoted"),
    ("member list -w table", None),
    ("endpoint status --cluster -w table", None),
    ("move-leader {m2}", None),
    ("move-leader {m3}", None),  # m1 is no longer the leader
    ("member remove {m4}", "membership"),
    ("member list -w json", None),
    ("endpoint status --cluster -w table", None),
]


class Normalizer:
    """Replaces a cluster's ids and URLs by names and masks values that vary between runs."""

    def __init__(self, cluster_id: int, members):
        self.cluster_id, self.members = cluster_id, members

    def tokens(self):
        pairs = [(f"{self.cluster_id:x}", "<cluster>"), (str(self.cluster_id), "<cluster>")]
        for m in self.members:
            pairs += [(m.client_url, f"<{m.name}.client>"), (m.peer_url, f"<{m.name}.peer>"),
                      (m.client_url.removeprefix("http://"), f"<{m.name}.client>")]
            if m.id:
                pairs += [(f"{m.id:x}", f"<id:{m.name}>"), (str(m.id), f"<id:{m.name}>")]
        return pairs

    def text(self, s: str) -> str:
        for raw, token in sorted(self.tokens(), key=lambda p: -len(p[0])):
            s = re.sub(rf"(?<![0-9a-zA-Z:]){re.escape(raw)}(?![0-9a-zA-Z])", token, s)
        return s

    def json(self, value):
        """Parsed JSON with ids (numbers there) and URLs named, varying values masked, and lists
        sorted (etcd orders members by id)."""
        if isinstance(value, dict):
            return {k: "*" if k in MASKED_KEYS else self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return sorted((self.json(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return self.text(str(value)) if isinstance(value, str) or value > 1 << 20 else value
        return value

    def output(self, stdout: str, stderr: str, rc: int):
        errors = [line for line in self.text(stderr).splitlines() if line.startswith("Error:")]
        if stdout.lstrip().startswith(("{", "[")):
            return {"rc": rc, "out": self.json(json.loads(stdout)), "errors": errors}
        out = self.text(stdout).strip()
        if out.startswith("+-"):
            body = table(out)
        else:
            # etcdctl pads ids to 16 columns (%16x), so the padding varies with the id's value.
            body = [re.sub(r"took = \S+", "took = *", re.sub(" +", " ", line)) for line in out.splitlines()]
            # Member rows come in id order; health lines as the concurrent checks answer.
            if all(re.match(r"<id:m\d+>, ", line) or " is healthy" in line for line in body):
                body.sort()
            body = [re.sub(r'ETCD_INITIAL_CLUSTER="([^"]*)"',
                           lambda m: 'ETCD_INITIAL_CLUSTER="' + ",".join(sorted(m.group(1).split(","))) + '"',
                           line) for line in body]
        return {"rc": rc, "out": body, "errors": errors}


def table(text: str):
    """An etcdctl table as its header and its rows (sorted; masked columns as "*")."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[1:]
    body = [["*" if header[i] in MASKED_COLUMNS else cell for i, cell in enumerate(row)] for row in body]
    return [header] + sorted(body)


def expand(template: str, members) -> list:
    """The template's arguments with {mN} (member N's hex id) and {mN.peer} filled in."""
    by_name = {m.name: m for m in members}

    def value(match):
        m = by_name[match.group(1)]
        return m.peer_url if match.group(2) else f"{m.id:x}"

    return [re.sub(r"\{(m\d)(\.peer)?\}", value, arg) for arg in template.split()]


def run_session(kind: str):
    """The session's normalized results on a fresh cluster of `kind`."""
    results = []
    with cl.Cluster(kind=kind, size=3) as c:
        m1 = c.members[0]
        for m in c.members:
            # Covered by its own test below; here the listings must not race it.
            wait_published(c, m)
        deadline = time.monotonic() + cl.READY_TIMEOUT_S
        while c.leader() is not m1:
            # The leader position shows in IS LEADER: make it the same on both servers.
            c.move_leader(m1)
            if time.monotonic() > deadline:
                raise RuntimeError("m1 never became leader")
        for m in c.members:
            m.status()
        m4 = c.new_member()
        everyone = c.members + [m4]
        norm = Normalizer(m1.status().header.cluster_id, everyone)
        for template, action in SESSION:
            if action == "start m4":
                m4.start(c.initial_cluster(everyone), "existing")
                c.members.append(m4)
                wait_published(c, m4)
            result = run_step(c, m1, expand(template, everyone), action)
            if template.startswith("member add m4"):
                added = re.search(r"Member +([0-9a-f]+) added", result.stdout)
                assert added, f"member add m4: {result.stdout!r} {result.stderr[-500:]!r}"
                m4.id = int(added.group(1), 16)
                m4.learner = True
            if template == "member remove {m4}":
                c.members.remove(m4)
                m4.stop()
            results.append((template, norm.output(result.stdout, result.stderr, result.returncode)))
    return results


def wait_published(c, m):
    """A started member publishes its name and client URLs through the log: wait for that, so
    the next listing does not race it."""
    deadline = time.monotonic() + cl.READY_TIMEOUT_S
    while not any(info.get("name") == m.name and info.get("clientURLs") for info in c.member_list()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{m.name} never published its attributes\n{c.log_tails()}")
        time.sleep(0.1)


def run_step(c, endpoint, args, action):
    if action == "membership":
        return c.etcdctl_membership(*args, endpoints=[endpoint])
    deadline = time.monotonic() + PROMOTE_TIMEOUT_S
    while True:
        result = c.etcdctl(*args, endpoints=[endpoint], check=False)
        if action != "until promoted" or result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_cluster_commands_answer_like_etcd():
    expected = run_session("etcd")
    actual = run_session(cl.cluster_binary())
    diffs = [f"$ etcdctl {cmd}\n  etcd 3.5.1: {want}\n  {cl.cluster_binary()}: {got}"
             for (cmd, want), (_, got) in zip(expected, actual) if want != got]
    assert not diffs, f"{len(diffs)} of {len(SESSION)} commands differ:\n" + "\n".join(diffs)
    # The session must have reached the cases it is about.
    outputs = {cmd: r for cmd, r in expected}
    assert any("in sync with leader" in e for _, r in expected for e in r["errors"])
    assert any("too many learner members" in e for _, r in expected for e in r["errors"])
    assert any("Peer URLs already exists" in e for e in outputs["member add m6 --peer-urls={m1.peer}"]["errors"])
    assert outputs[f"member remove {MISSING_ID}"]["errors"] == ["Error: etcdserver: member not found"]


def own_entry_published(c, m) -> bool:
    """Does `m`'s own answer to `member list` carry its name and client URLs?"""
    result = c.etcdctl("member", "list", "-w", "json", endpoints=[m], check=False)
    if result.returncode != 0:
        return False
    me = [info for info in json.loads(result.stdout)["members"] if info.get("name") == m.name]
    return bool(me and me[0].get("clientURLs"))


def test_a_member_answers_clients_only_once_its_attributes_are_published():
    """etcd serves client requests only after the member's name and client URLs are committed
    (embed's serve waits on ReadyNotify), so its first answer already lists it as started."""
    c = cl.Cluster(size=3)
    try:
        c.start(ready=False)
        unpublished = [m.name for m in c.members if not own_entry_published(c, m)]
        assert not unpublished, f"{unpublished} answered member list before publishing their client URLs"
    finally:
        c.close()
