"""What the interchange tests share: a seeded random history written through the etcd v3 API,
everything a client can observe of a server's state in comparable form, and the tools run as
subprocesses."""

import random
import subprocess

import grpc
from etcd3.etcdrpc import auth_pb2
from etcd3.etcdrpc import rpc_pb2 as rpc
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc

from differential.watch_diff import WatchStream
from harness import etcd_bin

PASSWORD = "pw"
KEYS = [f"key/{i:02d}".encode() for i in range(24)]
RPC_TIMEOUT_S = 30


def write_history(endpoint, seed, ops=160):
    """A seeded random history; auth is switched on at the end. Returns the compacted revision."""
    rng = random.Random(seed)
    with grpc.insecure_channel(endpoint) as channel:
        kv, lease = rpc_grpc.KVStub(channel), rpc_grpc.LeaseStub(channel)
        leases, compacted = [], 0
        for step in range(ops):
            r = rng.random()
            key = rng.choice(KEYS)
            if r < 0.45:
                value = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
                attach = rng.choice(leases) if leases and rng.random() < 0.2 else 0
                kv.Put(rpc.PutRequest(key=key, value=value, lease=attach), timeout=RPC_TIMEOUT_S)
            elif r < 0.6:
                end = key[:-1] + bytes([key[-1] + 1]) if rng.random() < 0.3 else b""
                kv.DeleteRange(rpc.DeleteRangeRequest(key=key, range_end=end), timeout=RPC_TIMEOUT_S)
            elif r < 0.8:
                other = rng.choice([k for k in KEYS if k != key])
                compare = rpc.Compare(
                    key=key, result=rpc.Compare.GREATER, target=rpc.Compare.VERSION, version=1
                )
                kv.Txn(rpc.TxnRequest(
                    compare=[compare],
                    success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"txn")),
                             rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=other))],
                    failure=[rpc.RequestOp(request_put=rpc.PutRequest(key=other, value=b"else"))],
                ), timeout=RPC_TIMEOUT_S)
            elif r < 0.9:
                granted = lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=rng.choice([300, 600, 900])), timeout=RPC_TIMEOUT_S)
                leases.append(granted.ID)
            elif leases and r < 0.95:
                victim = leases.pop(rng.randrange(len(leases)))
                lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=victim), timeout=RPC_TIMEOUT_S)
            if step == ops // 2:
                head = kv.Range(rpc.RangeRequest(key=b"\0"), timeout=RPC_TIMEOUT_S).header.revision
                compacted = head - 20
                kv.Compact(rpc.CompactionRequest(revision=compacted, physical=True), timeout=RPC_TIMEOUT_S)
        auth = rpc_grpc.AuthStub(channel)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=RPC_TIMEOUT_S)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="reader"), timeout=RPC_TIMEOUT_S)
        auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(
            name="reader", perm=auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"key/", range_end=b"key0"),
        ), timeout=RPC_TIMEOUT_S)
        auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=PASSWORD), timeout=RPC_TIMEOUT_S)
        auth.UserAdd(rpc.AuthUserAddRequest(name="alice", password="alice-pw"), timeout=RPC_TIMEOUT_S)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=RPC_TIMEOUT_S)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="alice", role="reader"), timeout=RPC_TIMEOUT_S)
        auth.AuthEnable(rpc.AuthEnableRequest(), timeout=RPC_TIMEOUT_S)
    return compacted


def token(channel, user="root", password=PASSWORD):
    reply = rpc_grpc.AuthStub(channel).Authenticate(
        rpc.AuthenticateRequest(name=user, password=password), timeout=RPC_TIMEOUT_S
    )
    return (("token", reply.token),)


def answer(call):
    """A call's result, or its refusal as (code, message)."""
    try:
        return call()
    except grpc.RpcError as error:
        return (error.code().name, error.details())


def kv_tuple(kv):
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def observe(endpoint, compacted):
    """Everything a client can see of the state, in comparable form."""
    with grpc.insecure_channel(endpoint) as channel:
        md = token(channel)
        kv, lease = rpc_grpc.KVStub(channel), rpc_grpc.LeaseStub(channel)
        maintenance, auth = rpc_grpc.MaintenanceStub(channel), rpc_grpc.AuthStub(channel)
        head = kv.Range(rpc.RangeRequest(key=b"\0"), metadata=md, timeout=RPC_TIMEOUT_S).header.revision
        seen = {"head": head}
        for rev in sorted({0, compacted - 1, compacted, compacted + 1, (compacted + head) // 2, head}):
            seen[f"range@{rev}"] = answer(lambda: [kv_tuple(item) for item in kv.Range(
                rpc.RangeRequest(key=b"\0", range_end=b"\0", revision=rev), metadata=md, timeout=RPC_TIMEOUT_S).kvs])
            seen[f"hashkv@{rev}"] = answer(lambda: (lambda h: (h.hash, h.compact_revision))(maintenance.HashKV(
                rpc.HashKVRequest(revision=rev), metadata=md, timeout=RPC_TIMEOUT_S)))
        ids = sorted(item.ID for item in lease.LeaseLeases(rpc.LeaseLeasesRequest(), metadata=md, timeout=RPC_TIMEOUT_S).leases)
        seen["leases"] = [
            (id_, reply.grantedTTL, sorted(reply.keys))
            for id_ in ids
            for reply in [lease.LeaseTimeToLive(rpc.LeaseTimeToLiveRequest(ID=id_, keys=True), metadata=md, timeout=RPC_TIMEOUT_S)]
        ]
        seen["users"] = list(auth.UserList(rpc.AuthUserListRequest(), metadata=md, timeout=RPC_TIMEOUT_S).users)
        seen["reader"] = [
            (p.permType, p.key, p.range_end)
            for p in auth.RoleGet(rpc.AuthRoleGetRequest(role="reader"), metadata=md, timeout=RPC_TIMEOUT_S).perm
        ]
        alice = token(channel, "alice", "alice-pw")
        seen["alice reads"] = len(kv.Range(rpc.RangeRequest(key=b"key/", range_end=b"key0"), metadata=alice, timeout=RPC_TIMEOUT_S).kvs)
        seen["alice writes"] = answer(
            lambda: kv.Put(rpc.PutRequest(key=b"key/00", value=b"no"), metadata=alice, timeout=RPC_TIMEOUT_S))
        stream = WatchStream(channel, metadata=md)
        stream.create(key=b"\0", range_end=b"\0", start_revision=compacted + 1)
        events = []
        for body in stream.quiet():
            assert not isinstance(body, tuple), body
            events.extend((e.type, *kv_tuple(e.kv)) for e in rpc.WatchResponse.FromString(body).events)
        stream.close()
        seen["watch"] = events
        assert events and events[-1][4] == head, "the watch replays up to the head revision"
    return seen


def run(*args, check=True):
    result = subprocess.run([*args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


def restore_flags(server):
    peer = f"http://127.0.0.1:{server.peer_port}"
    return ["--data-dir", str(server.dir / "data"), "--name", "t",
            "--initial-cluster", f"t={peer}", "--initial-advertise-peer-urls", peer]


def snapshot_save(server, path):
    run(etcd_bin("etcdctl"), "--endpoints", server.endpoint, "--user", f"root:{PASSWORD}",
        "snapshot", "save", str(path))
