//! Token checks against real keys: HS256, RS256 and ES256 from a PEM, a JWKS served by a
//! local stub whose keys rotate, opaque tokens through an introspection stub, and the
//! classic attacks (`alg: none`, HS/RS confusion, a foreign kid, `nbf`, `aud`/`iss`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::{Form, Json, Router};
use jam_gateway::auth::Authenticator;
use jam_shared::auth::AuthError;
use jam_shared::config::Config;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIX}/{name}")).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "name": sub.to_uppercase(), "exp": now() + 600})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).unwrap()
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture(&format!("{name}.pem")).as_bytes()).unwrap()
}

fn config(pairs: &[(&str, &str)]) -> Config {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_map(&m).unwrap()
}

/// Serve `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

/// A JWKS endpoint serving the keys named in `kids` (changeable), counting fetches.
async fn jwks_stub(kids: Arc<Mutex<Vec<&'static str>>>, fetches: Arc<AtomicUsize>) -> String {
    let all: Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let all = all.clone();
            let kids = kids.lock().unwrap().clone();
            fetches.fetch_add(1, Ordering::SeqCst);
            async move {
                let keys: Vec<Value> = all["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
                    .cloned()
                    .collect();
                Json(json!({ "keys": keys }))
            }
        }),
    );
    format!("{}/jwks", serve(app).await)
}

#[tokio::test]
async fn hs256_alone_refuses_none_and_public_key_algorithms() {
    let auth = Authenticator::hs256("s3cret");
    let good = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"s3cret"),
        &claims("alice"),
    );
    assert_eq!(auth.verify(&good).await.unwrap().identity.user_id, "alice");
    // alg: none, unsigned.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("mallory"))
    );
    assert!(matches!(
        auth.verify(&none).await,
        Err(AuthError::Invalid(_))
    ));
    // RS256 where only HS256 is configured.
    let rs = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &rsa("rsa1"),
        &claims("mallory"),
    );
    assert!(matches!(auth.verify(&rs).await, Err(AuthError::Invalid(_))));
    // Expired, and not yet valid (nbf).
    let mut c = claims("alice");
    c["exp"] = json!(now() - 3600);
    let old = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"s3cret"),
        &c,
    );
    assert!(matches!(auth.verify(&old).await, Err(AuthError::Expired)));
    let mut c = claims("alice");
    c["nbf"] = json!(now() + 3600);
    let early = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"s3cret"),
        &c,
    );
    assert!(auth.verify(&early).await.is_err(), "nbf in the future");
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn a_public_key_never_doubles_as_an_hmac_secret() {
    let pem = fixture("rsa1.pub.pem");
    let auth = Authenticator::new(&config(&[("JAM_JWT_PUBLIC_KEY", &pem)]), None).unwrap();
    let rs = sign(Algorithm::RS256, None, &rsa("rsa1"), &claims("alice"));
    assert_eq!(auth.verify(&rs).await.unwrap().identity.user_id, "alice");
    // HS/RS confusion: HS256 "signed" with the public key's bytes as the secret.
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(pem.as_bytes()),
        &claims("mallory"),
    );
    assert!(matches!(
        auth.verify(&forged).await,
        Err(AuthError::Invalid(_))
    ));
    // Another RSA key, and an EC token against an RSA key.
    let other = sign(Algorithm::RS256, None, &rsa("rsa2"), &claims("mallory"));
    assert!(auth.verify(&other).await.is_err());
    let ec = EncodingKey::from_ec_pem(fixture("ec1.pem").as_bytes()).unwrap();
    let es = sign(Algorithm::ES256, None, &ec, &claims("mallory"));
    assert!(auth.verify(&es).await.is_err());
    // An EC public key verifies ES256.
    let auth = Authenticator::new(
        &config(&[("JAM_JWT_PUBLIC_KEY", &fixture("ec1.pub.pem"))]),
        None,
    )
    .unwrap();
    assert_eq!(auth.verify(&es).await.unwrap().identity.user_id, "mallory");
}

#[tokio::test]
async fn audience_and_issuer_are_required_when_configured() {
    let auth = Authenticator::new(
        &config(&[
            ("JAM_JWT_SECRET", "s"),
            ("JAM_JWT_AUDIENCE", "jam"),
            ("JAM_JWT_ISSUER", "https://id.example"),
        ]),
        Some("s"),
    )
    .unwrap();
    let key = EncodingKey::from_secret(b"s");
    let mut c = claims("alice");
    c["aud"] = json!("jam");
    c["iss"] = json!("https://id.example");
    assert!(auth
        .verify(&sign(Algorithm::HS256, None, &key, &c))
        .await
        .is_ok());
    let mut wrong = c.clone();
    wrong["aud"] = json!("other-app");
    assert!(auth
        .verify(&sign(Algorithm::HS256, None, &key, &wrong))
        .await
        .is_err());
    let mut missing = c.clone();
    missing.as_object_mut().unwrap().remove("iss");
    assert!(auth
        .verify(&sign(Algorithm::HS256, None, &key, &missing))
        .await
        .is_err());
}

#[tokio::test]
async fn jwks_keys_rotate_by_kid() {
    let kids = Arc::new(Mutex::new(vec!["rsa1", "ec1"]));
    let fetches = Arc::new(AtomicUsize::new(0));
    let url = jwks_stub(kids.clone(), fetches.clone()).await;
    let auth = Authenticator::new(&config(&[("JAM_JWKS_URL", &url)]), None).unwrap();
    let t1 = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &rsa("rsa1"),
        &claims("alice"),
    );
    assert_eq!(auth.verify(&t1).await.unwrap().identity.user_id, "alice");
    assert_eq!(auth.verify(&t1).await.unwrap().identity.user_id, "alice");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the set is cached");
    // The issuer rotates to rsa2 (later than the 2 s between fetches for unknown kids): a
    // token with the new kid triggers one fetch.
    *kids.lock().unwrap() = vec!["rsa2"];
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let t2 = sign(Algorithm::RS256, Some("rsa2"), &rsa("rsa2"), &claims("bob"));
    assert_eq!(auth.verify(&t2).await.unwrap().identity.user_id, "bob");
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // A kid nobody has, or a key used with the wrong algorithm, is refused; made-up kids
    // do not make the gateway fetch again and again.
    let bogus = sign(
        Algorithm::RS256,
        Some("nope"),
        &rsa("rsa1"),
        &claims("mallory"),
    );
    for _ in 0..5 {
        assert!(auth.verify(&bogus).await.is_err());
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    let wrong_key = sign(
        Algorithm::RS256,
        Some("rsa2"),
        &rsa("rsa1"),
        &claims("mallory"),
    );
    assert!(auth.verify(&wrong_key).await.is_err());
    // An HS256 token naming a JWKS kid is not checked against that key.
    let hs = sign(
        Algorithm::HS256,
        Some("rsa2"),
        &EncodingKey::from_secret(b"x"),
        &claims("mallory"),
    );
    assert!(auth.verify(&hs).await.is_err());
}

#[tokio::test]
async fn opaque_tokens_are_introspected_and_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new().route(
        "/introspect",
        post(move |Form(f): Form<HashMap<String, String>>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                match f.get("token").map(String::as_str) {
                    Some("spotify-abc") => Json(json!({
                        "active": true, "sub": "carol", "name": "Carol", "exp": now() + 600
                    })),
                    _ => Json(json!({"active": false})),
                }
            }
        }),
    );
    let url = format!("{}/introspect", serve(app).await);
    let auth = Authenticator::new(&config(&[("JAM_INTROSPECTION_URL", &url)]), None).unwrap();
    let v = auth.verify("spotify-abc").await.unwrap();
    assert_eq!(v.identity.user_id, "carol");
    assert_eq!(v.identity.user_name, "Carol");
    assert!(v.expires_at.is_some());
    auth.verify("spotify-abc").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the answer is cached");
    assert!(matches!(
        auth.verify("revoked").await,
        Err(AuthError::Invalid(_))
    ));
    // An endpoint that is down is "try again", not "invalid".
    let down = Authenticator::new(
        &config(&[("JAM_INTROSPECTION_URL", "http://127.0.0.1:9/introspect")]),
        None,
    )
    .unwrap();
    let e = down.verify("spotify-abc").await.unwrap_err();
    assert!(e.retryable(), "{e}");
}
