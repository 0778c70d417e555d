"""etcd 3.5.1's own message classes, from the schema compiled into its binary.

etcd's Go binary carries every .proto it was built with as a gzipped FileDescriptorProto (the
Rust test proto/tests/descriptors.rs reads the same ones). Decoding answers with these classes,
rather than with the etcd3 package's stubs (etcd 3.3's schema: no isLearner, no
raftAppliedIndex, no election or lock messages), lets a comparison see every field etcd 3.5.1
has. They live in a pool of their own, beside the stubs in the default pool.
"""

import functools
import zlib
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.unknown_fields import UnknownFieldSet

from harness import etcd_bin

# The client API's files, by the name each registers and the path others import it by.
CLIENT_FILES = {
    "kv.proto": "etcd/api/mvccpb/kv.proto",
    "auth.proto": "etcd/api/authpb/auth.proto",
    "rpc.proto": "etcd/api/etcdserverpb/rpc.proto",
    "v3election.proto": "v3election.proto",
    "v3lock.proto": "v3lock.proto",
}
GZIP_MAGIC = b"\x1f\x8b\x08"
# Bytes handed to the decompressor per candidate: the largest file (rpc.proto) is far smaller.
GZIP_SCAN_BYTES_MAX = 1 << 20


def _embedded_files():
    binary = Path(etcd_bin("etcd")).read_bytes()
    found = {}
    start = binary.find(GZIP_MAGIC)
    while start != -1 and len(found) < len(CLIENT_FILES):
        try:
            raw = zlib.decompressobj(31).decompress(binary[start:start + GZIP_SCAN_BYTES_MAX])
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except Exception:  # Not a gzip stream, or not a descriptor: the magic was by chance.
            file = None
        if file is not None and file.name in CLIENT_FILES:
            found.setdefault(file.name, file)
        start = binary.find(GZIP_MAGIC, start + 1)
    missing = set(CLIENT_FILES) - set(found)
    assert not missing, f"etcd's binary does not carry {missing}"
    return found


@functools.lru_cache(maxsize=None)
def _pool():
    pool = descriptor_pool.DescriptorPool()
    files = _embedded_files()
    # Dependencies before dependants; gogoproto's and google.api's options only annotate.
    for name in ["kv.proto", "auth.proto", "rpc.proto", "v3election.proto", "v3lock.proto"]:
        file = files[name]
        file.name = CLIENT_FILES[name]
        kept = [d for d in file.dependency if d in CLIENT_FILES.values()]
        del file.dependency[:]
        file.dependency.extend(kept)
        _strip_options(file)
        pool.Add(file)
    return pool


def _strip_options(file):
    file.ClearField("options")
    messages = list(file.message_type)
    while messages:
        message = messages.pop()
        message.ClearField("options")
        for field in message.field:
            field.ClearField("options")
        messages.extend(message.nested_type)
    for service in file.service:
        for method in service.method:
            method.ClearField("options")


def message_class(full_name: str):
    """etcd 3.5.1's class for a message, e.g. "etcdserverpb.StatusResponse"."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(full_name))


def method_classes(grpc_path: str):
    """(request class, response class) of a gRPC method path, e.g.
    "/etcdserverpb.Maintenance/Status"."""
    service, method = grpc_path.strip("/").split("/")
    descriptor = _pool().FindServiceByName(service).methods_by_name[method]
    return (message_factory.GetMessageClass(descriptor.input_type),
            message_factory.GetMessageClass(descriptor.output_type))


def service_methods(service: str):
    """Every gRPC method path of a service, e.g. "etcdserverpb.Lease"."""
    return [f"/{service}/{m.name}" for m in _pool().FindServiceByName(service).methods]


def unknown_fields(message, path=""):
    """Where a decoded message carries fields etcd 3.5.1's schema does not have."""
    found = [path or "<root>"] if len(UnknownFieldSet(message)) else []
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        children = value if field.is_repeated else [value]
        for i, child in enumerate(children):
            found += unknown_fields(child, f"{path}.{field.name}[{i}]")
    return found
