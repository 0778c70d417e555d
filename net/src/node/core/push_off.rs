//! Push-off: a member that cannot serve writes says so at once and sends its clients to
//! another member, instead of letting every request wait out the request timeout (a client
//! with all endpoints, like clientv3's balancer, then reconnects to a member that works).
//!
//! The raft core decides, once per tick, from what only it knows: the member is pushed off
//! when it has known no leader for `--push-off-election-timeouts` checks in a row (the count
//! `hasleader` Watch streams use, [`LeaderCheck`]), or when requests have waited for
//! [`STALL_ELECTION_TIMEOUTS`] election timeouts' worth of ticks while nothing was applied
//! (a member cut off under load notices this before its leaderless count runs out). Going
//! off answers every waiting request at once and publishes the state; client cores then send
//! GOAWAY on their connections and refuse new calls (`server.rs`, `service.rs`). The member
//! serves again once it has a leader and nothing stalls, at least one election timeout later.
//!
//! Stalls are counted in ticks, not wall time, so a turn that blocked the loop (a defragment)
//! is not mistaken for a cluster that stopped committing.
//!
//! Must never: push off a member whose writes commit, or answer a waiting write in a way
//! that says it did not apply (its outcome is unknown: it may still commit).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Core, PendingRead};
use crate::leader_check::LeaderCheck;
use crate::node::NodeConfig;
use crate::status::{Code, Status};

/// Election timeouts of ticks that requests may wait with nothing applied before the member
/// pushes its clients off: longer than a normal election (one to two election timeouts), so
/// a leader change in a healthy cluster never sets it off.
const STALL_ELECTION_TIMEOUTS: u64 = 2;

pub(super) struct PushOff {
    /// None: push-off is off (`--push-off=false`).
    leader: Option<LeaderCheck>,
    /// The last leader check found the leader lost.
    leader_lost: bool,
    election_timeout: Duration,
    stall_ticks_max: u64,
    /// Ticks in a row that requests waited while nothing was answered or applied.
    stall_ticks: u64,
    last_progress: u64,
    /// Since when clients are pushed off; None while the member serves.
    pushed_since: Option<Instant>,
}

impl PushOff {
    pub(super) fn new(config: &NodeConfig, now: Instant) -> Self {
        let election_timeout = Duration::from_millis(config.election_timeout_ms);
        let election_ticks = config.election_timeout_ms / config.heartbeat_interval_ms.max(1);
        PushOff {
            leader: (config.push_off_election_timeouts > 0).then(|| {
                LeaderCheck::new(election_timeout, config.push_off_election_timeouts, now)
            }),
            leader_lost: false,
            election_timeout,
            stall_ticks_max: STALL_ELECTION_TIMEOUTS * election_ticks.max(1),
            stall_ticks: 0,
            last_progress: 0,
            pushed_since: None,
        }
    }

    /// Records one tick; whether the member should push its clients off now.
    /// `progress` grows with every entry applied and every read answered: a member serving a
    /// stream of reads and no writes is not stalled, though its applied index stands still.
    fn observe(&mut self, now: Instant, has_leader: bool, waiting: bool, progress: u64) -> bool {
        let Some(check) = self.leader.as_mut() else {
            return false;
        };
        if check.due(now) {
            self.leader_lost = check.lost(now, has_leader);
        }
        if waiting && progress == self.last_progress {
            self.stall_ticks += 1;
        } else {
            self.stall_ticks = 0;
        }
        self.last_progress = progress;
        let stalled = self.stall_ticks >= self.stall_ticks_max;
        match self.pushed_since {
            None => self.leader_lost || stalled,
            Some(since) => {
                let recovered = has_leader && !self.leader_lost && !stalled;
                !(recovered && now.duration_since(since) >= self.election_timeout)
            }
        }
    }
}

impl Core {
    /// Once per tick: expires reads past their deadline, then decides whether clients are
    /// pushed off (see the module's doc).
    pub(in crate::node) fn check_serving(&mut self) {
        let now = Instant::now();
        self.expire_reads(now);
        let waiting = !self.waiters.is_empty()
            || !self.reads_unindexed.is_empty()
            || !self.reads_asked.is_empty()
            || !self.reads_indexed.is_empty();
        let has_leader = self.leader_id != basalt_raft::NONE;
        let progress = self.applier.read().applied_index() + self.reads_served;
        let push = self.push_off.observe(now, has_leader, waiting, progress);
        match (self.push_off.pushed_since.is_some(), push) {
            (false, true) => {
                eprintln!(
                    "basalt: pushing clients off (no leader: {}, requests stalled: {}): \
                     answering them at once and asking them to reconnect elsewhere",
                    !has_leader, waiting
                );
                self.push_off.pushed_since = Some(now);
                self.answer_everyone_waiting();
            }
            (true, false) => {
                eprintln!(
                    "basalt: serving clients again (leader {:x})",
                    self.leader_id
                );
                self.push_off.pushed_since = None;
            }
            _ => {}
        }
        self.published.pushed_off.store(push, Ordering::Relaxed);
    }

    /// Writes hear etcd's timeout (their outcome is unknown: an entry forwarded or appended
    /// may still commit); reads, which change nothing, hear that there is no leader.
    fn answer_everyone_waiting(&mut self) {
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.reply.send(Err(Status::new(
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to connection lost",
            )));
        }
        let reads = std::mem::take(&mut self.reads_unindexed)
            .into_iter()
            .chain(self.reads_asked.drain().flat_map(|(_, reads)| reads))
            .chain(self.reads_indexed.drain(..).flat_map(|(_, reads)| reads));
        for read in reads {
            let _ = read.reply.send(Err(Status::no_leader()));
        }
    }

    /// Linearizable reads wait for a leader and a read index until etcd's request timeout.
    fn expire_reads(&mut self, now: Instant) {
        let expire = |reads: &mut Vec<PendingRead>| {
            reads.retain(|read| {
                if read.deadline > now {
                    return true;
                }
                let _ = read.reply.send(Err(Status::new(
                    Code::Unavailable,
                    "etcdserver: request timed out",
                )));
                false
            });
        };
        expire(&mut self.reads_unindexed);
        self.reads_asked.retain(|_, reads| {
            expire(reads);
            !reads.is_empty()
        });
        self.reads_indexed.retain_mut(|(_, reads)| {
            expire(reads);
            !reads.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_off(checks: u32) -> PushOff {
        let config = NodeConfig {
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            push_off_election_timeouts: checks,
            ..NodeConfig::default()
        };
        PushOff::new(&config, Instant::now())
    }

    #[test]
    fn a_member_without_a_leader_is_pushed_off_after_the_configured_checks_and_back_with_one() {
        let mut p = push_off(3);
        let start = Instant::now();
        let second = Duration::from_secs(1);
        // Ticks every 100 ms with no leader and nothing waiting: pushed off at the third check.
        let mut pushed_at = None;
        for tick in 1..=40u32 {
            let now = start + tick * second / 10;
            if p.observe(now, false, false, 5) && pushed_at.is_none() {
                pushed_at = Some(tick);
                p.pushed_since = Some(now);
            }
        }
        assert_eq!(pushed_at, Some(30));
        // A leader again: served once a check has seen it.
        let back = (41..=60u32)
            .find(|&tick| !p.observe(start + tick * second / 10, true, false, 5))
            .expect("serves again");
        assert_eq!(back, 50, "the next leader check sees the leader");
    }

    #[test]
    fn requests_stalled_two_election_timeouts_push_off_but_applied_progress_never_does() {
        let start = Instant::now();
        let tick = |n: u32| start + n * Duration::from_millis(100);
        let mut stalled = push_off(3);
        let pushed = (1..=30u32).find(|&n| stalled.observe(tick(n), true, true, 9));
        assert_eq!(
            pushed,
            Some(21),
            "20 ticks of stall are two election timeouts"
        );

        let mut busy = push_off(3);
        assert!((1..=100u32).all(|n| !busy.observe(tick(n), true, true, 9 + u64::from(n))));
    }

    #[test]
    fn off_means_never_pushed() {
        let mut p = push_off(0);
        let start = Instant::now();
        assert!((1..=100u32).all(|n| !p.observe(
            start + n * Duration::from_secs(1),
            false,
            true,
            1
        )));
    }
}
