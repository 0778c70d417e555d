"""Auth across a 3-member cluster: a simple token made on one member works on every member,
because the Authenticate log entry carries it and each member's applier registers it."""

import sys
from pathlib import Path

import grpc
import pytest
from etcd3.etcdrpc import rpc_pb2 as rpc
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
import cluster as cl  # noqa: E402


@pytest.mark.parametrize("kind", ["etcd", "basalt"])
def test_a_token_from_one_member_is_honoured_by_every_member(kind):
    with cl.Cluster(kind=kind, size=3) as c:
        c.wait_ready()
        m1, m2, m3 = c.members
        auth = rpc_grpc.AuthStub(m1.channel())
        auth.UserAdd(rpc.AuthUserAddRequest(name="root", password="rootpw"))
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        auth.AuthEnable(rpc.AuthEnableRequest())
        token = rpc_grpc.AuthStub(m2.channel()).Authenticate(
            rpc.AuthenticateRequest(name="root", password="rootpw")
        ).token
        metadata = [("token", token)]
        rpc_grpc.KVStub(m3.channel()).Put(rpc.PutRequest(key=b"k", value=b"v"), metadata=metadata)
        for member in c.members:
            got = rpc_grpc.KVStub(member.channel()).Range(
                rpc.RangeRequest(key=b"k", serializable=False), metadata=metadata
            )
            assert [kv.value for kv in got.kvs] == [b"v"], member
        with pytest.raises(grpc.RpcError) as refused:
            rpc_grpc.KVStub(m1.channel()).Range(rpc.RangeRequest(key=b"k"))
        assert refused.value.details() == "etcdserver: user name is empty"
