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
