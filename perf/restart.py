"""Restart time of a durable Basalt holding 1M keys (RESTART_KEYS to change).

Loads the keys with basalt-bench, then measures, from process start to the first answered
linearizable Range: (1) a restart after SIGTERM (clean: checkpointed, nothing to replay) and
(2) a restart after kill -9 right after more writes (the WAL after the last checkpoint replays).
Prints a Markdown block for perf/RESULTS.md.

    python3 perf/restart.py   # needs BASALT_BIN and BENCH_BIN (basalt-bench)
"""

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import grpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2 as rpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc  # noqa: E402

import harness  # noqa: E402

KEYS = int(os.environ.get("RESTART_KEYS", "1000000"))
BENCH = os.environ.get("BENCH_BIN", str(harness.REPO / "target" / "release" / "basalt-bench"))


def load(endpoint: str, total: int) -> float:
    started = time.monotonic()
    subprocess.run(
        [BENCH, "--endpoints", endpoint, "--conns", "4", "--clients", "64", "put",
         "--total", str(total), "--key-space-size", str(KEYS), "--sequential-keys",
         "--key-size", "16", "--val-size", "64"],
        check=True, stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def first_answer_s(server: harness.Server) -> tuple:
    started = time.monotonic()
    server.start()
    with grpc.insecure_channel(server.endpoint) as channel:
        stub = rpc_grpc.KVStub(channel)
        while True:
            try:
                resp = stub.Range(rpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True), timeout=60)
                return time.monotonic() - started, resp.count, resp.header.revision
            except grpc.RpcError:
                time.sleep(0.01)


def main() -> None:
    server = harness.Server("basalt")
    try:
        server.start()
        load_s = load(server.endpoint, KEYS)
        server.stop()
        clean_s, count, revision = first_answer_s(server)
        assert count == KEYS, (count, KEYS)
        load(server.endpoint, 20000)
        server.process.kill()
        server.process.wait()
        crash_s, count2, revision2 = first_answer_s(server)
        assert revision2 >= revision + 20000, (revision2, revision)
        db = server.dir / "data" / "member" / "snap" / "db"
        wal = server.dir / "data" / "member" / "wal"
        wal_bytes = sum(f.stat().st_size for f in wal.iterdir())
        print("<!-- restart:begin -->")
        print(f"## Restart with {KEYS:,} keys (16 B keys, 64 B values; `python3 perf/restart.py`)\n")
        print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine, debug-profile binary "
              f"({os.path.basename(harness.basalt_bin())}), 1 core. Time from process start to the first answered "
              "linearizable Range.\n")
        print("| restart | time | state |")
        print("| --- | ---: | --- |")
        print(f"| after SIGTERM (checkpointed, nothing to replay) | {clean_s:.2f} s | {count:,} keys, revision {revision:,} |")
        print(f"| after kill -9 following 20,000 more puts (WAL replay) | {crash_s:.2f} s | revision {revision2:,} |")
        print(f"\nLoad: {KEYS:,} puts in {load_s:.1f} s (64 clients). Files: db {db.stat().st_size / 2**20:.0f} MiB, "
              f"wal {wal_bytes / 2**20:.0f} MiB.")
        print("<!-- restart:end -->")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
