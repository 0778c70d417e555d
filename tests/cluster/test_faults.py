"""Fault scenarios under load: whatever a scenario does to the members and the links between them,
once it heals the history the clients saw is linearizable, every acknowledged put is on every
member, and all members converge to one revision and one HashKV (workload.verify).

The server is basalt unless CLUSTER_BINARY=etcd (which proves the scenarios and the checks on
etcd 3.5.1). Each scenario runs with one seed by default; CLUSTER_SOAK=1 runs every scenario
with CLUSTER_SOAK_SEEDS seeds (default 5) and CLUSTER_SOAK_LOAD_S seconds of faults (default 20).
A failure names the scenario (name-size-network) and seed; its test id replays it, e.g.
`pytest 'tests/cluster/test_faults.py::test_cluster_stays_linearizable_and_loses_nothing[isolate_leader-3-netns-0]'`
(set CLUSTER_KEEP_DIRS=1 to keep the members' data dirs and logs).
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster as cl  # noqa: E402
import workload as wl  # noqa: E402

SOAK = os.environ.get("CLUSTER_SOAK") == "1"
SEEDS = range(int(os.environ.get("CLUSTER_SOAK_SEEDS", "5"))) if SOAK else range(1)
# Seconds of load with faults in each scenario; a scenario's steps scale with it.
LOAD_S = float(os.environ.get("CLUSTER_SOAK_LOAD_S", "20")) if SOAK else 3.0


def pause(fraction: float) -> None:
    time.sleep(LOAD_S * fraction)


def followers(c, leader=None):
    leader = leader or c.leader()
    return [m for m in c.members if m is not leader and not m.learner]


# ---- scenarios: each acts on a started cluster under load, and may leave faults for heal() ----

def kill_follower(c, rng):
    victim = rng.choice(followers(c))
    pause(0.2)
    victim.kill()
    pause(0.4)
    victim.start()
    pause(0.4)


def kill_leader(c, rng):
    pause(0.2)
    leader = c.leader()
    leader.kill()
    pause(0.4)
    leader.start()
    pause(0.4)


def kill_two_of_five(c, rng):
    pause(0.2)
    victims = rng.sample(c.members, 2)
    for m in victims:
        m.kill()
    pause(0.4)
    for m in victims:
        m.start()
    pause(0.4)


def kill_three_of_five(c, rng):
    """A majority down: the survivors must not acknowledge anything until it is back."""
    pause(0.2)
    victims = rng.sample(c.members, 3)
    for m in victims:
        m.kill()
    pause(0.3)
    for m in victims:
        m.start()
    pause(0.5)


def rolling_restart(c, rng, graceful=True):
    for m in rng.sample(c.members, len(c.members)):
        m.stop() if graceful else m.kill()
        pause(0.1)
        m.start()
        c.wait_ready()
        pause(0.15)


def rolling_kill9(c, rng):
    rolling_restart(c, rng, graceful=False)


def add_voter_remove_follower(c, rng):
    pause(0.2)
    old = followers(c)
    c.member_add()
    pause(0.3)
    c.member_remove(rng.choice(old))
    pause(0.3)


def add_learner_promote(c, rng):
    pause(0.2)
    learner = c.member_add(learner=True)
    pause(0.3)
    c.member_promote(learner)
    pause(0.3)


def remove_leader(c, rng):
    pause(0.3)
    c.member_remove(c.leader())
    pause(0.5)


def move_leader(c, rng):
    for _ in range(3):
        pause(0.25)
        c.move_leader(rng.choice(followers(c)))
    pause(0.2)


def isolate_follower(c, rng):
    pause(0.2)
    c.isolate(rng.choice(followers(c)))
    pause(0.5)
    c.heal()
    pause(0.3)


def isolate_leader(c, rng):
    pause(0.2)
    c.isolate(c.leader())
    pause(0.6)
    c.heal()
    pause(0.2)


def leader_in_minority(c, rng):
    """Five members split 2 | 3 with the leader on the small side."""
    pause(0.2)
    leader = c.leader()
    c.partition([leader, rng.choice(followers(c, leader))])
    pause(0.6)
    c.heal()
    pause(0.2)


def random_partitions(c, rng):
    for _ in range(3):
        members = list(c.members)
        rng.shuffle(members)
        cut = rng.randrange(1, len(members))
        c.partition(members[:cut])
        pause(0.25)
        c.heal()
        pause(0.08)


def bridge(c, rng):
    """Five members where one (the bridge) sees both halves, which cannot see each other."""
    pause(0.2)
    members = list(c.members)
    rng.shuffle(members)
    left, right = members[:2], members[3:]
    c.cut([(a, b) for a in left for b in right])
    pause(0.6)
    c.heal()
    pause(0.2)


def loss_10(c, rng):
    pause(0.1)
    c.set_loss(10)
    pause(0.8)
    c.heal()


def delay_50ms(c, rng):
    pause(0.1)
    c.set_delay(50)
    pause(0.8)
    c.heal()


def delay_and_loss_kill_leader(c, rng):
    pause(0.1)
    c.set_delay(20)
    c.set_loss(5)
    pause(0.3)
    leader = c.leader()
    leader.kill()
    pause(0.3)
    leader.start()
    pause(0.3)
    c.heal()


def isolate_then_kill(c, rng):
    """A follower cut off, then another killed: no quorum until the kill is undone."""
    pause(0.2)
    a, b = rng.sample(followers(c), 2)
    c.isolate(a)
    pause(0.2)
    b.kill()
    pause(0.3)
    b.start()
    pause(0.3)


def move_leader_with_delay(c, rng):
    c.set_delay(10)
    move_leader(c, rng)


def add_learner_while_partitioned(c, rng):
    """A learner added while a follower is cut off catches up (by log or snapshot) once healed."""
    pause(0.2)
    c.isolate(rng.choice(followers(c)))
    learner = c.member_add(learner=True)
    pause(0.3)
    c.heal()
    c.member_promote(learner)
    pause(0.3)


@dataclass
class Scenario:
    name: str
    fault: object
    size: int = 3
    netns: bool = False

    def __str__(self):
        return f"{self.name}-{self.size}-{'netns' if self.netns else 'lo'}"


SCENARIOS = [
    Scenario("kill_follower", kill_follower),
    Scenario("kill_leader", kill_leader),
    Scenario("kill_leader", kill_leader, size=5),
    Scenario("kill_two_of_five", kill_two_of_five, size=5),
    Scenario("kill_three_of_five", kill_three_of_five, size=5),
    Scenario("rolling_restart", rolling_restart),
    Scenario("rolling_kill9", rolling_kill9),
    Scenario("add_voter_remove_follower", add_voter_remove_follower),
    Scenario("add_learner_promote", add_learner_promote),
    Scenario("remove_leader", remove_leader),
    Scenario("move_leader", move_leader),
    Scenario("isolate_follower", isolate_follower, netns=True),
    Scenario("isolate_leader", isolate_leader, netns=True),
    Scenario("isolate_leader", isolate_leader, size=5, netns=True),
    Scenario("leader_in_minority", leader_in_minority, size=5, netns=True),
    Scenario("random_partitions", random_partitions, netns=True),
    Scenario("random_partitions", random_partitions, size=5, netns=True),
    Scenario("bridge", bridge, size=5, netns=True),
    Scenario("loss_10", loss_10, netns=True),
    Scenario("delay_50ms", delay_50ms, netns=True),
    Scenario("delay_and_loss_kill_leader", delay_and_loss_kill_leader, size=5, netns=True),
    Scenario("kill_leader", kill_leader, netns=True),
    Scenario("isolate_then_kill", isolate_then_kill, size=5, netns=True),
    Scenario("move_leader_with_delay", move_leader_with_delay, netns=True),
    Scenario("add_learner_while_partitioned", add_learner_while_partitioned, netns=True),
]

NEEDS_DELAY = {"delay_50ms", "delay_and_loss_kill_leader", "move_leader_with_delay"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_cluster_stays_linearizable_and_loses_nothing(scenario, seed):
    if scenario.netns and cl.netns_available():
        pytest.skip(cl.netns_available())
    if scenario.name in NEEDS_DELAY and cl.delay_available():
        pytest.skip(cl.delay_available())
    rng = random.Random(f"{scenario}-{seed}")
    with cl.Cluster(size=scenario.size, netns=scenario.netns) as c:
        wl.run_and_verify(c, seed, lambda: scenario.fault(c, rng),
                          lambda: f"{scenario} seed {seed} ({c.kind})")
