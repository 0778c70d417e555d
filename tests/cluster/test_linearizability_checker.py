"""The linearizability checker accepts histories a correct register can produce and rejects stale
reads, lost writes and a compare-and-set that succeeded twice. Pure Python, no server."""

import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from linearizability import CAS, GET, INFINITY, PUT, Op, check, check_key  # noqa: E402

K = b"k"


def put(client, call, ret, value, key=K):
    return Op(client, PUT, key, call, ret, value=value)


def get(client, call, ret, result, key=K):
    return Op(client, GET, key, call, ret, result=result)


def cas(client, call, ret, expect, value, result, key=K):
    return Op(client, CAS, key, call, ret, value=value, expect=expect, result=result)


GOOD = {
    "sequential put then get": [put(0, 0, 1, b"a"), get(0, 2, 3, b"a")],
    "read of an absent key": [get(0, 0, 1, None), put(0, 2, 3, b"a")],
    "concurrent read may see the old value": [put(0, 0, 10, b"a"), get(1, 1, 2, None)],
    "concurrent read may see the new value": [put(0, 0, 10, b"a"), get(1, 1, 2, b"a")],
    "two concurrent puts in either order": [
        put(0, 0, 10, b"a"), put(1, 0, 10, b"b"), get(2, 11, 12, b"a"), get(2, 13, 14, b"a"),
    ],
    "reads agree on the order of concurrent puts": [
        put(0, 0, 10, b"a"), put(1, 0, 10, b"b"), get(2, 1, 2, b"b"), get(3, 3, 4, b"a"),
        get(2, 11, 12, b"a"),
    ],
    "cas succeeds once, the second one fails": [
        put(0, 0, 1, b"a"), cas(1, 2, 5, b"a", b"b", True), cas(2, 2, 5, b"a", b"c", False),
        get(0, 6, 7, b"b"),
    ],
    "cas on an absent key": [cas(0, 0, 1, None, b"a", True), get(0, 2, 3, b"a")],
    "unknown put that took effect": [put(0, 0, INFINITY, b"a"), get(1, 5, 6, b"a")],
    "unknown put that never happened": [put(0, 0, INFINITY, b"a"), get(1, 5, 6, None)],
    "unknown put seen late": [put(0, 0, INFINITY, b"a"), get(1, 5, 6, None), get(1, 7, 8, b"a")],
    "unknown cas that took effect": [
        put(0, 0, 1, b"a"), cas(1, 2, INFINITY, b"a", b"b", None), get(0, 5, 6, b"b"),
    ],
    "touching operations may be concurrent": [put(0, 0, 5, b"a"), get(1, 5, 6, None)],
}

BAD = {
    "stale read after a completed put": [put(0, 0, 1, b"a"), put(0, 2, 3, b"b"), get(1, 4, 5, b"a")],
    "read of a value never written": [put(0, 0, 1, b"a"), get(1, 2, 3, b"z")],
    "lost write: acknowledged put not seen": [put(0, 0, 1, b"a"), get(1, 2, 3, None)],
    "cas succeeded twice on one value": [
        put(0, 0, 1, b"a"), cas(1, 2, 5, b"a", b"b", True), cas(2, 2, 5, b"a", b"c", True),
    ],
    "failed cas while the value matched": [put(0, 0, 1, b"a"), cas(1, 2, 3, b"a", b"b", False)],
    "reads disagree on the order of concurrent puts": [
        put(0, 0, 10, b"a"), put(1, 0, 10, b"b"), get(2, 1, 2, b"a"), get(3, 3, 4, b"b"),
        get(2, 11, 12, b"a"),
    ],
    "value goes back after an unknown put was seen": [
        put(0, 0, 1, b"a"), put(1, 2, INFINITY, b"b"), get(2, 5, 6, b"b"), get(2, 7, 8, b"a"),
    ],
}


@pytest.mark.parametrize("name", GOOD)
def test_accepts_linearizable_history(name):
    result = check_key(K, GOOD[name])
    assert result.ok, result.explain()


@pytest.mark.parametrize("name", BAD)
def test_rejects_non_linearizable_history(name):
    result = check_key(K, BAD[name])
    assert not result.ok
    assert result.stuck_at is not None
    assert "NOT linearizable" in result.explain()


def test_keys_are_checked_apart_and_the_failing_one_is_named():
    history = [put(0, 0, 1, b"a", key=b"x"), get(1, 2, 3, b"a", key=b"x"),
               put(0, 0, 1, b"a", key=b"y"), get(1, 2, 3, None, key=b"y")]
    failures = check(history)
    assert [f.key for f in failures] == [b"y"]


def test_initial_state_is_honoured():
    assert check([get(0, 0, 1, b"old")], initial={K: b"old"}) == []
    assert check([get(0, 0, 1, b"old")]) != []


def simulated_register_history(seed, clients=6, ops_per_client=60, unknown_rate=0.05):
    """A history produced by a real atomic register: each op takes effect at a random instant
    inside its interval, so the checker must accept it; some outcomes are then forgotten."""
    rng = random.Random(seed)
    ops = []
    for client in range(clients):
        t = rng.uniform(0, 5)
        for i in range(ops_per_client):
            call = t
            ret = call + rng.uniform(0.5, 8)
            point = rng.uniform(call, ret)
            kind = rng.choice([PUT, GET, CAS])
            ops.append((point, client, kind, call, ret, f"{client}.{i}".encode()))
            t = ret + rng.uniform(0, 2)
    state, history = None, []
    last_seen = {}
    for point, client, kind, call, ret, value in sorted(ops):
        if kind == PUT:
            state = value
            op = put(client, call, ret, value)
        elif kind == GET:
            op = get(client, call, ret, state)
            last_seen[client] = state
        else:
            expect = last_seen.get(client)
            ok = state == expect
            if ok:
                state = value
            op = cas(client, call, ret, expect, value, ok)
        if kind != GET and rng.random() < unknown_rate:
            op.ret, op.result = INFINITY, None
        history.append(op)
    return history


@pytest.mark.parametrize("seed", range(5))
def test_accepts_histories_of_an_atomic_register_quickly(seed):
    history = simulated_register_history(seed)
    started = time.monotonic()
    result = check_key(K, history)
    assert result.ok, result.explain()
    # A guard against the search going exponential, not a benchmark.
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("seed", range(5))
def test_rejects_a_register_history_with_one_read_made_stale(seed):
    history = simulated_register_history(seed, unknown_rate=0)
    # Make one read report the value of a put that another put had overwritten, both complete
    # before the read was invoked.
    writes = [op for op in history if op.kind == PUT]
    stale = next(((read, old.value) for read in history if read.kind == GET
                  for old in writes if old.ret < read.call
                  for newer in writes if old.ret < newer.call and newer.ret < read.call), None)
    if stale is None:
        pytest.skip("no read to corrupt")
    read, stale_value = stale
    read.result = stale_value
    assert not check_key(K, history).ok
