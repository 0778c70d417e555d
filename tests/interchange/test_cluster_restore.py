"""A 3-member Basalt cluster made from one etcd 3.5.1 member, as the README's runbook does it:
each member's data dir is made from the same source (`basalt snapshot restore` of one
`etcdctl snapshot save` file, or `basalt migrate` of the stopped member's data dir) with the
same --initial-cluster and token. The members then form one cluster, each serves what etcd
served (reads, HashKV, leases, auth, a watch from an old revision), and a write through one is
read through the others."""

import sys
import time
from pathlib import Path

import grpc
import pytest
from etcd3.etcdrpc import rpc_pb2 as rpc
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc

from harness import Server, basalt_bin
from interchange.history import RPC_TIMEOUT_S, observe, run, snapshot_save, token, write_history

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
import cluster as cl  # noqa: E402

READY_TIMEOUT_S = 60


def wait_serving(members):
    """Every member agrees on a leader and answers a linearizable read as root (auth is on)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        statuses = [m.status() for m in members]
        leaders = {st.leader for st in statuses if st}
        if all(statuses) and len(leaders) == 1 and 0 not in leaders:
            try:
                for m in members:
                    with grpc.insecure_channel(m.endpoint) as channel:
                        rpc_grpc.KVStub(channel).Range(rpc.RangeRequest(key=b"k"), metadata=token(channel), timeout=5)
                return
            except grpc.RpcError:
                pass
        assert time.monotonic() < deadline, f"not serving (leaders {leaders})"
        time.sleep(0.2)


@pytest.mark.parametrize("source", ["snapshot", "data-dir"])
def test_three_basalt_members_made_from_one_etcd_member_serve_its_data(source, tmp_path):
    with Server("etcd") as etcd:
        compacted = write_history(etcd.endpoint, seed=33)
        expected = observe(etcd.endpoint, compacted)
        if source == "snapshot":
            origin = tmp_path / "snapshot.db"
            snapshot_save(etcd, origin)
            make = [basalt_bin(), "snapshot", "restore", str(origin)]
        else:
            etcd.process.kill()
            etcd.process.wait()
            origin = etcd.dir / "data"
            make = [basalt_bin(), "migrate", "--from-etcd-data-dir", str(origin)]
        c = cl.Cluster("basalt", size=3)
        try:
            c.members = [c.new_member() for _ in range(3)]
            initial = c.initial_cluster(c.members)
            for m in c.members:
                run(*make, "--name", m.name, "--data-dir", str(m.dir / "data"), "--initial-cluster", initial,
                    "--initial-cluster-token", c.token, "--initial-advertise-peer-urls", m.peer_url)
            for m in c.members:
                m.start(initial, "new")
            wait_serving(c.members)
            for m in c.members:
                assert observe(m.endpoint, compacted) == expected, m.name

            first, *others = c.members
            with grpc.insecure_channel(first.endpoint) as channel:
                put = rpc_grpc.KVStub(channel).Put(rpc.PutRequest(key=b"after", value=b"restore"),
                                                   metadata=token(channel), timeout=RPC_TIMEOUT_S)
            for m in others:
                with grpc.insecure_channel(m.endpoint) as channel:
                    got = rpc_grpc.KVStub(channel).Range(rpc.RangeRequest(key=b"after"), metadata=token(channel),
                                                         timeout=RPC_TIMEOUT_S)
                assert [(kv.value, kv.mod_revision) for kv in got.kvs] == [(b"restore", put.header.revision)], m.name
            members = {(m.name, tuple(m.peerURLs)) for m in rpc_grpc.ClusterStub(first.channel()).MemberList(
                rpc.MemberListRequest(), timeout=RPC_TIMEOUT_S).members}
            assert members == {(m.name, (m.peer_url,)) for m in c.members}
        finally:
            c.close()
