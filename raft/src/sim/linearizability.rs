//! A linearizability checker for a key-value register workload, in the style of Knossos and
//! Porcupine (Wing & Gong search with Lowe's memoization). Keys are independent, so each key's
//! history is checked on its own. An operation whose outcome the client never learned has no
//! return time: it may take effect at any point after its call, or never.

use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Writes a value unique to this operation.
    Write(u64),
    /// Read that returned this value (`None`: the key was never written).
    Read(Option<u64>),
}

#[derive(Clone, Debug)]
pub struct Op {
    pub key: u64,
    pub kind: OpKind,
    /// Event numbers on one global clock: every call and return gets a distinct one.
    pub call: u64,
    pub ret: Option<u64>,
}

/// Bound on search states per key before the checker gives up (reported as a failure, so a
/// workload that is too concurrent to check is noticed rather than passed).
const STATES_MAX: usize = 2_000_000;

/// Checks every key's history; on failure names the key and its operations.
pub fn check(ops: &[Op]) -> Result<(), String> {
    let mut by_key: BTreeMap<u64, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key).or_default().push(op.clone());
    }
    for (key, ops) in by_key {
        let ops = prune(ops);
        if let Err(why) = check_register(&ops) {
            return Err(format!("key {key}: {why}; history: {ops:?}"));
        }
    }
    Ok(())
}

/// Drops reads that never returned (they constrain nothing) and unacknowledged writes whose
/// value nobody read (if the history is linearizable with them, it is without them).
fn prune(ops: Vec<Op>) -> Vec<Op> {
    let read_values: HashSet<u64> = ops
        .iter()
        .filter_map(|op| {
            if let OpKind::Read(Some(v)) = op.kind {
                Some(v)
            } else {
                None
            }
        })
        .collect();
    ops.into_iter()
        .filter(|op| match op.kind {
            OpKind::Read(_) => op.ret.is_some(),
            OpKind::Write(v) => op.ret.is_some() || read_values.contains(&v),
        })
        .collect()
}

fn check_register(ops: &[Op]) -> Result<(), String> {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let required: Vec<bool> = ops.iter().map(|op| op.ret.is_some()).collect();
    let required_count = required.iter().filter(|&&r| r).count();
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // Depth-first search over (linearized set, register value).
    let mut stack: Vec<(Vec<u64>, Option<u64>, usize)> = vec![(vec![0; words], None, 0)];
    while let Some((done, value, done_required)) = stack.pop() {
        if done_required == required_count {
            return Ok(());
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // An operation may go next only if it was called before every pending one returned.
        let first_return = (0..n)
            .filter(|&i| !is_done(i))
            .filter_map(|i| ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in (0..n).filter(|&i| !is_done(i) && ops[i].call < first_return) {
            let next_value = match ops[i].kind {
                OpKind::Write(v) => Some(v),
                OpKind::Read(v) if v == value => value,
                OpKind::Read(_) => continue,
            };
            let mut next_done = done.clone();
            next_done[i / 64] |= 1 << (i % 64);
            if seen.insert((next_done.clone(), next_value)) {
                if seen.len() > STATES_MAX {
                    return Err(format!("gave up after {STATES_MAX} states"));
                }
                stack.push((
                    next_done,
                    next_value,
                    done_required + usize::from(required[i]),
                ));
            }
        }
    }
    Err("no linearization exists".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, call: u64, ret: Option<u64>) -> Op {
        Op {
            key: 0,
            kind,
            call,
            ret,
        }
    }

    use OpKind::{Read, Write};

    #[test]
    fn histories_are_judged_correctly() {
        // (name, history, linearizable?)
        let cases: Vec<(&str, Vec<Op>, bool)> = vec![
            (
                "sequential write then read",
                vec![op(Write(1), 1, Some(2)), op(Read(Some(1)), 3, Some(4))],
                true,
            ),
            (
                "stale read after a completed write",
                vec![op(Write(1), 1, Some(2)), op(Read(None), 3, Some(4))],
                false,
            ),
            (
                "read of a value before its write was called",
                vec![op(Read(Some(1)), 1, Some(2)), op(Write(1), 3, Some(4))],
                false,
            ),
            (
                "concurrent read may see either",
                vec![
                    op(Write(1), 1, Some(4)),
                    op(Read(None), 2, Some(3)),
                    op(Read(Some(1)), 2, Some(5)),
                ],
                true,
            ),
            (
                "reads must not go back in time",
                vec![
                    op(Write(1), 1, Some(2)),
                    op(Write(2), 3, Some(10)),
                    op(Read(Some(2)), 4, Some(5)),
                    op(Read(Some(1)), 6, Some(7)),
                ],
                false,
            ),
            (
                "an unacknowledged write may take effect late",
                vec![
                    op(Write(1), 1, None),
                    op(Read(None), 2, Some(3)),
                    op(Read(Some(1)), 4, Some(5)),
                ],
                true,
            ),
            (
                "an unacknowledged write cannot take effect twice",
                vec![
                    op(Write(1), 1, None),
                    op(Write(2), 2, Some(3)),
                    op(Read(Some(1)), 4, Some(5)),
                    op(Read(Some(2)), 6, Some(7)),
                ],
                false,
            ),
            (
                "an unacknowledged write may never take effect",
                vec![
                    op(Write(1), 1, None),
                    op(Read(None), 2, Some(3)),
                    op(Read(None), 9, Some(10)),
                ],
                true,
            ),
        ];
        for (name, history, want) in cases {
            assert_eq!(check(&history).is_ok(), want, "{name}");
        }
    }
}
