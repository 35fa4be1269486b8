//! Drift on the server's clock: reports are stamped by the gateway with their receive time
//! and the connection's round-trip estimate, so no client clock is ever trusted.

use serde::{Deserialize, Serialize};

pub use jam_shared::protocol::sync::Report;

/// Where the reporter is at `now`: the report was sent about rtt/2 before it arrived,
/// and a playing track moves on at `rate`.
pub fn expected_position(r: &Report, now: i64) -> f64 {
    if !r.is_playing {
        return r.position;
    }
    let elapsed = (now - r.received_at) as f64 + r.rtt_ms / 2.0;
    r.position + elapsed.max(0.0) * r.rate
}

/// participant − (host expected + offset), both evaluated at `now`. Positive = ahead.
pub fn drift_ms(host: &Report, participant: &Report, offset_ms: f64, now: i64) -> f64 {
    expected_position(participant, now) - (expected_position(host, now) + offset_ms)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Excellent,
    Good,
    Fair,
    Poor,
}

pub fn quality(drift_ms: f64) -> Quality {
    let d = drift_ms.abs();
    if d < 100.0 {
        Quality::Excellent
    } else if d < 500.0 {
        Quality::Good
    } else if d < 1000.0 {
        Quality::Fair
    } else {
        Quality::Poor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(position: f64, is_playing: bool, received_at: i64, rtt_ms: f64) -> Report {
        Report {
            position,
            is_playing,
            received_at,
            rtt_ms,
            rate: 1.0,
        }
    }

    #[test]
    fn playing_host_moves_on_including_half_the_rtt() {
        let h = rep(10_000.0, true, 1_000, 40.0);
        assert_eq!(expected_position(&h, 1_000), 10_020.0);
        assert_eq!(expected_position(&h, 3_000), 12_020.0);
    }

    #[test]
    fn paused_host_stays() {
        let h = rep(10_000.0, false, 1_000, 40.0);
        assert_eq!(expected_position(&h, 60_000), 10_000.0);
    }

    #[test]
    fn drift_sign_and_offset() {
        let h = rep(10_000.0, true, 0, 0.0);
        let behind = rep(7_000.0, true, 0, 0.0);
        assert_eq!(drift_ms(&h, &behind, 0.0, 500), -3_000.0);
        // An offset of -3 s makes that participant exactly right.
        assert_eq!(drift_ms(&h, &behind, -3_000.0, 500), 0.0);
        // Huge offsets do not overflow or saturate.
        assert_eq!(drift_ms(&h, &h, 1e9, 0), -1e9);
    }

    #[test]
    fn negative_positions_and_reports_from_the_future_are_harmless() {
        let h = rep(-500.0, true, 10_000, 0.0);
        assert_eq!(expected_position(&h, 10_500), 0.0);
        // A receive time after `now` (clock step) does not move backwards.
        assert_eq!(expected_position(&h, 9_000), -500.0);
    }

    #[test]
    fn quality_bands() {
        assert_eq!(quality(0.0), Quality::Excellent);
        assert_eq!(quality(-99.9), Quality::Excellent);
        assert_eq!(quality(100.0), Quality::Good);
        assert_eq!(quality(-499.0), Quality::Good);
        assert_eq!(quality(500.0), Quality::Fair);
        assert_eq!(quality(999.0), Quality::Fair);
        assert_eq!(quality(1000.0), Quality::Poor);
        assert_eq!(quality(f64::INFINITY), Quality::Poor);
    }
}
