"""etcdctl watch against Basalt and a real etcd 3.5.1: the same writes, the same watch commands
(prefix, --rev, --prev-kv, json output), and the events etcdctl prints must agree."""

import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import Server, etcd_bin  # noqa: E402
from test_etcdctl import normalize, run  # noqa: E402

# How long a watch command runs before it is stopped; events arrive well within it.
WATCH_S = 1.5

HISTORY = [
    ["put", "a", "1"],
    ["put", "a/1", "x"],
    ["put", "b", "2"],
    ["put", "a", "3"],
    ["del", "a/1"],
    ["put", "a/2", "y"],
]

LIVE = [["put", "a/3", "z"], ["put", "a", "4"], ["del", "a", "--prefix"]]

# Each case: the watch arguments, and whether the live writes run while it watches.
CASES = [
    pytest.param(["watch", "--prefix", "a", "--rev", "1"], False, id="prefix-from-rev-1"),
    pytest.param(["watch", "a", "--rev", "2", "--prev-kv"], False, id="key-rev-prev-kv"),
    pytest.param(["watch", "--prefix", "a", "--prev-kv"], True, id="live-prefix-prev-kv"),
    pytest.param(["watch", "a", "--rev", "3", "-w", "json"], True, id="json-history-then-live"),
]


def watch_session(kind, watch_args, live):
    with Server(kind) as server:
        etcdctl = etcd_bin("etcdctl")
        for args in HISTORY:
            assert run(etcdctl, server.endpoint, *args)[0] == 0
        watcher = subprocess.Popen(
            [etcdctl, "--endpoints", server.endpoint, *watch_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"ETCDCTL_API": "3"},
        )
        time.sleep(WATCH_S / 2)
        if live:
            for args in LIVE:
                assert run(etcdctl, server.endpoint, *args)[0] == 0
        time.sleep(WATCH_S / 2)
        watcher.terminate()
        out, _ = watcher.communicate(timeout=10)
        return normalize(out)


@pytest.mark.parametrize("watch_args,live", CASES)
def test_etcdctl_watch_prints_what_etcd_prints(watch_args, live):
    expected = watch_session("etcd", watch_args, live)
    got = watch_session("basalt", watch_args, live)
    assert expected.strip(), "the case watches something"
    assert got == expected
