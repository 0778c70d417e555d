//! Auto compaction (`--auto-compaction-mode`, `--auto-compaction-retention`) as etcd 3.5 runs
//! it: the leader proposes an ordinary Compaction entry when one is due, so every member
//! compacts at the same revision.
//!
//! - revision mode keeps the last `retention` revisions: every 5 minutes it compacts to
//!   `current - retention` when that moved;
//! - periodic mode keeps `retention` of history: it samples the current revision every
//!   `retention / 10` (every hour once retention passes an hour) and compacts to the newest
//!   sample at least `retention` old.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// etcd's revision compactor checks this often.
const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The periodic compactor samples at most this far apart.
const PERIODIC_SAMPLE_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// Samples kept in periodic mode: one retention's worth plus the one being aged out.
const PERIODIC_SAMPLES_MAX: usize = 12;

/// What the flags ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    Periodic(Duration),
    Revision(i64),
}

/// Decides when to compact and to which revision.
#[derive(Debug)]
pub struct Compactor {
    policy: AutoCompaction,
    next_check: Instant,
    samples: VecDeque<(Instant, i64)>,
    last_target: i64,
}

impl Compactor {
    pub fn new(policy: AutoCompaction, now: Instant) -> Compactor {
        let mut compactor = Compactor {
            policy,
            next_check: now,
            samples: VecDeque::new(),
            last_target: 0,
        };
        compactor.next_check = now + compactor.interval();
        compactor
    }

    fn interval(&self) -> Duration {
        match self.policy {
            // Off never compacts; its checks (all refused) need some finite pace.
            AutoCompaction::Off | AutoCompaction::Revision(_) => REVISION_CHECK_INTERVAL,
            AutoCompaction::Periodic(retention) if retention > PERIODIC_SAMPLE_INTERVAL_MAX => {
                PERIODIC_SAMPLE_INTERVAL_MAX
            }
            AutoCompaction::Periodic(retention) => (retention / 10).max(Duration::from_millis(1)),
        }
    }

    /// The revision to compact to now, if a compaction is due; `revision` is the current one.
    pub fn poll(&mut self, now: Instant, revision: i64) -> Option<i64> {
        if matches!(self.policy, AutoCompaction::Off) || now < self.next_check {
            return None;
        }
        self.next_check = now + self.interval();
        let target = match self.policy {
            AutoCompaction::Off => return None,
            AutoCompaction::Revision(retention) => revision - retention,
            AutoCompaction::Periodic(retention) => {
                self.samples.push_back((now, revision));
                if self.samples.len() > PERIODIC_SAMPLES_MAX {
                    self.samples.pop_front();
                }
                self.samples
                    .iter()
                    .rev()
                    .find(|(at, _)| now.duration_since(*at) >= retention)
                    .map_or(0, |(_, sampled)| *sampled)
            }
        };
        if target <= 0 || target <= self.last_target {
            return None;
        }
        self.last_target = target;
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (policy, [(seconds since start, current revision, expected target)])
    type Case = (AutoCompaction, &'static [(u64, i64, Option<i64>)]);

    #[test]
    fn compactions_come_when_etcd_would_and_never_move_backwards() {
        let cases: [Case; 3] = [
            (AutoCompaction::Off, &[(0, 10, None), (10_000, 5000, None)]),
            (
                AutoCompaction::Revision(100),
                &[
                    (60, 500, None),       // not yet 5 minutes
                    (300, 500, Some(400)), // the first check
                    (400, 900, None),      // the next check is at 600 s
                    (600, 900, Some(800)), // moved on
                    (900, 900, None),      // same target again
                    (1200, 50, None),      // behind the last target
                ],
            ),
            (
                AutoCompaction::Periodic(Duration::from_secs(100)),
                &[
                    (10, 20, None), // first sample, nothing 100 s old
                    (50, 60, None),
                    (110, 120, Some(20)), // the 10 s sample is 100 s old
                    (115, 130, None),     // before the next sample time
                    (150, 160, Some(60)),
                ],
            ),
        ];
        for (policy, steps) in cases {
            let start = Instant::now();
            let mut compactor = Compactor::new(policy, start);
            for &(seconds, revision, want) in steps {
                let got = compactor.poll(start + Duration::from_secs(seconds), revision);
                assert_eq!(got, want, "{policy:?} at {seconds}s, revision {revision}");
            }
        }
    }
}
