//! Reconnect recovery: the last room events of each session, by seq, so a member that
//! rejoins with `sinceSeq` gets exactly what it missed. Pure: no I/O, no clocks.

use std::collections::VecDeque;

use crate::model::ChatMessage;
use bytes::Bytes;

/// The most recent durable events of one room, contiguous in seq, up to a bound.
#[derive(Debug, Default)]
pub struct EventLog {
    /// Every event with a seq above `floor` (and up to the room's seq) is in `events`.
    floor: i64,
    events: VecDeque<(i64, Bytes)>,
}

impl EventLog {
    /// A log that knows nothing before `seq` (a new room, or one just loaded).
    pub fn starting_at(seq: i64) -> Self {
        Self {
            floor: seq,
            events: VecDeque::new(),
        }
    }

    /// A loaded room's log, seeded with its latest chat messages when they are the room's
    /// latest events without a gap (the store keeps messages, not the other events).
    pub fn from_messages(
        seq: i64,
        messages: &[ChatMessage],
        frame: impl Fn(&ChatMessage) -> Bytes,
    ) -> Self {
        let mut run = 0;
        let mut next = seq;
        for m in messages.iter().rev() {
            if m.seq != next || next == 0 {
                break;
            }
            run += 1;
            next -= 1;
        }
        let mut log = Self::starting_at(next);
        for m in &messages[messages.len() - run..] {
            log.events.push_back((m.seq, frame(m)));
        }
        log
    }

    /// Keep `frame`, the room's event number `seq`, dropping the oldest beyond `cap`.
    pub fn push(&mut self, seq: i64, frame: Bytes, cap: usize) {
        let last = self.events.back().map_or(self.floor, |e| e.0);
        if seq != last + 1 {
            // A seq was used without its frame being kept: nothing before it can be
            // recovered any more.
            self.events.clear();
            self.floor = seq - 1;
        }
        self.events.push_back((seq, frame));
        while self.events.len() > cap {
            if let Some((s, _)) = self.events.pop_front() {
                self.floor = s;
            }
        }
    }

    /// The room's events after `since`, in order, when all of them are kept and the room
    /// is now at `current`; `None` when the client has to start over from a snapshot.
    pub fn since(&self, since: i64, current: i64) -> Option<Vec<Bytes>> {
        let last = self.events.back().map_or(self.floor, |e| e.0);
        if since < self.floor || since > current || last != current {
            return None;
        }
        Some(
            self.events
                .iter()
                .filter(|(s, _)| *s > since)
                .map(|(_, f)| f.clone())
                .collect(),
        )
    }
}

/// `reply` (a JSON object) with `"missed": [events...]` appended, the events' bytes as
/// they were published.
pub fn with_missed(reply: &Bytes, events: &[Bytes]) -> Bytes {
    let body = reply.strip_suffix(b"}").unwrap_or(reply);
    let mut out =
        Vec::with_capacity(reply.len() + 12 + events.iter().map(|e| e.len() + 1).sum::<usize>());
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"missed\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: i64) -> Bytes {
        Bytes::from(format!("e{seq}"))
    }

    fn texts(v: Vec<Bytes>) -> Vec<String> {
        v.into_iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn missed_events_ride_inside_the_reply() {
        let reply = Bytes::from_static(br#"{"type":"session_update","recovered":true}"#);
        let events = [
            Bytes::from_static(br#"{"seq":3}"#),
            Bytes::from_static(br#"{"seq":4}"#),
        ];
        let v: serde_json::Value = serde_json::from_slice(&with_missed(&reply, &events)).unwrap();
        assert_eq!(v["recovered"], true);
        assert_eq!(v["missed"], serde_json::json!([{"seq": 3}, {"seq": 4}]));
        let none: serde_json::Value = serde_json::from_slice(&with_missed(&reply, &[])).unwrap();
        assert_eq!(none["missed"], serde_json::json!([]));
    }

    #[test]
    fn returns_exactly_the_missed_events() {
        let mut log = EventLog::starting_at(0);
        for s in 1..=5 {
            log.push(s, f(s), 10);
        }
        assert_eq!(texts(log.since(2, 5).unwrap()), ["e3", "e4", "e5"]);
        assert_eq!(log.since(5, 5).unwrap().len(), 0);
        assert_eq!(texts(log.since(0, 5).unwrap()).len(), 5);
    }

    #[test]
    fn refuses_what_it_no_longer_keeps() {
        let mut log = EventLog::starting_at(0);
        for s in 1..=10 {
            log.push(s, f(s), 4);
        }
        assert!(log.since(5, 10).is_none(), "e6 is gone");
        assert_eq!(texts(log.since(6, 10).unwrap()), ["e7", "e8", "e9", "e10"]);
        // A client ahead of the room (another room under the same id) starts over.
        assert!(log.since(11, 10).is_none());
    }

    #[test]
    fn a_seq_without_a_frame_cuts_the_log() {
        let mut log = EventLog::starting_at(0);
        log.push(1, f(1), 10);
        log.push(2, f(2), 10);
        // seq 3 was used by an event that is not kept.
        log.push(4, f(4), 10);
        assert!(log.since(1, 4).is_none());
        assert_eq!(texts(log.since(3, 4).unwrap()), ["e4"]);
        // And the room moving on without the log knowing makes it refuse too.
        assert!(log.since(3, 5).is_none());
    }

    #[test]
    fn a_loaded_room_recovers_its_trailing_run_of_messages() {
        let msg = |seq| ChatMessage {
            id: format!("m{seq}"),
            tenant: "t".into(),
            session_id: "S".into(),
            user_id: "u".into(),
            user_name: "U".into(),
            message: String::new(),
            created_at: 0,
            seq,
        };
        let frame = |m: &ChatMessage| Bytes::from(m.id.clone());
        // Seq 4 was a join (not stored as a message): only 5..=7 are recoverable.
        let msgs = [msg(2), msg(3), msg(5), msg(6), msg(7)];
        let log = EventLog::from_messages(7, &msgs, frame);
        assert!(log.since(3, 7).is_none());
        assert_eq!(texts(log.since(4, 7).unwrap()), ["m5", "m6", "m7"]);
        // The room moved on after its last message: nothing is recoverable.
        let log = EventLog::from_messages(8, &msgs, frame);
        assert!(log.since(7, 8).is_none());
        assert_eq!(log.since(8, 8).unwrap().len(), 0);
    }
}
