//! The session's queue and current track: anyone in the session adds, the adder or the
//! host removes, only the host changes what plays.

use jam_shared::protocol::event::frame;
use jam_shared::protocol::sync::{Playback, Report, Track, TrackInput};
use jam_shared::protocol::{Command, Envelope};
use jam_shared::ErrorCode;
use serde_json::json;

use super::{Effects, Engine};

/// Bound on a session's queue.
pub const MAX_QUEUE: usize = 500;

fn to_track(t: &TrackInput, added_by: &str) -> Track {
    Track {
        id: jam_shared::ids::unique()[..8].to_string(),
        uri: t.uri.clone(),
        name: t.name.clone().unwrap_or_default(),
        artist: t.artist.clone().unwrap_or_default(),
        duration_ms: t.duration_ms,
        added_by: added_by.to_string(),
    }
}

impl Engine {
    pub(super) fn add_track(
        &mut self,
        cmd: &Command,
        sid: &str,
        track: &TrackInput,
        fx: &mut Effects,
    ) {
        let Some((key, rec)) = self.member_session_mut(cmd, sid, fx) else {
            return;
        };
        if rec.queue.len() >= MAX_QUEUE {
            return fx.error(cmd, ErrorCode::BadRequest, "the queue is full");
        }
        let t = to_track(track, &cmd.user_id);
        rec.queue.push(t.clone());
        let seq = rec.next_seq();
        fx.touch(&key);
        let event = frame(
            "track_added",
            &json!({"sessionId": sid, "track": t, "seq": seq}),
        );
        self.keep(&key, seq, &event);
        fx.room_acked(&key, cmd, Envelope::default(), vec![event]);
    }

    pub(super) fn remove_track(
        &mut self,
        cmd: &Command,
        sid: &str,
        track_id: &str,
        fx: &mut Effects,
    ) {
        let Some((key, rec)) = self.member_session_mut(cmd, sid, fx) else {
            return;
        };
        let Some(idx) = rec.queue.iter().position(|t| t.id == track_id) else {
            return fx.error(cmd, ErrorCode::BadRequest, "no such track in the queue");
        };
        if rec.queue[idx].added_by != cmd.user_id && rec.host_id != cmd.user_id {
            return fx.error(
                cmd,
                ErrorCode::Forbidden,
                "Only the host can remove others' tracks",
            );
        }
        rec.queue.remove(idx);
        let seq = rec.next_seq();
        fx.touch(&key);
        let event = frame(
            "track_removed",
            &json!({"sessionId": sid, "trackId": track_id, "seq": seq}),
        );
        self.keep(&key, seq, &event);
        fx.room_acked(&key, cmd, Envelope::default(), vec![event]);
    }

    pub(super) fn track_change(
        &mut self,
        cmd: &Command,
        sid: &str,
        uri: Option<&str>,
        track: Option<&TrackInput>,
        position: Option<f64>,
        fx: &mut Effects,
    ) {
        let Some((key, rec)) = self.member_session_mut(cmd, sid, fx) else {
            return;
        };
        if rec.host_id != cmd.user_id {
            return fx.error(cmd, ErrorCode::Forbidden, "Only the host changes the track");
        }
        let uri = uri
            .map(str::to_string)
            .or_else(|| track.map(|t| t.uri.clone()))
            .expect("validated");
        // A queued track moves from the queue to "now playing".
        let t = match rec.queue.iter().position(|t| t.uri == uri) {
            Some(i) => rec.queue.remove(i),
            None => to_track(
                track.unwrap_or(&TrackInput {
                    uri: uri.clone(),
                    name: None,
                    artist: None,
                    duration_ms: None,
                }),
                &cmd.user_id,
            ),
        };
        rec.current_track = Some(t.clone());
        let last_check = rec.playback.is_none().then_some(rec.last_check_at);
        rec.playback = Some(Playback {
            track_uri: uri,
            report: Report::stamped(cmd, position.unwrap_or(0.0), true, 1.0),
        });
        let seq = rec.next_seq();
        fx.touch(&key);
        let event = frame(
            "track_change",
            &json!({"sessionId": sid, "track": t, "seq": seq}),
        );
        self.keep(&key, seq, &event);
        if let Some(last) = last_check {
            self.arm_sync_check(&key, last); // playing from now on
        }
        fx.room_acked(&key, cmd, Envelope::default(), vec![event]);
        self.broadcast_command(&key, "switch_track", fx);
    }
}
