//! Opaque bearer tokens (RFC 7662 token introspection): the endpoint says whether a token
//! is active and whose it is. Answers are cached for `JAM_INTROSPECTION_CACHE_SECS`, never
//! past the token's `exp`; the cache is bounded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jam_shared::auth::{identity, AuthError};
use serde::Deserialize;

use super::Verified;

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CACHED: usize = 10_000;

#[derive(Deserialize)]
struct Answer {
    active: bool,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    /// Seconds since the epoch.
    #[serde(default)]
    exp: Option<i64>,
}

pub struct Introspector {
    url: String,
    ttl: Duration,
    client: reqwest::Client,
    cache: std::sync::Mutex<HashMap<String, (Verified, Instant)>>,
}

impl Introspector {
    pub fn new(url: String, ttl: Duration) -> Self {
        Self {
            url,
            ttl,
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .build()
                .expect("a plain HTTP client builds"),
            cache: Default::default(),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let now_ms = jam_shared::clock::now_ms();
        if let Some((v, until)) = self.cache.lock().unwrap().get(token) {
            if Instant::now() < *until && v.expires_at.is_none_or(|e| e > now_ms) {
                metrics::counter!("jam_introspections_total", "outcome" => "cached").increment(1);
                return Ok(v.clone());
            }
        }
        let answer = self.ask(token).await?;
        if !answer.active {
            metrics::counter!("jam_introspections_total", "outcome" => "inactive").increment(1);
            return Err(AuthError::Invalid("token is not active".into()));
        }
        let expires_at = answer.exp.map(|s| s.saturating_mul(1000));
        if expires_at.is_some_and(|e| e <= now_ms) {
            return Err(AuthError::Expired);
        }
        let sub = answer
            .sub
            .or(answer.username.clone())
            .ok_or_else(|| AuthError::Invalid("introspection named no user".into()))?;
        let v = Verified {
            identity: identity(sub, answer.name.or(answer.username), answer.tenant)?,
            expires_at,
        };
        metrics::counter!("jam_introspections_total", "outcome" => "active").increment(1);
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), (v.clone(), Instant::now() + self.ttl));
        Ok(v)
    }

    async fn ask(&self, token: &str) -> Result<Answer, AuthError> {
        let unavailable = |e: reqwest::Error| AuthError::Unavailable(format!("introspection: {e}"));
        let resp = self
            .client
            .post(&self.url)
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(unavailable)?;
        if resp.status().is_server_error() {
            metrics::counter!("jam_introspections_total", "outcome" => "error").increment(1);
            return Err(AuthError::Unavailable(format!(
                "introspection answered {}",
                resp.status()
            )));
        }
        if !resp.status().is_success() {
            return Err(AuthError::Invalid(format!(
                "introspection answered {}",
                resp.status()
            )));
        }
        resp.json().await.map_err(unavailable)
    }
}
