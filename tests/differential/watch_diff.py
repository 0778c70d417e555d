"""Differential test of the Watch API: the same scripted sessions run against a real etcd 3.5.1
and against Basalt, and every response each watch stream receives is compared (the top-level
header's cluster_id, member_id and raft_term excluded).

A scenario writes only while its streams are quiet, so how responses group events is
deterministic on both servers (etcd sends one response per revision to a synced watcher and
one per catch-up round to an unsynced one).

    python tests/differential/watch_diff.py            # every scenario, prints the first mismatch
"""

import os
import queue
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2 as rpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc  # noqa: E402

import harness  # noqa: E402
from kv_diff import RPC_TIMEOUT_S, call, normalized, prefix_end, wait_ready  # noqa: E402

# A stream counts as quiet once nothing arrived for this long.
QUIET_S = 0.4
# Progress notifications are asked for this often, so the progress scenario stays short.
PROGRESS_NOTIFY_INTERVAL = "1s"

NOPUT = rpc.WatchCreateRequest.NOPUT
NODELETE = rpc.WatchCreateRequest.NODELETE


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint_field(number, value):
    return varint(number << 3) + varint(value)


def bytes_field(number, body):
    return varint((number << 3) | 2) + varint(len(body)) + body


class WatchStream:
    """One Watch call: requests are queued in, responses collected by a reader thread."""

    def __init__(self, channel, metadata=None):
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        # Requests go out as raw bytes: etcd3's stubs predate watch_id, fragment and
        # progress_request, which are added here by field number.
        watch = channel.stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=lambda body: body,
            response_deserializer=rpc.WatchResponse.FromString,
        )
        self.call = watch(iter(self.requests.get, None), metadata=metadata)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.responses.put(("error", error.code().name, error.details()))

    def create(self, watch_id=0, fragment=False, **create):
        body = rpc.WatchCreateRequest(**create).SerializeToString()
        if watch_id:
            body += varint_field(7, watch_id)
        if fragment:
            body += varint_field(8, 1)
        self.requests.put(bytes_field(1, body))

    def cancel(self, watch_id):
        request = rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=watch_id))
        self.requests.put(request.SerializeToString())

    def request_progress(self):
        self.requests.put(bytes_field(3, b""))

    def quiet(self, wait_s=QUIET_S):
        """Everything received until nothing came for `wait_s`, in comparable form: each watch's
        responses in the order they came, watches by id (etcd hands one revision to its watchers
        in Go map order, so the order across watches is not part of the contract)."""
        got = []
        while True:
            try:
                response = self.responses.get(timeout=wait_s)
            except queue.Empty:
                got.sort(key=lambda entry: entry[0])
                return [body for _, body in got]
            watch_id = response.watch_id if not isinstance(response, tuple) else -2
            got.append((watch_id, normalized(response)))

    def close(self):
        self.requests.put(None)
        self.call.cancel()


class Session:
    """A scenario's view of one server: a KV stub, streams, and the transcript of the run."""

    def __init__(self, channel):
        self.channel = channel
        self.kv = rpc_grpc.KVStub(channel)
        self.streams = []
        self.transcript = []

    def stream(self):
        stream = WatchStream(self.channel)
        self.streams.append(stream)
        return stream

    def put(self, key, value, **extra):
        self.transcript.append(normalized(call(self.kv, "Put", rpc.PutRequest(key=key, value=value, **extra))))

    def delete(self, key, range_end=b""):
        request = rpc.DeleteRangeRequest(key=key, range_end=range_end)
        self.transcript.append(normalized(call(self.kv, "DeleteRange", request)))

    def txn(self, *ops):
        self.transcript.append(normalized(call(self.kv, "Txn", rpc.TxnRequest(success=list(ops)))))

    def compact(self, revision):
        request = rpc.CompactionRequest(revision=revision)
        self.transcript.append(normalized(call(self.kv, "Compact", request)))

    def observe(self, stream, label):
        self.transcript.append((label, stream.quiet()))

    def close(self):
        for stream in self.streams:
            stream.close()


def put_op(key, value):
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def delete_op(key):
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def history(s):
    """A few revisions of writes every scenario can watch from the past."""
    s.put(b"a", b"1")
    s.put(b"a/1", b"x")
    s.put(b"b", b"2")
    s.put(b"a", b"3")
    s.delete(b"a/1")
    s.txn(put_op(b"a/2", b"y"), delete_op(b"b"), put_op(b"a", b"4"))


def historical_watches(s):
    history(s)
    w = s.stream()
    w.create(key=b"a", range_end=prefix_end(b"a"), start_revision=1, prev_kv=True)
    s.observe(w, "prefix from revision 1 with prev_kv")
    w.create(key=b"a", start_revision=3)
    s.observe(w, "one key from revision 3")
    w.create(key=b"\x00", range_end=b"\x00", start_revision=5, watch_id=100)
    s.observe(w, "every key from revision 5, client-chosen id")
    s.put(b"a", b"5")
    s.observe(w, "a live write reaches all three")


def live_filters_and_prev_kv(s):
    history(s)
    w = s.stream()
    w.create(key=b"a", range_end=prefix_end(b"a"), filters=[NOPUT])
    w.create(key=b"a", range_end=prefix_end(b"a"), filters=[NODELETE], prev_kv=True)
    w.create(key=b"a", prev_kv=True)
    s.observe(w, "created")
    s.put(b"a", b"6")
    s.observe(w, "put")
    s.txn(put_op(b"a/3", b"z"), delete_op(b"a/2"), put_op(b"a", b"7"))
    s.observe(w, "txn")
    s.delete(b"a", prefix_end(b"a"))
    s.observe(w, "delete prefix")


def compaction(s):
    history(s)
    s.compact(5)
    w = s.stream()
    w.create(key=b"a", start_revision=2)
    s.observe(w, "start below the compaction")
    w.create(key=b"a", range_end=prefix_end(b"a"), start_revision=5, prev_kv=True)
    s.observe(w, "start at the compaction")
    live = s.stream()
    live.create(key=b"a", prev_kv=True)
    s.observe(live, "live watcher")
    s.put(b"a", b"8")
    s.compact(8)
    s.put(b"a", b"9")
    s.observe(live, "compaction during a live watch")


def control_requests(s):
    history(s)
    w = s.stream()
    w.create(key=b"a", watch_id=7)
    w.create(key=b"b", watch_id=7)
    s.observe(w, "duplicate watch id")
    w.create(key=b"b", range_end=b"a")
    s.observe(w, "empty range")
    w.request_progress()
    s.observe(w, "progress request")
    w.cancel(7)
    w.cancel(12345)
    s.observe(w, "cancel, then cancel of an unknown id")
    w.create(key=b"a")
    s.observe(w, "auto id after a cancel")
    s.put(b"a", b"10")
    s.observe(w, "write after cancel")


def progress_notify(s):
    history(s)
    w = s.stream()
    w.create(key=b"a", progress_notify=True)
    s.observe(w, "created")
    time.sleep(1.5)
    got = w.quiet()
    s.transcript.append(("progress within 1.5 s of an idle watch", got[:1]))


def fragmented_history(s):
    # etcd fragments at --max-request-bytes plus gRPC's 512 KiB allowance: 2 MiB by default.
    for i in range(24):
        s.put(b"f/%02d" % i, b"v" * 100_000)
    w = s.stream()
    w.create(key=b"f/", range_end=prefix_end(b"f/"), start_revision=1, fragment=True)
    s.observe(w, "fragmented catch-up")
    w.create(key=b"f/", range_end=prefix_end(b"f/"), start_revision=1)
    s.observe(w, "the same catch-up whole")


SCENARIOS = [
    historical_watches,
    live_filters_and_prev_kv,
    compaction,
    control_requests,
    progress_notify,
    fragmented_history,
]

def server_flags():
    return ["--experimental-watch-progress-notify-interval", PROGRESS_NOTIFY_INTERVAL]


def transcript(kind, scenario):
    with harness.Server(kind, server_flags()) as server:
        channel = grpc.insecure_channel(server.endpoint)
        try:
            wait_ready(rpc_grpc.KVStub(channel))
            session = Session(channel)
            try:
                scenario(session)
            finally:
                session.close()
            return session.transcript
        finally:
            channel.close()


def first_difference(scenario):
    """None when Basalt's transcript equals etcd's, else a description of the first difference."""
    reference = transcript("etcd", scenario)
    candidate = transcript("basalt", scenario)
    for index, (want, got) in enumerate(zip(reference, candidate)):
        if want != got:
            return f"{scenario.__name__} step {index}:\n etcd:   {want!r:.3000}\n basalt: {got!r:.3000}"
    if len(reference) != len(candidate):
        return f"{scenario.__name__}: {len(reference)} steps on etcd, {len(candidate)} on basalt"
    return None


def main() -> int:
    failed = 0
    for scenario in SCENARIOS:
        difference = first_difference(scenario)
        print(f"{scenario.__name__}: {'ok' if difference is None else 'DIFFERS'}")
        if difference:
            print(difference)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
