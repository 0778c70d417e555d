//! The simulation as tests: many seeds must pass, one seed can be replayed with a trace, and
//! the checkers must catch deliberately broken rules.

use super::{run_seed, SimOptions, SimStats};
use crate::raft::BrokenRule;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// Runs `count` seeds from `first` on every core; returns the stats and the failures.
fn run_seeds(first: u64, count: u64, broken_rule: Option<BrokenRule>) -> (SimStats, Vec<String>) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let results: Vec<(SimStats, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut stats = SimStats::default();
                    let mut failures = Vec::new();
                    for seed in (first + t..first + count).step_by(threads as usize) {
                        let mut opts = SimOptions::from_seed(seed);
                        opts.broken_rule = broken_rule;
                        // A panic inside raft (a failed assertion) is a failing seed too.
                        let outcome =
                            std::panic::catch_unwind(|| run_seed(opts)).unwrap_or_else(|panic| {
                                let what = panic
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_default();
                                Err(format!(
                                    "seed {seed} panicked: {what}\n  replay: {}",
                                    super::replay_command(seed)
                                ))
                            });
                        match outcome {
                            Ok(s) => stats.add(&s),
                            Err(e) => failures.push(e),
                        }
                    }
                    (stats, failures)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("seed thread"))
            .collect()
    });
    let mut stats = SimStats::default();
    let mut failures = Vec::new();
    for (s, f) in results {
        stats.add(&s);
        failures.extend(f);
    }
    (stats, failures)
}

#[test]
fn simulation_passes_every_seed() {
    let first = env_u64("RAFT_SEED_START", 0);
    let count = env_u64("RAFT_SEEDS", 10_000);
    let (stats, failures) = run_seeds(first, count, None);
    for f in failures.iter().take(10) {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed (first shown above)",
        failures.len()
    );
    eprintln!("{count} seeds passed: {stats:?}");
    // The faults and features must actually have been exercised, or passing means little.
    if count >= 1_000 {
        let exercised = [
            ("reads", stats.reads_completed),
            ("crashes", stats.crashes),
            ("crashes mid-write", stats.crashes_mid_write),
            ("writes completing after later steps", stats.writes_deferred),
            ("snapshots installed", stats.snapshots_installed),
            ("conf changes", stats.conf_changes_applied),
            ("joint configurations", stats.joint_entered),
            ("leader transfers", stats.transfers_started),
            ("leaders removed", stats.leaders_removed),
        ];
        for (what, n) in exercised {
            assert!(n > 0, "no {what} in {count} seeds: {stats:?}");
        }
    }
}

#[test]
fn replay_seed() {
    let seed = env_u64("RAFT_SEED", 1);
    let mut opts = SimOptions::from_seed(seed);
    opts.trace = std::env::var("RAFT_TRACE").is_ok();
    if let Err(e) = run_seed(opts) {
        panic!("{e}");
    }
}

#[test]
fn checkers_catch_a_node_that_votes_twice_in_a_term() {
    let (_, failures) = run_seeds(0, 300, Some(BrokenRule::VoteTwicePerTerm));
    assert!(
        failures.iter().any(|f| f.contains("election safety")),
        "no seed caught the double vote: {failures:?}"
    );
}

#[test]
fn checkers_catch_a_leader_that_commits_without_a_quorum() {
    let (_, failures) = run_seeds(0, 300, Some(BrokenRule::CommitWithoutQuorum));
    for f in failures.iter().take(5) {
        eprintln!("{f}");
    }
    assert!(
        !failures.is_empty(),
        "no seed caught commits without a quorum"
    );
}

#[test]
fn checkers_catch_a_leader_that_serves_reads_without_confirming_leadership() {
    let (_, failures) = run_seeds(0, 2_000, Some(BrokenRule::ReadWithoutQuorumCheck));
    assert!(
        failures
            .iter()
            .any(|f| f.contains("no linearization exists")),
        "no seed caught a stale read: {failures:?}"
    );
}

/// Seeds that once failed outside the default range, kept as regressions.
const REGRESSION_SEEDS: [(u64, &str); 2] = [
    (
        129_169,
        "auto-leave refused during a transfer left the cluster joint forever",
    ),
    (
        138_664,
        "auto-leave refused during a transfer left the cluster joint forever",
    ),
];

#[test]
fn seeds_that_once_failed_pass() {
    for (seed, what) in REGRESSION_SEEDS {
        if let Err(e) = run_seed(SimOptions::from_seed(seed)) {
            panic!("regression ({what}): {e}");
        }
    }
}
