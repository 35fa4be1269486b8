//! A connection's token clock, the same for WebSocket and Socket.IO connections:
//! `token_expiring` `JAM_TOKEN_EXPIRY_WARNING_SECS` before the token's `exp`, then the end
//! (unless `refresh_token` brought a fresh one).

use std::time::Duration;

use bytes::Bytes;
use jam_shared::protocol::event::frame;
use serde_json::json;

/// Kept in every connection's task: the warning in milliseconds (a `Duration` is 16 bytes).
pub struct TokenLife {
    expires_at: Option<i64>,
    warning_ms: u32,
    warned: bool,
}

/// What a deadline means when it comes.
pub enum TokenEvent {
    /// Tell the client (the frame to send); the end comes at `exp`.
    Expiring(Bytes),
    /// The token is over: close the connection.
    Expired,
}

impl TokenLife {
    pub fn new(expires_at: Option<i64>, warning: Duration) -> Self {
        Self {
            expires_at,
            warning_ms: warning.as_millis().min(u32::MAX as u128) as u32,
            warned: false,
        }
    }

    /// A fresh token of the same user: the clock starts over.
    pub fn refreshed(&mut self, expires_at: Option<i64>) {
        self.expires_at = expires_at;
        self.warned = false;
    }

    /// When the next deadline falls (the warning, then the expiry); `None`: never.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        let exp = self.expires_at?;
        let at = if self.warned {
            exp
        } else {
            exp - i64::from(self.warning_ms)
        };
        let left = (at - jam_shared::clock::now_ms()).max(0) as u64;
        Some(tokio::time::Instant::now() + Duration::from_millis(left))
    }

    /// The deadline came.
    pub fn fire(&mut self) -> TokenEvent {
        if self.warned {
            return TokenEvent::Expired;
        }
        self.warned = true;
        TokenEvent::Expiring(frame(
            "token_expiring",
            &json!({ "expiresAt": self.expires_at }),
        ))
    }
}

/// Sleep until `deadline`, or for ever without one.
pub async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
