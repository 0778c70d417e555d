//! Go 1.16's `sort.Sort`, the unstable sort etcd 3.5.1 (built with Go 1.16.3)
//! orders Range results with. Keys that tie on the sort target come back in
//! the order this exact algorithm leaves them, so matching etcd byte for byte
//! means running the same sequence of comparisons and swaps.

/// Sorts `data` ascending by `less` exactly as Go 1.16's `sort.Sort` would.
pub fn sort_by<T>(data: &mut [T], less: impl Fn(&T, &T) -> bool) {
    let mut sorter = Sorter { data, less };
    let len = sorter.data.len();
    sorter.quick_sort(0, len, max_depth(len));
}

/// Go's switch-to-heapsort threshold: 2 * ceil(lg(n + 1)).
fn max_depth(len: usize) -> usize {
    2 * (usize::BITS - len.leading_zeros()) as usize
}

/// Below this many elements quicksort hands over to shell and insertion sort.
const SMALL_SORT_LEN_MAX: usize = 12;

/// Above this many elements the pivot is Tukey's ninther.
const NINTHER_LEN_MIN: usize = 40;

struct Sorter<'a, T, F> {
    data: &'a mut [T],
    less: F,
}

impl<T, F: Fn(&T, &T) -> bool> Sorter<'_, T, F> {
    fn less(&self, i: usize, j: usize) -> bool {
        (self.less)(&self.data[i], &self.data[j])
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.data.swap(i, j);
    }

    fn insertion_sort(&mut self, a: usize, b: usize) {
        for i in a + 1..b {
            let mut j = i;
            while j > a && self.less(j, j - 1) {
                self.swap(j, j - 1);
                j -= 1;
            }
        }
    }

    /// Restores the max-heap property of `data[first + lo .. first + hi)` from `lo` down.
    fn sift_down(&mut self, lo: usize, hi: usize, first: usize) {
        let mut root = lo;
        loop {
            let mut child = 2 * root + 1;
            if child >= hi {
                return;
            }
            if child + 1 < hi && self.less(first + child, first + child + 1) {
                child += 1;
            }
            if !self.less(first + root, first + child) {
                return;
            }
            self.swap(first + root, first + child);
            root = child;
        }
    }

    fn heap_sort(&mut self, a: usize, b: usize) {
        let first = a;
        let hi = b - a;
        for i in (0..=(hi.saturating_sub(1)) / 2).rev() {
            self.sift_down(i, hi, first);
        }
        for i in (0..hi).rev() {
            self.swap(first, first + i);
            self.sift_down(0, i, first);
        }
    }

    /// Moves the median of `data[m0], data[m1], data[m2]` into `data[m1]`.
    fn median_of_three(&mut self, m1: usize, m0: usize, m2: usize) {
        if self.less(m1, m0) {
            self.swap(m1, m0);
        }
        if self.less(m2, m1) {
            self.swap(m2, m1);
            if self.less(m1, m0) {
                self.swap(m1, m0);
            }
        }
    }

    /// Partitions `data[lo..hi)` around a pivot; returns the bounds of the
    /// middle part that needs no further sorting.
    fn do_pivot(&mut self, lo: usize, hi: usize) -> (usize, usize) {
        let m = lo + (hi - lo) / 2;
        if hi - lo > NINTHER_LEN_MIN {
            let s = (hi - lo) / 8;
            self.median_of_three(lo, lo + s, lo + 2 * s);
            self.median_of_three(m, m - s, m + s);
            self.median_of_three(hi - 1, hi - 1 - s, hi - 1 - 2 * s);
        }
        self.median_of_three(lo, m, hi - 1);

        // data[lo] is the pivot; data[lo+1..a) < pivot; data[a..b) <= pivot;
        // data[b..c) unexamined; data[c..hi-1) > pivot; data[hi-1] >= pivot.
        let pivot = lo;
        let (mut a, mut c) = (lo + 1, hi - 1);
        while a < c && self.less(a, pivot) {
            a += 1;
        }
        let mut b = a;
        loop {
            while b < c && !self.less(pivot, b) {
                b += 1;
            }
            while b < c && self.less(pivot, c - 1) {
                c -= 1;
            }
            if b >= c {
                break;
            }
            self.swap(b, c - 1);
            b += 1;
            c -= 1;
        }
        // Few elements above the pivot suggests many equal to it.
        let mut protect = hi - c < 5;
        if !protect && hi - c < (hi - lo) / 4 {
            let mut dups = 0;
            if !self.less(pivot, hi - 1) {
                self.swap(c, hi - 1);
                c += 1;
                dups += 1;
            }
            if !self.less(b - 1, pivot) {
                b -= 1;
                dups += 1;
            }
            if !self.less(m, pivot) {
                self.swap(m, b - 1);
                b -= 1;
                dups += 1;
            }
            protect = dups > 1;
        }
        if protect {
            // Gather the elements equal to the pivot: data[b..c) == pivot.
            loop {
                while a < b && !self.less(b - 1, pivot) {
                    b -= 1;
                }
                while a < b && self.less(a, pivot) {
                    a += 1;
                }
                if a >= b {
                    break;
                }
                self.swap(a, b - 1);
                a += 1;
                b -= 1;
            }
        }
        self.swap(pivot, b - 1);
        (b - 1, c)
    }

    fn quick_sort(&mut self, mut a: usize, mut b: usize, mut depth_left: usize) {
        while b - a > SMALL_SORT_LEN_MAX {
            if depth_left == 0 {
                self.heap_sort(a, b);
                return;
            }
            depth_left -= 1;
            let (mid_lo, mid_hi) = self.do_pivot(a, b);
            // Recursing into the smaller side bounds the stack at lg(n).
            if mid_lo - a < b - mid_hi {
                self.quick_sort(a, mid_lo, depth_left);
                a = mid_hi;
            } else {
                self.quick_sort(mid_hi, b, depth_left);
                b = mid_lo;
            }
        }
        if b - a > 1 {
            // One shell sort pass with gap 6, then insertion sort.
            for i in a + 6..b {
                if self.less(i, i - 6) {
                    self.swap(i, i - 6);
                }
            }
            self.insertion_sort(a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Go 1.16 `sort.Sort` on `(value, original index)` pairs compared by
    /// value only, traced by hand through Go's source; pins the tie order.
    #[test]
    fn small_input_with_ties_matches_go() {
        let values = [3, 1, 3, 2, 1, 3, 2, 1, 0, 3];
        let mut pairs: Vec<(i32, usize)> = values.iter().copied().zip(0..).collect();
        sort_by(&mut pairs, |x, y| x.0 < y.0);
        let order: Vec<usize> = pairs.iter().map(|pair| pair.1).collect();
        // The gap-6 shell pass swaps positions 6<->0 and 8<->2, which reorders
        // ties; the insertion sort after it is stable.
        assert_eq!(order, vec![8, 1, 4, 7, 6, 3, 5, 0, 2, 9]);
    }

    proptest! {
        #[test]
        fn sorts_any_input(mut values in prop::collection::vec(0u8..8, 0..300)) {
            let mut expected = values.clone();
            expected.sort();
            sort_by(&mut values, |x, y| x < y);
            prop_assert_eq!(values, expected);
        }
    }
}
