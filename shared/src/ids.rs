//! Identifiers: short session codes people can read aloud, and unique ids for the rest.

/// No 0/O, 1/I/L, 5/S, 2/Z, 8/B, U/V: codes survive being read over a call.
pub const SESSION_ALPHABET: &[u8] = b"ACDEFGHJKMNPQRTWXY34679";

/// A random session code of `len` characters from [`SESSION_ALPHABET`].
pub fn session_code(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in uuid::Uuid::new_v4().as_bytes() {
            // Rejection sampling keeps every character equally likely.
            let limit = 256 - (256 % SESSION_ALPHABET.len());
            if (*b as usize) < limit && out.len() < len {
                out.push(SESSION_ALPHABET[*b as usize % SESSION_ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// A unique id (connection ids, message ids, command ids).
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A unique id that sorts after every id this process made before it (UUIDv7: the time in
/// ms, then a counter and random bits; same length and alphabet as [`unique`]). Command ids:
/// records keyed by them (direct messages) sort in the order one connection sent them, even
/// within a millisecond. Its leading characters are the time: never shorten it.
pub fn ordered() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Whether `s` can be a session id: not empty, short, only code characters.
pub fn is_valid_session_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_requested_length_and_alphabet() {
        for len in [4, 6, 12] {
            let c = session_code(len);
            assert_eq!(c.len(), len);
            assert!(c.bytes().all(|b| SESSION_ALPHABET.contains(&b)), "{c}");
        }
    }

    #[test]
    fn codes_differ() {
        let a: std::collections::HashSet<_> = (0..1000).map(|_| session_code(6)).collect();
        assert!(a.len() > 990);
    }

    #[test]
    fn ordered_ids_sort_by_creation() {
        let ids: Vec<String> = (0..10_000).map(|_| ordered()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids[0].len(), unique().len());
    }

    #[test]
    fn session_id_validation() {
        assert!(is_valid_session_id("ACD123"));
        assert!(!is_valid_session_id(""));
        assert!(!is_valid_session_id("a:b"));
        assert!(!is_valid_session_id(&"A".repeat(33)));
    }
}
