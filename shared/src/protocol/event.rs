//! Server → client frames. Each is serialized once, by its producer.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::ErrorCode;

/// Serialize a frame `{"type": ty, ...fields}`; `fields` must serialize to an object.
///
/// The fields are written once, straight to bytes, and `"type"` is put in front of them: no
/// `Value` tree on the way (that tree was 4 % of the standalone's CPU in rooms,
/// docs/benchmarks.md, 2026-12-06). Fields that have a `"type"` key themselves (somewhere:
/// the check is a byte search) take the tree, where the fields' own `type` replaces the
/// frame's, as it always did.
pub fn frame<T: Serialize>(ty: &str, fields: &T) -> Bytes {
    FIELDS.with_borrow_mut(|body| {
        body.clear();
        serde_json::to_writer(&mut *body, fields).expect("event serializes");
        let frame = if body.first() != Some(&b'{') || memchr::memmem::find(body, TYPE_KEY).is_some()
        {
            frame_through_value(ty, fields)
        } else {
            // Allocated at its size: a room's recent events are kept (`JAM_RECOVERY_EVENTS`).
            let mut out = Vec::with_capacity(body.len() + ty.len() + 12);
            out.extend_from_slice(b"{\"type\":");
            serde_json::to_writer(&mut out, ty).expect("a string serializes");
            if body.len() > 2 {
                out.push(b',');
                out.extend_from_slice(&body[1..]);
            } else {
                out.push(b'}');
            }
            Bytes::from(out)
        };
        if body.capacity() > FIELDS_KEPT {
            *body = Vec::new();
        }
        frame
    })
}

thread_local! {
    /// The fields of the frame being made, serialized once and copied behind its type.
    static FIELDS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The most [`FIELDS`] keeps between frames (a large snapshot does not stay allocated).
const FIELDS_KEPT: usize = 64 * 1024;

/// A `"type"` key in serialized JSON (inside a string its quotes would be escaped).
const TYPE_KEY: &[u8] = b"\"type\":";

fn frame_through_value<T: Serialize>(ty: &str, fields: &T) -> Bytes {
    let mut v = serde_json::to_value(fields).expect("event serializes");
    let obj = v.as_object_mut().expect("event fields are an object");
    let mut out = serde_json::Map::with_capacity(obj.len() + 1);
    out.insert("type".into(), Value::String(ty.into()));
    out.extend(std::mem::take(obj));
    Bytes::from(serde_json::to_vec(&Value::Object(out)).expect("json serializes"))
}

pub fn error(code: ErrorCode, message: &str) -> Bytes {
    frame("error", &json!({"code": code, "message": message}))
}

pub fn error_with_ref(code: ErrorCode, message: &str, r#ref: Option<&Value>) -> Bytes {
    match r#ref {
        Some(r) => frame(
            "error",
            &json!({"code": code, "message": message, "ref": r}),
        ),
        None => error(code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_path_writes_what_the_value_path_writes() {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Msg<'a> {
            session_id: &'a str,
            text: &'a str,
            seq: u64,
            at: f64,
            tags: Vec<&'a str>,
            none: Option<u8>,
        }
        let m = Msg {
            session_id: "s1",
            text: "a \"type\": not a key, \u{e9}",
            seq: 7,
            at: 1.5,
            tags: vec!["x"],
            none: None,
        };
        assert_eq!(
            frame("new_message", &m),
            frame_through_value("new_message", &m)
        );
        let empty = json!({});
        assert_eq!(&frame("pong", &empty)[..], br#"{"type":"pong"}"#);
        assert_eq!(frame("pong", &empty), frame_through_value("pong", &empty));
    }

    #[test]
    fn fields_with_their_own_type_keep_it_once() {
        let f = frame("sync_request", &json!({"a": 1, "type": "theirs"}));
        assert_eq!(&f[..], br#"{"type":"theirs","a":1}"#);
        let nested = json!({"n": {"type": "inner"}});
        assert_eq!(
            &frame("x", &nested)[..],
            br#"{"type":"x","n":{"type":"inner"}}"#
        );
    }

    #[test]
    fn type_comes_first() {
        let f = frame("user_left", &json!({"userId": "u", "count": 2}));
        assert!(f.starts_with(b"{\"type\":\"user_left\""));
        let e = error(ErrorCode::SessionNotFound, "Session not found");
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(
            v,
            json!({"type":"error","code":"SESSION_NOT_FOUND","message":"Session not found"})
        );
    }
}
