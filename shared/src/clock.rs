//! The server clock. Every timestamp jam hands out or compares comes from here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on this server's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch, for latency measurements across processes.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
