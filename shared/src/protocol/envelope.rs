//! The bus message format: one header line a gateway reads to route, then the frames,
//! one per line, already serialized by the worker. A gateway never parses the frames:
//! it writes the same bytes to every local member (it only splices a `ref` into the
//! copy for the connection that asked).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Deliver only to this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<String>,
    /// Deliver to everyone but this user's connections (typing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_user: Option<String>,
    /// The connection whose copy of the first frame carries `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_conn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<serde_json::Value>,
    /// Room channel: this connection becomes a member (before delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_conn: Option<String>,
    /// Room channel: these stop being members (after delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_conn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_user: Option<String>,
    /// Room channel: the room is gone; every member leaves (after delivery).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close_room: bool,
    /// User channel: `conn`'s pending join of this room channel failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_pending: Option<String>,
    /// Publish time (µs, producer clock) for the delivery-latency histogram.
    #[serde(default)]
    pub ts: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("no header line")]
    NoHeader,
    #[error("bad header: {0}")]
    BadHeader(#[from] serde_json::Error),
}

impl Envelope {
    /// Header line + frames, newline-separated. JSON from serde never holds a raw newline.
    pub fn encode(&self, frames: &[Bytes]) -> Bytes {
        let header = serde_json::to_vec(self).expect("envelope serializes");
        let len = header.len() + frames.iter().map(|f| f.len() + 1).sum::<usize>();
        let mut out = BytesMut::with_capacity(len);
        out.put_slice(&header);
        for f in frames {
            out.put_u8(b'\n');
            out.put_slice(f);
        }
        out.freeze()
    }

    /// Splits a bus payload into its header and its frames (zero-copy slices).
    pub fn decode(payload: &Bytes) -> Result<(Envelope, Vec<Bytes>), EnvelopeError> {
        let nl = payload.iter().position(|b| *b == b'\n');
        let (head, rest) = match nl {
            Some(i) => (payload.slice(..i), Some(payload.slice(i + 1..))),
            None => (payload.clone(), None),
        };
        if head.is_empty() {
            return Err(EnvelopeError::NoHeader);
        }
        let env: Envelope = serde_json::from_slice(&head)?;
        let mut frames = Vec::new();
        if let Some(mut rest) = rest {
            while !rest.is_empty() {
                let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
                frames.push(rest.slice(..end));
                rest = if end < rest.len() {
                    rest.slice(end + 1..)
                } else {
                    Bytes::new()
                };
            }
        }
        Ok((env, frames))
    }
}

/// `{"type":...}` → `{"ref":<ref>,"type":...}` without parsing the frame.
pub fn splice_ref(frame: &[u8], r#ref: &serde_json::Value) -> Bytes {
    let r = serde_json::to_vec(r#ref).expect("json value serializes");
    let mut out = BytesMut::with_capacity(frame.len() + r.len() + 8);
    out.put_slice(b"{\"ref\":");
    out.put_slice(&r);
    if frame.len() > 2 {
        out.put_u8(b',');
    }
    out.put_slice(frame.get(1..).unwrap_or(b"}"));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roundtrip() {
        let env = Envelope {
            conn: Some("c".into()),
            ts: 5,
            ..Default::default()
        };
        let frames = vec![
            Bytes::from_static(b"{\"type\":\"a\"}"),
            Bytes::from_static(b"{\"type\":\"b\"}"),
        ];
        let bytes = env.encode(&frames);
        let (e2, f2) = Envelope::decode(&bytes).unwrap();
        assert_eq!(e2, env);
        assert_eq!(f2, frames);
    }

    #[test]
    fn header_only() {
        let bytes = Envelope::default().encode(&[]);
        let (_, f) = Envelope::decode(&bytes).unwrap();
        assert!(f.is_empty());
        assert!(Envelope::decode(&Bytes::from_static(b"\n{}")).is_err());
        assert!(Envelope::decode(&Bytes::from_static(b"nope\n{}")).is_err());
    }

    #[test]
    fn splices_ref() {
        let out = splice_ref(b"{\"type\":\"x\",\"a\":1}", &json!("r-1"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, json!({"ref":"r-1","type":"x","a":1}));
        let out = splice_ref(b"{}", &json!(7));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            json!({"ref":7})
        );
    }
}
