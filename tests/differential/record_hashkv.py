"""Records engine/src/mvcc/testdata/hashkv_etcd_3_5_1.txt: a seeded history of writes and
compactions run on a real etcd 3.5.1, with etcd's HashKV answers along the way. The Rust test
`hash_kv_matches_etcd` replays the history on KvStore and expects the same hashes, which checks
that our revision records (keys, sub-revisions, tombstones, compaction's survivors) are etcd's
byte for byte.

    python tests/differential/record_hashkv.py > engine/src/mvcc/testdata/hashkv_etcd_3_5_1.txt
"""

import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2 as rpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc  # noqa: E402

import harness  # noqa: E402

SEED = 3
WRITES = 400
KEYS = [c for c in "abcdefgh"]
# etcd commits its backend batch every 100 ms and hashes committed records first; waiting
# longer than that makes the hash cover every record in revision order.
BATCH_SETTLE_S = 0.3
# Compaction deletes in the background; this is ample for a few hundred records.
COMPACTION_SETTLE_S = 1.5


def main() -> None:
    rng = random.Random(SEED)
    lines = [
        "# etcd 3.5.1 HashKV answers for a seeded history; recorded by",
        "# tests/differential/record_hashkv.py, replayed by the mvcc test hash_kv_matches_etcd.",
    ]
    with harness.Server("etcd") as etcd:
        channel = grpc.insecure_channel(etcd.endpoint)
        kv = rpc_grpc.KVStub(channel)
        maintenance = rpc_grpc.MaintenanceStub(channel)
        current, compacted = 1, 0
        for step in range(WRITES):
            choice = rng.random()
            if choice < 0.55:
                key, value = rng.choice(KEYS), rng.choice(["", "x", "yy", "zzz"])
                current = kv.Put(rpc.PutRequest(key=key.encode(), value=value.encode())).header.revision
                lines.append(f"put {key} {value or '-'}")
            elif choice < 0.75:
                key = rng.choice(KEYS)
                end = rng.choice(["-", "-", chr(ord(key) + 2)])
                req = rpc.DeleteRangeRequest(key=key.encode(), range_end=b"" if end == "-" else end.encode())
                current = kv.DeleteRange(req).header.revision
                lines.append(f"del {key} {end}")
            elif choice < 0.95:
                keys = rng.sample(KEYS, 3)
                ops = [f"put {keys[0]} t", f"put {keys[1]} u", f"del {keys[2]} -"]
                txn = rpc.TxnRequest(
                    success=[
                        rpc.RequestOp(request_put=rpc.PutRequest(key=keys[0].encode(), value=b"t")),
                        rpc.RequestOp(request_put=rpc.PutRequest(key=keys[1].encode(), value=b"u")),
                        rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=keys[2].encode())),
                    ]
                )
                current = kv.Txn(txn).header.revision
                lines.append("txn " + "; ".join(ops))
            else:
                revision = rng.randrange(compacted + 1, current + 1)
                kv.Compact(rpc.CompactionRequest(revision=revision, physical=True))
                compacted = revision
                lines.append(f"compact {revision}")
                time.sleep(COMPACTION_SETTLE_S)
            if step % 25 == 24:
                time.sleep(BATCH_SETTLE_S)
                asked = [0, current, rng.randrange(max(compacted, 1), current + 1), compacted, current + 1]
                for revision in asked:
                    try:
                        r = maintenance.HashKV(rpc.HashKVRequest(revision=revision))
                        lines.append(
                            f"hashkv {revision} {r.hash} {r.header.revision} {r.compact_revision}"
                        )
                    except grpc.RpcError as error:
                        lines.append(f"hashkv {revision} error {error.details()}")
        channel.close()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
