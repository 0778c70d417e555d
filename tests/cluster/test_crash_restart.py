"""A three-member cluster under concurrent writers through every member, with one member at a
time killed by -9 (the leader more often than not) and restarted with the flags an operator's
manifest carries after bootstrap (`--initial-cluster-state existing`, now and then `new`).
Afterwards every acknowledged write is on every member, HashKV agrees and the history the
clients saw is linearizable (workload.verify). The same loop runs on etcd 3.5.1.

Default: 8 kills (CLUSTER_CRASH_KILLS for a soak), seed CLUSTER_CRASH_SEED (0). A member is
killed again soon after it serves, often before its first checkpoint.
"""

import os
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402
import workload as wl  # noqa: E402

KILLS = int(os.environ.get("CLUSTER_CRASH_KILLS", "8"))
SEED = int(os.environ.get("CLUSTER_CRASH_SEED", "0"))
LEADER_SHARE = 0.7
# The state a restart's manifest names: mostly `existing`, as kubeadm's and most runbooks'.
EXISTING_SHARE = 0.8


@pytest.mark.parametrize("kind", ["basalt", "etcd"])
def test_kill_9_loop_with_manifest_flags_loses_nothing(kind):
    rng = random.Random(f"{kind}-{SEED}")
    restarts = []
    with cl.Cluster(kind=kind, size=3) as c:
        def kill_and_restart():
            for _ in range(KILLS):
                live = c.live()
                victim = c.leader() if rng.random() < LEADER_SHARE else rng.choice(live)
                victim.kill()
                time.sleep(rng.uniform(0.1, 0.5))
                state = "existing" if rng.random() < EXISTING_SHARE else "new"
                victim.start(victim.initial_cluster, state)
                restarts.append(f"{victim.name}:{state}")
                deadline = time.monotonic() + cl.READY_TIMEOUT_S
                while victim.status() is None:
                    assert victim.alive() and time.monotonic() < deadline, \
                        f"{victim} did not serve again after a restart with {state}\n{victim.log_tail()}"
                    time.sleep(0.1)
                time.sleep(rng.uniform(0.2, 1.0))

        try:
            wl.run_and_verify(c, SEED, kill_and_restart,
                              lambda: f"{kind}: {KILLS} kills ({', '.join(restarts)})")
        except AssertionError as e:
            # etcd 3.5.0-3.5.2 can diverge after a kill -9 under load: the consistent index was
            # not saved with the data it covers (etcd-io/etcd#13766, fixed in 3.5.3). The
            # reference hitting its own known defect says nothing about Basalt.
            if kind == "etcd" and "HashKV differs" in str(e):
                pytest.xfail(f"etcd 3.5.1's known crash inconsistency (etcd-io/etcd#13766): {str(e)[:300]}")
            raise
