//! Deadlines, checked by a periodic tick on the engine's own thread: session expiry,
//! host grace, and connections of gateways that stopped heartbeating. Every deadline is
//! derived from persisted fields, so a restarted worker re-arms them by loading.

use std::collections::HashMap;
use std::time::Instant;

use super::{Effects, Engine, SessionKey};

impl Engine {
    /// Fire whatever is due at `now` (ms, server clock). `alive` says whether a gateway
    /// is still heartbeating.
    pub fn tick(&mut self, now: i64, alive: &dyn Fn(&str) -> bool, fx: &mut Effects) {
        let mut expired: Vec<SessionKey> = Vec::new();
        let mut host_gone: Vec<SessionKey> = Vec::new();
        let mut dead_conns: Vec<(SessionKey, String, String)> = Vec::new();
        let grace = self.cfg.host_grace.as_millis() as i64;
        for (key, rec) in &self.sessions {
            if now >= rec.expires_at {
                expired.push(key.clone());
                continue;
            }
            if let Some(host) = rec.participant(&rec.host_id) {
                if host.offline_since.is_some_and(|t| now >= t + grace) {
                    host_gone.push(key.clone());
                    continue;
                }
            }
            for p in &rec.participants {
                for c in &p.connections {
                    if !alive(&c.gateway) {
                        dead_conns.push((key.clone(), p.id.clone(), c.conn.clone()));
                    }
                }
            }
        }
        for key in expired {
            self.end(&key, "session_expired", None, fx);
        }
        for key in host_gone {
            self.end(&key, "host_disconnected", None, fx);
        }
        self.expire_typing(now, fx);
        self.periodic_checks(now, fx);
        for (key, user, conn) in dead_conns {
            tracing::info!(session = %key.1, user = %user, "connection of a silent gateway dropped");
            self.drop_connection(&key, &user, &conn, fx);
        }
    }
}

/// Which gateways have heartbeated lately. Gateways nobody has heard from since this
/// worker started get the benefit of the doubt for one full timeout.
pub struct GatewayLiveness {
    started: Instant,
    last_seen: HashMap<String, Instant>,
    dead_after: std::time::Duration,
}

impl GatewayLiveness {
    pub fn new(dead_after: std::time::Duration) -> Self {
        Self {
            started: Instant::now(),
            last_seen: HashMap::new(),
            dead_after,
        }
    }

    pub fn seen(&mut self, gateway: &str) {
        self.last_seen.insert(gateway.to_string(), Instant::now());
    }

    pub fn is_alive(&self, gateway: &str) -> bool {
        let since = self.last_seen.get(gateway).copied().unwrap_or(self.started);
        since.elapsed() < self.dead_after
    }
}
