"""Auth end to end with etcdctl 3.5.1: the same session against a fresh etcd 3.5.1 and a fresh Basalt.

The session builds users and roles, enables auth, then works as each user; every command's exit
code, stdout and stderr must agree once ids, tokens, timestamps and ports are masked. A second
test is a table of refused requests (bad passwords, forged and expired tokens, ranges just outside
a grant, txn sub-requests, watches, revoked roles, admin calls of non-root users): each gets etcd's
error on both servers, and a root read shows the data unchanged afterwards.
"""

import re
import subprocess
import time

import pytest

from harness import Server, etcd_bin

ROOT = "--user=root:rootpw"
ALICE = "--user=alice:alicepw"
# Token TTL of the expiry case: short, so the test waits little.
TOKEN_TTL_S = 2


def run(endpoint, *args, stdin=None, timeout=30):
    result = subprocess.run(
        [etcd_bin("etcdctl"), "--endpoints", endpoint, "--command-timeout=5s", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"ETCDCTL_API": "3"},
        timeout=timeout,
    )
    return result.returncode, result.stdout, result.stderr


IDS = re.compile(r'("?(cluster_id|member_id|raft_term|ClusterID|MemberID|RaftTerm)"?\s*[:=]\s*)\d+')
TIMESTAMP = re.compile(r"\{\"level\".*?\}\n?|\d{4}-\d\d-\d\d[ T][\d:.]+\S*")
PORT = re.compile(r"127\.0\.0\.1:\d+")


def normalize(text):
    text = IDS.sub(r"\1<id>", text)
    text = TIMESTAMP.sub("<time>", text)
    return PORT.sub("<endpoint>", text)


SETUP = [
    ["user", "add", "root", "--new-user-password=rootpw"],
    ["user", "add", "alice", "--new-user-password=alicepw"],
    ["user", "add", "carol", "--new-user-password=carolpw"],
    ["user", "add", "cert-only", "--no-password"],
    ["user", "add", "root", "--new-user-password=again"],
    ["user", "list"],
    ["role", "add", "root"],
    ["role", "add", "r1"],
    ["role", "add", "r2"],
    ["role", "add", "r1"],
    ["role", "list"],
    ["auth", "enable"],
    ["user", "grant-role", "root", "root"],
    ["user", "grant-role", "alice", "r1"],
    ["user", "grant-role", "alice", "nope"],
    ["user", "grant-role", "nobody", "r1"],
    ["user", "grant-role", "carol", "r2"],
    ["role", "grant-permission", "r1", "readwrite", "foo", "--prefix"],
    ["role", "grant-permission", "r1", "read", "a", "c"],
    ["role", "grant-permission", "r1", "write", "w", "--from-key"],
    ["role", "grant-permission", "r1", "read", "k1"],
    ["role", "grant-permission", "r2", "readwrite", "foo", "--prefix"],
    ["role", "grant-permission", "r2", "read", "k1"],
    ["role", "grant-permission", "nope", "read", "k1"],
    ["role", "get", "r1"],
    ["role", "get", "root"],
    ["role", "get", "nope"],
    ["user", "get", "alice"],
    ["user", "get", "alice", "--detail"],
    ["user", "get", "nobody"],
    ["role", "revoke-permission", "r1", "k1"],
    ["role", "revoke-permission", "r1", "k2"],
    ["role", "get", "r1"],
    ["put", "foo1", "v1"],
    ["put", "b", "vb"],
    ["put", "k1", "vk"],
    ["put", "zz", "vz"],
    ["auth", "status"],
    ["auth", "enable"],
]

AS_USERS = [
    [ROOT, "auth", "status"],
    ["auth", "status"],
    ["get", "foo1"],
    [ALICE, "get", "foo1"],
    [ALICE, "get", "foo", "--prefix"],
    [ALICE, "put", "foo2", "v2"],
    [ALICE, "put", "foo2", "v3", "--prev-kv"],
    [ALICE, "get", "b"],
    [ALICE, "get", "a", "c"],
    [ALICE, "put", "b", "nope"],
    [ALICE, "put", "www", "w"],
    [ALICE, "get", "www"],
    [ALICE, "del", "foo2"],
    [ALICE, "user", "list"],
    [ALICE, "user", "get", "alice"],
    [ALICE, "user", "get", "root"],
    [ALICE, "role", "get", "r1"],
    [ALICE, "role", "get", "r2"],
    [ALICE, "role", "list"],
    [ALICE, "auth", "disable"],
    ["--user=cert-only:x", "get", "foo1"],
    [ROOT, "user", "revoke-role", "root", "root"],
    [ROOT, "user", "delete", "root"],
    [ROOT, "role", "delete", "root"],
    [ROOT, "user", "revoke-role", "alice", "r2"],
    [ROOT, "user", "passwd", "carol", "--new-user-password=carol2"],
    ["--user=carol:carol2", "get", "foo1"],
    ["--user=carol:carolpw", "get", "foo1"],
    [ROOT, "role", "delete", "r2"],
    [ROOT, "user", "get", "carol"],
    [ROOT, "user", "delete", "carol"],
    [ROOT, "user", "list"],
    [ROOT, "get", "", "--prefix"],
    [ROOT, "auth", "disable"],
    ["auth", "status"],
    ["get", "foo1"],
    ["user", "delete", "root"],
    ["auth", "enable"],
]

TXN_OK = 'value("foo1") = "v1"\n\nput foo3 t\n\nget foo1\n\n'
TXN_BAD_COMPARE = 'value("c") = "vc"\n\nput foo3 t\n\n\n'
TXN_BAD_OP = 'value("foo1") = "v1"\n\nput c t\n\n\n'
TXN_BAD_READ_OP = 'value("foo1") = "v1"\n\nget c\n\n\n'
TXN_BAD_FAILURE_OP = 'value("foo1") = "nope"\n\nput foo3 x\n\ndel b\n\n'


def session(server):
    transcript = []
    for args in SETUP + AS_USERS:
        transcript.append((args, run(server.endpoint, *args)))
    return transcript


def test_etcdctl_auth_session_matches_etcd():
    with Server("etcd") as etcd, Server("basalt") as basalt:
        want = session(etcd)
        got = session(basalt)
    for (args, (want_code, want_out, want_err)), (_, (code, out, err)) in zip(want, got):
        assert (code, normalize(out), normalize(err)) == (
            want_code,
            normalize(want_out),
            normalize(want_err),
        ), f"etcdctl {' '.join(args)}"


def enable_auth(endpoint):
    for args in [
        ["user", "add", "root", "--new-user-password=rootpw"],
        ["user", "grant-role", "root", "root"],
        ["user", "add", "alice", "--new-user-password=alicepw"],
        ["role", "add", "r1"],
        ["role", "grant-permission", "r1", "readwrite", "foo", "fop"],
        ["role", "grant-permission", "r1", "read", "b"],
        ["role", "grant-permission", "r1", "readwrite", "w", "--from-key"],
        ["role", "grant-permission", "r1", "write", "o"],
        ["user", "grant-role", "alice", "r1"],
        ["put", "foo1", "v1"],
        ["put", "b", "vb"],
        ["put", "c", "vc"],
        ["put", "zz", "vz"],
        ["auth", "enable"],
    ]:
        code, out, err = run(endpoint, *args)
        assert code == 0, (args, out, err)


# (name, args, stdin): each must fail identically on etcd and Basalt, leaving the data as it was.
REFUSED = [
    ("wrong password", ["--user=alice:wrong", "get", "foo1"], None),
    ("unknown user", ["--user=mallory:x", "get", "foo1"], None),
    ("no user", ["put", "foo1", "x"], None),
    ("key outside the grant", [ALICE, "put", "b", "x"], None),
    ("range end one past the grant", [ALICE, "get", "foo", "foq"], None),
    ("range starting before the grant", [ALICE, "get", "fo", "fop"], None),
    ("prefix wider than the grant", [ALICE, "get", "fo", "--prefix"], None),
    ("from-key past the grant", [ALICE, "get", "foo", "--from-key"], None),
    ("read-only key written", [ALICE, "put", "b", "x"], None),
    ("delete a read-only key", [ALICE, "del", "b"], None),
    ("delete a range past the grant", [ALICE, "del", "foo", "--from-key"], None),
    ("put with prev-kv on a write-only key", [ALICE, "put", "o", "x", "--prev-kv"], None),
    ("delete with prev-kv on a write-only key", [ALICE, "del", "o", "--prev-kv"], None),
    ("key just before a from-key grant", [ALICE, "put", "vzzz", "x"], None),
    ("watch-free read of an ungranted key", [ALICE, "get", "c"], None),
    ("txn compare outside", [ALICE, "txn"], TXN_BAD_COMPARE),
    ("txn op outside", [ALICE, "txn"], TXN_BAD_OP),
    ("txn read op outside", [ALICE, "txn"], TXN_BAD_READ_OP),
    ("txn failure op outside", [ALICE, "txn"], TXN_BAD_FAILURE_OP),
    ("snapshot by a non-root user", [ALICE, "snapshot", "save", "/dev/null"], None),
    ("member add by a non-root user", [ALICE, "member", "add", "x", "--peer-urls=http://127.0.0.1:1"], None),
    ("user list by a non-root user", [ALICE, "user", "list"], None),
    ("user add by a non-root user", [ALICE, "user", "add", "eve", "--new-user-password=e"], None),
    ("role grant by a non-root user", [ALICE, "role", "grant-permission", "r1", "readwrite", "", "--from-key"], None),
    ("grant itself root", [ALICE, "user", "grant-role", "alice", "root"], None),
    ("auth disable by a non-root user", [ALICE, "auth", "disable"], None),
    ("defragment by a non-root user", [ALICE, "defrag"], None),
    ("hashkv by a non-root user", [ALICE, "endpoint", "hashkv"], None),
    ("root revokes its own root role", [ROOT, "user", "revoke-role", "root", "root"], None),
    ("root user deleted while enabled", [ROOT, "user", "delete", "root"], None),
]


def everything(endpoint):
    code, out, err = run(endpoint, ROOT, "get", "", "--prefix", "-w", "json")
    assert code == 0, err
    return re.sub(r'"header":\{[^}]*\},?', "", out)


@pytest.fixture(scope="module")
def auth_servers():
    """One etcd and one Basalt with auth on, shared by the refusal table: a refused request
    changes nothing, so the cases cannot disturb each other."""
    servers = {kind: Server(kind).start() for kind in ("etcd", "basalt")}
    try:
        for server in servers.values():
            enable_auth(server.endpoint)
        yield servers
    finally:
        for server in servers.values():
            server.cleanup()


@pytest.mark.parametrize("name,args,stdin", REFUSED, ids=[case[0] for case in REFUSED])
def test_refused_requests_get_etcds_error_and_change_nothing(auth_servers, name, args, stdin):
    results = {}
    for kind, server in auth_servers.items():
        before = everything(server.endpoint)
        code, out, err = run(server.endpoint, *args, stdin=stdin)
        assert code != 0 or "Error" in err, f"{kind}: {name} was allowed"
        assert everything(server.endpoint) == before, f"{kind}: {name} changed data"
        results[kind] = (code, normalize(out), normalize(err))
    assert results["basalt"] == results["etcd"], name


def test_watch_on_a_range_not_granted_is_canceled_as_etcd_cancels_it():
    results = {}
    for kind in ("etcd", "basalt"):
        with Server(kind) as server:
            enable_auth(server.endpoint)
            try:
                run(server.endpoint, ALICE, "watch", "c", timeout=3)
            except subprocess.TimeoutExpired as expired:
                pytest.fail(f"{kind}: the watch stayed open: {expired.stdout}")
            results[kind] = run(server.endpoint, ALICE, "watch", "c")
    assert results["basalt"] == results["etcd"]
    assert results["basalt"][0] != 0


def test_forged_and_expired_tokens_are_refused():
    """etcdctl re-authenticates on an invalid token, so tokens are sent by hand here."""
    import grpc
    from etcd3.etcdrpc import rpc_pb2, rpc_pb2_grpc

    with Server("basalt", ["--auth-token-ttl", str(TOKEN_TTL_S)]) as server:
        enable_auth(server.endpoint)
        channel = grpc.insecure_channel(server.endpoint)
        auth = rpc_pb2_grpc.AuthStub(channel)
        kv = rpc_pb2_grpc.KVStub(channel)
        token = auth.Authenticate(rpc_pb2.AuthenticateRequest(name="alice", password="alicepw")).token
        put = rpc_pb2.PutRequest(key=b"foo2", value=b"v")
        kv.Put(put, metadata=[("token", token)])
        for name, bad in [
            ("garbage", "garbage"),
            ("forged index", token.rsplit(".", 1)[0] + ".999999"),
            ("forged prefix", "AAAAAAAAAAAAAAAA." + token.rsplit(".", 1)[1]),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                kv.Put(put, metadata=[("token", bad)])
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert refused.value.details() == "etcdserver: invalid auth token", name
        time.sleep(TOKEN_TTL_S + 1)
        with pytest.raises(grpc.RpcError) as expired:
            kv.Put(put, metadata=[("token", token)])
        assert expired.value.details() == "etcdserver: invalid auth token"
        with pytest.raises(grpc.RpcError) as wrong:
            auth.Authenticate(rpc_pb2.AuthenticateRequest(name="alice", password="nope"))
        assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wrong.value.details() == "etcdserver: authentication failed, invalid user ID or password"
        channel.close()


def test_a_revoked_role_takes_effect_on_the_next_request():
    with Server("basalt") as server:
        enable_auth(server.endpoint)
        assert run(server.endpoint, ALICE, "put", "foo2", "v")[0] == 0
        assert run(server.endpoint, ROOT, "user", "revoke-role", "alice", "r1")[0] == 0
        code, _, err = run(server.endpoint, ALICE, "put", "foo2", "w")
        assert code != 0 and "permission denied" in err
        code, out, _ = run(server.endpoint, ROOT, "get", "foo2", "--print-value-only")
        assert out == "v\n"


def test_nested_txn_ops_are_checked_all_the_way_down():
    """etcd 3.5.1 skipped nested txns in its permission check; Basalt checks them (etcdctl cannot
    send a nested txn, so this speaks gRPC)."""
    import grpc
    from etcd3.etcdrpc import rpc_pb2, rpc_pb2_grpc

    with Server("basalt") as server:
        enable_auth(server.endpoint)
        before = everything(server.endpoint)
        channel = grpc.insecure_channel(server.endpoint)
        token = rpc_pb2_grpc.AuthStub(channel).Authenticate(
            rpc_pb2.AuthenticateRequest(name="alice", password="alicepw")
        ).token
        kv = rpc_pb2_grpc.KVStub(channel)

        def nested(op):
            return rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(success=[op]))

        put_c = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"c", value=b"x"))
        get_c = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"c"))
        compare_c = rpc_pb2.Compare(key=b"c", target=rpc_pb2.Compare.VERSION, version=1)
        cases = {
            "nested put": rpc_pb2.TxnRequest(success=[nested(put_c)]),
            "nested read": rpc_pb2.TxnRequest(success=[nested(get_c)]),
            "twice nested put": rpc_pb2.TxnRequest(failure=[nested(nested(put_c))]),
            "nested compare": rpc_pb2.TxnRequest(
                success=[rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(compare=[compare_c]))]
            ),
        }
        for name, txn in cases.items():
            with pytest.raises(grpc.RpcError) as refused:
                kv.Txn(txn, metadata=[("token", token)])
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert refused.value.details() == "etcdserver: permission denied", name
        channel.close()
        assert everything(server.endpoint) == before


LEASE_ID = re.compile(r"lease ([0-9a-f]+) granted")


def test_revoking_a_lease_needs_write_access_to_its_keys_as_in_etcd():
    results = {}
    for kind in ("etcd", "basalt"):
        with Server(kind) as server:
            enable_auth(server.endpoint)
            code, out, err = run(server.endpoint, ROOT, "lease", "grant", "100")
            lease = LEASE_ID.search(out).group(1)
            assert run(server.endpoint, ROOT, "put", "c", "leased", f"--lease={lease}")[0] == 0
            refused = run(server.endpoint, ALICE, "lease", "revoke", lease)
            attach = run(server.endpoint, ALICE, "put", "foo9", "x", f"--lease={lease}")
            alive = run(server.endpoint, ROOT, "get", "c", "--print-value-only")
            results[kind] = [
                (code, normalize(out.replace(lease, "<lease>")), normalize(err.replace(lease, "<lease>")))
                for code, out, err in (refused, attach, alive)
            ]
    assert results["basalt"] == results["etcd"]
    assert results["basalt"][0][0] != 0 and results["basalt"][2][1] == "leased\n"


def test_etcdctl_lock_and_watch_work_for_a_granted_user():
    with Server("basalt") as server:
        enable_auth(server.endpoint)
        assert run(server.endpoint, ROOT, "role", "grant-permission", "r1", "readwrite", "lk", "--prefix")[0] == 0
        code, out, err = run(server.endpoint, ALICE, "lock", "lk", "/bin/echo", "held")
        assert (code, out) == (0, "held\n"), err
        code, out, err = run(server.endpoint, ALICE, "lock", "c", "/bin/echo", "held")
        assert code != 0 and "permission denied" in err


JWT_SESSION = [
    ["user", "add", "root", "--new-user-password=rootpw"],
    ["user", "grant-role", "root", "root"],
    ["user", "add", "alice", "--new-user-password=alicepw"],
    ["role", "add", "r1"],
    ["role", "grant-permission", "r1", "readwrite", "foo", "--prefix"],
    ["user", "grant-role", "alice", "r1"],
    ["auth", "enable"],
    [ALICE, "put", "foo1", "v1"],
    [ALICE, "get", "foo1"],
    [ALICE, "put", "bar", "x"],
    ["--user=alice:wrong", "get", "foo1"],
    [ROOT, "role", "revoke-permission", "r1", "foo", "--prefix"],
    [ALICE, "get", "foo1"],
    [ROOT, "get", "foo1"],
]


@pytest.mark.parametrize("sign_method", ["RS256", "ES256"])
def test_jwt_tokens_work_as_etcds(tmp_path, sign_method):
    if sign_method == "RS256":
        subprocess.run(["openssl", "genrsa", "-out", tmp_path / "key", "2048"], check=True, capture_output=True)
    else:
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", tmp_path / "key"],
            check=True,
            capture_output=True,
        )
    # PKCS#8 for the private key (what both servers read), SPKI for the public one.
    subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", tmp_path / "key", "-out", tmp_path / "priv.pem"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "pkey", "-in", tmp_path / "key", "-pubout", "-out", tmp_path / "pub.pem"],
        check=True,
        capture_output=True,
    )
    flag = f"--auth-token=jwt,pub-key={tmp_path / 'pub.pem'},priv-key={tmp_path / 'priv.pem'},sign-method={sign_method},ttl=1m"
    transcripts = {}
    for kind in ("etcd", "basalt"):
        with Server(kind, [flag]) as server:
            transcripts[kind] = [
                (code, normalize(out), normalize(err))
                for code, out, err in (run(server.endpoint, *args) for args in JWT_SESSION)
            ]
    for args, want, got in zip(JWT_SESSION, transcripts["etcd"], transcripts["basalt"]):
        assert got == want, f"etcdctl {' '.join(args)}"


def test_auth_state_survives_a_restart_and_tokens_do_not():
    with Server("basalt") as server:
        enable_auth(server.endpoint)
        before = run(server.endpoint, ROOT, "user", "get", "alice", "--detail")
        server.stop()
        server.start()
        assert run(server.endpoint, ROOT, "auth", "status")[1].startswith("Authentication Status: true")
        assert run(server.endpoint, ROOT, "user", "get", "alice", "--detail") == before
        assert run(server.endpoint, ALICE, "put", "foo2", "v")[0] == 0
        code, _, err = run(server.endpoint, ALICE, "put", "b", "v")
        assert code != 0 and "permission denied" in err
