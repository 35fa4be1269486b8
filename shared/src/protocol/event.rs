//! Server → client frames. Each is serialized once, by its producer.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::ErrorCode;

/// Serialize a frame `{"type": ty, ...fields}`; `fields` must serialize to an object.
pub fn frame<T: Serialize>(ty: &str, fields: &T) -> Bytes {
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
