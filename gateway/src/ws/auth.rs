//! Where a connection's token may come from: `?token=`, `Authorization: Bearer`, the
//! `access_token_cookie` cookie, or (checked later) a first `authenticate` frame.

use std::collections::HashMap;

use axum::http::HeaderMap;

pub fn token_from_request(query: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = query.get("token").filter(|t| !t.is_empty()) {
        return Some(t.clone());
    }
    if let Some(t) = bearer(headers) {
        return Some(t);
    }
    cookie(headers, "access_token_cookie")
}

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

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
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
        assert_eq!(
            token_from_request(&HashMap::new(), &h).as_deref(),
            Some("fromcookie")
        );
        h.insert("authorization", "Bearer fromheader".parse().unwrap());
        assert_eq!(
            token_from_request(&HashMap::new(), &h).as_deref(),
            Some("fromheader")
        );
        let q = HashMap::from([("token".to_string(), "fromquery".to_string())]);
        assert_eq!(token_from_request(&q, &h).as_deref(), Some("fromquery"));
        assert_eq!(token_from_request(&HashMap::new(), &HeaderMap::new()), None);
    }
}
