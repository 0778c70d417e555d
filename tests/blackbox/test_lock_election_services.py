"""The v3lock and v3election gRPC services against the basalt binary: Lock waits its turn until
the holder unlocks; Campaign waits until the leader resigns; Proclaim needs the leadership;
Leader names the oldest candidate; Observe streams each leader and proclaimed value.

etcd3's stubs carry no v3lock/v3election, so messages are written and read by field number."""

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import grpc  # noqa: E402
import pytest  # noqa: E402
from etcd3.etcdrpc import rpc_pb2 as rpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "differential"))

from harness import Server  # noqa: E402
from watch_diff import bytes_field, varint_field  # noqa: E402

# A call that must still be waiting after this long is taken as blocked.
BLOCKED_S = 0.7
CALL_TIMEOUT_S = 20


def fields(body):
    """Top-level fields of a protobuf message: number -> list of ints or bytes."""
    out, i = {}, 0

    def varint():
        nonlocal i
        value, shift = 0, 0
        while True:
            byte = body[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(body):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            length = varint()
            value = body[i : i + length]
            i += length
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


class Client:
    def __init__(self, endpoint):
        self.channel = grpc.insecure_channel(endpoint)
        self.lease = rpc_grpc.LeaseStub(self.channel)

    def call(self, path, body):
        method = self.channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return fields(method(body, timeout=CALL_TIMEOUT_S))

    def grant(self):
        return self.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=60), timeout=CALL_TIMEOUT_S).ID

    def lock(self, name, lease):
        return self.call("/v3lockpb.Lock/Lock", bytes_field(1, name) + varint_field(2, lease))[2][0]

    def unlock(self, key):
        return self.call("/v3lockpb.Lock/Unlock", bytes_field(1, key))

    def campaign(self, name, lease, value):
        reply = self.call(
            "/v3electionpb.Election/Campaign",
            bytes_field(1, name) + varint_field(2, lease) + bytes_field(3, value),
        )
        return reply[2][0]  # LeaderKey, as bytes to send back

    def leader_value(self, name):
        kv = fields(self.call("/v3electionpb.Election/Leader", bytes_field(1, name))[2][0])
        return kv[5][0]

    def proclaim(self, leader, value):
        return self.call("/v3electionpb.Election/Proclaim", bytes_field(1, leader) + bytes_field(2, value))

    def resign(self, leader):
        return self.call("/v3electionpb.Election/Resign", bytes_field(1, leader))


@pytest.fixture
def client():
    with Server("basalt") as server:
        c = Client(server.endpoint)
        yield c
        c.channel.close()


def test_a_second_lock_waits_for_the_unlock(client):
    first_lease, second_lease = client.grant(), client.grant()
    first_key = client.lock(b"L", first_lease)
    assert first_key == b"L/%x" % first_lease
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(client.lock, b"L", second_lease)
        time.sleep(BLOCKED_S)
        assert not second.done(), "the lock is held"
        client.unlock(first_key)
        assert second.result(timeout=CALL_TIMEOUT_S) == b"L/%x" % second_lease


def test_candidates_lead_in_turn_and_observe_sees_each_leader(client):
    first_lease, second_lease = client.grant(), client.grant()
    observed = []
    observe = client.channel.unary_stream(
        "/v3electionpb.Election/Observe", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    stream = observe(bytes_field(1, b"E"))

    def read():
        try:
            for body in stream:
                observed.append(fields(fields(body)[2][0])[5][0])
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first = client.campaign(b"E", first_lease, b"a")
    assert client.leader_value(b"E") == b"a"
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(client.campaign, b"E", second_lease, b"b")
        time.sleep(BLOCKED_S)
        assert not second.done(), "the first candidate leads"
        client.proclaim(first, b"a2")
        assert client.leader_value(b"E") == b"a2"
        client.resign(first)
        second_leader = second.result(timeout=CALL_TIMEOUT_S)
    assert client.leader_value(b"E") == b"b"
    with pytest.raises(grpc.RpcError) as refused:
        client.proclaim(first, b"stale")
    # etcd's election server returns clientv3's plain error: Unknown, with its text.
    assert refused.value.code() == grpc.StatusCode.UNKNOWN
    assert refused.value.details() == "election: not leader"
    client.proclaim(second_leader, b"b2")
    deadline = time.monotonic() + 5
    while observed[-1:] != [b"b2"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.cancel()
    assert observed == [b"a", b"a2", b"b", b"b2"]
