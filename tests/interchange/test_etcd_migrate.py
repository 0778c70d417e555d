"""`basalt migrate` on data dirs of the real etcd 3.5.1: a seeded random history is written to
etcd, which is stopped and started again with a backend that does not commit, so the writes
that follow (puts, deletes, txns, leases, auth changes) reach only its WAL; etcd is then killed
with -9. The dir is migrated to Basalt while etcd restarts on a copy of it and replays its WAL;
the same reads, HashKV at several revisions, leases, auth and a watch from an old revision must
answer the same on both. Bad source dirs are refused with a message naming the file and what
was expected, and leave no target dir behind."""

import hashlib
import random
import re
import shutil

import grpc
from etcd3.etcdrpc import auth_pb2
from etcd3.etcdrpc import rpc_pb2 as rpc
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc

from harness import Server, basalt_bin
from interchange.history import (KEYS, RPC_TIMEOUT_S, answer, observe, restore_flags, run, token,
                                 write_history)

# etcd's backend then commits only when something forces it (a compaction, a hash, a snapshot).
BACKEND_NEVER_COMMITS = ["--backend-batch-interval", "1h", "--backend-batch-limit", "100000000"]
MIGRATED = re.compile(r"\(consistent index (\d+)\), then WAL entries \d+\.\.=(\d+) \((\d+) requests applied")


def write_wal_tail(endpoint, seed, ops=80):
    """Writes that change keys, leases and auth, as root (auth is on), then the NOSPACE alarm. Returns
    the head revision."""
    rng = random.Random(seed)
    with grpc.insecure_channel(endpoint) as channel:
        md = token(channel)
        kv, lease, auth = rpc_grpc.KVStub(channel), rpc_grpc.LeaseStub(channel), rpc_grpc.AuthStub(channel)
        kept = lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=700), metadata=md, timeout=RPC_TIMEOUT_S).ID
        doomed = lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=800), metadata=md, timeout=RPC_TIMEOUT_S).ID
        for _ in range(ops):
            r, key = rng.random(), rng.choice(KEYS)
            if r < 0.5:
                attach = rng.choice([0, 0, kept, doomed])
                kv.Put(rpc.PutRequest(key=key, value=b"wal-%d" % rng.randrange(1000), lease=attach),
                       metadata=md, timeout=RPC_TIMEOUT_S)
            elif r < 0.7:
                kv.DeleteRange(rpc.DeleteRangeRequest(key=key), metadata=md, timeout=RPC_TIMEOUT_S)
            else:
                other = rng.choice(KEYS)
                kv.Txn(rpc.TxnRequest(
                    compare=[rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, version=0)],
                    success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"txn-new"))],
                    failure=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=other))],
                ), metadata=md, timeout=RPC_TIMEOUT_S)
        lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=doomed), metadata=md, timeout=RPC_TIMEOUT_S)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="writer"), metadata=md, timeout=RPC_TIMEOUT_S)
        auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(
            name="writer", perm=auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"key/1", range_end=b"key/2"),
        ), metadata=md, timeout=RPC_TIMEOUT_S)
        auth.UserAdd(rpc.AuthUserAddRequest(name="carol", password="carol-pw"), metadata=md, timeout=RPC_TIMEOUT_S)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="carol", role="writer"), metadata=md, timeout=RPC_TIMEOUT_S)
        auth.UserChangePassword(rpc.AuthUserChangePasswordRequest(name="alice", password="alice-pw"),
                                metadata=md, timeout=RPC_TIMEOUT_S)
        head = kv.Put(rpc.PutRequest(key=b"key/last", value=b"last"), metadata=md, timeout=RPC_TIMEOUT_S).header.revision
        member = rpc_grpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), metadata=md, timeout=RPC_TIMEOUT_S).header.member_id
        rpc_grpc.MaintenanceStub(channel).Alarm(rpc.AlarmRequest(
            action=rpc.AlarmRequest.ACTIVATE, memberID=member, alarm=rpc.NOSPACE), metadata=md, timeout=RPC_TIMEOUT_S)
        return head


def observe_tail(endpoint):
    """What the WAL-only auth changes and alarm decide: carol's login, her role and what it lets
    her do, the alarm and the writes it refuses."""
    with grpc.insecure_channel(endpoint) as channel:
        md = token(channel)
        auth, kv = rpc_grpc.AuthStub(channel), rpc_grpc.KVStub(channel)
        seen = {
            "carol": list(auth.UserGet(rpc.AuthUserGetRequest(name="carol"), metadata=md, timeout=RPC_TIMEOUT_S).roles),
            "writer": [(p.permType, p.key, p.range_end) for p in auth.RoleGet(
                rpc.AuthRoleGetRequest(role="writer"), metadata=md, timeout=RPC_TIMEOUT_S).perm],
            "wrong password": answer(lambda: token(channel, "carol", "nope")),
            "alarms": [(a.memberID, a.alarm) for a in rpc_grpc.MaintenanceStub(channel).Alarm(
                rpc.AlarmRequest(action=rpc.AlarmRequest.GET), metadata=md, timeout=RPC_TIMEOUT_S).alarms],
            "root puts": answer(lambda: kv.Put(rpc.PutRequest(key=b"key/00", value=b"full"), metadata=md,
                                               timeout=RPC_TIMEOUT_S).header.revision),
        }
        try:
            carol = token(channel, "carol", "carol-pw")
        except grpc.RpcError as error:
            seen["carol login"] = (error.code().name, error.details())
        else:
            seen["carol writes key/15"] = answer(lambda: kv.Put(
                rpc.PutRequest(key=b"key/15", value=b"carol"), metadata=carol, timeout=RPC_TIMEOUT_S).header.revision > 0)
            seen["carol writes key/20"] = answer(lambda: kv.Put(
                rpc.PutRequest(key=b"key/20", value=b"carol"), metadata=carol, timeout=RPC_TIMEOUT_S))
        return seen


def permitted(seen):
    """`seen` without the writes of users who lack the permission: with NOSPACE raised, etcd
    refuses them with NOSPACE (its capped applier runs before the auth check) and Basalt with
    permission denied, a difference that is not the migration's."""
    return {k: v for k, v in seen.items() if k not in ("alice writes", "carol writes key/20")}


def digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def kill_hard(server):
    server.process.kill()
    server.process.wait()


def test_a_killed_etcd_members_data_dir_migrates_with_the_entries_only_its_wal_holds(tmp_path):
    with Server("etcd") as etcd, Server("basalt") as basalt:
        basalt.stop()
        shutil.rmtree(basalt.dir / "data", ignore_errors=True)
        compacted = write_history(etcd.endpoint, seed=18)
        etcd.stop()
        etcd.args += BACKEND_NEVER_COMMITS
        etcd.start()
        head = write_wal_tail(etcd.endpoint, seed=18)
        kill_hard(etcd)
        source = tmp_path / "etcd-data"
        shutil.copytree(etcd.dir / "data", source)

        # The db alone lacks the tail: its newest revision is behind the head etcd answered.
        bare = run(basalt_bin(), "snapshot", "status", str(source / "member" / "snap" / "db"), "-w", "json").stdout
        db_revision = int(re.search(r'"revision":(\d+)', bare).group(1))
        assert db_revision < head, bare

        out = run(basalt_bin(), "migrate", "--from-etcd-data-dir", str(source), *restore_flags(basalt)).stdout
        found = MIGRATED.search(out)
        assert found, out
        consistent_index, commit, applied = map(int, found.groups())
        assert consistent_index < commit and applied >= 80, out
        assert digests(source) == digests(etcd.dir / "data"), "the source dir is left as it was"

        etcd.start()  # replays its WAL over the db, as the migration did
        basalt.start()
        assert permitted(observe(basalt.endpoint, compacted)) == permitted(observe(etcd.endpoint, compacted))
        assert permitted(observe_tail(basalt.endpoint)) == permitted(observe_tail(etcd.endpoint))


def flip_metadata_byte(wal_file):
    """Changes one bit of the metadata record's data (the second frame of a segment), so its crc
    no longer matches; the frame is whole, so it is no torn write."""
    data = bytearray(wal_file.read_bytes())
    offset = 0
    while True:
        length = int.from_bytes(data[offset:offset + 8], "little")
        record_bytes, padding = length & ((1 << 56) - 1), (length >> 56) & 0x7 if length >> 63 else 0
        record = offset + 8
        if data[record:record + 2] == b"\x08\x01":
            data[record + record_bytes - 1] ^= 0x01
            wal_file.write_bytes(bytes(data))
            return
        offset = record + record_bytes + padding


def test_bad_etcd_data_dirs_are_refused_by_name_and_leave_no_target(tmp_path):
    def refused(source, want, target=None):
        target = target or tmp_path / "target"
        result = run(basalt_bin(), "migrate", "--from-etcd-data-dir", str(source), "--data-dir", str(target),
                     check=False)
        assert result.returncode != 0, result.stdout
        for text in want:
            assert text in result.stderr, f"{want}: {result.stderr}"
        return target

    with Server("etcd") as etcd:
        with grpc.insecure_channel(etcd.endpoint) as channel:
            for i in range(20):
                rpc_grpc.KVStub(channel).Put(rpc.PutRequest(key=b"k%d" % i, value=b"v"), timeout=RPC_TIMEOUT_S)
        good = etcd.dir / "data"
        db = good / "member" / "snap" / "db"
        target = refused(good, [str(db), "locked by another process", "stop the etcd member first"])
        assert not target.exists()
        kill_hard(etcd)

        def variant(name):
            copy = tmp_path / name
            shutil.copytree(good, copy)
            return copy

        cases = {}
        empty = tmp_path / "empty"
        empty.mkdir()
        cases["not etcd"] = (empty, [str(empty), "not an etcd data dir", "member/snap/db"])

        v2 = variant("v2")
        (v2 / "member" / "snap" / "db").unlink()
        (v2 / "member" / "snap" / "0000000000000002-0000000000000010.snap").write_bytes(b"\x08\x01")
        cases["v2 store"] = (v2, [str(v2 / "member" / "snap" / "db"), "an etcd v2 data dir"])

        crc = variant("crc")
        segment = next((crc / "member" / "wal").glob("*.wal"))
        flip_metadata_byte(segment)
        cases["corrupt crc"] = (crc, [f"{segment} at byte", "crc mismatch", "crc32c"])

        no_wal = variant("no-wal")
        for path in (no_wal / "member" / "wal").glob("*.wal"):
            path.unlink()
        cases["no WAL"] = (no_wal, [str(no_wal / "member" / "wal"), "no WAL segment"])

        bad_db = variant("bad-db")
        bad_db_file = bad_db / "member" / "snap" / "db"
        bad_db_file.write_bytes(bad_db_file.read_bytes()[:100])
        cases["truncated db"] = (bad_db, [str(bad_db_file), "bbolt file"])

        for name, (source, want) in cases.items():
            target = refused(source, want, tmp_path / f"target-{name.replace(' ', '-')}")
            assert not target.exists(), f"{name}: left {list(target.rglob('*'))}"

        made = tmp_path / "made"
        run(basalt_bin(), "migrate", "--from-etcd-data-dir", str(good), "--data-dir", str(made))
        refused(good, [f"data dir {made} already exists"], made)
        basalt_dir = refused(made, [str(made), "a Basalt data dir, not etcd's"])
        assert not basalt_dir.exists()
