//! Custom events answered by the application's backend (the `job:*` events of
//! dj-system-socketio.md): a frame whose type is in `JAM_RPC_EVENTS` is POSTed to
//! `JAM_RPC_URL` with the caller's identity, signed, and the backend's JSON answer is the
//! frame's reply. Bounded: a timeout per call and a cap on calls in flight per gateway.
//!
//! The call (`application/json`):
//! `{"event": "job:start", "data": {..the frame without type and ref..},
//!   "user": {"id", "name", "tenant"}, "connectionId"}`, with headers `X-Jam-Timestamp`
//! (Unix seconds) and `X-Jam-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use jam_shared::auth::Identity;
use jam_shared::config::RpcSettings;
use jam_shared::ErrorCode;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Semaphore;

/// Why a forwarded call gave no answer; each is a client error code and a metric label.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("too many calls to the application's backend in flight, try again")]
    Busy,
    #[error("the application's backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the application's backend could not be reached")]
    Refused(#[source] reqwest::Error),
    #[error("the application's backend failed (HTTP {0})")]
    Failed(u16),
    /// The backend refused the call itself (4xx): its message goes to the client.
    #[error("{message}")]
    Rejected { status: u16, message: String },
    #[error("the application's backend answered something that is not JSON")]
    BadAnswer(#[source] reqwest::Error),
}

impl RpcError {
    /// What the client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            RpcError::Rejected { status: 401, .. } => ErrorCode::Unauthorized,
            RpcError::Rejected { status: 403, .. } => ErrorCode::Forbidden,
            RpcError::Rejected { status: 429, .. } => ErrorCode::RateLimited,
            RpcError::Rejected { .. } => ErrorCode::BadRequest,
            _ => ErrorCode::Unavailable,
        }
    }

    /// Whether the same call may succeed later.
    pub fn retryable(&self) -> bool {
        !matches!(self, RpcError::Rejected { .. })
    }

    fn label(&self) -> &'static str {
        match self {
            RpcError::Busy => "busy",
            RpcError::Timeout(_) => "timeout",
            RpcError::Refused(_) => "refused",
            RpcError::Failed(_) => "backend_error",
            RpcError::Rejected { .. } => "rejected",
            RpcError::BadAnswer(_) => "bad_answer",
        }
    }
}

pub struct Rpc {
    settings: RpcSettings,
    http: reqwest::Client,
    in_flight: Arc<Semaphore>,
}

impl Rpc {
    pub fn new(settings: RpcSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .expect("an HTTP client");
        let in_flight = Arc::new(Semaphore::new(settings.concurrency));
        Self {
            settings,
            http,
            in_flight,
        }
    }

    /// Whether frames of type `ty` go to the backend.
    pub fn forwards(&self, ty: &str) -> bool {
        self.settings.forwards(ty)
    }

    /// Forward one frame; the backend's JSON answer, or why there is none.
    pub async fn call(
        &self,
        who: &Identity,
        conn: &str,
        event: &str,
        mut frame: Value,
    ) -> Result<Value, RpcError> {
        let started = Instant::now();
        let r = self.forward(who, conn, event, &mut frame).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!("jam_rpc_calls_total", "outcome" => outcome).increment(1);
        metrics::histogram!("jam_rpc_duration_seconds").record(started.elapsed().as_secs_f64());
        r
    }

    async fn forward(
        &self,
        who: &Identity,
        conn: &str,
        event: &str,
        frame: &mut Value,
    ) -> Result<Value, RpcError> {
        let _permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| RpcError::Busy)?;
        let url = self
            .settings
            .url
            .as_deref()
            .expect("forwards() was checked");
        if let Some(o) = frame.as_object_mut() {
            for k in ["type", "ref", "idempotencyKey"] {
                o.remove(k);
            }
        }
        let body = serde_json::to_vec(&json!({
            "event": event,
            "data": frame,
            "user": {"id": who.user_id, "name": who.user_name, "tenant": who.tenant},
            "connectionId": conn,
        }))
        .expect("JSON serializes");
        let ts = (jam_shared::clock::now_ms() / 1000).to_string();
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("x-jam-timestamp", &ts)
            .header("x-jam-event", event);
        if let Some(secret) = &self.settings.secret {
            req = req.header("x-jam-signature", signature(secret, &ts, &body));
        }
        let resp = req.body(body).send().await.map_err(|e| {
            if e.is_timeout() {
                RpcError::Timeout(self.settings.timeout)
            } else {
                RpcError::Refused(e)
            }
        })?;
        let status = resp.status().as_u16();
        if status >= 500 {
            return Err(RpcError::Failed(status));
        }
        let answer: Result<Value, _> = resp.json().await;
        if status >= 400 {
            let message = answer
                .ok()
                .and_then(|v| {
                    v.get("error")
                        .or_else(|| v.get("message"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("the application's backend refused (HTTP {status})"));
            return Err(RpcError::Rejected { status, message });
        }
        answer.map_err(|e| {
            if e.is_timeout() {
                RpcError::Timeout(self.settings.timeout)
            } else {
                RpcError::BadAnswer(e)
            }
        })
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, what the backend recomputes.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_documented_recipe() {
        // Python: hmac.new(b'k3y', b'1764000000.{"a":1}', hashlib.sha256).hexdigest()
        let s = signature("k3y", "1764000000", br#"{"a":1}"#);
        assert_eq!(
            s,
            "v1=aa991615c252f01dce7dee5457365144a09f47d9dab9465acc436269542bf014"
        );
    }

    #[test]
    fn forwards_names_and_prefixes_only_with_a_url() {
        let mut s = RpcSettings {
            url: None,
            events: vec!["job:*".into(), "poll".into()],
            ..Default::default()
        };
        assert!(!s.forwards("job:start"), "no URL, nothing forwarded");
        s.url = Some("http://127.0.0.1:1/".into());
        assert!(s.forwards("job:start"));
        assert!(s.forwards("poll"));
        assert!(!s.forwards("polls"));
        assert!(!s.forwards("send_message"));
    }
}
