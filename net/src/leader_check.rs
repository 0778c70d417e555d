//! "This member has known no leader for so many election timeouts": the one count behind a
//! `hasleader` Watch stream's end (etcd's `monitorLeader`) and behind push-off (the raft core
//! sending clients elsewhere, `node/core/push_off.rs`). One check per election timeout; a
//! check that finds a leader starts the count again, so a short election is waited out.

use std::time::{Duration, Instant};

/// Checks in a row, one per election timeout, that must find no leader before a `hasleader`
/// stream is ended (etcd's `maxNoLeaderCnt`), and push-off's default.
pub const NO_LEADER_CHECKS_MAX: u32 = 3;

/// A count of checks in a row that found no leader.
pub(crate) struct LeaderCheck {
    interval: Duration,
    checks_max: u32,
    pub(crate) next_check: Instant,
    leaderless_checks: u32,
}

impl LeaderCheck {
    /// Checks every `interval` (an election timeout); lost after `checks_max` leaderless
    /// checks in a row.
    pub(crate) fn new(interval: Duration, checks_max: u32, now: Instant) -> Self {
        LeaderCheck {
            interval,
            checks_max,
            next_check: now + interval,
            leaderless_checks: 0,
        }
    }

    /// Records one check made at `now`; true while the leader counts as lost.
    pub(crate) fn lost(&mut self, now: Instant, has_leader: bool) -> bool {
        self.next_check = now + self.interval;
        self.leaderless_checks = if has_leader {
            0
        } else {
            self.leaderless_checks.saturating_add(1)
        };
        self.leaderless_checks >= self.checks_max
    }

    /// Whether a check is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next_check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_lost_only_after_three_checks_in_a_row_find_none() {
        // (has_leader at each check, the check that ends the stream)
        let cases: [(&[bool], Option<usize>); 5] = [
            (&[true, true, true, true], None),
            (&[false, false, false], Some(2)),
            (&[false, false, true, false, false], None),
            (&[false, true, false, false, false, false], Some(4)),
            (&[true, false, false, false], Some(3)),
        ];
        let interval = Duration::from_millis(100);
        for (leaders, ends_at) in cases {
            let start = Instant::now();
            let mut check = LeaderCheck::new(interval, NO_LEADER_CHECKS_MAX, start);
            let mut ended = None;
            for (i, &has_leader) in leaders.iter().enumerate() {
                let now = check.next_check;
                assert!(check.due(now));
                if check.lost(now, has_leader) {
                    ended = Some(i);
                    break;
                }
                assert_eq!(
                    check.next_check,
                    now + interval,
                    "checks are an interval apart"
                );
            }
            assert_eq!(ended, ends_at, "leaders {leaders:?}");
        }
    }
}
