//! A token bucket per connection: a burst is fine, a flood gets RATE_LIMITED.

use std::time::Instant;

pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_sec: f64, capacity: f64) -> Self {
        Self {
            tokens: capacity,
            capacity,
            per_sec,
            last: Instant::now(),
        }
    }

    /// `per_sec` sustained, bursts of twice that (what every jam limit promises).
    pub fn with_burst(per_sec: f64) -> Self {
        Self::new(per_sec, per_sec * 2.0)
    }

    pub fn take_at(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0);
        assert!(b.take_at(t0) && b.take_at(t0) && b.take_at(t0));
        assert!(!b.take_at(t0));
        assert!(b.take_at(t0 + Duration::from_millis(100)));
        assert!(!b.take_at(t0 + Duration::from_millis(100)));
    }
}
