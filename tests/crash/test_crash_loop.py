"""Crash loop: kill -9 the durable server while concurrent clients write, restart it, and check
that every acknowledged write is there and that revisions never went backwards.

Default: 30 cycles (CRASH_CYCLES for more), 4 writers (CRASH_WRITERS), --snapshot-count 1000
(CRASH_SNAPSHOT_COUNT), each cycle killing the server after a random 0.2-0.6 s of writes. Every write puts a key of its own, so checking is one
range over the prefix compared with what the clients saw acknowledged.

The encrypted variant runs a third of the cycles with --encryption-key-file, rotating the key
(`basalt rekey`) half way, so kills land in sealed segments and around the switch of keys.
"""

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2 as rpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc  # noqa: E402

import pytest  # noqa: E402

import harness  # noqa: E402

CYCLES = int(os.environ.get("CRASH_CYCLES", "30"))
WRITERS = int(os.environ.get("CRASH_WRITERS", "4"))
SEED = int(os.environ.get("CRASH_SEED", "7"))
# A small snapshot count puts raft snapshots (log compaction, snapshot records) inside the loop.
SNAPSHOT_COUNT = os.environ.get("CRASH_SNAPSHOT_COUNT", "1000")
RPC_TIMEOUT_S = 5.0
PREFIX = b"crash/"


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Writer(threading.Thread):
    """Puts fresh keys until the server goes away; records what was acknowledged."""

    def __init__(self, endpoint: str, name: str, acked: dict, lock: threading.Lock):
        super().__init__(daemon=True)
        self.endpoint, self.name_, self.acked, self.lock = endpoint, name, acked, lock
        self.max_revision = 0

    def run(self) -> None:
        channel = grpc.insecure_channel(self.endpoint)
        stub = rpc_grpc.KVStub(channel)
        seq = 0
        while True:
            key = PREFIX + f"{self.name_}/{seq:08d}".encode()
            value = f"v{seq}".encode()
            try:
                resp = stub.Put(rpc.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError:
                break  # the server died: this write may or may not have happened
            with self.lock:
                self.acked[key] = value
            self.max_revision = max(self.max_revision, resp.header.revision)
            seq += 1
        channel.close()


def read_all(endpoint: str):
    with grpc.insecure_channel(endpoint) as channel:
        stub = rpc_grpc.KVStub(channel)
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = stub.Range(
                    rpc.RangeRequest(key=PREFIX, range_end=prefix_end(PREFIX)), timeout=RPC_TIMEOUT_S
                )
                return {kv.key: kv.value for kv in resp.kvs}, resp.header.revision
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_every_acknowledged_write_survives_kill_9_and_revisions_never_go_back(encrypted, tmp_path):
    random.seed(SEED)
    flags = ["--snapshot-count", SNAPSHOT_COUNT]
    cycles = CYCLES
    if encrypted:
        cycles = max(CYCLES // 3, 4)
        key_file = tmp_path / "key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"1:{os.urandom(32).hex()}\n")
        flags += ["--encryption-key-file", str(key_file)]
    server = harness.Server("basalt", flags)
    acked: dict = {}
    lock = threading.Lock()
    revision_floor = 1
    try:
        for cycle in range(cycles):
            if encrypted and cycle == cycles // 2:
                rekey = [harness.basalt_bin(), "rekey", "--encryption-key-file", str(key_file)]
                subprocess.run(rekey, check=True, capture_output=True, timeout=30)
            server.start()
            found, revision = read_all(server.endpoint)
            missing = [k for k, v in acked.items() if found.get(k) != v]
            assert not missing, f"cycle {cycle}: {len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
            assert revision >= revision_floor, f"cycle {cycle}: revision {revision} < {revision_floor}"
            writers = [Writer(server.endpoint, f"c{cycle}w{i}", acked, lock) for i in range(WRITERS)]
            for writer in writers:
                writer.start()
            time.sleep(random.uniform(0.2, 0.6))
            server.process.kill()
            server.process.wait()
            for writer in writers:
                writer.join(timeout=RPC_TIMEOUT_S * 2)
                revision_floor = max(revision_floor, writer.max_revision)
        server.start()
        found, revision = read_all(server.endpoint)
        missing = [k for k, v in acked.items() if found.get(k) != v]
        assert not missing, f"final: {len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
        assert revision >= revision_floor
        assert len(acked) > cycles, f"too few writes acknowledged to mean anything: {len(acked)}"
        print(f"{cycles} kill -9 cycles, {len(acked)} acknowledged writes, final revision {revision}")
    finally:
        server.cleanup()
