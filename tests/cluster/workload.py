"""The workload of the fault tests and the checks made after it.

Owns: client threads that load a cluster (each with its own connection to a random member, so
writes reach followers too) while recording every operation's invocation and return time and
result, and `verify`, which decides whether what the clients saw is what a correct cluster could
have shown. Must never inject faults (cluster.py does) or judge timing.

Operations, over a few shared register keys:
- get: a linearizable Range of one key;
- put: a value never written before;
- cas: a Txn comparing the key's value (or, half the time, its mod_revision) with what this
  client last read, then putting a fresh value; an absent key is compared as create_revision 0;
- a put of a key of its own (`u/<client>/<n>`), so every acknowledged write can be looked up at
  the end whatever else overwrote the registers.

An error whose request may have reached the server (timeout, reset, "leader changed", ...)
makes a write's outcome unknown: it returns at infinity in the history. A call that never left
the client (connection refused) is dropped. Failed reads are dropped: they changed nothing.
"""

import random
import threading
import time

import grpc
from etcd3.etcdrpc import rpc_pb2 as rpc
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc

import linearizability as lin

REGISTER_PREFIX = b"r/"
UNIQUE_PREFIX = b"u/"
RPC_TIMEOUT_S = 1.5
# After an error a client waits this long and moves to another member, as a client library that
# rotates endpoints would.
RECONNECT_PAUSE_S = 0.05
GET, PUT, CAS, UNIQUE_PUT = "get", "put", "cas", "unique"
OP_WEIGHTS = {GET: 35, PUT: 25, CAS: 20, UNIQUE_PUT: 20}


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def never_sent(error: grpc.RpcError) -> bool:
    """The call failed before any byte of it reached a server."""
    details = (error.details() or "").lower()
    return error.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "connection refused" in details
    )


class Client(threading.Thread):
    def __init__(self, workload: "Workload", number: int):
        super().__init__(daemon=True, name=f"client-{number}")
        self.w, self.number = workload, number
        self.rng = random.Random(workload.seed * 1000 + number)
        self.seen = {}  # key -> (value, mod_revision) of this client's last read
        self.sequence = 0
        self.channel = None
        self.member = None
        self.errors = 0

    def connect(self):
        if self.channel:
            self.channel.close()
        voters = [m for m in self.w.cluster.members if not m.learner] or self.w.cluster.members
        self.member = self.rng.choice(voters)
        self.channel = grpc.insecure_channel(self.member.endpoint)
        self.kv = rpc_grpc.KVStub(self.channel)

    def fresh_value(self) -> bytes:
        self.sequence += 1
        return f"c{self.number}-{self.sequence}".encode()

    def run(self):
        self.connect()
        kinds, weights = zip(*OP_WEIGHTS.items())
        while not self.w.stopping.is_set():
            kind = self.rng.choices(kinds, weights)[0]
            key = REGISTER_PREFIX + b"%d" % self.rng.randrange(self.w.keys)
            try:
                getattr(self, f"do_{kind}")(key)
            except grpc.RpcError:
                self.errors += 1
                time.sleep(RECONNECT_PAUSE_S)
                self.connect()
        self.channel.close()

    def record(self, op: lin.Op, error: grpc.RpcError = None):
        if error is not None:
            if op.kind == lin.GET or never_sent(error):
                raise error
            op.ret, op.result = lin.INFINITY, None
            self.w.add(op)
            raise error
        self.w.add(op)

    def do_get(self, key):
        op = lin.Op(self.number, lin.GET, key, time.monotonic_ns())
        try:
            resp = self.kv.Range(rpc.RangeRequest(key=key), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as e:
            self.record(op, e)
        op.ret = time.monotonic_ns()
        kv = resp.kvs[0] if resp.kvs else None
        op.result = kv.value if kv else None
        self.seen[key] = (op.result, kv.mod_revision if kv else 0)
        if kv:
            self.w.observe_revision(key, kv.value, kv.mod_revision)
        self.record(op)

    def do_put(self, key):
        value = self.fresh_value()
        op = lin.Op(self.number, lin.PUT, key, time.monotonic_ns(), value=value)
        try:
            resp = self.kv.Put(rpc.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as e:
            self.record(op, e)
        op.ret = time.monotonic_ns()
        self.w.observe_revision(key, value, resp.header.revision)
        self.record(op)

    def do_cas(self, key):
        expect, mod_revision = self.seen.get(key, (None, 0))
        value = self.fresh_value()
        if expect is None:
            compare = rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL,
                                  create_revision=0)
        elif self.rng.random() < 0.5:
            compare = rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=expect)
        else:
            # Values are unique, so the revision that last wrote `expect` names the same write.
            compare = rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                                  mod_revision=mod_revision)
        txn = rpc.TxnRequest(compare=[compare],
                             success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))])
        op = lin.Op(self.number, lin.CAS, key, time.monotonic_ns(), value=value, expect=expect)
        try:
            resp = self.kv.Txn(txn, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as e:
            self.record(op, e)
        op.ret = time.monotonic_ns()
        op.result = resp.succeeded
        if resp.succeeded:
            self.w.observe_revision(key, value, resp.header.revision)
        self.record(op)

    def do_unique(self, _key):
        key = UNIQUE_PREFIX + f"{self.number}/{self.sequence}".encode()
        value = self.fresh_value()
        self.kv.Put(rpc.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT_S)
        with self.w.lock:
            self.w.acked_unique[key] = value


class Workload:
    """`clients` threads over `keys` register keys; start(), then stop() returns the history."""

    def __init__(self, cluster, seed: int, clients: int = 6, keys: int = 8):
        self.cluster, self.seed, self.keys = cluster, seed, keys
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.history = []
        self.acked_unique = {}
        # value -> mod_revision, from put/cas responses and reads: one value, one revision.
        self.revision_of = {}
        self.revision_conflicts = []
        self.clients = [Client(self, i) for i in range(clients)]

    def add(self, op):
        with self.lock:
            self.history.append(op)

    def observe_revision(self, key, value, revision):
        with self.lock:
            known = self.revision_of.setdefault((key, value), revision)
            if known != revision:
                self.revision_conflicts.append((key, value, known, revision))

    def start(self) -> "Workload":
        for c in self.clients:
            c.start()
        return self

    def stop(self):
        self.stopping.set()
        for c in self.clients:
            c.join(timeout=RPC_TIMEOUT_S * 4)
        return self.history

    def summary(self) -> str:
        known = sum(1 for op in self.history if not op.unknown)
        return (f"{len(self.history)} register ops ({known} with a known outcome, "
                f"{len(self.history) - known} unknown), {len(self.acked_unique)} acknowledged unique puts, "
                f"{sum(c.errors for c in self.clients)} client errors")


def read_all(member, prefix: bytes, serializable: bool):
    """Every key under `prefix` (b"": every key) with its value, as `member` has it."""
    key, end = (prefix, prefix_end(prefix)) if prefix else (b"\x00", b"\x00")
    kv = rpc_grpc.KVStub(member.channel())
    resp = kv.Range(rpc.RangeRequest(key=key, range_end=end, serializable=serializable), timeout=10)
    return {kv.key: kv.value for kv in resp.kvs}


def verify(cluster, workload: Workload) -> str:
    """After the faults: bring every member back, then check what a correct cluster guarantees.
    Returns a one-line summary; raises AssertionError naming what was lost, stale or diverged."""
    cluster.heal()
    for m in cluster.members:
        if not m.alive():
            m.start()
    revision, hashes = cluster.wait_converged()
    assert len(set(hashes.values())) == 1, f"HashKV differs at revision {revision}: {hashes}\n{cluster.log_tails()}"

    # Final reads: one linearizable read per register key after everything, and every member's
    # own (serializable) copy of all keys.
    leader = cluster.leader()
    history = list(workload.history)
    registers = read_all(leader, REGISTER_PREFIX, serializable=False)
    t = time.monotonic_ns()
    for i in range(workload.keys):
        key = REGISTER_PREFIX + b"%d" % i
        history.append(lin.Op(-1, lin.GET, key, t, t + 1, result=registers.get(key)))
    copies = {m: read_all(m, b"", serializable=True) for m in cluster.live()}
    first, first_copy = next(iter(copies.items()))
    for m, copy in copies.items():
        assert copy == first_copy, f"{m} and {first} hold different data at revision {revision}"

    lost = {k: v for k, v in workload.acked_unique.items() if first_copy.get(k) != v}
    assert not lost, f"{len(lost)} acknowledged puts lost, e.g. {sorted(lost.items())[:3]}"
    assert not workload.revision_conflicts, f"one value seen at two revisions: {workload.revision_conflicts[:3]}"

    failures = lin.check(history)
    assert not failures, "history not linearizable:\n" + "\n".join(f.explain() for f in failures)
    assert len(workload.acked_unique) > 0, "no write was acknowledged: the run checked nothing"
    return f"{workload.summary()}; converged at revision {revision}"


def run_and_verify(cluster, seed: int, faults, label) -> str:
    """Runs `faults()` on `cluster` under a Workload of `seed`, then `verify`. `label()` names
    the run in the summary line printed and in a failure (called afterwards, so it may tell what
    the faults did); a failure also carries the members' log tails."""
    workload = Workload(cluster, seed).start()
    try:
        faults()
    finally:
        workload.stop()
    try:
        summary = verify(cluster, workload)
    except AssertionError as e:
        raise AssertionError(f"{label()}: {e}\n{cluster.log_tails()}") from None
    print(f"{label()}: {summary}")
    return summary
