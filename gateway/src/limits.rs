//! What one client may use: connections per user and per IP (this gateway), sessions
//! created per user per hour (all gateways, counted on the bus), REST requests per token per
//! second. Per-connection limits (frame rate, DMs, rooms) live with the connection.
//! Every refusal has a code (`RATE_LIMITED`, `LIMIT_EXCEEDED`) and a metric.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use jam_shared::auth::Identity;
use jam_shared::bus::Bus;
use jam_shared::config::Limits;
use jam_shared::ErrorCode;

use crate::http::rest::ApiError;
use crate::ws::ratelimit::TokenBucket;

/// REST buckets kept before idle ones are forgotten.
const MAX_REST_BUCKETS: usize = 50_000;
const HOUR_MS: u64 = 3_600_000;

pub struct Limiter {
    cfg: Limits,
    bus: Arc<dyn Bus>,
    /// (tenant, user), hashed with `user_keys` → open connections. A hash, not the ids:
    /// no copy of them per user (about 130 bytes with the map's slot). Two users would
    /// share a count only if their 64-bit keyed hashes collided (about 3 in 10^8 with a
    /// million users on one gateway), and the key is random per process, so no client can
    /// aim for another's count.
    users: Mutex<HashMap<u64, usize>>,
    user_keys: RandomState,
    ips: Mutex<HashMap<IpAddr, usize>>,
    rest: Mutex<HashMap<String, TokenBucket>>,
}

/// A refusal: its code and what to tell the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub code: ErrorCode,
    pub message: String,
}

impl Refused {
    fn new(code: ErrorCode, limit: &'static str, message: String) -> Self {
        metrics::counter!("jam_limit_refusals_total", "limit" => limit).increment(1);
        Self { code, message }
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        ApiError::new(r.code, r.message)
    }
}

/// A connection counted against a user or an IP until dropped.
pub struct Slot {
    limiter: Arc<Limiter>,
    key: SlotKey,
}

enum SlotKey {
    User(u64),
    Ip(IpAddr),
}

impl Drop for Slot {
    fn drop(&mut self) {
        match &self.key {
            SlotKey::User(k) => release(&self.limiter.users, k),
            SlotKey::Ip(ip) => release(&self.limiter.ips, ip),
        }
    }
}

fn release<K: std::hash::Hash + Eq>(m: &Mutex<HashMap<K, usize>>, k: &K) {
    let mut m = m.lock().unwrap();
    if let Some(n) = m.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            m.remove(k);
        }
    }
}

fn take<K: std::hash::Hash + Eq>(m: &Mutex<HashMap<K, usize>>, k: K, max: usize) -> bool {
    let mut m = m.lock().unwrap();
    let n = m.entry(k).or_insert(0);
    if *n >= max {
        return false;
    }
    *n += 1;
    true
}

impl Limiter {
    pub fn new(cfg: &Limits, bus: Arc<dyn Bus>) -> Self {
        Self {
            cfg: cfg.clone(),
            bus,
            users: Default::default(),
            user_keys: RandomState::new(),
            ips: Default::default(),
            rest: Default::default(),
        }
    }

    pub fn config(&self) -> &Limits {
        &self.cfg
    }

    /// One more connection (WebSocket or Socket.IO) from `ip`; `None` when connections
    /// per address are not limited (`connections_per_ip` 0) or the address is unknown.
    pub fn ip_slot(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Option<Slot>, Refused> {
        let Some(ip) = ip.filter(|_| self.cfg.connections_per_ip > 0) else {
            return Ok(None);
        };
        if !take(&self.ips, ip, self.cfg.connections_per_ip) {
            return Err(Refused::new(
                ErrorCode::LimitExceeded,
                "connections_per_ip",
                format!(
                    "at most {} connections per address",
                    self.cfg.connections_per_ip
                ),
            ));
        }
        Ok(Some(Slot {
            limiter: self.clone(),
            key: SlotKey::Ip(ip),
        }))
    }

    /// One more WebSocket for `who`.
    pub fn user_slot(self: &Arc<Self>, who: &Identity) -> Result<Slot, Refused> {
        let key = self.user_keys.hash_one((&who.tenant, &who.user_id));
        if !take(&self.users, key, self.cfg.connections_per_user) {
            return Err(Refused::new(
                ErrorCode::LimitExceeded,
                "connections_per_user",
                format!(
                    "at most {} connections per user",
                    self.cfg.connections_per_user
                ),
            ));
        }
        Ok(Slot {
            limiter: self.clone(),
            key: SlotKey::User(key),
        })
    }

    /// One more REST request with `token`.
    pub fn rest_request(&self, _who: &Identity, token: &str) -> Result<(), Refused> {
        let rate = self.cfg.rest_per_sec;
        let mut m = self.rest.lock().unwrap();
        if m.len() >= MAX_REST_BUCKETS && !m.contains_key(token) {
            // Buckets refill in two seconds at most: forgetting them all only forgives.
            m.clear();
        }
        let ok = m
            .entry(token.to_string())
            .or_insert_with(|| TokenBucket::with_burst(rate))
            .take();
        if ok {
            Ok(())
        } else {
            Err(Refused::new(
                ErrorCode::RateLimited,
                "rest_per_token",
                format!("at most {rate} requests per second per token"),
            ))
        }
    }

    /// One more session created by `who` this hour (every gateway counts the same key).
    pub async fn session_created(&self, who: &Identity) -> Result<(), Refused> {
        let hour = jam_shared::clock::now_ms() as u64 / HOUR_MS;
        let key = format!(
            "jam:{{{}}}:limit:sessions:{}:{hour}",
            who.tenant, who.user_id
        );
        let n = self
            .bus
            .count_in_window(&key, HOUR_MS)
            .await
            .map_err(|_| Refused {
                code: ErrorCode::Unavailable,
                message: "bus unavailable, try again".into(),
            })?;
        if n > self.cfg.sessions_per_hour {
            return Err(Refused::new(
                ErrorCode::LimitExceeded,
                "sessions_per_hour",
                format!(
                    "at most {} new sessions per hour",
                    self.cfg.sessions_per_hour
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_user: usize, per_ip: usize) -> Arc<Limiter> {
        let cfg = Limits {
            connections_per_user: per_user,
            connections_per_ip: per_ip,
            sessions_per_hour: 2,
            rooms_per_connection: 2,
            rest_per_sec: 1.0,
            body_bytes: 1024,
            dm_per_sec: 1.0,
            rate_strikes: 10,
        };
        Arc::new(Limiter::new(
            &cfg,
            Arc::new(jam_shared::bus::memory::MemoryBus::new()),
        ))
    }

    fn who(u: &str) -> Identity {
        Identity {
            user_id: u.into(),
            user_name: u.into(),
            tenant: "t".into(),
        }
    }

    #[test]
    fn slots_are_counted_and_given_back() {
        let l = limiter(2, 3);
        let a = l.user_slot(&who("a")).unwrap();
        let _b = l.user_slot(&who("a")).unwrap();
        let e = l.user_slot(&who("a")).err().unwrap();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert!(l.user_slot(&who("other")).is_ok(), "others are unaffected");
        let neighbour = Identity {
            tenant: "t2".into(),
            ..who("a")
        };
        assert!(
            l.user_slot(&neighbour).is_ok(),
            "the same id in another tenant"
        );
        drop(a);
        assert!(l.user_slot(&who("a")).is_ok());
        let ip: Option<IpAddr> = Some("127.0.0.9".parse().unwrap());
        let slots: Vec<_> = (0..3).map(|_| l.ip_slot(ip).unwrap()).collect();
        assert!(l.ip_slot(ip).is_err());
        drop(slots);
        assert!(l.ip_slot(ip).is_ok());
    }

    #[tokio::test]
    async fn sessions_per_hour_and_rest_rate() {
        let l = limiter(1, 1);
        assert!(l.session_created(&who("a")).await.is_ok());
        assert!(l.session_created(&who("a")).await.is_ok());
        let e = l.session_created(&who("a")).await.err().unwrap();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert!(l.session_created(&who("b")).await.is_ok());
        assert!(l.rest_request(&who("a"), "tok").is_ok());
        assert!(l.rest_request(&who("a"), "tok").is_ok());
        assert_eq!(
            l.rest_request(&who("a"), "tok").err().unwrap().code,
            ErrorCode::RateLimited
        );
        assert!(l.rest_request(&who("a"), "other-token").is_ok());
    }
}
