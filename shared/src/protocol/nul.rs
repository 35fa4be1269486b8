//! U+0000 in client text. PostgreSQL's `text` and `jsonb` cannot hold it: a commit that
//! carried one would fail on every retry and hold up its worker's partitions. So the gateway
//! refuses it in whatever a client or backend sends (frames, REST bodies, paths and
//! queries), before anything is queued, with this message.

/// The error a frame or request carrying U+0000 gets (`BAD_REQUEST`).
pub const REFUSED: &str = "text must not contain U+0000 (NUL)";

/// Whether JSON text holds U+0000 in a string (or a key): an escape `\u0000` that is not
/// itself escaped (an even number of backslashes before the one that starts it: `\\u0000`
/// is the six characters a user typed, which are kept). Raw NUL bytes are not valid JSON.
pub fn in_json(json: &[u8]) -> bool {
    memchr::memmem::find_iter(json, b"\\u0000").any(|i| {
        let before = json[..i].iter().rev().take_while(|&&b| b == b'\\').count();
        before % 2 == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_escaped_nul_only() {
        let text = |s: &str| serde_json::to_vec(&serde_json::json!({ "m": s })).unwrap();
        assert!(in_json(&text("a\0b")));
        assert!(in_json(&text("\\\0")), "a backslash, then NUL");
        assert!(!in_json(&text("\\u0000 typed")), "six characters, escaped");
        assert!(!in_json(&text("\\\\u0000")));
        assert!(!in_json(&text("plain")));
        assert!(in_json(br#"{"\u0000": 1}"#), "in a key");
        assert!(in_json(br#"{"m": "\\\u0000"}"#));
        assert!(!in_json(br#"{"m": "\\u0000"}"#));
    }
}
