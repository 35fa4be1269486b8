//! One client frame: parse, validate, answer locally (ping, time_sync) or turn into a
//! command for the worker. Nothing here changes state on bad input.

use jam_shared::auth::Identity;
use jam_shared::keys;
use jam_shared::protocol::action::MAX_PASSWORD_CHARS;
use jam_shared::protocol::event::{error_with_ref, frame};
use jam_shared::protocol::Action;
use jam_shared::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::wire::{ClientFrame, Created};
use crate::state::AppState;

/// A frame's failure: its code, message and the `ref` to answer with.
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub r#ref: Option<Value>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>, r#ref: Option<Value>) -> Self {
        Self {
            code,
            message: message.into(),
            r#ref,
        }
    }

    pub fn to_frame(&self) -> bytes::Bytes {
        error_with_ref(self.code, &self.message, self.r#ref.as_ref())
    }
}

/// What the connection should do with a frame that went well.
pub enum Outcome {
    /// Answer directly with these bytes.
    Reply(bytes::Bytes),
    /// Sent to the worker; its answer comes over the bus.
    Forwarded,
    /// `refresh_token` with a token of the same user: the connection now lives until
    /// `expires_at`; answer with `reply`.
    Refreshed {
        expires_at: Option<i64>,
        reply: bytes::Bytes,
    },
}

/// The per-connection limits a frame is checked against (the frame rate is checked
/// before parsing, by the connection).
pub struct ConnLimits {
    pub dm: crate::ws::ratelimit::TokenBucket,
}

impl ConnLimits {
    pub fn new(st: &AppState) -> Self {
        Self {
            dm: crate::ws::ratelimit::TokenBucket::with_burst(st.cfg.limits.dm_per_sec),
        }
    }
}

/// Parse a frame into its `ref`, its type and the action, without side effects.
pub fn parse(text: &str) -> Result<(Option<Value>, String, Value), FrameError> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        FrameError::new(ErrorCode::BadRequest, format!("malformed JSON: {e}"), None)
    })?;
    let r#ref = v.get("ref").cloned();
    if !v.is_object() {
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            "a frame must be a JSON object",
            r#ref,
        ));
    }
    let ty = match v.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            return Err(FrameError::new(
                ErrorCode::BadRequest,
                "missing field `type`",
                r#ref,
            ))
        }
    };
    Ok((r#ref, ty, seed_envelope(v)))
}

/// Frame types whose fields a seed wraps, and the wrapper ([`seed_envelope`]).
const WRAPPED: [(&str, &str); 4] = [
    ("typing_start", "data"),
    ("typing_stop", "data"),
    ("message", "data"),
    // jam-server-reference.md: `{"type": "create_session", "session": {"name": ...}}`.
    ("create_session", "session"),
];

/// Seeds that wrap a frame's fields: ws-chat-server.md in `data` (`{"type":
/// "typing_start", "data": {"friendId": ...}}`), the reference server's `create_session`
/// in `session`. For those frame types the fields come out (what the frame has beside the
/// wrapper wins; a client's `hostId` or `participants` in it are ignored like any unknown
/// field).
fn seed_envelope(mut v: Value) -> Value {
    let ty = v.get("type").and_then(Value::as_str).unwrap_or_default();
    let Some((_, field)) = WRAPPED.iter().find(|(t, _)| *t == ty) else {
        return v;
    };
    let o = v.as_object_mut().expect("checked to be an object");
    if let Some(Value::Object(data)) = o.remove(*field) {
        for (k, val) in data {
            o.entry(k).or_insert(val);
        }
    }
    v
}

/// Parse a client frame into its wire type: only what a client may set.
pub fn to_frame(ty: &str, v: Value, r#ref: &Option<Value>) -> Result<ClientFrame, FrameError> {
    ClientFrame::deserialize(v).map_err(|e| {
        let msg = e.to_string();
        let msg = if msg.starts_with("unknown variant") {
            format!("unknown type `{ty}`")
        } else {
            msg
        };
        FrameError::new(ErrorCode::BadRequest, msg, r#ref.clone())
    })
}

/// The `ref` of a raw frame, for an error about a frame that was not handled.
pub fn ref_of(text: &str) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct OnlyRef {
        r#ref: Option<Value>,
    }
    serde_json::from_str::<OnlyRef>(text).ok()?.r#ref
}

pub async fn handle(
    st: &AppState,
    who: &Identity,
    conn: &str,
    rtt_ms: Option<f64>,
    limits: &mut ConnLimits,
    text: &str,
) -> Result<Outcome, FrameError> {
    if text.len() > st.cfg.max_frame_bytes {
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            format!(
                "frame too large ({} bytes, limit {})",
                text.len(),
                st.cfg.max_frame_bytes
            ),
            None,
        ));
    }
    if jam_shared::protocol::nul::in_json(text.as_bytes()) {
        let refused = jam_shared::protocol::nul::REFUSED;
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            refused,
            ref_of(text),
        ));
    }
    let (r#ref, key, client) = match read(st, who, conn, text).await? {
        Read::Done(outcome) => return Ok(outcome),
        Read::Frame(r#ref, key, client) => (r#ref, key, client),
    };
    let failed = |(c, m): (ErrorCode, String)| FrameError::new(c, m, r#ref.clone());
    let (action, password) = build(st, client).map_err(failed)?;
    check_limits(st, who, conn, limits, &action)
        .await
        .map_err(|r| FrameError::new(r.code, r.message, r#ref.clone()))?;
    let action = hash_password(action, password).await.map_err(failed)?;
    if let Action::CreateSession {
        session_id: Some(id),
        ..
    }
    | Action::JoinSession { session_id: id, .. } = &action
    {
        // Subscribed before the worker answers, so no event after the snapshot is missed.
        st.table
            .add_pending(conn, &keys::room_channel(&who.tenant, id))
            .await
            .map_err(|_| {
                FrameError::new(ErrorCode::Unavailable, "bus unavailable", r#ref.clone())
            })?;
    }
    st.send_keyed(who, conn, r#ref.clone(), rtt_ms, action, key.as_deref())
        .await
        .map_err(|_| {
            FrameError::new(ErrorCode::Unavailable, "bus unavailable, try again", r#ref)
        })?;
    Ok(Outcome::Forwarded)
}

/// A frame read: answered already, or a client frame with its `ref` and idempotency key.
enum Read {
    Done(Outcome),
    Frame(Option<Value>, Option<String>, ClientFrame),
}

/// Read a frame: the common one in one pass ([`plain`]), anything else through its JSON
/// tree, where the frames the gateway answers itself are answered.
async fn read(st: &AppState, who: &Identity, conn: &str, text: &str) -> Result<Read, FrameError> {
    if let Some((r#ref, ty, key, client)) = plain(text) {
        jam_shared::telemetry::count("jam_frames_in_total", Some(("type", ty)), 1);
        return Ok(Read::Frame(r#ref, key, client));
    }
    let (r#ref, ty, v) = parse(text)?;
    jam_shared::telemetry::count("jam_frames_in_total", Some(("type", known_type(&ty))), 1);
    let reply = |f| Ok(Read::Done(Outcome::Reply(f)));
    match ty.as_str() {
        "ping" => {
            return reply(with_ref(
                frame("pong", &json!({"serverTime": jam_shared::clock::now_ms()})),
                &r#ref,
            ))
        }
        "time_sync" => {
            let client_time = v.get("clientTime").cloned().unwrap_or(Value::Null);
            let f = frame(
                "time_sync",
                &json!({"clientTime": client_time, "serverTime": jam_shared::clock::now_ms()}),
            );
            return reply(with_ref(f, &r#ref));
        }
        "authenticate" => {
            return Err(FrameError::new(
                ErrorCode::BadRequest,
                "already authenticated",
                r#ref,
            ))
        }
        "refresh_token" => return refresh(st, who, &v, r#ref).await.map(Read::Done),
        t if known_type(t) == "unknown" && st.rpc.forwards(t) => {
            return forward(st, who, conn, ty, v, r#ref).map(Read::Done);
        }
        _ => {}
    }
    let (key, client) = wire(&ty, v, &r#ref)?;
    Ok(Read::Frame(r#ref, key, client))
}

/// A parsed frame's idempotency key and wire type: the tree path's last step.
pub(crate) fn wire(
    ty: &str,
    v: Value,
    r#ref: &Option<Value>,
) -> Result<(Option<String>, ClientFrame), FrameError> {
    let key = idempotency_key(v.get("idempotencyKey"), r#ref)?;
    Ok((key, to_frame(ty, v, r#ref)?))
}

/// Frame types the gateway answers itself ([`read`]).
const ANSWERED_HERE: [&str; 4] = ["ping", "time_sync", "authenticate", "refresh_token"];

/// The common frame (a known type, neither [`ANSWERED_HERE`] nor [`WRAPPED`]) straight
/// into its wire type: one pass for its type, `ref` and idempotency key, one for its
/// fields, and no `Value` tree (building and walking that tree was 8 % of the standalone's instructions in
/// rooms, docs/benchmarks.md, 2026-12-07). `None` for anything else or anything wrong: the
/// tree path then reads it and explains what is wrong, as it always did.
pub(crate) fn plain(
    text: &str,
) -> Option<(Option<Value>, &'static str, Option<String>, ClientFrame)> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type", borrow)]
        ty: std::borrow::Cow<'a, str>,
        #[serde(default, deserialize_with = "present")]
        r#ref: Option<Value>,
        #[serde(rename = "idempotencyKey", default, deserialize_with = "present")]
        key: Option<Value>,
    }
    /// A field that is there, `null` included (as `Value::get` sees it).
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        Value::deserialize(d).map(Some)
    }
    // A JSON array would read as a sequence of fields.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let head: Head = serde_json::from_str(text).ok()?;
    let ty = known_type(&head.ty);
    if ty == "unknown" || ANSWERED_HERE.contains(&ty) || WRAPPED.iter().any(|(t, _)| *t == ty) {
        return None;
    }
    let key = idempotency_key(head.key.as_ref(), &None).ok()?;
    let client = serde_json::from_str::<ClientFrame>(text).ok()?;
    Some((head.r#ref, ty, key, client))
}

/// A custom event for the application's backend: the call runs on its own task (bounded
/// by `JAM_RPC_CONCURRENCY` and `JAM_RPC_TIMEOUT_MS`), so the connection's other frames
/// go on; its answer comes back as `{"type": <event>, "ref", "result"}` or an error with the
/// frame's `ref`.
fn forward(
    st: &AppState,
    who: &Identity,
    conn: &str,
    event: String,
    data: Value,
    r#ref: Option<Value>,
) -> Result<Outcome, FrameError> {
    let Some(handle) = st.table.handle(conn) else {
        return Err(FrameError::new(
            ErrorCode::Unavailable,
            "connection closing",
            r#ref,
        ));
    };
    let (rpc, who, conn) = (st.rpc.clone(), who.clone(), conn.to_string());
    st.tracker.spawn(async move {
        let reply = match rpc.call(&who, &conn, &event, data).await {
            Ok(result) => with_ref(frame(&event, &json!({"result": result})), &r#ref),
            Err(e) => {
                tracing::debug!(error = %e, event, "forwarded call failed");
                FrameError::new(e.code(), e.to_string(), r#ref).to_frame()
            }
        };
        handle.push_json(&reply);
    });
    Ok(Outcome::Forwarded)
}

/// `refresh_token` {token}: a fresh token of the same user and tenant extends the
/// connection's life; anyone else's token is refused and changes nothing.
async fn refresh(
    st: &AppState,
    who: &Identity,
    v: &Value,
    r#ref: Option<Value>,
) -> Result<Outcome, FrameError> {
    let Some(token) = v.get("token").and_then(Value::as_str) else {
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            "missing field `token`",
            r#ref,
        ));
    };
    let fresh = st.auth.verify(token).await.map_err(|e| {
        let code = if e.retryable() {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Unauthorized
        };
        FrameError::new(code, e.to_string(), r#ref.clone())
    })?;
    if fresh.identity.user_id != who.user_id || fresh.identity.tenant != who.tenant {
        return Err(FrameError::new(
            ErrorCode::Forbidden,
            "the token belongs to another user",
            r#ref,
        ));
    }
    let reply = frame("token_refreshed", &json!({"expiresAt": fresh.expires_at}));
    Ok(Outcome::Refreshed {
        expires_at: fresh.expires_at,
        reply: with_ref(reply, &r#ref),
    })
}

/// Limits that depend on what the frame does: DMs per second, sessions created per hour,
/// rooms per connection.
async fn check_limits(
    st: &AppState,
    who: &Identity,
    conn: &str,
    limits: &mut ConnLimits,
    action: &Action,
) -> Result<(), crate::limits::Refused> {
    let lim = st.limits.config();
    match action {
        Action::DirectMessage { .. } if !limits.dm.take() => Err(crate::limits::Refused {
            code: ErrorCode::RateLimited,
            message: format!("at most {} direct messages per second", lim.dm_per_sec),
        }),
        Action::CreateSession { .. } => {
            rooms_left(st, conn, None)?;
            st.limits.session_created(who).await
        }
        Action::JoinSession { session_id, .. } => {
            rooms_left(st, conn, Some(&keys::room_channel(&who.tenant, session_id)))
        }
        _ => Ok(()),
    }
}

/// Whether `conn` may be in one more room (joining `channel` again is always fine).
fn rooms_left(
    st: &AppState,
    conn: &str,
    channel: Option<&str>,
) -> Result<(), crate::limits::Refused> {
    let max = st.limits.config().rooms_per_connection;
    if channel.is_some_and(|c| st.table.is_in(conn, c)) || st.table.room_count(conn) < max {
        return Ok(());
    }
    metrics::counter!("jam_limit_refusals_total", "limit" => "rooms_per_connection").increment(1);
    Err(crate::limits::Refused {
        code: ErrorCode::LimitExceeded,
        message: format!("at most {max} sessions per connection"),
    })
}

/// Longest accepted `idempotencyKey`.
pub const MAX_IDEMPOTENCY_KEY: usize = 64;

/// A frame's optional `idempotencyKey`: a retry with the same key (same user) is the same
/// command, so a chat message resent after a lost acknowledgement is stored once and
/// acknowledged again with its original `seq`.
fn idempotency_key(
    key: Option<&Value>,
    r#ref: &Option<Value>,
) -> Result<Option<String>, FrameError> {
    match key {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(k))
            if !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            Ok(Some(k.clone()))
        }
        Some(_) => Err(FrameError::new(
            ErrorCode::BadRequest,
            "idempotencyKey: 1-64 characters of A-Z a-z 0-9 - _ . :",
            r#ref.clone(),
        )),
    }
}

/// The internal command for a client frame, checked field by field: a new session gets
/// its id here. Its password comes back apart, to be hashed once the frame has passed the
/// limits too (nothing is hashed for a frame that will be refused).
pub fn build(
    st: &AppState,
    frame: ClientFrame,
) -> Result<(Action, Option<String>), (ErrorCode, String)> {
    let password = frame.create_password().map(str::to_string);
    if password
        .as_ref()
        .is_some_and(|p| p.chars().count() > MAX_PASSWORD_CHARS)
    {
        return Err((
            ErrorCode::BadRequest,
            "password must be at most 128 characters".into(),
        ));
    }
    // Only a new session needs an id (drawn here, not for every frame).
    let session_id = match frame {
        ClientFrame::CreateSession { .. } => jam_shared::ids::session_code(st.cfg.session_id_len),
        _ => String::new(),
    };
    let created = Created {
        session_id,
        password_hash: None,
    };
    let action = frame.into_action(created);
    action.validate()?;
    Ok((action, password))
}

/// A new session's password becomes its hash here, off the async threads: the plain text
/// never reaches the bus.
pub async fn hash_password(
    mut action: Action,
    password: Option<String>,
) -> Result<Action, (ErrorCode, String)> {
    if let (Some(pw), Action::CreateSession { password_hash, .. }) = (password, &mut action) {
        let hash = tokio::task::spawn_blocking(move || jam_shared::password::hash(&pw))
            .await
            .map_err(|_| (ErrorCode::Internal, "hashing failed".to_string()))?
            .map_err(|_| (ErrorCode::Internal, "hashing failed".to_string()))?;
        *password_hash = Some(hash);
    }
    Ok(action)
}

/// [`build`] then [`hash_password`].
pub async fn prepare(st: &AppState, frame: ClientFrame) -> Result<Action, (ErrorCode, String)> {
    let (action, password) = build(st, frame)?;
    hash_password(action, password).await
}

fn with_ref(f: bytes::Bytes, r#ref: &Option<Value>) -> bytes::Bytes {
    match r#ref {
        Some(r) => jam_shared::protocol::envelope::splice_ref(&f, r),
        None => f,
    }
}

/// Bounded label values: a client cannot mint metric series with made-up types.
fn known_type(ty: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "create_session",
        "join_session",
        "join_show",
        "leave_show",
        "typing_start",
        "typing_stop",
        "message",
        "get_presence",
        "notification:read",
        "notification:read-all",
        "notification:delete",
        "notification:list",
        "leave_session",
        "get_sessions",
        "end_session",
        "send_message",
        "ping",
        "time_sync",
        "authenticate",
        "get_active_users",
        "typing",
        "load_history",
        "direct_message",
        "load_direct",
        "playback_state",
        "playback_report",
        "track_change",
        "request_sync",
        "sync_request",
        "sync_response",
        "set_offset",
        "add_track",
        "remove_track",
        "get_state",
        "refresh_token",
    ];
    KNOWN
        .iter()
        .find(|k| **k == ty)
        .copied()
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_wrappers_are_unwrapped() {
        let (_, _, v) = parse(
            r#"{"type":"create_session","session":{"name":"n","hostId":"mallory","participants":[1]},"ref":1}"#,
        )
        .ok()
        .unwrap();
        let f = to_frame("create_session", v, &None).ok().unwrap();
        assert!(matches!(f, ClientFrame::CreateSession { ref name, .. } if name == "n"));
        let (_, _, v) = parse(r#"{"type":"typing_start","data":{"friendId":"b"},"friendId":"c"}"#)
            .ok()
            .unwrap();
        assert_eq!(v["friendId"], "c", "the frame's own field wins");
        let (_, _, v) = parse(r#"{"type":"send_message","data":{"message":"x"}}"#)
            .ok()
            .unwrap();
        assert!(
            v.get("message").is_none(),
            "other types are left as they are"
        );
    }

    /// The tree path, as `read` takes it for a frame `plain` does not.
    fn through_the_tree(text: &str) -> (Option<Value>, Option<String>, ClientFrame) {
        let (r#ref, ty, v) = parse(text).ok().unwrap();
        let (key, client) = wire(&ty, v, &r#ref).ok().unwrap();
        (r#ref, key, client)
    }

    #[test]
    fn the_one_pass_path_reads_what_the_tree_reads() {
        let same = [
            r#"{"type":"send_message","sessionId":"s1","message":"hi \"there\"","ref":7}"#,
            r#"{"type":"send_message","sessionId":"s1","message":"m","idempotencyKey":"k-1","ref":"r"}"#,
            r#"{"type":"send_message","sessionId":"s1","message":"m","ref":null,"idempotencyKey":null}"#,
            r#"{"ref":{"a":[1,2]},"type":"join_session","sessionId":"s2","sinceSeq":4}"#,
            r#"{"type":"sync_request","sessionId":"s","position":3.5,"extra":{"x":1},"ref":2}"#,
            r#"{"type":"send\u005fmessage","sessionId":"s1","message":"escaped type"}"#,
            r#"  {"type":"leave_session","sessionId":"s1","unknown":true}"#,
            r#"{"type":"send_message","sessionId":5,"message":"a number as an id"}"#,
        ];
        for text in same {
            let (r#ref, ty, key, client) = plain(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!((r#ref, key, client), through_the_tree(text), "{text}");
            assert_eq!(ty, known_type(&parse(text).ok().unwrap().1));
        }
        let left_to_the_tree = [
            r#"{"type":"typing_start","data":{"sessionId":"s"}}"#,
            r#"{"type":"create_session","session":{"name":"n"}}"#,
            r#"{"type":"ping","ref":1}"#,
            r#"{"type":"job:custom","x":1}"#,
            r#"{"type":"send_message","type":"join_session","sessionId":"s","message":"m"}"#,
            r#"{"type":"send_message","sessionId":"s","message":"m","idempotencyKey":"no spaces"}"#,
            r#"{"type":"send_message","sessionId":"s","message":5}"#,
            r#"["send_message","s","m"]"#,
            r#"{"sessionId":"s"}"#,
        ];
        for text in left_to_the_tree {
            assert!(plain(text).is_none(), "{text}");
        }
    }

    #[test]
    fn parse_errors_keep_ref() {
        assert!(parse("{not json").is_err());
        let e = parse(r#"{"ref":5}"#).err().unwrap();
        assert_eq!(e.r#ref, Some(json!(5)));
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(parse("[1,2]").is_err());
    }

    #[test]
    fn unknown_and_internal_types_are_rejected() {
        let (r, ty, v) = parse(r#"{"type":"fly","ref":"x"}"#).ok().unwrap();
        let e = to_frame(&ty, v, &r).err().unwrap();
        assert_eq!(e.message, "unknown type `fly`");
        let (r, ty, v) = parse(r#"{"type":"disconnect","sessionId":"ABCDEF"}"#)
            .ok()
            .unwrap();
        assert_eq!(
            to_frame(&ty, v, &r).err().unwrap().message,
            "unknown type `disconnect`"
        );
    }

    #[test]
    fn missing_fields_are_bad_requests() {
        let (r, ty, v) = parse(r#"{"type":"send_message","sessionId":"ABCDEF"}"#)
            .ok()
            .unwrap();
        let e = to_frame(&ty, v, &r).err().unwrap();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("message"), "{}", e.message);
    }
}
