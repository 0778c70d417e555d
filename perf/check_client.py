#!/usr/bin/env python3
"""An independent second client for checking basalt-bench: a plain Python loop on grpcio
(gRPC's C core, an HTTP/2 stack unrelated to ours) that calls at a fixed low rate and reports
latency percentiles as JSON (microseconds).

--op put: PutRequest {key: field 1, value: field 2}; --op range: a serializable RangeRequest
{key: field 1, serializable: field 7}, the cheapest call a server answers, whose latency is
mostly each client's own fixed cost. Both are encoded by hand, so no Python protobuf runtime
sits inside the timed call.

Usage: check_client.py HOST:PORT [--op put|range] --total N --rate R --json FILE
"""
import argparse
import json
import os
import time

import grpc


def percentile(sorted_values, q):
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def put_request(key, value):
    return b"\x0a" + varint(len(key)) + key + b"\x12" + varint(len(value)) + value


def serializable_range_request(key):
    return b"\x0a" + varint(len(key)) + key + b"\x38\x01"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("endpoint")
    parser.add_argument("--op", choices=("put", "range"), default="put")
    parser.add_argument("--range-key", default="basalt-bench-check")
    parser.add_argument("--total", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--key-size", type=int, default=8)
    parser.add_argument("--val-size", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    channel = grpc.insecure_channel(args.endpoint.replace("http://", ""))
    if args.op == "put":
        call = channel.unary_unary("/etcdserverpb.KV/Put")
        request = put_request(b"\0" * args.key_size, b"v" * args.val_size)
    else:
        call = channel.unary_unary("/etcdserverpb.KV/Range")
        request = serializable_range_request(args.range_key.encode())
    call(request)  # connect and warm up outside the measurement
    interval_s = 1.0 / args.rate
    latencies_us = []
    next_s = time.perf_counter()
    for _ in range(args.total):
        now = time.perf_counter()
        if next_s > now:
            time.sleep(next_s - now)
        next_s += interval_s
        start = time.perf_counter()
        call(request)
        latencies_us.append((time.perf_counter() - start) * 1e6)
    latencies_us.sort()
    result = {
        "client": "python grpcio %s" % grpc.__version__,
        "op": args.op,
        "count": len(latencies_us),
        "mean": sum(latencies_us) / len(latencies_us),
        "p50": percentile(latencies_us, 0.5),
        "p90": percentile(latencies_us, 0.9),
        "p99": percentile(latencies_us, 0.99),
    }
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
