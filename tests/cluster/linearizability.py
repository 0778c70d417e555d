"""A linearizability checker for a history of register operations, in Porcupine's style.

Owns: the decision whether a recorded history of put / get / compare-and-set operations on keys
could have come from one register per key that changes atomically at some instant between each
operation's invocation and its return. Must never talk to a server: it sees only the history.

Algorithm: Wing & Gong's search with Lowe's memo, as Porcupine runs it. Call and return events
sit in one time-ordered linked list; the search tries to linearize the earliest pending call that
the model allows, lifts its call and return out of the list, and backtracks when it meets a
return whose call was never linearized. A memo of (set of linearized operations, model state)
prunes every configuration already explored. The history is first split by key
(P-compositionality: a history is linearizable iff each key's sub-history is), which keeps each
search small.

An operation whose outcome is unknown (timeout, unavailable, connection reset after sending)
returns at +infinity: it may take effect at any instant after its call, or never (linearized
after everything else, where nothing can observe it). Its result is not checked.

Model state per key: the value, or None when the key is absent. Values are unique per write, so
a compare on the value names the same write a compare on mod_revision would.
"""

from dataclasses import dataclass, field
from typing import Optional

INFINITY = float("inf")

PUT, GET, CAS = "put", "get", "cas"


@dataclass
class Op:
    """One operation of a history. Times are any comparable numbers (nanoseconds in practice)."""

    client: int
    kind: str  # PUT, GET or CAS
    key: bytes
    call: float
    ret: float = INFINITY  # INFINITY: the outcome is unknown
    value: Optional[bytes] = None  # PUT/CAS: the value written
    expect: Optional[bytes] = None  # CAS: the value compared against (None: key absent)
    result: object = None  # GET: the value read (None: absent); CAS: True/False
    id: int = field(default=-1, compare=False)

    @property
    def unknown(self) -> bool:
        return self.ret == INFINITY

    def __str__(self):
        ret = "?" if self.unknown else f"{self.ret:.0f}"
        body = {
            PUT: f"put {self.value!r}",
            GET: f"get -> {self.result!r}",
            CAS: f"cas {self.expect!r} -> {self.value!r}: {'?' if self.unknown else self.result}",
        }[self.kind]
        return f"[client {self.client} {self.call:.0f}..{ret}] {self.key!r} {body}"


def step(state, op: Op):
    """The register model: (allowed, next state) for `op` applied to `state`."""
    if op.kind == PUT:
        return True, op.value
    if op.kind == GET:
        return op.unknown or op.result == state, state
    if op.kind == CAS:
        holds = state == op.expect
        if op.unknown:
            return True, op.value if holds else state
        if op.result:
            return holds, op.value
        return not holds, state
    raise ValueError(f"unknown operation kind {op.kind!r}")


class _Entry:
    """A node of the event list: a call or a return of one operation."""

    __slots__ = ("op", "is_call", "match", "prev", "next")

    def __init__(self, op, is_call):
        self.op, self.is_call = op, is_call
        self.match = self.prev = self.next = None


def _event_list(ops):
    """The doubly linked, time-ordered list of call and return events, behind a sentinel head.
    At equal times calls sort before returns, so touching operations count as concurrent."""
    events = []
    for op in ops:
        call, ret = _Entry(op, True), _Entry(op, False)
        call.match, ret.match = ret, call
        events.append((op.call, 0, op.id, call))
        events.append((op.ret, 1, op.id, ret))
    events.sort(key=lambda e: e[:3])
    head = _Entry(None, False)
    prev = head
    for *_, entry in events:
        prev.next, entry.prev = entry, prev
        prev = entry
    return head


def _lift(call):
    call.prev.next = call.next
    call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next
    if ret.next:
        ret.next.prev = ret.prev


def _unlift(call):
    ret = call.match
    ret.prev.next = ret
    if ret.next:
        ret.next.prev = ret
    call.prev.next = call
    call.next.prev = call


@dataclass
class KeyResult:
    ok: bool
    key: bytes
    ops: int
    # On failure: the longest sequence the search managed to linearize, and the operation whose
    # return it could not get past.
    longest: list = field(default_factory=list)
    stuck_at: Optional[Op] = None

    def explain(self, context: int = 8) -> str:
        if self.ok:
            return f"key {self.key!r}: linearizable ({self.ops} ops)"
        tail = "\n  ".join(str(op) for op in self.longest[-context:])
        return (f"key {self.key!r}: NOT linearizable ({self.ops} ops); the longest linearization "
                f"({len(self.longest)} ops) ends with\n  {tail}\nand cannot place\n  {self.stuck_at}")


def check_key(key: bytes, ops, initial=None) -> KeyResult:
    """Is the history of one key linearizable, starting from `initial` (None: absent)?"""
    ops = list(ops)
    for i, op in enumerate(ops):
        op.id = i
    head = _event_list(ops)
    state = initial
    linearized = 0  # bitset of op ids
    memo = set()
    stack = []  # (call entry, state before it)
    longest, stuck_at = [], None
    entry = head.next
    while entry is not None:
        if entry.is_call:
            allowed, next_state = step(state, entry.op)
            if allowed:
                next_linearized = linearized | (1 << entry.op.id)
                if (next_linearized, next_state) not in memo:
                    memo.add((next_linearized, next_state))
                    stack.append((entry, state))
                    state, linearized = next_state, next_linearized
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if entry.op.unknown:
                # Only returns at infinity are left: every known operation is linearized, and
                # the rest may simply never have happened.
                return KeyResult(True, key, len(ops))
            if len(stack) >= len(longest):
                longest, stuck_at = [e.op for e, _ in stack], entry.op
            if not stack:
                return KeyResult(False, key, len(ops), longest, stuck_at)
            call, state = stack.pop()
            linearized &= ~(1 << call.op.id)
            _unlift(call)
            entry = call.next
    return KeyResult(True, key, len(ops))


def check(history, initial=None) -> list:
    """Check a whole history key by key; returns the failing keys' results (empty: linearizable).
    `initial` maps keys to their value before the history (absent keys start as None)."""
    by_key = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    failures = []
    for key, ops in sorted(by_key.items()):
        result = check_key(key, ops, (initial or {}).get(key))
        if not result.ok:
            failures.append(result)
    return failures
