//! Playback sync inside the engine: host reports set the reference, participant reports
//! are checked against it, and the pure [`crate::sync`] logic decides the corrections.

use bytes::Bytes;
use jam_shared::clock::now_ms;
use jam_shared::protocol::event::frame;
use jam_shared::protocol::sync::{CorrectionState, ParticipantPlayback, Playback, Report, Track};
use jam_shared::protocol::{Command, Envelope};
use jam_shared::ErrorCode;
use serde_json::json;

use super::{Effects, Engine, SessionKey};
use crate::sync::{decide, drift_ms, expected_position, quality, Correction};

/// One `sync_command` frame: `position` holds at server time `timestamp`.
pub(super) fn sync_command(
    sid: &str,
    action: &str,
    pb: &Playback,
    position: f64,
    rate: f64,
    now: i64,
) -> Bytes {
    metrics::counter!("jam_sync_commands_total", "action" => action.to_string()).increment(1);
    frame(
        "sync_command",
        &json!({
            "sessionId": sid, "action": action, "trackUri": pb.track_uri, "position": position.round(),
            "isPlaying": pb.report.is_playing, "playbackRate": rate, "timestamp": now,
        }),
    )
}

impl Engine {
    pub(super) fn playback_state(
        &mut self,
        cmd: &Command,
        sid: &str,
        uri: &str,
        position: f64,
        playing: bool,
        fx: &mut Effects,
    ) {
        let threshold = self.cfg.sync.seek_threshold_ms;
        let Some((key, rec)) = self.member_session_mut(cmd, sid, fx) else {
            return;
        };
        if rec.host_id != cmd.user_id {
            return fx.error(cmd, ErrorCode::Forbidden, "Only the host controls playback");
        }
        let report = Report::stamped(cmd, position, playing, 1.0);
        let prev = rec.playback.replace(Playback {
            track_uri: uri.to_string(),
            report,
        });
        let action = match prev {
            None => Some(if playing { "play" } else { "pause" }),
            Some(p) if p.track_uri != uri => Some("switch_track"),
            Some(p) if p.report.is_playing != playing => {
                Some(if playing { "play" } else { "pause" })
            }
            // A jump the clock does not explain is the host seeking.
            Some(p)
                if (position - expected_position(&p.report, cmd.received_at)).abs() > threshold =>
            {
                Some("seek")
            }
            Some(_) => None,
        };
        if rec.current_track.as_ref().is_none_or(|t| t.uri != uri) {
            rec.current_track = Some(Track {
                id: jam_shared::ids::unique()[..8].to_string(),
                uri: uri.to_string(),
                name: String::new(),
                artist: String::new(),
                duration_ms: None,
                added_by: cmd.user_id.clone(),
            });
        }
        fx.touch(&key);
        if let Some(a) = action {
            self.broadcast_command(&key, a, fx);
        }
    }

    /// Host-driven change (track, play/pause, seek): everyone at once, then individual
    /// follow-ups for participants with an offset.
    pub(super) fn broadcast_command(&mut self, key: &SessionKey, action: &str, fx: &mut Effects) {
        let now = now_ms();
        let Some(rec) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(pb) = rec.playback.clone() else {
            return;
        };
        let target = expected_position(&pb.report, now);
        let host = rec.host_id.clone();
        let mut offsets = Vec::new();
        for p in rec.participants_mut().filter(|p| p.id != host) {
            // A fresh start: no cool-down, no rate, no failure count from the old position.
            p.correction = CorrectionState::new();
            p.last_sync = Some(now);
            if p.offset_ms != 0.0 {
                offsets.push((p.id.clone(), p.offset_ms));
            }
        }
        let env = Envelope {
            except_user: Some(host),
            ..Default::default()
        };
        fx.room(
            key,
            env,
            vec![sync_command(&key.1, action, &pb, target, 1.0, now)],
        );
        for (user, offset) in offsets {
            let f = sync_command(&key.1, "seek", &pb, target + offset, 1.0, now);
            self.send_to_participant(key, &user, vec![f], fx);
        }
    }

    pub(super) fn playback_report(
        &mut self,
        cmd: &Command,
        sid: &str,
        uri: &str,
        position: f64,
        playing: bool,
        fx: &mut Effects,
    ) {
        let Some((key, rec)) = self.member_session_mut(cmd, sid, fx) else {
            return;
        };
        if rec.host_id == cmd.user_id {
            // The host's position is playback_state; its own report has nothing to sync to.
            return;
        }
        let p = rec.participant_mut(&cmd.user_id).expect("member");
        p.playback = Some(ParticipantPlayback {
            track_uri: uri.to_string(),
            report: Report::stamped(cmd, position, playing, p.correction.rate),
            conn: cmd.conn.clone(),
        });
        // Not persisted: reports arrive every few seconds per participant, and writing the
        // session row for each would cost O(participants) bytes per report. After a
        // restart the next report rebuilds what this one held.
        self.check(&key, &cmd.user_id, false, fx);
    }

    pub(super) fn request_sync(&mut self, cmd: &Command, sid: &str, fx: &mut Effects) {
        if self.member_session(cmd, sid, fx).is_none() {
            return;
        }
        let key = (cmd.tenant.clone(), sid.to_string());
        if !self.check(&key, &cmd.user_id, true, fx) {
            let f = frame(
                "sync_status",
                &json!({"sessionId": sid, "drift": null, "lastSync": null, "quality": null, "reason": "no playback yet"}),
            );
            fx.reply(cmd, vec![f]);
        }
    }

    pub(super) fn set_offset(
        &mut self,
        cmd: &Command,
        sid: &str,
        offset_ms: f64,
        fx: &mut Effects,
    ) {
        let Some((key, rec)) = self.member_session_mut(cmd, sid, fx) else {
            return;
        };
        let p = rec.participant_mut(&cmd.user_id).expect("member");
        p.offset_ms = offset_ms;
        // The next check starts from the new target: no cool-down inherited.
        p.correction = CorrectionState::new();
        fx.touch(&key);
        let now = now_ms();
        fx.reply(
            cmd,
            vec![frame(
                "offset_updated",
                &json!({"sessionId": sid, "offsetMs": offset_ms, "updatedAt": now}),
            )],
        );
        self.check(&key, &cmd.user_id, false, fx);
    }

    /// What a joiner needs to start in sync, if anything is playing.
    pub(super) fn joiner_sync_frame(&mut self, key: &SessionKey, user: &str) -> Option<Bytes> {
        let now = now_ms();
        let rec = self.sessions.get_mut(key)?;
        let pb = rec.playback.clone()?;
        if rec.host_id == user {
            return None;
        }
        let p = rec.participant_mut(user)?;
        p.correction = CorrectionState::new();
        p.last_sync = Some(now);
        let target = expected_position(&pb.report, now) + p.offset_ms;
        Some(sync_command(&key.1, "switch_track", &pb, target, 1.0, now))
    }

    /// Check one participant against the host. `force` (request_sync) always sends the
    /// target. Returns false when there is nothing to check against.
    pub(super) fn check(
        &mut self,
        key: &SessionKey,
        user: &str,
        force: bool,
        fx: &mut Effects,
    ) -> bool {
        let now = now_ms();
        let params = self.cfg.sync;
        let Some(rec) = self.sessions.get_mut(key) else {
            return false;
        };
        let Some(host) = rec.playback.clone() else {
            return false;
        };
        if rec.host_id == user {
            return false;
        }
        let Some(p) = rec.participant_mut(user) else {
            return false;
        };
        let target = expected_position(&host.report, now) + p.offset_ms;
        let mut frames = Vec::new();
        p.last_sync = Some(now);
        match p.playback.as_ref() {
            Some(pp)
                if pp.track_uri == host.track_uri
                    && pp.report.is_playing == host.report.is_playing =>
            {
                let drift = drift_ms(&host.report, &pp.report, p.offset_ms, now);
                metrics::histogram!("jam_sync_drift_seconds").record(drift.abs() / 1000.0);
                let mut decision = decide(&mut p.correction, drift, p.can_rate, now, &params);
                if force && !matches!(decision, Correction::Rate(_)) {
                    decision = Correction::Seek;
                    p.correction.last_seek_at = Some(now);
                }
                match decision {
                    Correction::Seek => {
                        frames.push(sync_command(&key.1, "seek", &host, target, 1.0, now))
                    }
                    Correction::Rate(r) => {
                        frames.push(sync_command(&key.1, "rate", &host, target, r, now))
                    }
                    Correction::None => {}
                }
                frames.push(frame(
                    "sync_status",
                    &json!({
                        "sessionId": key.1, "drift": drift.round(), "lastSync": now,
                        "quality": quality(drift), "lagging": p.correction.lagging,
                    }),
                ));
            }
            // Wrong track, wrong play state or nothing reported yet: put it right.
            Some(pp) => {
                let action = if pp.track_uri != host.track_uri {
                    "switch_track"
                } else if host.report.is_playing {
                    "play"
                } else {
                    "pause"
                };
                p.correction = CorrectionState::new();
                frames.push(sync_command(&key.1, action, &host, target, 1.0, now));
            }
            None if force => frames.push(sync_command(
                &key.1,
                "switch_track",
                &host,
                target,
                1.0,
                now,
            )),
            None => return false,
        }
        self.send_to_participant(key, user, frames, fx);
        true
    }

    /// Frames for every connection one participant has in the room.
    pub(super) fn send_to_participant(
        &mut self,
        key: &SessionKey,
        user: &str,
        frames: Vec<Bytes>,
        fx: &mut Effects,
    ) {
        let Some(p) = self.sessions.get(key).and_then(|r| r.participant(user)) else {
            return;
        };
        let conns: Vec<String> = p.connections.iter().map(|c| c.conn.clone()).collect();
        for c in conns {
            fx.room(
                key,
                Envelope {
                    conn: Some(c),
                    ..Default::default()
                },
                frames.clone(),
            );
        }
    }

    /// The periodic check: every participant of every session whose interval has passed.
    /// The drift checks that came due: a playing session whose last check is an interval
    /// old is checked and armed again; one checked meanwhile is armed for its next check
    /// (the same entry, if it is already there).
    pub(super) fn periodic_checks(&mut self, now: i64, due: Vec<SessionKey>, fx: &mut Effects) {
        let interval = self.cfg.sync_interval.as_millis() as i64;
        for key in due {
            let Some(rec) = self.sessions.get_mut(&key) else {
                continue;
            };
            if rec.playback.is_none() {
                continue;
            }
            if now - rec.last_check_at < interval {
                let last = rec.last_check_at;
                self.arm_sync_check(&key, last);
                continue;
            }
            rec.last_check_at = now;
            let users: Vec<String> = rec
                .participants
                .iter()
                .filter(|p| p.playback.is_some())
                .map(|p| p.id.clone())
                .collect();
            for u in users {
                self.check(&key, &u, false, fx);
            }
            fx.touch(&key);
            self.arm_sync_check(&key, now);
        }
    }

    pub(super) fn get_state(&mut self, cmd: &Command, sid: &str, fx: &mut Effects) {
        let Some(rec) = self.member_session(cmd, sid, fx) else {
            return;
        };
        let now = now_ms();
        let host = rec.participant(&rec.host_id);
        let me = rec.participant(&cmd.user_id).expect("member");
        let current = rec.current_track.as_ref().map(|t| {
            let pb = rec.playback.as_ref().filter(|p| p.track_uri == t.uri);
            json!({
                "id": t.id, "uri": t.uri, "name": t.name, "artist": t.artist, "duration": t.duration_ms,
                "position": pb.map(|p| expected_position(&p.report, now).round()),
                "isPlaying": pb.map(|p| p.report.is_playing).unwrap_or(false),
            })
        });
        let f = frame(
            "session_state",
            &json!({
                "sessionId": sid,
                "host": host.map(|h| json!({"userId": h.id, "userName": h.name, "isOnline": h.is_online()})),
                "client": {"userId": me.id, "userName": me.name, "offsetMs": me.offset_ms, "role": me.role},
                "currentTrack": current,
                "queue": rec.queue,
                "lastSync": me.last_sync,
                "serverTime": now,
            }),
        );
        fx.reply(cmd, vec![f]);
    }
}
