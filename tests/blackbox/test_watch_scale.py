"""Watch at scale against the basalt binary: 10,000 watchers on one stream, and 1,000 connections
with a watch each. Every watcher must receive exactly the events of its keys, once each and in
revision order; a stream whose queue overflows (the 10,000 watchers share one) exercises the
victim path, which must lose and repeat nothing.

WATCH_SCALE_WATCHERS and WATCH_SCALE_CONNECTIONS change the sizes."""

import asyncio
import os
import sys
from collections import defaultdict

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import grpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2 as rpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from harness import Server  # noqa: E402

WATCHERS = int(os.environ.get("WATCH_SCALE_WATCHERS", "10000"))
CONNECTIONS = int(os.environ.get("WATCH_SCALE_CONNECTIONS", "1000"))
# Keys the one-stream watchers spread over; each key is watched by WATCHERS / KEYS watchers.
KEYS = 100
PUTS_PER_KEY = 5
CONNECTION_PUTS = 20
# Generous for a shared 2-core machine; a stream that truly stalls still fails.
DEADLINE_S = 45.0


async def wait_created(call, count):
    created = []
    while len(created) < count:
        response = await call.read()
        assert response.created and not response.events, response
        created.append(response.watch_id)
    return created


# After the expected events, a stream must stay silent this long (nothing repeated late).
SILENCE_S = 0.5


async def collect(call, expected_total, into):
    """Puts every event into `into[watch_id]` until `expected_total` events arrived, then checks
    that no more come."""
    seen = 0
    while seen < expected_total:
        response = await call.read()
        for event in response.events:
            into[response.watch_id].append((event.kv.key, event.kv.mod_revision))
            seen += 1
    try:
        extra = await asyncio.wait_for(call.read(), SILENCE_S)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"an event beyond the expected ones: {extra}")


async def ten_thousand_watchers_on_one_stream(endpoint):
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc_grpc.KVStub(channel)
        requests = asyncio.Queue()

        async def request_stream():
            while (request := await requests.get()) is not None:
                yield request

        call = rpc_grpc.WatchStub(channel).Watch(request_stream())
        for i in range(WATCHERS):
            create = rpc.WatchCreateRequest(key=b"s/%03d" % (i % KEYS))
            requests.put_nowait(rpc.WatchRequest(create_request=create))
        ids = await asyncio.wait_for(wait_created(call, WATCHERS), DEADLINE_S)
        assert sorted(ids) == list(range(WATCHERS)), "auto ids are 0..n-1"
        revisions = defaultdict(list)
        for round_ in range(PUTS_PER_KEY):
            for k in range(KEYS):
                resp = await kv.Put(rpc.PutRequest(key=b"s/%03d" % k, value=b"%d" % round_))
                revisions[k].append(resp.header.revision)
        events = defaultdict(list)
        await asyncio.wait_for(collect(call, WATCHERS * PUTS_PER_KEY, events), DEADLINE_S)
        requests.put_nowait(None)
        call.cancel()
    for watch_id in range(WATCHERS):
        k = watch_id % KEYS
        expected = [(b"s/%03d" % k, revision) for revision in revisions[k]]
        assert events[watch_id] == expected, f"watch {watch_id}"


async def one_watch_per_connection(endpoint):
    channels = [grpc.aio.insecure_channel(endpoint) for _ in range(CONNECTIONS)]
    try:
        calls = []
        for channel in channels:
            create = rpc.WatchCreateRequest(key=b"c/", range_end=b"c0")

            async def one(create=create):
                yield rpc.WatchRequest(create_request=create)
                await asyncio.Event().wait()  # Keep the request side open.

            call = rpc_grpc.WatchStub(channel).Watch(one())
            calls.append(call)
        await asyncio.wait_for(
            asyncio.gather(*(wait_created(call, 1) for call in calls)), DEADLINE_S
        )
        kv = rpc_grpc.KVStub(channels[0])
        revisions = []
        for i in range(CONNECTION_PUTS):
            resp = await kv.Put(rpc.PutRequest(key=b"c/%02d" % i, value=b"v"))
            revisions.append((b"c/%02d" % i, resp.header.revision))
        results = [defaultdict(list) for _ in calls]
        await asyncio.wait_for(
            asyncio.gather(
                *(collect(call, CONNECTION_PUTS, into) for call, into in zip(calls, results))
            ),
            DEADLINE_S,
        )
        for call in calls:
            call.cancel()
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    for n, got in enumerate(results):
        assert got[0] == revisions, f"connection {n}"


def test_ten_thousand_watchers_on_one_stream_get_every_event_once():
    with Server("basalt") as server:
        asyncio.run(ten_thousand_watchers_on_one_stream(server.endpoint))


def test_a_thousand_connections_with_a_watch_each_get_every_event_once():
    with Server("basalt") as server:
        asyncio.run(one_watch_per_connection(server.endpoint))
