"""Encryption at rest, black-box (issue 22): secrets written through the API never reach the
data dir in clear; a missing, wrong or group-readable key file is refused with a clear message
by the server and the offline tools; a flipped bit in a WAL record is corruption named by
segment and offset; a key rotated under write load, then the old key dropped after
`basalt check` shows it unused. /metrics says whether new data is sealed and with which key.
"""

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2 as rpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc  # noqa: E402

import harness  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
import cluster as cl  # noqa: E402

SECRETS = {
    "key": b"zebra-secret-key-4c1e",
    "value": b"sapphire-value-8d02",
    "user": b"alice-user-93fb",
    "password": b"Pa55-word-e7a1",
}
REFUSE_TIMEOUT_S = 30


def write_key_file(path: Path, lines, mode=0o600) -> Path:
    """A key file of `lines` (id, 32-byte key) at `mode`."""
    text = "".join(f"{key_id}:{key.hex()}\n" for key_id, key in lines)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def new_key_file(path: Path, mode=0o600) -> Path:
    return write_key_file(path, [(1, os.urandom(32))], mode)


def etcdctl(endpoint, *args, check=True):
    result = subprocess.run(
        [harness.etcd_bin("etcdctl"), "--endpoints", endpoint, "--command-timeout=20s", *args],
        capture_output=True, text=True, env={"ETCDCTL_API": "3"}, timeout=60,
    )
    if check:
        assert result.returncode == 0, f"etcdctl {args}: {result.stderr}"
    return result


def basalt(*args):
    return subprocess.run(
        [harness.basalt_bin(), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def metric(endpoint, name) -> float:
    text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not on /metrics"
    return float(match.group(1))


def encodings(secret: bytes):
    """The secret as bytes, hex, UTF-16 and base64 at each of the three alignments a longer
    base64 text could hold it in."""
    out = [secret, secret.hex().encode(), secret.decode().encode("utf-16-le")]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret)
        # The 4-character groups holding the padding bytes or the unknown tail are left out.
        out.append(encoded[4 if shift else 0:-4])
    return out


def files_holding(root: Path, secrets=SECRETS):
    """(file, secret name) for every file under `root` holding any encoding of a secret."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for name, secret in secrets.items():
            if any(e in data for e in encodings(secret)):
                found.append((str(path.relative_to(root)), name))
    return found


def start_refused(server, key_args):
    """Runs the server's command with `key_args` in place of its key flag; it must exit
    non-zero. Returns its output."""
    args = [a for a in server.args]
    at = args.index("--encryption-key-file")
    del args[at:at + 2]
    result = subprocess.run(
        args + list(map(str, key_args)), capture_output=True, text=True, timeout=REFUSE_TIMEOUT_S
    )
    assert result.returncode != 0, f"started with {key_args}: {result.stdout}{result.stderr}"
    return result.stdout + result.stderr


class Writer(threading.Thread):
    """Puts fresh keys under `prefix` until told to stop; records what was acknowledged."""

    def __init__(self, endpoint, prefix: bytes):
        super().__init__(daemon=True)
        self.endpoint, self.prefix = endpoint, prefix
        self.acked = {}
        self.stopping = threading.Event()

    def run(self):
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = rpc_grpc.KVStub(channel)
            seq = 0
            while not self.stopping.is_set():
                key = self.prefix + f"{seq:08d}".encode()
                value = b"v" * 200 + str(seq).encode()
                stub.Put(rpc.PutRequest(key=key, value=value), timeout=10)
                self.acked[key] = value
                seq += 1


def read_prefix(endpoint, prefix: bytes):
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    with grpc.insecure_channel(endpoint) as channel:
        resp = rpc_grpc.KVStub(channel).Range(rpc.RangeRequest(key=prefix, range_end=end), timeout=20)
        return {kv.key: kv.value for kv in resp.kvs}


@pytest.fixture(scope="module")
def written():
    """A server started with a key file, given the secrets through the API (a key and value,
    a user and its password), taken past a raft snapshot, snapshotted by a client, defragmented
    and stopped. Yields (server, key file, client snapshot file)."""
    keys = Path(tempfile.mkdtemp(prefix="basalt-keys-"))
    key_file = new_key_file(keys / "key")
    server = harness.Server(
        "basalt", ["--encryption-key-file", str(key_file), "--snapshot-count", "40"]
    )
    try:
        server.start()
        assert metric(server.endpoint, "basalt_storage_encrypted") == 1
        assert metric(server.endpoint, "basalt_storage_encryption_key_id") == 1
        key, value = SECRETS["key"].decode(), SECRETS["value"].decode()
        etcdctl(server.endpoint, "put", key, value)
        user, password = SECRETS["user"].decode(), SECRETS["password"].decode()
        etcdctl(server.endpoint, "user", "add", f"{user}:{password}")
        with grpc.insecure_channel(server.endpoint) as channel:
            stub = rpc_grpc.KVStub(channel)
            for i in range(60):
                stub.Put(rpc.PutRequest(key=f"filler/{i}".encode(), value=b"x" * 100), timeout=10)
        assert etcdctl(server.endpoint, "get", key, "--print-value-only").stdout.strip() == value
        snapshot = keys / "client-snapshot.db"
        etcdctl(server.endpoint, "snapshot", "save", str(snapshot))
        etcdctl(server.endpoint, "defrag")
        server.stop()
        yield server, key_file, snapshot
    finally:
        server.cleanup()
        shutil.rmtree(keys, ignore_errors=True)


def test_the_wal_never_holds_a_secret_in_clear(written):
    server, _, snapshot = written
    data = server.dir / "data"
    wal = data / "member" / "wal"
    assert list(wal.glob("*.wal")), "the WAL has segments"
    assert files_holding(wal) == []
    # The scan finds what is there: etcd's snapshot format, saved by the client, is plaintext.
    assert ("client-snapshot.db", "value") in files_holding(snapshot.parent)


def test_no_file_of_the_data_dir_holds_a_secret_in_clear(written):
    server, _, _ = written
    assert files_holding(server.dir / "data") == []


def test_a_snapshot_copy_being_streamed_or_left_by_a_kill_is_sealed(tmp_path):
    """The Snapshot RPC's copy waits in member/snap while a slow client reads it; it is sealed
    there, a kill -9 leaves it sealed, and the next start deletes it."""
    key_file = new_key_file(tmp_path / "key")
    server = harness.Server("basalt", ["--encryption-key-file", str(key_file)])
    data = server.dir / "data"
    snap_dir = data / "member" / "snap"
    try:
        server.start()
        etcdctl(server.endpoint, "put", SECRETS["key"].decode(), SECRETS["value"].decode())
        # No window growth: a client that stops reading holds the server's stream (and the copy).
        options = [("grpc.http2.bdp_probe", 0)]
        with grpc.insecure_channel(server.endpoint, options=options) as channel:
            kv = rpc_grpc.KVStub(channel)
            for i in range(12):
                kv.Put(rpc.PutRequest(key=f"bulk/{i}".encode(), value=os.urandom(1 << 20)), timeout=20)
            stream = rpc_grpc.MaintenanceStub(channel).Snapshot(rpc.SnapshotRequest(), timeout=60)
            first = next(stream)
            assert first.remaining_bytes > 8 << 20, "the copy is still being streamed"
            copies = sorted(snap_dir.glob("db.snapshot-*.tmp"))
            assert copies, f"no copy in {sorted(p.name for p in snap_dir.iterdir())}"
            assert all(c.read_bytes()[:8] == b"BASALTEC" for c in copies)
            assert files_holding(data) == []
            server.process.kill()
            server.process.wait()
            stream.cancel()
        assert sorted(snap_dir.glob("db.snapshot-*.tmp")) == copies, "kill -9 leaves the copy"
        assert files_holding(data) == []
        server.start()
        assert etcdctl(server.endpoint, "get", SECRETS["key"].decode(), "--print-value-only").stdout.strip() \
            == SECRETS["value"].decode()
        assert list(snap_dir.glob("db.snapshot-*.tmp")) == [], "start deletes a leftover copy"
    finally:
        server.cleanup()


def test_a_member_joining_by_snapshot_seals_the_tree_with_its_own_key():
    """A 2-member cluster whose log a low --snapshot-count compacted takes a third member with a
    key of its own: it gets the tree by snapshot, seals it with its key (not the sender's),
    serves the data after a restart with its key alone, and no member's data dir ever holds the
    secrets in clear."""

    def key_flags(m):
        key_file = m.dir / "key"  # beside the data dir, not in it
        if not key_file.exists():
            new_key_file(key_file)
        return ["--encryption-key-file", str(key_file)]

    key, value = SECRETS["key"].decode(), SECRETS["value"].decode()
    with cl.Cluster(size=2, extra_flags=["--snapshot-count", "20"], member_flags=key_flags) as c:
        c.etcdctl("put", key, value)
        user, password = SECRETS["user"].decode(), SECRETS["password"].decode()
        c.etcdctl("user", "add", f"{user}:{password}")
        with grpc.insecure_channel(c.leader().endpoint) as channel:
            kv = rpc_grpc.KVStub(channel)
            for i in range(60):
                kv.Put(rpc.PutRequest(key=f"filler/{i}".encode(), value=b"x" * 100), timeout=10)
        joiner = c.member_add()
        c.wait_converged()
        assert "installed a snapshot" in joiner.log_path.read_text(errors="replace"), \
            f"the joiner was not caught up by a snapshot\n{joiner.log_tail()}"

        joiner.stop()
        joiner.start()
        with grpc.insecure_channel(joiner.endpoint) as channel:
            got = rpc_grpc.KVStub(channel).Range(
                rpc.RangeRequest(key=key.encode(), serializable=True), timeout=20
            )
        assert [kv.value for kv in got.kvs] == [value.encode()]
        for m in c.members:
            m.stop()
        for m in c.members:
            assert files_holding(m.dir / "data") == [], m.name
        data = joiner.dir / "data"
        own = basalt("check", "--data-dir", data, "--encryption-key-file", joiner.dir / "key")
        assert own.returncode == 0, own.stdout + own.stderr
        senders = basalt("check", "--data-dir", data, "--encryption-key-file", c.members[0].dir / "key")
        assert senders.returncode != 0 and "wrong encryption key for key id 1" in senders.stderr, \
            senders.stdout + senders.stderr


def test_a_missing_wrong_or_readable_key_file_is_refused_clearly(written, tmp_path):
    server, key_file, _ = written
    data = server.dir / "data"
    segment = sorted((data / "member" / "wal").glob("*.wal"))[0]
    wrong = new_key_file(tmp_path / "wrong")
    readable = tmp_path / "readable"
    shutil.copy(key_file, readable)
    os.chmod(readable, 0o644)

    missing_text = "is encrypted with key id 1; pass --encryption-key-file"
    wrong_text = "wrong encryption key for key id 1 in "
    readable_text = "has mode 0644: it must not be readable or writable by group or others"
    assert missing_text in start_refused(server, [])
    assert wrong_text in start_refused(server, ["--encryption-key-file", wrong])
    assert readable_text in start_refused(server, ["--encryption-key-file", readable])
    for tool in (["check"], ["dump-log"]):
        for key_args, text in (
            ([], missing_text),
            (["--encryption-key-file", wrong], wrong_text),
            (["--encryption-key-file", readable], readable_text),
        ):
            result = basalt(*tool, "--data-dir", data, *key_args)
            assert result.returncode != 0, f"{tool} {key_args}: {result.stdout}"
            assert text in result.stderr, f"{tool} {key_args}: {result.stderr}"
            # Nothing of the log is listed without the right key.
            assert " entry " not in result.stdout, result.stdout
    assert str(segment.parent) in start_refused(server, [])
    # A rotation checked against the data dir leaves a key file that does not open it alone.
    before = wrong.read_bytes()
    rekeyed = basalt("rekey", "--encryption-key-file", wrong, "--data-dir", data)
    assert rekeyed.returncode != 0 and wrong_text in rekeyed.stderr, rekeyed.stderr
    assert "the key file was not changed" in rekeyed.stderr
    assert wrong.read_bytes() == before
    listed = basalt("dump-log", "--data-dir", data, "--encryption-key-file", key_file)
    assert listed.returncode == 0, listed.stderr
    assert "key_id=1" in listed.stdout


def test_a_flipped_bit_in_a_wal_record_is_corruption_named_by_segment_and_offset(written, tmp_path):
    server, key_file, _ = written
    data = tmp_path / "data"
    shutil.copytree(server.dir / "data", data)
    listed = basalt("dump-log", "--data-dir", data, "--encryption-key-file", key_file).stdout
    rows = [line.split() for line in listed.splitlines()]
    entries = [(int(r[4]), r) for r in rows if len(r) == 5 and r[2] == "entry"]
    segment_names = [line.split()[1].rstrip(":") for line in listed.splitlines() if line.startswith("segment ")]
    assert entries and segment_names, listed
    # The first segment's first entry: flip a bit inside its sealed payload.
    offset = entries[0][0]
    segment = data / "member" / "wal" / segment_names[0]
    raw = bytearray(segment.read_bytes())
    raw[offset + 32 + 14] ^= 0x08
    segment.write_bytes(bytes(raw))

    where = f"corrupt WAL segment {segment} at offset {offset}"
    dumped = basalt("dump-log", "--data-dir", data, "--encryption-key-file", key_file)
    assert dumped.returncode != 0 and where in dumped.stderr, dumped.stderr
    started = subprocess.run(
        [*server.args[: server.args.index("--data-dir") + 1], str(data),
         *server.args[server.args.index("--data-dir") + 2:]],
        capture_output=True, text=True, timeout=REFUSE_TIMEOUT_S,
    )
    output = started.stdout + started.stderr
    assert started.returncode != 0, output
    assert f"{segment}" in output and f"offset {offset}" in output, output


def test_snapshot_status_reads_a_sealed_tree_with_its_key_and_names_a_page_that_fails(written, tmp_path):
    server, key_file, _ = written
    db = tmp_path / "db"
    shutil.copy(server.dir / "data" / "member" / "snap" / "db", db)
    wrong = new_key_file(tmp_path / "wrong")
    missing = basalt("snapshot", "status", db, "-w", "json")
    assert missing.returncode != 0 and "encrypted (key ids [1]); pass --encryption-key-file" \
        in missing.stderr, missing.stderr
    refused = basalt("snapshot", "status", db, "--encryption-key-file", wrong)
    assert refused.returncode != 0 and "wrong encryption key for key id 1" in refused.stderr, \
        refused.stderr
    status = basalt("snapshot", "status", db, "-w", "json", "--encryption-key-file", key_file)
    assert status.returncode == 0, status.stderr
    assert '"revision":' in status.stdout and '"revision":0,' not in status.stdout, status.stdout
    assert files_holding(tmp_path) == [], "status left a plaintext copy beside the file"

    # One bit of every page's ciphertext past the two metas: the first page the walk reads is
    # named, and why.
    slot = 4096 + 32
    raw = bytearray(db.read_bytes())
    for at in range(4096 + 2 * slot, len(raw) - slot + 1, slot):
        raw[at + 100] ^= 0x10
    db.write_bytes(bytes(raw))
    damaged = basalt("snapshot", "status", db, "--encryption-key-file", key_file)
    assert damaged.returncode != 0, damaged.stdout
    said = re.search(r"corrupt at page (\d+) .*: (.*)", damaged.stderr)
    assert said and int(said.group(1)) >= 2, damaged.stderr
    assert said.group(2).startswith("encrypted page failed decryption/authentication"), damaged.stderr


def test_a_key_rotated_under_write_load_can_then_be_dropped(tmp_path):
    first = os.urandom(32)
    key_file = write_key_file(tmp_path / "key", [(1, first)])
    server = harness.Server("basalt", ["--encryption-key-file", str(key_file)])
    try:
        server.start()
        writer = Writer(server.endpoint, b"rot/")
        writer.start()
        time.sleep(1.0)
        rekeyed = basalt("rekey", "--encryption-key-file", key_file)
        assert rekeyed.returncode == 0, rekeyed.stderr
        assert "key id 2 added" in rekeyed.stdout
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        deadline = time.monotonic() + 10
        while metric(server.endpoint, "basalt_storage_encryption_key_id") != 2:
            assert time.monotonic() < deadline, "the server did not take the new key"
            time.sleep(0.1)
        time.sleep(1.0)
        etcdctl(server.endpoint, "defrag")
        time.sleep(0.5)
        writer.stopping.set()
        writer.join(timeout=20)
        assert len(writer.acked) > 20, "too few writes to mean anything"
        server.stop()

        data = server.dir / "data"
        checked = basalt("check", "--data-dir", data, "--encryption-key-file", key_file)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "encryption key ids in use: 2\n" in checked.stdout, checked.stdout

        # The old line goes: the server restarts with the new key alone and has every write.
        new_line = key_file.read_text().strip().splitlines()[-1]
        assert new_line.startswith("2:")
        key_file.unlink()
        write_key_file(key_file, [(2, bytes.fromhex(new_line[2:]))])
        server.start()
        found = read_prefix(server.endpoint, b"rot/")
        missing = [k for k, v in writer.acked.items() if found.get(k) != v]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
    finally:
        server.cleanup()


def test_a_plaintext_server_says_so_on_metrics():
    with harness.Server("basalt") as server:
        assert metric(server.endpoint, "basalt_storage_encrypted") == 0
        assert metric(server.endpoint, "basalt_storage_encryption_key_id") == 0
