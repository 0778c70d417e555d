"""basalt backup / basalt restore against Basalt and etcd 3.5.1: writes go on while the backup
process and the server are killed with SIGKILL at random moments and restarted; restores at
random revisions are then started as Basalt members and compared with the live server at that
revision (HashKV and every key). A forced compaction gap and a corrupt segment are reported."""

import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
import urllib.request
from pathlib import Path

import grpc
import pytest
from etcd3.etcdrpc import rpc_pb2 as rpc
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc

from harness import Server, basalt_bin, free_port, stop_process

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tls"))
from pki import Pki  # noqa: E402

RPC_TIMEOUT_S = 10
KEYS = [f"k/{i:02d}".encode() for i in range(30)]


class Writer:
    """Random puts, deletes, txns and leased puts on a thread until stopped; errors (the server
    being killed) are retried on a fresh channel."""

    def __init__(self, endpoint, seed):
        self.endpoint = endpoint
        self.rng = random.Random(seed)
        self.stop_flag = threading.Event()
        self.paused = threading.Event()
        self.ops = 0
        self.leases = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def one(self, kv, lease):
        rng = self.rng
        r, key = rng.random(), rng.choice(KEYS)
        if r < 0.5:
            attach = rng.choice(self.leases) if self.leases and rng.random() < 0.3 else 0
            kv.Put(rpc.PutRequest(key=key, value=rng.randbytes(rng.randrange(40)), lease=attach),
                   timeout=RPC_TIMEOUT_S)
        elif r < 0.65:
            end = key[:-1] + bytes([key[-1] + 2]) if rng.random() < 0.4 else b""
            kv.DeleteRange(rpc.DeleteRangeRequest(key=key, range_end=end), timeout=RPC_TIMEOUT_S)
        elif r < 0.85:
            other = rng.choice([k for k in KEYS if k != key])
            kv.Txn(rpc.TxnRequest(
                compare=[rpc.Compare(key=key, result=rpc.Compare.GREATER,
                                     target=rpc.Compare.VERSION, version=1)],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"txn")),
                         rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=other))],
                failure=[rpc.RequestOp(request_put=rpc.PutRequest(key=other, value=b"else")),
                         rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b"first"))],
            ), timeout=RPC_TIMEOUT_S)
        elif r < 0.95 or not self.leases:
            self.leases.append(lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=600), timeout=RPC_TIMEOUT_S).ID)
        else:
            lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=self.leases.pop(0)), timeout=RPC_TIMEOUT_S)

    def run(self):
        while not self.stop_flag.is_set():
            try:
                with grpc.insecure_channel(self.endpoint) as channel:
                    kv, lease = rpc_grpc.KVStub(channel), rpc_grpc.LeaseStub(channel)
                    while not self.stop_flag.is_set():
                        if self.paused.is_set():
                            time.sleep(0.02)
                            continue
                        self.one(kv, lease)
                        self.ops += 1
            except grpc.RpcError:
                time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=30)


class Backup:
    def __init__(self, endpoint, directory, *flags):
        self.args = [basalt_bin(), "backup", "--endpoints", endpoint, "--dir", str(directory),
                     "--flush-interval", "100ms", *flags]
        self.log = Path(directory).with_suffix(".log")
        self.process = None

    def start(self):
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                        stderr=open(self.log, "ab"))
        return self

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        stop_process(self.process)
        assert self.process.returncode in (0, -signal.SIGKILL), self.log.read_text()


def open_channel(endpoint, credentials=None):
    """A plain channel, or a TLS one with grpc.ssl_channel_credentials."""
    if credentials is None:
        return grpc.insecure_channel(endpoint)
    return grpc.secure_channel(endpoint, credentials)


def head(endpoint, user=None, credentials=None):
    with open_channel(endpoint, credentials) as channel:
        md = login(channel, user)
        return rpc_grpc.KVStub(channel).Range(rpc.RangeRequest(key=b"\0"), metadata=md,
                                              timeout=RPC_TIMEOUT_S).header.revision


def status(directory):
    return subprocess.run([basalt_bin(), "backup", "status", str(directory)],
                          capture_output=True, text=True, timeout=60)


def covered(directory):
    found = re.search(r"covered: revisions (\d+)\.\.=(\d+)", status(directory).stdout)
    return (int(found.group(1)), int(found.group(2))) if found else None


def wait_covered(directory, revision, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = covered(directory)
        if got and got[1] >= revision:
            return got
        time.sleep(0.2)
    raise AssertionError(f"backup did not reach revision {revision}: {status(directory).stdout}")


def login(channel, user):
    if user is None:
        return ()
    reply = rpc_grpc.AuthStub(channel).Authenticate(
        rpc.AuthenticateRequest(name=user[0], password=user[1]), timeout=RPC_TIMEOUT_S)
    return (("token", reply.token),)


def state_at(endpoint, revision, user=None, credentials=None):
    """HashKV at `revision` and every key as of it."""
    with open_channel(endpoint, credentials) as channel:
        md = login(channel, user)
        kv, maintenance = rpc_grpc.KVStub(channel), rpc_grpc.MaintenanceStub(channel)
        kvs = kv.Range(rpc.RangeRequest(key=b"\0", range_end=b"\0", revision=revision),
                       metadata=md, timeout=RPC_TIMEOUT_S).kvs
        hashed = maintenance.HashKV(rpc.HashKVRequest(revision=revision), metadata=md, timeout=RPC_TIMEOUT_S)
        return hashed.hash, [(k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease) for k in kvs]


def restore(directory, server, *point):
    peer = f"http://127.0.0.1:{server.peer_port}"
    return subprocess.run(
        [basalt_bin(), "restore", "--backup-dir", str(directory), *point,
         "--data-dir", str(server.dir / "data"), "--name", "t",
         "--initial-cluster", f"t={peer}", "--initial-advertise-peer-urls", peer],
        capture_output=True, text=True, timeout=120)


def restore_scratch(directory, *point):
    """A restore into a data dir that is thrown away."""
    server = Server("basalt")
    try:
        return restore(directory, server, *point)
    finally:
        server.cleanup()


def restored_state(directory, revision, user=None):
    """Restores `revision` from the backup, starts a Basalt member on it, returns its state."""
    server = Server("basalt")
    try:
        result = restore(directory, server, "--to-revision", str(revision))
        assert result.returncode == 0, result.stdout + result.stderr
        server.start()
        assert head(server.endpoint, user) == revision
        return state_at(server.endpoint, revision, user)
    finally:
        server.cleanup()


@pytest.mark.parametrize("kind", ["basalt", "etcd"])
def test_backup_survives_kill9_of_itself_and_the_server_and_restores_any_revision(kind):
    rng = random.Random(kind)
    work = Path(tempfile.mkdtemp(prefix="basalt-backup-test-"))
    directory = work / "backup"
    live = Server(kind).start()
    backup = Backup(live.endpoint, directory, "--snapshot-interval", "2s")
    try:
        with Writer(live.endpoint, seed=rng.random()) as writer:
            time.sleep(0.3)
            backup.start()
            for _ in range(2):
                time.sleep(rng.uniform(0.3, 1.5))
                backup.kill9()
                backup.start()
            time.sleep(rng.uniform(0.3, 1.0))
            # The server too: writes fail meanwhile and the backup retries.
            writer.paused.set()
            time.sleep(0.1)
            live.process.send_signal(signal.SIGKILL)
            live.process.wait()
            live.start()
            writer.paused.clear()
            time.sleep(rng.uniform(0.5, 1.5))
            backup.kill9()
            time.sleep(0.3)
            backup.start()
            time.sleep(rng.uniform(0.5, 1.0))
        last = head(live.endpoint)
        first, _ = wait_covered(directory, last)
        backup.stop()
        assert writer.ops > 50, writer.ops
        assert "resuming" in backup.log.read_text()
        revisions = sorted({last, first, *rng.sample(range(first, last + 1), 3)})
        for revision in revisions:
            assert restored_state(directory, revision) == state_at(live.endpoint, revision), revision
        assert list(directory.glob("seg-*.idx")), "every segment has an index"
        unindexed = without_index(directory, work)
        assert restored_state(unindexed, revisions[1]) == state_at(live.endpoint, revisions[1])
        assert restore_scratch(directory, "--to-revision", str(last + 5)).returncode != 0
        now = datetime.now(timezone.utc).isoformat()
        for source in (directory, unindexed):
            by_time = restore_scratch(source, "--to-time", now)
            assert by_time.returncode == 0 and f"restored revision {last} " in by_time.stdout, by_time
        # A moment inside the run picks the same revision with and without the index.
        received = re.findall(r"received (\S+) \.\. (\S+)", status(directory).stdout)
        moment = received[len(received) // 2][0]
        picked = [re.search(r"restored revision (\d+) ", restore_scratch(source, "--to-time", moment).stdout)
                  for source in (directory, unindexed)]
        assert picked[0] and picked[1] and picked[0].group(1) == picked[1].group(1), picked
        too_early = restore_scratch(directory, "--to-time", "1970-01-02T00:00:00Z")
        assert too_early.returncode != 0 and "received nothing at or before" in too_early.stderr
        if kind == "basalt":
            corrupt_segment_is_reported(directory, work, first, last, live.endpoint)
    finally:
        backup.stop()
        live.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def corrupt_segment_is_reported(directory, work, first, last, endpoint):
    damaged = work / "damaged"
    shutil.copytree(directory, damaged)
    # A restore reads only from its snapshot's revision on, and a segment can begin before the
    # snapshot that started it: with the oldest snapshot alone, every restore reads every segment
    # from its start, so one to the victim's newest revision crosses the damage.
    for newer in sorted(damaged.glob("snap-*.db"))[1:]:
        newer.unlink()
    segments = sorted(damaged.glob("seg-*.log"))
    victim = max(segments, key=lambda p: p.stat().st_size)
    target = int(re.search(rf"{re.escape(str(victim))}: \d+ records, revisions up to (\d+)",
                           status(damaged).stdout).group(1))
    data = bytearray(victim.read_bytes())
    at = len(data) // 2
    data[at] ^= 0xFF
    victim.write_bytes(bytes(data))
    report = status(damaged)
    assert report.returncode != 0
    found = re.search(rf"segment {re.escape(str(victim))} is damaged at offset (\d+)", report.stdout)
    assert found, report.stdout
    offset = int(found.group(1))
    assert 16 <= offset <= at
    server = Server("basalt")
    try:
        refused = restore(damaged, server, "--to-revision", str(target))
        assert refused.returncode != 0
        assert str(victim) in refused.stderr and f"offset {offset}" in refused.stderr, refused.stderr
        assert not (server.dir / "data" / "member").exists()
    finally:
        server.cleanup()
    # Told to stop before the damage, the restore goes ahead.
    before = int(re.search(r"reaches revision (\d+)", refused.stderr).group(1))
    assert first <= before < target
    assert restored_state(damaged, before) == state_at(endpoint, before)


def without_index(directory, work):
    """A copy of the backup without its index files: restore must read the segments instead."""
    copy = work / "no-index"
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("*.idx"))
    return copy


@pytest.mark.parametrize("kind", ["basalt", "etcd"])
def test_a_compaction_past_the_backup_is_a_reported_gap(kind):
    work = Path(tempfile.mkdtemp(prefix="basalt-backup-gap-"))
    directory = work / "backup"
    live = Server(kind).start()
    metrics_port = free_port()
    backup = Backup(live.endpoint, directory, "--snapshot-interval", "1h",
                    "--listen-metrics-url", f"127.0.0.1:{metrics_port}")
    try:
        with grpc.insecure_channel(live.endpoint) as channel:
            kv = rpc_grpc.KVStub(channel)
            for i in range(20):
                kv.Put(rpc.PutRequest(key=KEYS[i % 5], value=b"before"), timeout=RPC_TIMEOUT_S)
            backup.start()
            before = wait_covered(directory, head(live.endpoint))[1]
            backup.kill9()
            for i in range(30):
                kv.Put(rpc.PutRequest(key=KEYS[i % 7], value=b"while down %d" % i), timeout=RPC_TIMEOUT_S)
            compacted = head(live.endpoint)
            kv.Compact(rpc.CompactionRequest(revision=compacted, physical=True), timeout=RPC_TIMEOUT_S)
            backup.start()
            wait_covered(directory, compacted)
            for i in range(10):
                kv.Put(rpc.PutRequest(key=KEYS[i], value=b"after"), timeout=RPC_TIMEOUT_S)
            last = head(live.endpoint)
            wait_covered(directory, last)
        metrics = dict(
            line.split(" ", 1)
            for line in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read().decode().splitlines() if not line.startswith("#")
        )
        assert int(metrics["basalt_backup_durable_revision"]) == last, metrics
        assert int(metrics["basalt_backup_gaps_total"]) == 1, metrics
        assert int(metrics["basalt_backup_snapshots_total"]) == 1, metrics
        assert int(metrics["basalt_backup_bytes_written_total"]) > 0, metrics
        backup.stop()
        assert "GAP: revisions" in backup.log.read_text()
        gap = re.search(r"gap: revisions (\d+)\.\.=(\d+)", status(directory).stdout)
        assert gap, status(directory).stdout
        gap_first, gap_last = int(gap.group(1)), int(gap.group(2))
        assert gap_first == before + 1 and gap_last >= before + 1 and gap_last < compacted + 1
        inside = restore_scratch(directory, "--to-revision", str(gap_first))
        assert inside.returncode != 0 and "gap" in inside.stderr, inside.stderr
        # Before the gap the older snapshot and its events still restore (the live server has
        # compacted that revision away, so only the restore itself is checked).
        assert restored_state(directory, before)[1]
        hash_live, keys_live = state_at(live.endpoint, last)
        hash_restored, keys_restored = restored_state(directory, last)
        assert (hash_restored, keys_restored) == (hash_live, keys_live)
    finally:
        backup.stop()
        live.cleanup()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("kind", ["basalt", "etcd"])
def test_the_backup_moves_to_another_member_when_its_member_is_killed(kind):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
    import cluster as cl

    rng = random.Random(f"{kind}-members")
    work = Path(tempfile.mkdtemp(prefix="basalt-backup-cluster-"))
    directory = work / "backup"
    with cl.Cluster(kind=kind, size=3) as c:
        c.wait_ready()
        first, other, third = c.members
        backup = Backup(",".join(m.endpoint for m in c.members), directory, "--snapshot-interval", "1h")
        try:
            with Writer(other.endpoint, seed=rng.random()) as writer:
                backup.start()
                time.sleep(rng.uniform(0.5, 1.5))
                first.kill()
                time.sleep(rng.uniform(1.0, 2.0))
                first.start(first.initial_cluster, "new")
                time.sleep(rng.uniform(0.5, 1.0))
            # The killed member may have led: reads wait for the next leader.
            c.wait_ready()
            last = head(other.endpoint)
            lowest, _ = wait_covered(directory, last)
            backup.stop()
            assert writer.ops > 20, writer.ops
            assert "retrying with the next endpoint" in backup.log.read_text()
            for revision in sorted({last, rng.randrange(lowest, last + 1)}):
                assert restored_state(directory, revision) == state_at(other.endpoint, revision), revision
        finally:
            backup.stop()
            shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("kind", ["basalt", "etcd"])
def test_a_cluster_with_auth_is_backed_up_as_root_and_restored(kind):
    root = ("root", "pw")
    work = Path(tempfile.mkdtemp(prefix="basalt-backup-auth-"))
    directory = work / "backup"
    live = Server(kind).start()
    backup = Backup(live.endpoint, directory, "--user", "root:pw")
    try:
        with grpc.insecure_channel(live.endpoint) as channel:
            auth = rpc_grpc.AuthStub(channel)
            auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=RPC_TIMEOUT_S)
            auth.UserAdd(rpc.AuthUserAddRequest(name="root", password="pw"), timeout=RPC_TIMEOUT_S)
            auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=RPC_TIMEOUT_S)
            auth.AuthEnable(rpc.AuthEnableRequest(), timeout=RPC_TIMEOUT_S)
            md = login(channel, root)
            kv = rpc_grpc.KVStub(channel)
            kv.Put(rpc.PutRequest(key=b"a", value=b"before"), metadata=md, timeout=RPC_TIMEOUT_S)
            backup.start()
            wait_covered(directory, head(live.endpoint, root))
            for i in range(20):
                kv.Put(rpc.PutRequest(key=KEYS[i % 6], value=b"%d" % i), metadata=md, timeout=RPC_TIMEOUT_S)
            kv.DeleteRange(rpc.DeleteRangeRequest(key=KEYS[0]), metadata=md, timeout=RPC_TIMEOUT_S)
            last = head(live.endpoint, root)
            wait_covered(directory, last)
        backup.stop()
        assert restored_state(directory, last, root) == state_at(live.endpoint, last, root)
        assert restored_state(directory, last - 7, root) == state_at(live.endpoint, last - 7, root)
    finally:
        backup.stop()
        live.cleanup()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("kind", ["basalt", "etcd"])
def test_a_server_requiring_client_certificates_is_backed_up_over_tls(kind):
    work = Path(tempfile.mkdtemp(prefix="basalt-backup-tls-"))
    pki = Pki(work / "pki")
    live = Server(kind, ["--cert-file", pki.server.cert_file, "--key-file", pki.server.key_file,
                         "--trusted-ca-file", pki.ca.cert_file, "--client-cert-auth"],
                  scheme="https").start()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(pki.ca.cert_file).read_bytes(),
        private_key=Path(pki.client.key_file).read_bytes(),
        certificate_chain=Path(pki.client.cert_file).read_bytes())
    tls_flags = ["--cacert", pki.ca.cert_file, "--cert", pki.client.cert_file,
                 "--key", pki.client.key_file]
    # Without the CA the server's certificate cannot be verified; without a client certificate
    # the server refuses the handshake: either way nothing is backed up and the log says why.
    refused = [Backup(live.url, work / "no-ca"),
               Backup(live.url, work / "no-client-cert", "--cacert", pki.ca.cert_file)]
    # An endpoint without a scheme dials with TLS when TLS flags are given, as etcdctl does.
    backup = Backup(live.endpoint, work / "backup", *tls_flags)
    try:
        with open_channel(live.endpoint, credentials) as channel:
            kv = rpc_grpc.KVStub(channel)
            kv.Put(rpc.PutRequest(key=b"a", value=b"before"), timeout=RPC_TIMEOUT_S)
            for attempt in refused:
                attempt.start()
            backup.start()
            wait_covered(work / "backup", head(live.endpoint, credentials=credentials))
            for i in range(20):
                kv.Put(rpc.PutRequest(key=KEYS[i % 6], value=b"%d" % i), timeout=RPC_TIMEOUT_S)
            kv.DeleteRange(rpc.DeleteRangeRequest(key=KEYS[1]), timeout=RPC_TIMEOUT_S)
        last = head(live.endpoint, credentials=credentials)
        wait_covered(work / "backup", last)
        backup.stop()
        for revision in (last, last - 9):
            assert restored_state(work / "backup", revision) == \
                state_at(live.endpoint, revision, credentials=credentials)
        # Under TLS 1.3 the client hears of a refused client certificate only after its own
        # handshake is done: as an alert or as the server closing the connection.
        whys = ["invalid peer certificate", "BadCertificate|CertificateRequired|broken pipe"]
        for attempt, why in zip(refused, whys):
            attempt.stop()
            log = attempt.log.read_text()
            assert re.search(why, log) and "retrying" in log, log
            assert covered(attempt.args[attempt.args.index("--dir") + 1]) is None
    finally:
        for process in [backup, *refused]:
            process.stop()
        live.cleanup()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("kind", ["basalt", "etcd"])
def test_leases_granted_after_the_snapshot_come_back_with_their_ttl(kind):
    work = Path(tempfile.mkdtemp(prefix="basalt-backup-leases-"))
    directory = work / "backup"
    live = Server(kind).start()
    backup = Backup(live.endpoint, directory, "--lease-list-interval", "200ms")
    restored = Server("basalt")
    try:
        backup.start()
        wait_covered(directory, head(live.endpoint))
        with grpc.insecure_channel(live.endpoint) as channel:
            lease = rpc_grpc.LeaseStub(channel)
            kv = rpc_grpc.KVStub(channel)
            listed = lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=777), timeout=RPC_TIMEOUT_S).ID
            kv.Put(rpc.PutRequest(key=b"held", value=b"1", lease=listed), timeout=RPC_TIMEOUT_S)
            deadline = time.monotonic() + 20
            # The log is a 16-byte header, then one record per lease listed.
            while (directory / "leases.log").stat().st_size <= 16:
                assert time.monotonic() < deadline, "the lease was never listed"
                time.sleep(0.1)
        last = head(live.endpoint)
        wait_covered(directory, last)
        backup.stop()
        result = restore(directory, restored, "--to-revision", str(last), "--lease-ttl", "5")
        assert result.returncode == 0, result.stderr
        assert "1 leases granted again with the TTL the backup recorded, 0 with --lease-ttl" \
            in result.stdout, result.stdout
        restored.start()
        with grpc.insecure_channel(restored.endpoint) as channel:
            got = rpc_grpc.LeaseStub(channel).LeaseTimeToLive(
                rpc.LeaseTimeToLiveRequest(ID=listed, keys=True), timeout=RPC_TIMEOUT_S)
        assert (got.grantedTTL, list(got.keys)) == (777, [b"held"])
    finally:
        backup.stop()
        restored.cleanup()
        live.cleanup()
        shutil.rmtree(work, ignore_errors=True)
