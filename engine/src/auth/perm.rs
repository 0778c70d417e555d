//! A user's key permissions merged into sorted, disjoint intervals, and etcd's tests against
//! them (its range permission cache, `range_perm_cache.go`).
//!
//! Owns: the union of every granted range per kind (read, write) and the two questions etcd
//! asks: does a granted range hold this key (a key alone), and do the granted ranges together
//! cover this whole range (a key with a range end). Must never: grant on a partial cover, or
//! treat an empty or reversed range as covered.
//!
//! Bounds follow etcd's "affine" byte order: an empty end (and a range end of `\0`, etcd's
//! "from key") is +infinity; a permission without a range end is the one key `[key, key\0)`.

use basalt_proto::authpb::{permission::Type, Permission};

/// One end of an interval; `None` is +infinity.
type End = Option<Vec<u8>>;

/// Sorted, disjoint, non-adjacent half-open intervals `[begin, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals {
    spans: Vec<(Vec<u8>, End)>,
}

/// `a < b` where `None` is +infinity.
fn end_lt(a: &End, b: &End) -> bool {
    match (a, b) {
        (_, None) => a.is_some(),
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a < b,
    }
}

/// The interval a permission or request names: a key alone is `[key, key\0)`; a range end of
/// `\0` is +infinity.
fn span(key: &[u8], range_end: &[u8]) -> (Vec<u8>, End) {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        return (key.to_vec(), Some(end));
    }
    if range_end == [0] {
        return (key.to_vec(), None);
    }
    (key.to_vec(), Some(range_end.to_vec()))
}

impl Intervals {
    fn from_spans(mut spans: Vec<(Vec<u8>, End)>) -> Self {
        spans.retain(|(begin, end)| end_lt(&Some(begin.clone()), end));
        spans.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(spans.len());
        for (begin, end) in spans {
            match merged.last_mut() {
                // Overlapping or touching: one interval (etcd's Contains walks across both).
                Some((_, last_end)) if !end_lt(last_end, &Some(begin.clone())) => {
                    if end_lt(last_end, &end) {
                        *last_end = end;
                    }
                }
                _ => merged.push((begin, end)),
            }
        }
        Intervals { spans: merged }
    }

    /// The interval holding `key`, if any.
    fn holding(&self, key: &[u8]) -> Option<&(Vec<u8>, End)> {
        let after = self
            .spans
            .partition_point(|(begin, _)| begin.as_slice() <= key);
        let (begin, end) = self.spans.get(after.checked_sub(1)?)?;
        (begin.as_slice() <= key && end_lt(&Some(key.to_vec()), end))
            .then(|| &self.spans[after - 1])
    }

    /// etcd's check of a request: a key alone must lie in a granted interval; a range must be
    /// covered whole by one merged interval.
    pub fn allows(&self, key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            return self.holding(key).is_some();
        }
        let (begin, end) = span(key, range_end);
        if !end_lt(&Some(begin.clone()), &end) {
            return false;
        }
        self.holding(&begin)
            .is_some_and(|(_, covered_end)| !end_lt(covered_end, &end))
    }
}

/// What a user may read and write: the union of every permission of every role it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPerms {
    pub read: Intervals,
    pub write: Intervals,
}

impl UserPerms {
    pub fn merge<'a>(permissions: impl IntoIterator<Item = &'a Permission>) -> Self {
        let mut read = Vec::new();
        let mut write = Vec::new();
        for perm in permissions {
            let interval = span(&perm.key, &perm.range_end);
            match Type::try_from(perm.perm_type) {
                Ok(Type::Read) => read.push(interval),
                Ok(Type::Write) => write.push(interval),
                Ok(Type::Readwrite) => {
                    read.push(interval.clone());
                    write.push(interval);
                }
                Err(_) => {}
            }
        }
        UserPerms {
            read: Intervals::from_spans(read),
            write: Intervals::from_spans(write),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(kind: Type, key: &str, range_end: &str) -> Permission {
        Permission {
            perm_type: kind as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: range_end.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn requests_are_allowed_as_etcds_range_permission_cache_allows_them() {
        let granted = [
            perm(Type::Read, "a", ""),           // the key "a" alone
            perm(Type::Readwrite, "foo", "fop"), // the prefix "foo"
            perm(Type::Read, "m", "n"),
            perm(Type::Read, "n", "p"), // touches [m, n): together [m, p)
            perm(Type::Write, "z", "\0"), // from "z" on
        ];
        let perms = UserPerms::merge(&granted);
        // (key, range end, may read, may write)
        let cases: &[(&str, &str, bool, bool)] = &[
            ("a", "", true, false),
            ("a\0", "", false, false),
            ("a", "b", false, false),  // more than the one key
            ("a", "a\0", true, false), // exactly the one key as a range
            ("foo", "", true, true),
            ("foo/bar", "", true, true),
            ("foo", "fop", true, true),
            ("foo", "foq", false, false), // range end one past the grant
            ("fo", "fop", false, false),  // starts before the grant
            ("foo", "\0", false, false),  // from-key runs past the prefix
            ("fop", "", false, false),
            ("m", "p", true, false), // covered by two touching grants
            ("m", "p\0", false, false),
            ("o", "", true, false),
            ("z", "", false, true),
            ("zzz", "\0", false, true),
            ("y", "\0", false, false),
            ("q", "b", false, false), // reversed range
            ("q", "q", false, false), // empty range
        ];
        for &(key, range_end, read, write) in cases {
            let (key, range_end) = (key.as_bytes(), range_end.as_bytes());
            assert_eq!(
                perms.read.allows(key, range_end),
                read,
                "read {key:?} {range_end:?}"
            );
            assert_eq!(
                perms.write.allows(key, range_end),
                write,
                "write {key:?} {range_end:?}"
            );
        }
    }

    #[test]
    fn no_permission_allows_nothing() {
        let perms = UserPerms::merge(&[]);
        assert!(!perms.read.allows(b"a", b""));
        assert!(!perms.write.allows(b"\0", b"\0"));
    }
}
