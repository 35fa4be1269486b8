//! Delivery: read the envelope header of each bus message, decide the recipients, and
//! push the producer's bytes to their queues (one allocation shared by all of them).

use std::sync::Arc;

use jam_shared::bus::lag::lagged_channels;
use jam_shared::bus::BusMessage;
use jam_shared::protocol::envelope::{splice_ref, Envelope};
use tokio::sync::mpsc;

use super::table::{ConnHandle, State, Table};
use crate::ws::framing::OutFrame;

/// Route bus messages until the bus closes.
pub async fn run(table: Arc<Table>, mut rx: mpsc::Receiver<BusMessage>) {
    while let Some(msg) = rx.recv().await {
        if &*msg.channel == jam_shared::keys::BUS_RESET {
            // Events were lost while the bus was away, and the worker may have counted this
            // gateway's sockets gone: every client reconnects and gets fresh snapshots.
            let conns = table.connections();
            tracing::warn!(
                connections = conns.len(),
                "bus connection was re-established; asking clients to reconnect"
            );
            metrics::counter!("jam_bus_resets_total").increment(1);
            // Replies come on the inbox, and the rooms of sockets not yet closed share
            // channels with those that reconnect: subscribe again to all of them before
            // anyone reconnects and asks (the subscription keeps no list of its own).
            table.resubscribe_all().await;
            for c in conns {
                c.close(crate::ws::close::SERVICE_RESTART);
            }
            continue;
        }
        if &*msg.channel == jam_shared::keys::BUS_LAGGED {
            resync(&table, lagged_channels(&msg).as_deref());
            continue;
        }
        deliver(&table, &msg);
    }
    tracing::info!("bus subscription closed; dispatcher stopped");
}

/// Messages were dropped on their way to this gateway (`lost`, the notice's channels;
/// `None`: any channel may have lost some). Each member of a room that lost some is told
/// to rejoin with its last `seq` (it gets what it missed, or a snapshot); each connection of
/// a user whose channel lost some is told that direct messages, notifications or contacts'
/// presence may be missing (`"scope": "user"`), to load them again. Other rooms and users
/// go on.
pub fn resync(table: &Table, lost: Option<&[&str]>) {
    // The members are picked under the lock and told after it, as `deliver` does: a push
    // may write to the socket, and a gateway's rooms together hold every connection.
    let told: Vec<(Notice, Vec<ConnHandle>)> = {
        let st = table.state.lock().unwrap();
        let pick = |(channel, ch): (&Arc<str>, &super::table::Channel)| {
            let notice = Notice::of(channel)?;
            Some((notice, ch.members.iter().cloned().collect()))
        };
        match lost {
            None => st.channels.iter().filter_map(pick).collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| st.channels.get_key_value(*n))
                .filter_map(pick)
                .collect(),
        }
    };
    let (mut rooms, mut users, mut connections) = (0usize, 0usize, 0u64);
    for (notice, members) in &told {
        match notice {
            Notice::Room(_) => rooms += 1,
            Notice::User => users += 1,
        }
        let f = OutFrame::text(&notice.frame());
        for h in members {
            if h.push(f.clone()) {
                connections += 1;
            }
        }
    }
    metrics::counter!("jam_resync_required_total").increment(connections);
    tracing::warn!(
        rooms,
        users,
        connections,
        "bus messages were dropped; members told to resync"
    );
}

/// What the members of a channel that lost messages are told.
enum Notice {
    /// A room's members: rejoin with `sinceSeq`.
    Room(String),
    /// A user's connections: load direct messages, notifications and presence again.
    User,
}

impl Notice {
    /// `None` for a channel whose losses nobody can act on: the gateway's inbox (a request
    /// left unanswered is sent again after its timeout, docs/protocol.md).
    fn of(channel: &str) -> Option<Self> {
        if let Some(sid) = jam_shared::keys::room_of(channel) {
            return Some(Notice::Room(sid.to_string()));
        }
        jam_shared::keys::user_of(channel).map(|_| Notice::User)
    }

    fn frame(&self) -> bytes::Bytes {
        let body = match self {
            Notice::Room(sid) => serde_json::json!({"sessionId": sid, "reason": "events_dropped"}),
            Notice::User => serde_json::json!({"scope": "user", "reason": "events_dropped"}),
        };
        jam_shared::protocol::event::frame("resync_required", &body)
    }
}

pub fn deliver(table: &Arc<Table>, msg: &BusMessage) {
    let Some((env, frames)) = decode(msg) else {
        return;
    };
    let channel: &str = &msg.channel;
    let inbox = channel == table.inbox;
    let mut empty = Vec::new();
    let (targets, requester) = {
        let mut s = table.state.lock().unwrap();
        let st = &mut *s;
        admit(st, &env, channel, &mut empty);
        // Recipients are picked under the lock; the writes happen after it (a syscall per
        // socket: a large room would otherwise hold the table for milliseconds).
        let targets = recipients(st, &env, channel, inbox);
        // The connection whose copy carries the `ref` (on a room; on the inbox every copy
        // does), found once: matched to the recipients by address, not by each one's id.
        let requester = env
            .ref_conn
            .as_deref()
            .filter(|_| env.r#ref.is_some() && !inbox)
            .and_then(|c| st.conns.get(c))
            .map(|e| e.handle.clone());
        // Leaves apply after delivery: the leaver sees its own user_left / session_ended.
        remove_leavers(st, &env, channel, &mut empty);
        (targets, requester)
    };
    table.release(empty);
    write(&targets, &frames, &env, inbox, requester.as_ref());
}

/// The envelope and its frames, each encoded once for every recipient; `None` (counted)
/// when the message is malformed.
fn decode(msg: &BusMessage) -> Option<(Envelope, Vec<OutFrame>)> {
    let (env, frames) = match Envelope::decode(&msg.payload) {
        Ok(x) => x,
        Err(e) => {
            metrics::counter!("jam_bus_malformed_total").increment(1);
            tracing::warn!(channel = %msg.channel, error = %e, "malformed bus message");
            return None;
        }
    };
    if frames.iter().any(|f| std::str::from_utf8(f).is_err()) {
        metrics::counter!("jam_bus_malformed_total").increment(1);
        return None;
    }
    if env.ts > 0 {
        let lat = (jam_shared::clock::now_us() - env.ts).max(0) as f64 / 1e6;
        jam_shared::telemetry::observe("jam_delivery_latency_seconds", None, lat);
    }
    Some((env, frames.iter().map(|f| OutFrame::text(f)).collect()))
}

/// Before delivery: a join the worker answered makes its connection a member of
/// `channel`; a refused join (`drop_pending`) forgets the pending connection, and the room
/// when nobody is left in it.
fn admit(st: &mut State, env: &Envelope, channel: &str, empty: &mut Vec<String>) {
    if let (Some(join), Some(ch)) = (env.join_conn.as_deref(), st.channels.get_mut(channel)) {
        if let Some(e) = ch.pending.take(join).and_then(|id| st.conns.get(&id)) {
            ch.members.insert(e.handle.clone());
        }
    }
    let Some(room) = env.drop_pending.as_deref() else {
        return;
    };
    if let (Some(conn), Some(ch)) = (env.conn.as_deref(), st.channels.get_mut(room)) {
        ch.pending.remove(conn);
        if !ch.members.contains(conn) {
            if let Some(e) = st.conns.get_mut(conn) {
                e.leave(room);
            }
        }
        if ch.members.is_empty() && ch.pending.is_empty() {
            empty.push(room.to_string());
        }
    }
}

/// Who gets this message: on the inbox, the one connection it names; on a room, that
/// connection if it is a member, or every member but `except_user`'s.
fn recipients(st: &State, env: &Envelope, channel: &str, inbox: bool) -> Vec<ConnHandle> {
    let mut targets = Vec::new();
    if inbox {
        // Replies for one connection of this gateway: routed by the envelope alone.
        if let Some(entry) = env.conn.as_deref().and_then(|c| st.conns.get(c)) {
            targets.push(entry.handle.clone());
        }
        return targets;
    }
    let Some(ch) = st.channels.get(channel) else {
        return targets;
    };
    match env.conn.as_deref() {
        Some(conn) => targets.extend(ch.members.get(conn).cloned()),
        None => {
            for h in ch.members.iter() {
                let skip = env.except_user.as_deref().is_some_and(|u| &*h.user_id == u);
                if !skip {
                    targets.push(h.clone());
                }
            }
        }
    }
    targets
}

/// After delivery: the connections the message takes out of `channel` (one, a user's, or
/// all when the room closes) stop being members, and the room goes when empty.
fn remove_leavers(st: &mut State, env: &Envelope, channel: &str, empty: &mut Vec<String>) {
    let mut leaving: Vec<Arc<str>> = Vec::new();
    if let Some(ch) = st.channels.get(channel) {
        if env.close_room {
            leaving.extend(ch.members.iter().map(|h| h.id.clone()));
        }
        if let Some(c) = env.leave_conn.as_deref() {
            if let Some(h) = ch.members.get(c) {
                leaving.push(h.id.clone());
            }
        }
        if let Some(u) = env.leave_user.as_deref() {
            leaving.extend(
                ch.members
                    .iter()
                    .filter(|h| &*h.user_id == u)
                    .map(|h| h.id.clone()),
            );
        }
    }
    if leaving.is_empty() {
        return;
    }
    if let Some(ch) = st.channels.get_mut(channel) {
        for id in &leaving {
            ch.members.remove(id);
        }
        if ch.members.is_empty() && ch.pending.is_empty() {
            empty.push(channel.to_string());
        }
    }
    for id in &leaving {
        if let Some(e) = st.conns.get_mut(id) {
            e.leave(channel);
        }
    }
}

/// Push the frames to each recipient, the `ref` spliced into the requester's copy.
fn write(
    targets: &[ConnHandle],
    frames: &[OutFrame],
    env: &Envelope,
    inbox: bool,
    requester: Option<&ConnHandle>,
) {
    // Counted per frame, not per delivery: metric lookups stay off the per-socket loop.
    let mut sent = vec![0u64; frames.len()];
    for h in targets {
        // The `ref` goes on the first frame of the requester's copy (on the inbox, every
        // reply is the requester's).
        let ref_here = match &env.r#ref {
            Some(r) if inbox || requester.is_some_and(|q| q.same(h)) => Some(r),
            _ => None,
        };
        for (i, f) in frames.iter().enumerate() {
            let bytes = match ref_here {
                Some(r) if i == 0 => OutFrame::text(&splice_ref(f.payload(), r)),
                _ => f.clone(),
            };
            if !h.push(bytes) {
                break;
            }
            sent[i] += 1;
        }
    }
    for (f, n) in frames.iter().zip(sent) {
        count_out(f, n);
    }
}

fn count_out(frame: &OutFrame, deliveries: u64) {
    if deliveries == 0 {
        return;
    }
    let ty = frame_type(frame.payload());
    jam_shared::telemetry::count("jam_frames_out_total", Some(("type", ty)), deliveries);
    let bytes = frame.as_bytes().len() as u64 * deliveries;
    jam_shared::telemetry::count("jam_bytes_out_total", None, bytes);
}

/// The event type of a frame the worker serialized, without parsing it: producers write
/// `"type"` first (a spliced `ref` comes before it).
pub fn frame_type(frame: &[u8]) -> &'static str {
    const KNOWN: &[&str] = &[
        "new_message",
        "user_joined",
        "user_left",
        "user_online",
        "user_offline",
        "presence_diff",
        "session_update",
        "session_created",
        "session_ended",
        "message_history",
        "sessions_list",
        "left_session",
        "error",
        "user_typing",
        "active_users",
        "sync_command",
        "sync_status",
        "playback_state",
        "track_added",
        "track_removed",
        "direct_message",
        "resync_required",
    ];
    let needle = b"\"type\":\"";
    let Some(pos) = frame
        .windows(needle.len())
        .take(64)
        .position(|w| w == needle)
    else {
        return "other";
    };
    let rest = &frame[pos + needle.len()..];
    let end = rest.iter().position(|b| *b == b'"').unwrap_or(0);
    let ty = &rest[..end];
    KNOWN
        .iter()
        .find(|k| k.as_bytes() == ty)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_frame_type() {
        assert_eq!(
            frame_type(br#"{"type":"new_message","x":1}"#),
            "new_message"
        );
        assert_eq!(
            frame_type(br#"{"ref":"a","type":"user_left"}"#),
            "user_left"
        );
        assert_eq!(frame_type(br#"{"type":"weird"}"#), "other");
        assert_eq!(frame_type(b"{}"), "other");
    }
}
