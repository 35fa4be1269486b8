//! Cookies ride along with every request a browser makes, whichever site asks: a request
//! authenticated by cookie is accepted only from the gateway's own origin or one listed in
//! `JAM_ALLOWED_ORIGINS` (cross-site WebSocket hijacking, CSRF).

use axum::http::{header, HeaderMap};

/// Whether a cookie-authenticated request with these headers may proceed. Browsers send
/// `Origin` on every WebSocket handshake and every cross-origin or unsafe request, so a
/// request without one did not come from another site's page.
pub fn cookie_origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // The gateway's own pages: the origin's authority is the Host the request was sent to.
    let authority = origin.split_once("://").map(|(_, a)| a);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn own_and_listed_origins_only() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(cookie_origin_allowed(
            &headers(Some("https://app.example"), "jam.example"),
            &allowed
        ));
        assert!(cookie_origin_allowed(
            &headers(Some("https://jam.example"), "jam.example"),
            &allowed
        ));
        assert!(cookie_origin_allowed(
            &headers(None, "jam.example"),
            &allowed
        ));
        assert!(!cookie_origin_allowed(
            &headers(Some("https://evil.example"), "jam.example"),
            &allowed
        ));
        assert!(!cookie_origin_allowed(
            &headers(Some("https://app.example.evil"), "jam.example"),
            &allowed
        ));
        assert!(!cookie_origin_allowed(
            &headers(Some("null"), "jam.example"),
            &[]
        ));
    }
}
