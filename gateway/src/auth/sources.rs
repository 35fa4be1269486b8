//! Where a connection's token may come from: `?token=`, `Authorization: Bearer`, the
//! `access_token_cookie` cookie, or (checked later) a first `authenticate` frame.

use std::collections::HashMap;

use axum::http::HeaderMap;

/// Where a token came from: a cookie is sent by the browser on its own, so it is only
/// trusted from allowed origins (see [`super::origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Query,
    Bearer,
    Cookie,
}

pub fn token_from_request(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<(String, Source)> {
    if let Some(t) = query.get("token").filter(|t| !t.is_empty()) {
        return Some((t.clone(), Source::Query));
    }
    if let Some(t) = bearer(headers) {
        return Some((t, Source::Bearer));
    }
    cookie(headers, COOKIE).map(|t| (t, Source::Cookie))
}

/// The cookie a browser client's token may travel in (the seeds' name).
pub const COOKIE: &str = "access_token_cookie";

pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?
        .trim();
    (!t.is_empty()).then(|| t.to_string())
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_in_order() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            "a=1; access_token_cookie=fromcookie".parse().unwrap(),
        );
        let got = |q: &HashMap<String, String>, h: &HeaderMap| token_from_request(q, h);
        assert_eq!(
            got(&HashMap::new(), &h),
            Some(("fromcookie".into(), Source::Cookie))
        );
        h.insert("authorization", "Bearer fromheader".parse().unwrap());
        assert_eq!(
            got(&HashMap::new(), &h),
            Some(("fromheader".into(), Source::Bearer))
        );
        let q = HashMap::from([("token".to_string(), "fromquery".to_string())]);
        assert_eq!(got(&q, &h), Some(("fromquery".into(), Source::Query)));
        assert_eq!(token_from_request(&HashMap::new(), &HeaderMap::new()), None);
    }
}
