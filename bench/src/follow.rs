//! A room member's view of its room's event order, as docs/protocol.md asks of a client
//! ("Sequence numbers and ordering"): apply each `seq` once and in order, and on a gap or a
//! `resync_required` rejoin with `sinceSeq` and take what was missed from the reply. Pure:
//! it reads frames and says what to do; the member does the I/O and keeps the time.
//!
//! `resync_required` says that a gateway dropped events, not whose: a member waits for its
//! room's next event, which shows whether any of the room's were among them (the next
//! `seq`: none were; a jump: rejoin), and rejoins only if none comes within its own wait
//! (the drop may have been the room's last events). A whole gateway's members told at once
//! then do not all rejoin at once.
//!
//! When a rejoin comes too late for the events still kept, its answer is a snapshot and the
//! last messages; the member pages `load_history` back to its last applied `seq` for the
//! rest, as a client that shows a chat log must.
//!
//! A rejoin's answer crosses the same bus and can be dropped too: one not in after
//! [`REPLY_WAIT`] is asked for again (a new `ref`, the same `sinceSeq`), the wait doubling
//! with each unanswered try. (A `resync_required` meanwhile is no sign of its loss: under
//! load an answer is more often slow than dropped, and asking again at once adds load.)
//! The same holds for the history after a snapshot: a snapshot's `message_history` not in
//! by then is asked for with `load_history`, and a page not answered is asked for again.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// How long a rejoin's first answer is awaited before the rejoin is sent again.
pub const REPLY_WAIT: Duration = Duration::from_secs(3);
/// The most times [`REPLY_WAIT`] doubles.
const REPLY_BACKOFF_MAX: u32 = 3;

/// What a member does with one frame.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A live frame in order (or a duplicate, or not a room event): count it if it is chat.
    Live,
    /// Nothing to count: an event that a pending rejoin's reply will carry, or the reply
    /// itself when it recovered no chat.
    Skip,
    /// Events were missed: send this `join_session` and count nothing yet.
    Rejoin(String),
    /// The chat texts a rejoin brought back (its `missed`, or the `message_history` after a
    /// snapshot, page by page): each counts as received now. With the next page to ask for.
    Recovered(Vec<String>, Option<String>),
}

/// A `load_history` page asked for.
struct Page {
    /// How its `ref` reads in the answer.
    key: String,
    /// The history is needed after this `seq`.
    after: u64,
    /// Where the page ends (`None`: the newest).
    before: Option<u64>,
    /// When it is asked for again if no answer has come.
    by: Instant,
}

pub struct Follower {
    sid: String,
    /// The last `seq` applied.
    last: u64,
    /// The rejoin whose reply is awaited: how its `ref` reads in the answer, the
    /// `sinceSeq` it asked from and when it is sent again if no answer has come.
    awaiting: Option<(String, u64, Instant)>,
    /// A rejoin's reply was a snapshot: its chat after this `seq` comes in the next
    /// `message_history` (asked for if it is not in by the time given), and in pages before it.
    history_after: Option<(u64, Instant)>,
    /// The history page asked for and not answered yet.
    paging: Option<Page>,
    pages: u64,
    /// How long to wait for the room's next event after a `resync_required`.
    wait: Duration,
    /// Requests (rejoins or pages) in a row that got no answer in time.
    unanswered: u32,
    /// Told to resync and not yet shown in order: rejoin at this time.
    suspect_until: Option<Instant>,
    /// Rejoins sent.
    pub rejoins: u64,
    /// Replies that could not recover (a snapshot instead, or an error).
    pub snapshots: u64,
}

impl Follower {
    /// A member whose join reply carried `seq`, and who waits `wait` for its room's next
    /// event after a `resync_required`.
    pub fn new(sid: &str, seq: u64, wait: Duration) -> Self {
        Self {
            sid: sid.to_string(),
            last: seq,
            awaiting: None,
            history_after: None,
            paging: None,
            pages: 0,
            unanswered: 0,
            wait,
            suspect_until: None,
            rejoins: 0,
            snapshots: 0,
        }
    }

    /// Whether an answer (a rejoin's, or a history page's) is still awaited.
    pub fn waiting(&self) -> bool {
        self.awaiting.is_some() || self.paging.is_some() || self.history_after.is_some()
    }

    /// When [`Follower::tick`] is due, if it is.
    pub fn due(&self) -> Option<Instant> {
        self.rejoin_due().into_iter().chain(self.page_due()).min()
    }

    fn rejoin_due(&self) -> Option<Instant> {
        // Never both: a rejoin clears the suspicion, and none is raised while it is awaited.
        self.awaiting.as_ref().map(|a| a.2).or(self.suspect_until)
    }

    fn page_due(&self) -> Option<Instant> {
        let page = self.paging.as_ref().map(|p| p.by);
        page.or(self.history_after.map(|h| h.1))
    }

    /// Rejoin when the wait after a `resync_required` ran out with no event of the room, or
    /// a rejoin's answer has not come in time; ask for history that has not come in time.
    pub fn tick(&mut self, now: Instant) -> Next {
        if self.rejoin_due().is_some_and(|at| now >= at) {
            return self.rejoin(now);
        }
        if self.page_due().is_none_or(|at| now < at) {
            return Next::Skip;
        }
        // The page asked for first; a snapshot's history awaited beside it is left waiting.
        let (after, before) = match self.paging.take() {
            Some(p) => (p.after, p.before),
            None => match self.history_after.take() {
                Some((after, _)) => (after, None),
                None => return Next::Skip,
            },
        };
        self.unanswered_again();
        Next::Recovered(Vec::new(), Some(self.ask_page(after, before, now)))
    }

    /// The `load_history` for the page ending `before` (the newest: `None`), awaited until a
    /// time that doubles with each unanswered request.
    fn ask_page(&mut self, after: u64, before: Option<u64>, now: Instant) -> String {
        self.pages += 1;
        let r = format!("h{}", self.pages);
        let f = serde_json::json!({"type": "load_history", "sessionId": self.sid,
                                   "before": before, "limit": 100, "ref": r});
        self.paging = Some(Page {
            key: ref_key(&r),
            after,
            before,
            by: self.reply_by(now),
        });
        f.to_string()
    }

    /// A request went unanswered: the next one's wait doubles (up to a bound).
    fn unanswered_again(&mut self) {
        self.unanswered = (self.unanswered + 1).min(REPLY_BACKOFF_MAX);
    }

    fn reply_by(&self, now: Instant) -> Instant {
        now + REPLY_WAIT * 2u32.pow(self.unanswered)
    }

    pub fn frame(&mut self, t: &str, now: Instant) -> Next {
        if self.awaiting.is_some() {
            return self.while_rejoining(t, now);
        }
        let kind = type_of(t);
        if kind == Some("resync_required") {
            self.suspect_until.get_or_insert(now + self.wait);
            return Next::Skip;
        }
        if kind == Some("message_history") {
            if let Some(next) = self.history(t, now) {
                return next;
            }
        }
        match seq_of(t, kind) {
            Some(s) if s == self.last + 1 => {
                self.last = s;
                self.suspect_until = None;
                Next::Live
            }
            Some(s) if s > self.last + 1 => self.rejoin(now),
            _ => Next::Live,
        }
    }

    /// Ask for everything after the last applied `seq` (again, if an earlier rejoin's answer
    /// is still awaited: that one is dropped or late, and its `ref` no longer matches).
    fn rejoin(&mut self, now: Instant) -> Next {
        if self.awaiting.is_some() {
            self.unanswered_again();
        }
        self.suspect_until = None;
        self.rejoins += 1;
        let r = format!("r{}", self.rejoins);
        let f = serde_json::json!({"type": "join_session", "sessionId": self.sid,
                                   "sinceSeq": self.last, "ref": r});
        self.awaiting = Some((ref_key(&r), self.last, self.reply_by(now)));
        Next::Rejoin(f.to_string())
    }

    /// Until the reply comes, room events are left to it (its `missed` holds every event
    /// after `sinceSeq`, those arriving meanwhile included).
    fn while_rejoining(&mut self, t: &str, now: Instant) -> Next {
        let Some((key, since, _)) = &self.awaiting else {
            return Next::Skip;
        };
        if !t.contains(key.as_str()) {
            return Next::Skip;
        }
        let since = *since;
        self.awaiting = None;
        self.unanswered = 0;
        let Ok(v) = serde_json::from_str::<Value>(t) else {
            self.snapshots += 1;
            return Next::Skip;
        };
        let Some(seq) = v["session"]["seq"].as_u64() else {
            // An error: the next gap or resync asks again.
            self.snapshots += 1;
            return Next::Skip;
        };
        self.last = seq;
        if v["recovered"] == true {
            let missed = v["missed"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let chat = missed.iter().filter(|e| e["type"] == "new_message");
            return Next::Recovered(chat.filter_map(text_of).collect(), None);
        }
        self.snapshots += 1;
        self.history_after = Some((since, self.reply_by(now)));
        Next::Skip
    }

    /// A snapshot's `message_history`, or a page asked for after it: the chat after the
    /// needed `seq`, and the next page while the oldest message is still after it.
    fn history(&mut self, t: &str, now: Instant) -> Option<Next> {
        let after = match &self.paging {
            Some(p) if t.contains(p.key.as_str()) => p.after,
            _ if !t.contains(r#""ref":"#) => self.history_after.take()?.0,
            _ => return None,
        };
        self.paging = None;
        self.unanswered = 0;
        let v: Value = serde_json::from_str(t).ok()?;
        let messages = v["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let seq = |m: &Value| m["seq"].as_u64().unwrap_or(0);
        let texts = messages
            .iter()
            .filter(|m| seq(m) > after)
            .filter_map(text_of)
            .collect();
        let oldest = messages.iter().map(seq).min();
        let more = v["hasMore"] == true && oldest.is_some_and(|o| o > after + 1);
        let page = more.then(|| self.ask_page(after, oldest, now));
        Some(Next::Recovered(texts, page))
    }
}

/// How the `ref` `r` reads in an answer (made once per request, not per frame read).
fn ref_key(r: &str) -> String {
    format!(r#""ref":"{r}""#)
}

/// A frame's `type`: its first `"type"` key, near the start (jam writes it first, after a
/// `ref` the gateway puts in front; nested ones come later).
fn type_of(t: &str) -> Option<&str> {
    let key = r#""type":""#;
    let rest = &t[t.find(key)? + key.len()..];
    rest.get(..rest.find('"')?)
}

/// A frame's own `seq`. `new_message` (nearly every frame here) ends with it, so a scan
/// finds it; anything else is parsed, its top level only.
fn seq_of(t: &str, kind: Option<&str>) -> Option<u64> {
    if kind == Some("new_message") {
        let key = r#""seq":"#;
        let at = t.rfind(key)? + key.len();
        let end = t[at..].find(|c: char| !c.is_ascii_digit())? + at;
        return t[at..end].parse().ok();
    }
    serde_json::from_str::<Value>(t).ok()?["seq"].as_u64()
}

fn text_of(e: &Value) -> Option<String> {
    e["message"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::{Follower, Next, REPLY_WAIT};
    use serde_json::json;
    use std::time::Duration;
    use tokio::time::Instant;

    const WAIT: Duration = Duration::from_millis(300);

    fn chat(seq: u64, text: &str) -> String {
        json!({"type": "new_message", "sessionId": "K7", "message": text, "seq": seq}).to_string()
    }

    const RESYNC: &str = r#"{"type":"resync_required","sessionId":"K7","reason":"events_dropped"}"#;

    #[test]
    fn events_in_order_are_live_and_a_gap_rejoins_from_the_last_applied() {
        let now = Instant::now();
        let mut f = Follower::new("K7", 4, WAIT);
        assert_eq!(f.frame(&chat(5, "a"), now), Next::Live);
        assert_eq!(
            f.frame(&chat(5, "a"), now),
            Next::Live,
            "a duplicate is the caller's to count"
        );
        assert_eq!(
            f.frame(r#"{"type":"typing","userId":"u"}"#, now),
            Next::Live
        );
        let Next::Rejoin(r) = f.frame(&chat(8, "d"), now) else {
            panic!("a gap must rejoin");
        };
        let r: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(r["sinceSeq"], 5);
        assert_eq!(r["sessionId"], "K7");
        // Until the reply, live events are left to it.
        assert_eq!(f.frame(&chat(9, "e"), now), Next::Skip);
        let reply = json!({"type": "session_update", "ref": r["ref"], "recovered": true,
            "session": {"seq": 9},
            "missed": [json!({"type": "new_message", "message": "b", "seq": 6}),
                       json!({"type": "user_left", "userId": "x", "seq": 7}),
                       json!({"type": "new_message", "message": "c", "seq": 8}),
                       json!({"type": "new_message", "message": "e", "seq": 9})]});
        assert_eq!(
            f.frame(&reply.to_string(), now),
            Next::Recovered(vec!["b".into(), "c".into(), "e".into()], None)
        );
        assert_eq!(f.frame(&chat(9, "e"), now), Next::Live, "already applied");
        assert_eq!(f.frame(&chat(10, "f"), now), Next::Live);
        assert_eq!((f.rejoins, f.snapshots), (1, 0));
    }

    #[test]
    fn after_resync_required_the_next_event_in_order_clears_it() {
        let now = Instant::now();
        let mut f = Follower::new("K7", 2, WAIT);
        assert_eq!(f.frame(RESYNC, now), Next::Skip);
        assert_eq!(f.due(), Some(now + WAIT));
        assert_eq!(f.tick(now + WAIT / 2), Next::Skip, "not due yet");
        assert_eq!(f.frame(&chat(3, "c"), now), Next::Live);
        assert_eq!(f.due(), None);
        assert_eq!(f.tick(now + WAIT * 2), Next::Skip);
        assert_eq!(f.rejoins, 0);
    }

    #[test]
    fn after_resync_required_a_jump_or_silence_rejoins() {
        let now = Instant::now();
        let mut jump = Follower::new("K7", 2, WAIT);
        jump.frame(RESYNC, now);
        assert!(matches!(jump.frame(&chat(5, "e"), now), Next::Rejoin(_)));
        let mut quiet = Follower::new("K7", 2, WAIT);
        quiet.frame(RESYNC, now);
        let Next::Rejoin(r) = quiet.tick(now + WAIT) else {
            panic!("no event within the wait must rejoin");
        };
        assert!(r.contains(r#""sinceSeq":2"#), "{r}");
        assert_eq!(
            quiet.due(),
            Some(now + WAIT + REPLY_WAIT),
            "now the rejoin's answer is awaited"
        );
    }

    fn reply(r: &serde_json::Value, seq: u64, missed: &[(u64, &str)]) -> String {
        let missed: Vec<_> = missed
            .iter()
            .map(|(s, m)| json!({"type": "new_message", "message": m, "seq": s}))
            .collect();
        json!({"ref": r["ref"], "type": "session_update", "recovered": true,
               "session": {"seq": seq}, "missed": missed})
        .to_string()
    }

    fn rejoin_of(n: Next) -> serde_json::Value {
        let Next::Rejoin(r) = n else {
            panic!("expected a rejoin, got {n:?}");
        };
        serde_json::from_str(&r).unwrap()
    }

    #[test]
    fn a_rejoin_not_answered_in_time_is_sent_again_backing_off() {
        let now = Instant::now();
        let mut f = Follower::new("K7", 2, WAIT);
        let first = rejoin_of(f.frame(&chat(4, "d"), now));
        assert_eq!(
            f.due(),
            Some(now + REPLY_WAIT),
            "an answer is awaited, not forever"
        );
        assert!(f.waiting());
        // Told to resync meanwhile: the answer is given its time all the same.
        assert_eq!(f.frame(RESYNC, now), Next::Skip);
        assert_eq!(f.tick(now + REPLY_WAIT / 2), Next::Skip);
        let t1 = now + REPLY_WAIT;
        let second = rejoin_of(f.tick(t1));
        assert_eq!(second["sinceSeq"], 2, "from the last applied, as the first");
        assert_ne!(second["ref"], first["ref"]);
        assert_eq!(f.due(), Some(t1 + REPLY_WAIT * 2), "the wait doubles");
        let t2 = t1 + REPLY_WAIT * 2;
        let third = rejoin_of(f.tick(t2));
        assert_eq!(f.due(), Some(t2 + REPLY_WAIT * 4));
        // Earlier answers, late, are not the one awaited any more.
        assert_eq!(
            f.frame(&reply(&first, 4, &[(3, "c"), (4, "d")]), t2),
            Next::Skip
        );
        assert_eq!(
            f.frame(&reply(&second, 4, &[(3, "c"), (4, "d")]), t2),
            Next::Skip
        );
        assert_eq!(
            f.frame(&reply(&third, 5, &[(3, "c"), (4, "d"), (5, "e")]), t2),
            Next::Recovered(vec!["c".into(), "d".into(), "e".into()], None)
        );
        assert_eq!(f.due(), None);
        assert!(!f.waiting());
        assert_eq!(f.frame(&chat(6, "f"), t2), Next::Live);
        // Answered: the next rejoin starts from the first wait again.
        rejoin_of(f.frame(&chat(9, "i"), t2));
        assert_eq!(f.due(), Some(t2 + REPLY_WAIT));
        assert_eq!(f.rejoins, 4);
    }

    /// A member at seq 2 that saw seq 4, rejoined, and was answered with a snapshot at 40.
    fn answered_by_a_snapshot(now: Instant) -> Follower {
        let mut f = Follower::new("K7", 2, WAIT);
        assert!(matches!(f.frame(&chat(4, "d"), now), Next::Rejoin(_)));
        let snapshot =
            r#"{"type":"session_update","ref":"r1","recovered":false,"session":{"seq":40}}"#;
        assert_eq!(f.frame(snapshot, now), Next::Skip);
        f
    }

    #[test]
    fn a_snapshot_reply_recovers_from_the_history_paged_back_to_the_last_applied() {
        let now = Instant::now();
        let mut f = answered_by_a_snapshot(now);
        let history = json!({"type": "message_history", "sessionId": "K7", "hasMore": true,
            "messages": [{"message": "x", "seq": 39}, {"message": "y", "seq": 40}]});
        let Next::Recovered(texts, Some(page)) = f.frame(&history.to_string(), now) else {
            panic!("the history does not reach back to seq 2: a page must be asked for");
        };
        assert_eq!(texts, ["x", "y"]);
        let page: serde_json::Value = serde_json::from_str(&page).unwrap();
        assert_eq!(
            (page["type"].as_str(), page["before"].as_u64()),
            (Some("load_history"), Some(39))
        );
        // Live events go on meanwhile, from the snapshot's seq.
        assert_eq!(f.frame(&chat(41, "z"), now), Next::Live);
        // As the gateway sends an answer: its `ref` in front.
        let older = json!({"ref": page["ref"], "type": "message_history", "sessionId": "K7", "hasMore": true,
            "messages": [{"message": "a", "seq": 1}, {"message": "b", "seq": 2},
                         {"message": "c", "seq": 3}, {"message": "d", "seq": 4}]});
        assert_eq!(
            f.frame(&older.to_string(), now),
            Next::Recovered(vec!["c".into(), "d".into()], None),
            "what was applied before the gap is not taken again, and no page is needed"
        );
        assert_eq!((f.rejoins, f.snapshots), (1, 1));
    }

    fn page_of(n: Next) -> serde_json::Value {
        let Next::Recovered(texts, Some(page)) = n else {
            panic!("expected a page to ask for, got {n:?}");
        };
        assert!(texts.is_empty(), "{texts:?}");
        serde_json::from_str(&page).unwrap()
    }

    #[test]
    fn history_not_in_by_its_time_is_asked_for_again() {
        let now = Instant::now();
        let mut f = answered_by_a_snapshot(now);
        assert_eq!(
            f.due(),
            Some(now + REPLY_WAIT),
            "the history is awaited, not forever"
        );
        assert_eq!(f.tick(now + REPLY_WAIT / 2), Next::Skip);
        // The snapshot's own `message_history` never came: the newest page is asked for.
        let t1 = now + REPLY_WAIT;
        let newest = page_of(f.tick(t1));
        assert_eq!(newest["type"], "load_history");
        assert!(newest["before"].is_null(), "{newest}");
        assert!(f.waiting());
        assert_eq!(f.due(), Some(t1 + REPLY_WAIT * 2), "the wait doubles");
        let answer = json!({"ref": newest["ref"], "type": "message_history", "sessionId": "K7",
            "hasMore": true, "messages": [{"message": "y", "seq": 40}]});
        let Next::Recovered(texts, Some(older)) = f.frame(&answer.to_string(), t1) else {
            panic!("seq 3 to 39 are still missing: the page before must be asked for");
        };
        assert_eq!(texts, ["y"]);
        let older: serde_json::Value = serde_json::from_str(&older).unwrap();
        assert_eq!(older["before"], 40);
        assert_eq!(
            f.due(),
            Some(t1 + REPLY_WAIT),
            "answered: the first wait again"
        );
        // That page is not answered: the same page again, under a new `ref`.
        let t2 = t1 + REPLY_WAIT;
        let again = page_of(f.tick(t2));
        assert_eq!(again["before"], 40);
        assert_ne!(again["ref"], older["ref"]);
        let late = json!({"ref": older["ref"], "type": "message_history", "sessionId": "K7",
            "hasMore": false, "messages": [{"message": "c", "seq": 3}]});
        assert_eq!(
            f.frame(&late.to_string(), t2),
            Next::Live,
            "the late answer is not the one awaited, and carries no live chat"
        );
        let answer = json!({"ref": again["ref"], "type": "message_history", "sessionId": "K7",
            "hasMore": false, "messages": [{"message": "c", "seq": 3}, {"message": "x", "seq": 39}]});
        assert_eq!(
            f.frame(&answer.to_string(), t2),
            Next::Recovered(vec!["c".into(), "x".into()], None)
        );
        assert!(!f.waiting());
        assert_eq!(f.due(), None);
    }

    #[test]
    fn an_error_reply_lets_the_next_gap_ask_again() {
        let now = Instant::now();
        let mut f = Follower::new("K7", 1, WAIT);
        assert!(matches!(f.frame(&chat(3, "c"), now), Next::Rejoin(_)));
        let error = r#"{"type":"error","ref":"r1","code":"RATE_LIMITED"}"#;
        assert_eq!(f.frame(error, now), Next::Skip);
        assert!(matches!(f.frame(&chat(4, "d"), now), Next::Rejoin(_)));
        assert_eq!((f.rejoins, f.snapshots), (2, 1));
    }
}
