//! The bodies of the fuzz targets (`fuzz/`), also replayed over the checked-in corpus by
//! `gateway/tests/fuzz_corpus.rs` on the stable toolchain. Each takes arbitrary bytes and
//! must never panic, whatever they hold.

use bytes::Bytes;
use jam_shared::protocol::envelope::{splice_ref, Envelope};
use serde_json::json;

use crate::http::{api, publish};
use crate::ws::frames;
use crate::ws::wire::Created;

/// A client frame as the gateway reads it: parse, wire type, internal action, validation;
/// what the one-pass path reads, the tree reads the same; an action from a frame that passed
/// the U+0000 check holds none.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = frames::ref_of(text);
    let one_pass = frames::plain(text);
    let Ok((r#ref, ty, v)) = frames::parse(text) else {
        assert!(one_pass.is_none(), "read in one pass, refused by the tree");
        return;
    };
    let tree = frames::wire(&ty, v, &r#ref);
    if let Some((one_ref, _, one_key, one_frame)) = one_pass {
        // The one-pass path reads only what the tree reads, and the same way.
        let Ok((key, frame)) = &tree else {
            panic!("read in one pass, refused by the tree");
        };
        assert_eq!((&one_ref, &one_key, &one_frame), (&r#ref, key, frame));
    }
    if let Ok((_, f)) = tree {
        let _ = f.create_password();
        let action = f.into_action(Created {
            session_id: "FUZZ23".into(),
            password_hash: None,
        });
        // What the frame's U+0000 check lets through holds none (decision 32): PostgreSQL
        // could not store it, and a commit carrying it would fail on every retry.
        if action.validate().is_ok() && !jam_shared::protocol::nul::in_json(data) {
            let v = serde_json::to_value(&action).expect("an action serializes");
            assert!(
                !holds_nul(&v),
                "U+0000 got past the frame's check: {text:?}"
            );
        }
    }
}

/// Whether a string or key anywhere in `v` holds U+0000.
fn holds_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A bus message as a gateway decodes it, and a `ref` spliced into each frame.
pub fn envelope(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    if let Ok((_, frames)) = Envelope::decode(&payload) {
        for f in frames {
            let _ = splice_ref(&f, &json!("r-1"));
        }
    }
    let _ = splice_ref(data, &json!(7));
}

/// Every REST request body and query the API accepts.
pub fn rest_bodies(data: &[u8]) {
    let _ = serde_json::from_slice::<api::CreateBody>(data);
    let _ = serde_json::from_slice::<api::JoinBody>(data);
    let _ = serde_json::from_slice::<api::OffsetBody>(data);
    let _ = serde_json::from_slice::<publish::PublishBody>(data);
    if let Ok(q) = std::str::from_utf8(data) {
        let _ = serde_urlencoded_like(q);
    }
}

/// Query strings (`?before=&limit=`) go through axum's `Query`, i.e. serde_urlencoded.
fn serde_urlencoded_like(q: &str) -> Option<()> {
    let uri: axum::http::Uri = format!("/x?{q}").parse().ok()?;
    let _ = axum::extract::Query::<api::Page>::try_from_uri(&uri);
    let _ = axum::extract::Query::<api::Cursor>::try_from_uri(&uri);
    let _ = axum::extract::Query::<api::With>::try_from_uri(&uri);
    Some(())
}
