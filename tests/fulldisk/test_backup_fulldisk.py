"""`basalt backup` whose directory's filesystem fills up while it follows a busy server.

The backup must not stop and must leave no partial file: a segment write that meets ENOSPC is
cut back to the last flush and tried again every second with the records held in memory (the
watch is not read meanwhile, so the server holds the rest), a periodic snapshot that does not
fit is removed and tried at the next interval. Once space is freed the backup catches up on
its own, and a restore at the newest revision equals the server.

Needs root and a loop device; skips with the reason otherwise.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backup"))

from harness import Server  # noqa: E402
from test_backup import Backup, Writer, covered, head, restored_state, state_at, status, wait_covered  # noqa: E402
from test_fulldisk import loopfs  # noqa: E402,F401

FILL_CHUNK_BYTES = 1 << 20


def fill_device(path):
    """Writes zeros to `path` until the filesystem refuses; returns the bytes written."""
    written = 0
    with open(path, "wb") as f:
        chunk = b"\0" * FILL_CHUNK_BYTES
        while True:
            try:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                written += len(chunk)
            except OSError:
                # Partial chunks are written one page at a time until nothing fits.
                if len(chunk) == 4096:
                    return written
                chunk = chunk[: len(chunk) // 2]


def test_a_full_backup_device_is_waited_out_and_nothing_is_lost(loopfs):  # noqa: F811
    directory = loopfs.mnt / "backup"
    live = Server("basalt").start()
    backup = Backup(live.endpoint, directory, "--snapshot-interval", "3s")
    backup.log = loopfs.root / "backup.log"
    try:
        with Writer(live.endpoint, seed=24) as writer:
            backup.start()
            wait_covered(directory, head(live.endpoint))
            fill_device(loopfs.mnt / "ballast")
            full_at = head(live.endpoint)
            time.sleep(5)  # writes go on; flushes and a periodic snapshot meet the full device
            assert backup.process.poll() is None, backup.log.read_text()[-3000:]
            log = backup.log.read_text()
            assert "device is full" in log, log[-3000:]
            stuck = covered(directory)
            assert stuck is not None and stuck[1] < head(live.endpoint), (stuck, head(live.endpoint))
            (loopfs.mnt / "ballast").unlink()
            time.sleep(0.5)
        last = head(live.endpoint)
        assert last > full_at + 20, (full_at, last, writer.ops)
        wait_covered(directory, last, timeout_s=60)
        backup.stop()
        log = backup.log.read_text()
        assert "following again" in log, log[-3000:]
        assert not list(directory.glob("*.tmp")), list(directory.iterdir())
        report = status(directory)
        assert report.returncode == 0 and "damage" not in report.stdout.lower(), report.stdout
        assert restored_state(directory, last) == state_at(live.endpoint, last)
    finally:
        if backup.process is not None and backup.process.poll() is None:
            backup.stop()
        live.cleanup()
