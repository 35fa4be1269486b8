//! Latency percentiles.

/// Sorted latencies, in milliseconds.
pub struct Latencies(Vec<f64>);

impl Latencies {
    pub fn new(mut v: Vec<f64>) -> Self {
        v.sort_by(|x, y| x.total_cmp(y));
        Self(v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile (0..=1); NaN when nothing was measured.
    pub fn pct(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0[((self.0.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let l = Latencies::new((1..=100).rev().map(f64::from).collect());
        assert_eq!(l.pct(0.0), 1.0);
        assert_eq!(l.pct(0.5), 51.0);
        assert_eq!(l.pct(0.99), 99.0);
        assert_eq!(l.pct(1.0), 100.0);
        assert!(Latencies::new(vec![]).pct(0.5).is_nan());
    }
}
