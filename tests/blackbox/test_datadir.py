"""The data directory: Basalt refuses one it did not write (an etcd 3.5.1 data dir here) with a
clear message and leaves it untouched; a SIGTERM stop exits cleanly and keeps every write."""

import subprocess

from harness import Server, etcd_bin


def test_an_etcd_data_dir_is_refused_with_a_clear_message_and_left_untouched():
    with Server("etcd") as etcd:
        subprocess.run([etcd_bin("etcdctl"), "--endpoints", etcd.endpoint, "put", "a", "1"], check=True,
                       capture_output=True)
        etcd.stop()
        data = etcd.dir / "data"
        before = sorted((p.relative_to(data), p.stat().st_size) for p in data.rglob("*") if p.is_file())
        basalt = Server("basalt")
        basalt.args[basalt.args.index("--data-dir") + 1] = str(data)
        result = subprocess.run(basalt.args, capture_output=True, text=True, timeout=30)
        assert result.returncode != 0
        assert "not a Basalt data dir" in result.stderr, result.stderr
        after = sorted((p.relative_to(data), p.stat().st_size) for p in data.rglob("*") if p.is_file())
        assert after == before
        basalt.cleanup()


def test_sigterm_exits_cleanly_and_a_restart_serves_every_write():
    server = Server("basalt")
    try:
        server.start()
        for i in range(30):
            subprocess.run([etcd_bin("etcdctl"), "--endpoints", server.endpoint, "put", f"k{i}", "v"],
                           check=True, capture_output=True)
        server.process.terminate()
        assert server.process.wait(timeout=10) == 0
        server.start()
        out = subprocess.run([etcd_bin("etcdctl"), "--endpoints", server.endpoint, "get", "k", "--prefix",
                              "--count-only", "-w", "fields"], check=True, capture_output=True, text=True).stdout
        assert '"Count" : 30' in out, out
    finally:
        server.cleanup()


def test_check_passes_a_sound_db_and_names_the_page_of_a_corrupt_one():
    from harness import basalt_bin

    server = Server("basalt")
    try:
        server.start()
        for i in range(50):
            subprocess.run([etcd_bin("etcdctl"), "--endpoints", server.endpoint, "put", f"k{i}", "v" * 100],
                           check=True, capture_output=True)
        server.stop()  # SIGTERM checkpoints the B+tree
        data = server.dir / "data"
        sound = subprocess.run([basalt_bin(), "check", "--data-dir", str(data)], capture_output=True, text=True)
        assert sound.returncode == 0, sound.stdout + sound.stderr
        assert "bucket key: " in sound.stdout
        db = data / "member" / "snap" / "db"
        raw = bytearray(db.read_bytes())
        page_bytes = 4096
        for page_start in range(2 * page_bytes, len(raw), page_bytes):  # every page but the metas
            raw[page_start + 100] ^= 0xFF
        db.write_bytes(bytes(raw))
        corrupt = subprocess.run([basalt_bin(), "check", "--data-dir", str(data)], capture_output=True, text=True)
        assert corrupt.returncode != 0
        assert "problem: page" in corrupt.stdout, corrupt.stdout + corrupt.stderr
    finally:
        server.cleanup()
