//! The correction decision, with hysteresis everywhere so nothing oscillates: a dead band
//! inside which nothing happens, a seek threshold with a cool-down after each seek, gentle
//! rate changes for clients that can do them, and a participant whose seeks keep failing
//! marked lagging instead of being seeked forever.

pub use jam_shared::protocol::sync::CorrectionState;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncParams {
    /// |drift| above which a seek is sent.
    pub seek_threshold_ms: f64,
    /// Rate correction starts above this |drift| ...
    pub rate_enter_ms: f64,
    /// ... and stops (back to 1.0) below this one.
    pub rate_exit_ms: f64,
    /// Time to absorb the drift at the commanded rate.
    pub rate_horizon_ms: f64,
    pub max_rate_delta: f64,
    /// Rate changes smaller than this are not worth a command.
    pub rate_step: f64,
    /// No correction this long after a seek (the player needs time to settle).
    pub seek_cooldown_ms: i64,
    /// Seeks that did not bring the drift under the threshold before lagging is declared.
    pub max_failed_seeks: u32,
}

impl Default for SyncParams {
    fn default() -> Self {
        Self {
            seek_threshold_ms: 1000.0,
            rate_enter_ms: 40.0,
            rate_exit_ms: 15.0,
            rate_horizon_ms: 8_000.0,
            max_rate_delta: 0.05,
            rate_step: 0.003,
            seek_cooldown_ms: 3_000,
            max_failed_seeks: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Correction {
    None,
    /// Seek to the target position.
    Seek,
    /// Play at this rate.
    Rate(f64),
}

/// Decide what to do about `drift` (ms, positive = ahead) at `now`.
pub fn decide(
    st: &mut CorrectionState,
    drift: f64,
    can_rate: bool,
    now: i64,
    p: &SyncParams,
) -> Correction {
    if !drift.is_finite() {
        return Correction::None;
    }
    let abs = drift.abs();
    if let Some(t) = st.last_seek_at {
        if now - t < p.seek_cooldown_ms {
            return Correction::None;
        }
    }
    if abs > p.seek_threshold_ms {
        if st.lagging {
            return Correction::None;
        }
        if st.last_seek_at.is_some() {
            // The previous seek did not land.
            st.failed_seeks += 1;
            if st.failed_seeks >= p.max_failed_seeks {
                st.lagging = true;
                return Correction::None;
            }
        }
        st.last_seek_at = Some(now);
        // A seek lands on the target at rate 1.0: any rate correction starts over.
        st.rate_active = false;
        st.rate = 1.0;
        return Correction::Seek;
    }
    // Under the threshold: the last seek (if any) worked.
    st.failed_seeks = 0;
    st.lagging = false;
    st.last_seek_at = None;
    if !can_rate {
        return Correction::None;
    }
    let engage = if st.rate_active {
        abs > p.rate_exit_ms
    } else {
        abs > p.rate_enter_ms
    };
    let target = if engage {
        (1.0 - drift / p.rate_horizon_ms).clamp(1.0 - p.max_rate_delta, 1.0 + p.max_rate_delta)
    } else {
        1.0
    };
    st.rate_active = engage;
    if (target - st.rate).abs() < p.rate_step && !(target == 1.0 && st.rate != 1.0) {
        return Correction::None;
    }
    st.rate = target;
    Correction::Rate(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> SyncParams {
        SyncParams::default()
    }

    #[test]
    fn dead_band_does_nothing() {
        let mut st = CorrectionState::new();
        assert_eq!(decide(&mut st, 30.0, true, 0, &p()), Correction::None);
        assert_eq!(decide(&mut st, -30.0, false, 0, &p()), Correction::None);
    }

    #[test]
    fn large_drift_seeks_then_cools_down() {
        let mut st = CorrectionState::new();
        assert_eq!(decide(&mut st, -3000.0, true, 0, &p()), Correction::Seek);
        // Inside the cool-down nothing happens, however bad it looks.
        assert_eq!(decide(&mut st, -3000.0, true, 1000, &p()), Correction::None);
        // After it, a landed seek clears the state.
        assert_eq!(decide(&mut st, 10.0, true, 5000, &p()), Correction::None);
        assert_eq!(st.last_seek_at, None);
        assert_eq!(st.failed_seeks, 0);
    }

    #[test]
    fn seeks_that_keep_failing_mark_lagging() {
        let mut st = CorrectionState::new();
        let mut seeks = 0;
        for i in 0..10 {
            if decide(&mut st, -5000.0, false, i * 10_000, &p()) == Correction::Seek {
                seeks += 1;
            }
        }
        assert_eq!(seeks, 3, "the first seek plus two retries");
        assert!(st.lagging);
        // Recovering clears lagging.
        decide(&mut st, 0.0, false, 200_000, &p());
        assert!(!st.lagging);
    }

    #[test]
    fn rate_has_hysteresis() {
        let mut st = CorrectionState::new();
        // 30 ms: below the entry band.
        assert_eq!(decide(&mut st, 30.0, true, 0, &p()), Correction::None);
        // 200 ms ahead: slow down.
        let Correction::Rate(r) = decide(&mut st, 200.0, true, 0, &p()) else {
            panic!()
        };
        assert!((0.95..1.0).contains(&r));
        // 30 ms: still engaged (exit band is 15), a small change is not re-sent.
        let d = decide(&mut st, 30.0, true, 0, &p());
        assert!(matches!(d, Correction::Rate(r) if r < 1.0));
        // 10 ms: back to 1.0, once.
        assert_eq!(decide(&mut st, 10.0, true, 0, &p()), Correction::Rate(1.0));
        assert_eq!(decide(&mut st, 10.0, true, 0, &p()), Correction::None);
    }

    #[test]
    fn rate_is_bounded_and_not_for_seek_only_clients() {
        let mut st = CorrectionState::new();
        assert_eq!(
            decide(&mut st, -900.0, true, 0, &p()),
            Correction::Rate(1.05)
        );
        let mut st = CorrectionState::new();
        assert_eq!(decide(&mut st, -900.0, false, 0, &p()), Correction::None);
    }

    #[test]
    fn nan_is_ignored() {
        let mut st = CorrectionState::new();
        assert_eq!(decide(&mut st, f64::NAN, true, 0, &p()), Correction::None);
    }
}
