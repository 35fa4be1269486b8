//! Deadlines, checked by a periodic tick on the engine's own thread: session expiry,
//! host grace, and connections of gateways that stopped heartbeating. Every deadline is
//! derived from persisted fields, so a restarted worker re-arms them by loading.

use std::time::Instant;

use jam_shared::hash::Map;

use super::deadlines::Due;
use super::{Effects, Engine, SessionKey};
use crate::model::SessionRecord;

impl Engine {
    /// Fire whatever is due at `now` (ms, server clock). `alive` says whether a gateway
    /// is still heartbeating. The work is what is due, not the number of sessions or
    /// connections: deadlines come from [`Deadlines`], and connections are looked at only
    /// while some gateway that one of them names has gone silent.
    pub fn tick(&mut self, now: i64, alive: &dyn Fn(&str) -> bool, fx: &mut Effects) {
        let mut ends: Vec<(SessionKey, &str)> = Vec::new();
        let mut checks: Vec<SessionKey> = Vec::new();
        let grace = self.cfg.host_grace.as_millis() as i64;
        for (due, key) in self.deadlines.take_due(now) {
            let Some(rec) = self.sessions.get(&key) else {
                continue; // ended meanwhile
            };
            let reason = match due {
                Due::Expiry if now >= rec.expires_at => "session_expired",
                Due::HostGrace
                    if rec
                        .participant(&rec.host_id)
                        .and_then(|h| h.offline_since)
                        .is_some_and(|t| now >= t + grace) =>
                {
                    "host_disconnected"
                }
                Due::SyncCheck => {
                    checks.push(key);
                    continue;
                }
                _ => continue, // the record moved on (a host back within its grace)
            };
            // Both due in one tick (a worker that was away): expiry is the reason given.
            match ends.iter_mut().find(|(k, _)| *k == key) {
                Some(end) if reason == "session_expired" => end.1 = reason,
                Some(_) => {}
                None => ends.push((key, reason)),
            }
        }
        for (key, reason) in ends {
            self.end(&key, reason, None, fx);
        }
        self.expire_typing(now, fx);
        self.expire_direct_typing(now, fx);
        if !self.gateways.dead(alive).is_empty() {
            self.drop_dead_conns(alive, fx);
            self.drop_dead_user_conns(alive, fx);
        }
        self.periodic_checks(now, checks, fx);
    }

    /// Put a session's deadlines in the index (created or loaded).
    pub(super) fn arm(&mut self, key: &SessionKey, rec: &SessionRecord) {
        self.deadlines.at(rec.expires_at, Due::Expiry, key);
        if let Some(t) = rec.participant(&rec.host_id).and_then(|h| h.offline_since) {
            let grace = self.cfg.host_grace.as_millis() as i64;
            self.deadlines.at(t + grace, Due::HostGrace, key);
        }
        if rec.playback.is_some() {
            self.arm_sync_check(key, rec.last_check_at);
        }
    }

    /// The next drift check of a playing session, one interval after `last`. Arming the
    /// same check twice leaves one entry.
    pub(super) fn arm_sync_check(&mut self, key: &SessionKey, last: i64) {
        let interval = self.cfg.sync_interval.as_millis() as i64;
        self.deadlines
            .at(last.saturating_add(interval), Due::SyncCheck, key);
    }

    /// The session connections held by gateways that `alive` says are gone.
    fn drop_dead_conns(&mut self, alive: &dyn Fn(&str) -> bool, fx: &mut Effects) {
        let mut dead_conns: Vec<(SessionKey, String, String)> = Vec::new();
        for (key, rec) in &self.sessions {
            for p in &rec.participants {
                for c in &p.connections {
                    if !alive(&c.gateway) {
                        dead_conns.push((key.clone(), p.id.clone(), c.conn.clone()));
                    }
                }
            }
        }
        for (key, user, conn) in dead_conns {
            tracing::info!(session = %key.1, user = %user, "connection of a silent gateway dropped");
            self.drop_connection(&key, &user, &conn, fx);
        }
    }
}

/// Which gateway nodes have heartbeated lately, judged only while this worker's own bus
/// connection is healthy: a silence the worker caused itself (a Redis outage, a pause)
/// ends nothing. A node id is `<instance>#<boot>`: a heartbeat from a new boot of an
/// instance makes every older boot of it dead at once (its sockets died with it).
pub struct GatewayLiveness {
    /// Since when the bus has been healthy; `None` while it is not.
    healthy_since: Option<Instant>,
    last_seen: Map<String, Instant>,
    /// Instance → its latest boot's node id.
    latest: Map<String, String>,
    dead_after: std::time::Duration,
}

impl GatewayLiveness {
    pub fn new(dead_after: std::time::Duration) -> Self {
        Self {
            healthy_since: Some(Instant::now()),
            last_seen: Map::default(),
            latest: Map::default(),
            dead_after,
        }
    }

    pub fn seen(&mut self, node: &str) {
        let instance = jam_shared::keys::node_instance(node);
        match self.latest.get(instance) {
            Some(n) if n == node => {}
            Some(old) => {
                tracing::info!(old = %old, new = %node, "gateway restarted; its old connections are gone");
                self.last_seen.remove(old);
                self.latest.insert(instance.to_string(), node.to_string());
            }
            None => {
                self.latest.insert(instance.to_string(), node.to_string());
            }
        }
        self.last_seen.insert(node.to_string(), Instant::now());
    }

    /// The bus was lost (or may have dropped heartbeats): stop judging until it is back.
    pub fn bus_unhealthy(&mut self) {
        self.healthy_since = None;
    }

    /// The bus works (again): judging resumes after one full timeout of listening.
    pub fn bus_healthy(&mut self) {
        if self.healthy_since.is_none() {
            self.healthy_since = Some(Instant::now());
        }
    }

    pub fn is_alive(&self, node: &str) -> bool {
        let instance = jam_shared::keys::node_instance(node);
        if self.latest.get(instance).is_some_and(|n| n != node) {
            return false; // superseded by a newer boot of the same instance
        }
        let Some(since) = self.healthy_since else {
            return true; // cannot tell: assume alive
        };
        let heard = self
            .last_seen
            .get(node)
            .copied()
            .unwrap_or(since)
            .max(since);
        heard.elapsed() < self.dead_after
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::GatewayLiveness;
    use std::time::Duration;

    #[test]
    fn a_new_boot_supersedes_the_old_one_at_once() {
        let mut l = GatewayLiveness::new(Duration::from_secs(60));
        l.seen("gw-a#1");
        assert!(l.is_alive("gw-a#1"));
        l.seen("gw-a#2");
        assert!(!l.is_alive("gw-a#1"));
        assert!(l.is_alive("gw-a#2"));
        assert!(l.is_alive("gw-b#1"), "unknown nodes get one timeout");
    }

    #[test]
    fn silence_during_a_bus_outage_kills_nobody() {
        let mut l = GatewayLiveness::new(Duration::from_millis(20));
        l.seen("gw-a#1");
        l.bus_unhealthy();
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.is_alive("gw-a#1"), "unhealthy bus: no judgement");
        l.bus_healthy();
        assert!(l.is_alive("gw-a#1"), "a full timeout of listening first");
        std::thread::sleep(Duration::from_millis(40));
        assert!(!l.is_alive("gw-a#1"), "then silence counts");
    }
}
