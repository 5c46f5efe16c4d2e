//! The one percentile definition every figure of migtrace uses: nearest rank. The
//! q-quantile of n values is the ⌈q·n⌉-th smallest (the smallest for q = 0), so it is
//! always a value that was observed and never above the maximum. Statistics of records,
//! the model's fit and validation, and the heartbeats' intervals all use it: "p90" means
//! the same in every output.

/// The `q`-quantile (0 ≤ q ≤ 1) of `sorted` (ascending) by nearest rank; None when empty.
pub fn of_sorted<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    // q·n is often a whole number that floating point puts a hair above it (0.9 × 10 =
    // 9.000000000000002): that rank, not the next.
    let rank = (q.clamp(0.0, 1.0) * n as f64 - 1e-9).ceil().max(1.0) as usize;
    Some(sorted[rank.min(n) - 1])
}

/// The `q`-quantile of `values` by nearest rank; None when empty. Nothing is left out:
/// infinities rank at their ends, NaN above +∞ (as [`f64::total_cmp`] orders them).
pub fn of(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    of_sorted(&sorted, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_by_hand() {
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        // ⌈0.9 · 10⌉ = 9th, ⌈0.5 · 10⌉ = 5th, ⌈0.1 · 10⌉ = 1st, ⌈0.91 · 10⌉ = 10th.
        assert_eq!([0.0, 0.1, 0.5, 0.9, 0.91, 1.0].map(|q| of(&ten, q)), [1.0, 1.0, 5.0, 9.0, 10.0, 10.0].map(Some));
        // An even count: the lower middle value, not an average of the two.
        assert_eq!(of(&[4.0, 1.0, 3.0, 2.0], 0.5), Some(2.0));
        // 1000 values: p99 the 990th, p99.9 the 999th.
        let many: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!((of(&many, 0.99), of(&many, 0.999)), (Some(990.0), Some(999.0)));
        assert_eq!(of(&[], 0.5), None);
        assert_eq!(of_sorted(&[7u64], 0.99), Some(7));
    }

    #[test]
    fn nothing_is_dropped() {
        // Two infinite errors of four: the p90 is infinite, the median is not.
        let v = [1.0, f64::INFINITY, 2.0, f64::INFINITY];
        assert_eq!(of(&v, 0.5), Some(2.0));
        assert_eq!(of(&v, 0.9), Some(f64::INFINITY));
    }
}
